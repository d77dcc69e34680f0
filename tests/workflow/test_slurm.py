"""profiles/slurm against a real Slurm: jobs go through sbatch, the run finishes, outputs exist.

Needs a running Slurm (`.ci/slurm/start.sh` gives a single-node one with fake GPUs and no
accounting, so job states come from squeue). Skipped, saying why, when no Slurm answers or it
would not run the jobs (`sbatch --test-only`: no root to start one, a cluster that refuses the
profile's requests); failed instead under AFFECT_REQUIRE_SLURM=1 (CI, once Slurm is started).
The repo profile is used as it is; only what a 2-core CI node cannot give is overridden on the
command line: threads (one per job) and the status-poll intervals (seconds, not a minute).
"""
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import CUT_DEMO, REPO, SNAKEMAKE

#: what the Slurm tests ask of the cluster (the profile's train_blb request); probed with
#: ``sbatch --test-only``, which submits nothing
PROBE = ["sbatch", "--test-only", "--gpus=1", "--mem=48000", "--cpus-per-task=2", "--time=5", "--wrap", "true"]


def _answer(cmd):
    """(return code, output) of a Slurm client call, or (None, why it could not run)."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return None, f"{cmd[0]} did not answer within 15 s"
    except OSError as e:
        return None, f"{cmd[0]} cannot run: {e}"
    return p.returncode, (p.stdout + p.stderr).strip()


def _slurm_state():
    """None when a Slurm controller answers and would run the tests' jobs, else the reason to skip."""
    if not shutil.which("sinfo") or not shutil.which("sbatch"):
        return "no Slurm client (sinfo/sbatch) on PATH; start one with .ci/slurm/start.sh (as root)"
    rc, out = _answer(["sinfo", "-h", "-o", "%T"])
    if rc != 0:
        return f"sinfo failed: {out[:200]} (start Slurm with .ci/slurm/start.sh, as root)"
    if not re.search(r"idle|mixed|alloc", out):
        return f"no usable Slurm node (states: {out.split()})"
    rc, out = _answer(PROBE)
    if rc != 0:
        return f"this Slurm would not run the tests' jobs (`{' '.join(PROBE)}`: {out[:300]})"
    return None


_REASON = _slurm_state()
#: .ci/run sets this once it started Slurm: there a Slurm test that cannot run fails, never skips
_REQUIRED = os.environ.get("AFFECT_REQUIRE_SLURM") == "1"


def needs_slurm(test):
    """Skip ``test``, saying why, where no usable Slurm answers (no root to start one, no Slurm,
    a cluster that refuses the profile's requests); fail it instead where CI requires Slurm."""
    if _REASON is None:
        return test
    if _REQUIRED:
        return pytest.mark.usefixtures("_slurm_required")(test)
    return pytest.mark.skip(reason=_REASON)(test)


@pytest.fixture
def _slurm_required():
    pytest.fail(f"AFFECT_REQUIRE_SLURM=1 but Slurm is not usable: {_REASON}")


PROFILE = REPO / "profiles" / "slurm"
RULE_NAME = re.compile(r"^\s*(?:rule|checkpoint) (\w+):|^use rule \w+ as (\w+)", re.M)


def workflow_rules() -> set[str]:
    """Every rule name of rules/*.smk: rules, checkpoints and `use rule A as B` copies."""
    text = "".join(p.read_text() for p in (REPO / "rules").glob("*.smk"))
    return {a or b for a, b in RULE_NAME.findall(text)}


#: every rule of the workflow; all get one thread on CI, whatever they declare
#: (a job asking more CPUs than the node has pends forever with reason PartitionConfig)
RULES = sorted(workflow_rules())
# CI-only overrides: a 2-core node, and polling in seconds (MinJobAge 600 >= 3 x 5 s keeps squeue)
CI_ARGS = ["--set-threads", *[f"{r}=1" for r in RULES],
           "--slurm-init-seconds-before-status-checks", "5", "--seconds-between-status-checks", "5",
           "--slurm-keep-successful-logs", "--jobs", "4"]
