"""The conda environment of ``snakemake --sdm conda`` (envs/affect.yaml) works from wherever
Snakemake copies it: it names no other file, its pip pins are requirements.txt's, and the jobs
find the package through the PYTHONPATH that rules/common.smk sets under conda.

Fast tests read the file and the parsed workflow's shell prefix; one test creates the
environment with conda / mamba / micromamba and runs a stage in it, skipped (with the reason)
on machines that have none of them.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ENV = REPO / "envs" / "affect.yaml"
CONDA_TOOLS = ("mamba", "micromamba", "conda")


def pins(lines) -> dict[str, str]:
    """{package: version} of ``name==version`` lines (comments and blanks skipped)."""
    out = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[name.strip().lower()] = version.strip()
    return out


def env_pip() -> list[str]:
    doc = yaml.safe_load(ENV.read_text())
    (pip,) = [d["pip"] for d in doc["dependencies"] if isinstance(d, dict) and "pip" in d]
    return pip


def test_the_env_names_no_other_file_and_pins_what_requirements_pins():
    """Snakemake creates the env from a copy in .snakemake/conda/: a `-r`, `-e` or relative path
    would point nowhere there. The pins must equal requirements.txt's (the venv the tests run in)."""
    pip = env_pip()
    assert not [p for p in pip if p.startswith(("-", ".")) or "/" in p], pip
    assert all("==" in p for p in pip), pip
    assert pins(pip) == pins((REPO / "requirements.txt").read_text().splitlines())
    deps = yaml.safe_load(ENV.read_text())["dependencies"]
    assert "python=3.11" in deps                          # requirements.txt is the set for CPython 3.11


def conda_prefix() -> str:
    """The shell prefix of the parsed workflow under --sdm conda (parsed in a child process: the
    prefix is Snakemake's global state)."""
    code = (
        "from pathlib import Path\n"
        "import tempfile\n"
        "from snakemake.api import SnakemakeApi\n"
        "from snakemake.settings.types import (ConfigSettings, DeploymentSettings, OutputSettings,\n"
        "    ResourceSettings, StorageSettings)\n"
        "from snakemake_interface_executor_plugins.settings import DeploymentMethod\n"
        "from snakemake.shell import shell\n"
        f"repo = Path({str(REPO)!r})\n"
        "with tempfile.TemporaryDirectory() as work, SnakemakeApi(OutputSettings()) as api:\n"
        "    wf = api.workflow(resource_settings=ResourceSettings(), storage_settings=StorageSettings(),\n"
        "        config_settings=ConfigSettings(configfiles=[repo / 'demo_config.yaml']),\n"
        "        deployment_settings=DeploymentSettings(deployment_method={DeploymentMethod.CONDA}),\n"
        "        snakefile=repo / 'Snakefile', workdir=Path(work))\n"
        "    wf._workflow\n"
        "    print('PREFIX=' + shell._process_prefix)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout.split("PREFIX=", 1)[1].rstrip("\n")


def test_under_conda_the_jobs_import_the_package_from_the_workflow_folder(tmp_path):
    """The prefix Snakemake puts before every job's command, run by bash in another folder, puts
    the workflow's folder first on PYTHONPATH (keeping what was there) and does not pin the venv's
    python first on PATH (the env's python must run the job)."""
    prefix = conda_prefix()
    assert os.path.dirname(sys.executable) not in prefix
    for before, want in (("", str(REPO)), ("/opt/x", f"{REPO}:/opt/x")):
        env = {**os.environ, "PYTHONPATH": before} if before else {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        p = subprocess.run(["bash", "-c", prefix + 'printf %s "$PYTHONPATH"'], capture_output=True, text=True,
                           env=env, cwd=tmp_path, timeout=60)
        assert p.returncode == 0 and p.stdout == want, (p.stdout, p.stderr)


@pytest.mark.slow
@pytest.mark.skipif(not any(shutil.which(t) for t in CONDA_TOOLS),
                    reason="no conda, mamba or micromamba on PATH: the env cannot be created here")
@pytest.mark.timeout(3600)
def test_the_env_is_created_from_a_copy_and_runs_a_stage(tmp_path):
    """As Snakemake does: the file copied elsewhere, the env created from the copy; then a stage
    runs in it with the package on PYTHONPATH (the prefix above): make_demo_audio_models."""
    tool = next(shutil.which(t) for t in CONDA_TOOLS if shutil.which(t))
    copy = tmp_path / "copied" / "0123abcd.yaml"
    copy.parent.mkdir()
    shutil.copy(ENV, copy)
    prefix = tmp_path / "env"
    create = [tool, "create", "--yes", "--file", str(copy), "--prefix", str(prefix)] if "micromamba" in tool \
        else [tool, "env", "create", "--quiet", "--file", str(copy), "--prefix", str(prefix)]
    p = subprocess.run(create, capture_output=True, text=True, timeout=3300, cwd=copy.parent)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(REPO), "AFFECT_WARM": "0"}
    python = prefix / "bin" / "python"
    p = subprocess.run([str(python), "-m", "affect_pipeline", "make_demo_audio_models", "--out-dir",
                        str(tmp_path / "models"), "--seed", "0"], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / "models" / "vggish.pth").is_file()
    p = subprocess.run([str(python), "-c", "import affect_pipeline, torch; print(affect_pipeline.__file__, torch.__version__)"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0 and p.stdout.startswith(str(REPO / "affect_pipeline")), p.stdout + p.stderr
    assert pins(env_pip())["torch"] in p.stdout
