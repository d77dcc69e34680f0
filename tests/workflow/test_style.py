"""The Snakemake catalog's conventions, checked by `make test`: snakefmt-formatted rules, a clean
``snakemake --lint``, and every file the report shows filed under a category with a caption."""
import subprocess
import sys
import tempfile
from pathlib import Path

from conftest import REPO, SNAKEMAKE

SNAKEFMT = str(Path(sys.executable).with_name("snakefmt"))
WORKFLOW_FILES = ["Snakefile", *sorted(str(p.relative_to(REPO)) for p in (REPO / "rules").glob("*.smk"))]


def test_snakefmt_check_is_clean():
    p = subprocess.run([SNAKEFMT, "--check", *WORKFLOW_FILES], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, f"run `snakefmt Snakefile rules/`:\n{p.stdout}{p.stderr}"


def test_snakemake_lint_is_clean():
    p = subprocess.run([SNAKEMAKE, "--lint"], cwd=REPO, capture_output=True, text=True, timeout=120)
    out = p.stdout + p.stderr
    assert p.returncode == 0 and "Congratulations, your workflow is in a good condition" in out, out


def report_outputs() -> list[tuple[str, str, object]]:
    """(rule, output, report flag) of every ``report(...)`` output of the parsed workflow."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (
        ConfigSettings,
        OutputSettings,
        ResourceSettings,
        StorageSettings,
    )

    with tempfile.TemporaryDirectory() as work, SnakemakeApi(OutputSettings()) as api:
        wf = api.workflow(resource_settings=ResourceSettings(), storage_settings=StorageSettings(),
                          config_settings=ConfigSettings(configfiles=[REPO / "demo_config.yaml"]),
                          snakefile=REPO / "Snakefile", workdir=Path(work))
        return [(r.name, str(o), o.flags["report"]) for r in wf._workflow.rules
                for o in r.output if o.flags.get("report") is not None]


def test_every_report_output_has_a_category_and_a_caption():
    from affect_pipeline.submit.report import FIGURES

    found = report_outputs()
    shown = {Path(o).name for _, o, _ in found}
    assert {f.name for f in FIGURES} <= shown, shown
    for rule, out, rep in found:
        assert rep.category, f"rule {rule}: {out} has no report category"
        assert rep.caption and Path(rep.caption).is_file(), f"rule {rule}: {out} caption {rep.caption!r} missing"