#: squeue reasons of a pending job that Slurm will never start on this cluster as configured
NEVER_STARTS = {"PartitionConfig", "BadConstraints", "PartitionNodeLimit", "PartitionTimeLimit",
                "ReqNodeNotAvail", "InvalidQOS", "QOSMaxCpuPerJobLimit", "AssocMaxCpuPerJobLimit"}


def never_starting(slurm_ids):
    """The squeue lines ("id state reason cpus") of those jobs that pend for a reason no wait cures."""
    if not slurm_ids:
        return []
    rc, out = _answer(["squeue", "-h", "-j", ",".join(slurm_ids), "-o", "%i %T %r %C"])
    lines = out.splitlines() if rc == 0 else []
    return [ln for ln in lines if len(ln.split()) >= 3 and ln.split()[2] in NEVER_STARTS]


def run_profile(args, cwd, timeout):
    """snakemake --workflow-profile profiles/slurm ...; fails at once, naming the job and its
    reason, when a submitted job can never start (instead of waiting out the timeout), and kills
    the whole process group on timeout (a Snakemake stuck waiting for job states ignores SIGTERM)."""
    cmd = [SNAKEMAKE, "--workflow-profile", str(PROFILE), *args]
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    deadline, stuck = time.time() + timeout, []
    while proc.poll() is None and time.time() < deadline:
        time.sleep(5)
        stuck = never_starting(list(submitted("".join(lines)).values()))
        if stuck:
            break
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        reader.join(10)
        out = "".join(lines)
        ids = list(submitted(out).values())
        if ids:  # do not leave the run's jobs queued
            subprocess.run(["scancel", *ids], capture_output=True)
        why = (f"Slurm will never start {stuck} (id state reason cpus)" if stuck
               else f"snakemake did not finish within {timeout} s")
        pytest.fail(f"{why}:\n{out[-6000:]}")
    reader.join(10)
    return proc.returncode, "".join(lines)


def submitted(out):
    """{snakemake job id: slurm job id} from the plugin's 'has been submitted' lines."""
    return dict(re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", out))


def test_profile_parses_and_names_real_rules(tmp_path):
    """Every rule the profile tunes exists in the workflow (a typo would silently do nothing), and
    Snakemake accepts the profile: a dry run shows the heavy rules' resources (no Slurm needed)."""
    prof = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert prof["executor"] == "slurm" and prof["slurm-status-command"] == "squeue"
    rules = workflow_rules()
    assert set(prof["set-resources"]) <= rules, set(prof["set-resources"]) - rules
    assert set(prof["set-threads"]) <= rules
    for rule, res in prof["set-resources"].items():
        assert {"mem_mb", "runtime", "cpus_per_task"} <= set(res), rule
    cfg = tmp_path / "cut.yaml"
    cfg.write_text(yaml.safe_dump(CUT))
    p = subprocess.run([SNAKEMAKE, "submission", "--workflow-profile", str(PROFILE), "-n", "--snakefile", str(REPO / "Snakefile"),
                        "--directory", str(tmp_path / "run"), "--configfile", str(REPO / "demo_config.yaml"),
                        str(cfg)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    blocks = {m.group(1): m.group(2) for m in re.finditer(r"^rule (\w+):\n(.*?)\n\n", p.stdout, re.M | re.S)}
    assert re.search(r"mem_mb=8000\b.*runtime=480\b.*gpu=1\b", blocks["train_blb"]), blocks["train_blb"]
    # the demo tree comes from a checkpoint, so per-video jobs appear only once it ran
    assert re.search(r"gpu=1\b", blocks["finetune_mae"]) and "mem_mb=4000," in blocks["make_folds"]
    assert "make_demo" in p.stdout


TOY = '''
rule all:
    input: "c.txt"
rule extract_frames:
    output: "a.txt"
    shell: "echo job=${{SLURM_JOB_ID:-none}} > {output}"
rule train_blb:
    input: "a.txt"
    output: "b.txt"
    threads: 2
    resources: gpu=0, mem_mb=1000
    shell:
        "echo job=${{SLURM_JOB_ID:-none}} cpus=${{SLURM_CPUS_PER_TASK:-none}}"
        " cvd=${{CUDA_VISIBLE_DEVICES:-none}} threads={threads} > {output}"
rule c:
    input: "a.txt", "b.txt"
    output: "c.txt"
    shell: "cat {input} > {output}"
'''


@pytest.mark.slurm
@needs_slurm
def test_toy_workflow_goes_through_sbatch(tmp_path):
    """Three rules through the repo profile: one sbatch job each, the GPU rule gets its GPU and
    its CPUs, and the run ends (job states are polled with squeue, no accounting needed)."""
    (tmp_path / "Snakefile").write_text(TOY)
    t0 = time.time()
    # train_blb: the profile's gpu=1, cpus_per_task=threads; 2 threads to see them mapped
    rc, out = run_profile(["--snakefile", "Snakefile", *CI_ARGS, "--set-threads", "train_blb=2"],
                          tmp_path, timeout=240)
    wall = time.time() - t0
    assert rc == 0, out[-6000:]
    jobs = submitted(out)
    assert len(jobs) == 3, out[-4000:]
    a, b = (tmp_path / "a.txt").read_text(), (tmp_path / "b.txt").read_text()
    assert re.match(r"job=\d+", a) and a.split("=")[1].strip() in jobs.values()
    b_fields = dict(kv.split("=") for kv in b.split())
    assert b_fields["job"] in jobs.values() and b_fields["job"] != a.split("=")[1].strip()
    assert b_fields["cpus"] == "2" and b_fields["threads"] == "2"
    assert b_fields["cvd"] != "none"                  # --gpus=1 gave the job a (fake) GPU
    logs = list((tmp_path / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert {p.parent.name for p in logs} >= {"rule_extract_frames", "rule_train_blb", "rule_c"}
    mem = subprocess.run(["scontrol", "show", "job", b_fields["job"]], capture_output=True, text=True).stdout
    if mem:  # still known to slurmctld (MinJobAge): the profile's requests reached Slurm
        assert "gres/gpu=1" in mem or "gpu:1" in mem or "gres:gpu" in mem, mem
        assert re.search(r"mem=8000M|MinMemoryNode=8000M", mem), mem
    print(f"\ntoy workflow through Slurm: 3 jobs in {wall:.0f} s ({wall / 3:.0f} s per job)")


# as small as the Slurm run was before per-fold encoders (2 folds, one shared encoder: ~55 sbatch
# jobs); the 3-fold per-fold cut-down run is tests/workflow/test_cut_workflow.py's
CUT = {**CUT_DEMO, "folds": 2,
       "mae": {**CUT_DEMO["mae"], "finetune": {**CUT_DEMO["mae"]["finetune"], "per_fold": False}}}


@pytest.mark.slurm
@pytest.mark.slow
@needs_slurm
def test_demo_workflow_on_slurm(tmp_path):
    """The repo's workflow, cut down (VA, 6 short videos, 2 folds, tiny models), to `submission`
    through the Slurm profile: every job an sbatch job, the submission file written."""
    cfg = tmp_path / "cut.yaml"
    cfg.write_text(yaml.safe_dump(CUT))
    work = tmp_path / "run"
    t0 = time.time()
    rc, out = run_profile(["--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
                           "--configfile", str(REPO / "demo_config.yaml"), str(cfg),
                           *CI_ARGS, "submission"], tmp_path, timeout=840)
    wall = time.time() - t0
    (tmp_path / "snakemake.out").write_text(out)
    assert rc == 0, out[-8000:]
    sub = work / "results" / "submission" / "VA" / "predictions.txt"
    assert sub.exists(), out[-4000:]
    assert sub.read_text().splitlines()[0] == "image_location,valence,arousal"
    jobs = submitted(out)
    remote = re.findall(r"^rule (\w+):", out, re.M)            # `localrule X:` runs on the head node
    local = set(re.findall(r"^localrule (\w+):", out, re.M))
    assert local <= {"all", "submission", "make_folds", "run_config"}, local
    assert len(jobs) >= len(remote) > 20, (len(jobs), len(remote), out[-4000:])
    logdirs = {p.name for p in (work / ".snakemake" / "slurm_logs").iterdir()}
    assert {"rule_train_blb", "rule_predict", "rule_crop_faces"} <= logdirs, logdirs
    print(f"\ncut-down demo through Slurm: {len(jobs)} sbatch jobs in {wall:.0f} s")
