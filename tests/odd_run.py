"""The odd-id workflow run: Snakemake on a small demo tree whose ids hold spaces, quotes, non-ASCII
and shell metacharacters, SIGKILLed midway and resumed. One run serves two files (it is the slow
part): tests/workflow/test_odd_ids.py (the ids run end to end, nothing is injected) and
tests/workflow/test_rerun_incomplete.py (the kill and ``--rerun-incomplete``). Memoised here, in
this module both import: one run per session.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import yaml
from conftest import REPO, SNAKEMAKE, face_batch_target

# AFFECT_WARM=0: the odd run is SIGKILLed as a process group (tests/workflow/test_rerun_incomplete.py);
# jobs of the warm launcher are forks of its server, outside that group, that stop when their
# launcher's socket closes (tests/test_warm.py) — a job finishing in that moment may still publish
# its complete output, which --rerun-incomplete then redoes, so "nothing redone" is exact only here.
ENV = {**os.environ, "AFFECT_WARM": "0", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1", "PYTHONIOENCODING": "utf-8"}


ODD = {"demo_000": "«demo» é & 000", "demo_001": "o'neil 日本", "demo_002": "x;touch PWNED",
       "demo_003": "$(touch PWNED) `touch PWNED`", "demo_pair": "pair ü"}
DEMO_PARAMS = {"seed": 0, "size": 160, "fps": 25, "frames": [12, 16],
               "n_videos": {"train": 2, "validation": 1, "test": 1},
               "hume": {"train": 0, "validation": 0, "test": 0, "frames": 8}}


def rename(vid: str) -> str:
    for old, new in ODD.items():
        if vid == old or vid.startswith(old + "_"):
            return new + vid[len(old):]
    return vid


def odd_tree(root: Path) -> Path:
    """The demo generator's tree with every id renamed (videos, annotation files, test lists)."""
    from affect_pipeline.demo.make_demo import make_demo

    make_demo(root, DEMO_PARAMS, threads=1)
    aff = root / "affwild2"
    for f in [*(aff / "videos").iterdir(), *(aff / "annotations").rglob("*.txt")]:
        f.rename(f.with_name(rename(f.stem) + f.suffix))
    for f in (aff / "test_lists").iterdir():
        f.write_text("".join(rename(ln) + "\n" for ln in f.read_text().splitlines() if ln.strip()))
    cfg = {"affwild2": {k: str(aff / k) for k in ("videos", "annotations", "test_lists")} | {"cropped_aligned": None},
           "hume": {"root": None}, "tasks": ["AU", "EXPR", "VA"], "temporal": {"features": ["mae"]},
           "faces": {"size": 64, "batch_size": 16, "min_face_size": 40}, "resources": ODD_RESOURCES}
    (root / "odd.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return root / "odd.yaml"


ODD_IDS = ["«demo» é & 000", "o'neil 日本", "x;touch PWNED", "$(touch PWNED) `touch PWNED`", "pair ü_left", "pair ü_right"]


ODD_RESOURCES = {"media_batches": 2}     # two extract_frames / crop_faces batches


BATCHES = sorted({face_batch_target(v, {"resources": ODD_RESOURCES}) for v in ODD_IDS})


def odd_batch(video: str) -> str:
    return face_batch_target(video, {"resources": ODD_RESOURCES}).rsplit("/", 1)[1]


TARGETS = ["results/index/videos.tsv", *BATCHES] + sorted({f"results/audio/{odd_batch(v)}" for v in ODD_IDS[:4]})
_RUN: dict = {}


def _snakemake(cfg, work, *extra):
    return [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--cores", "2", "--configfile", str(cfg),
            "--directory", str(work), *extra]


def odd_workflow(tmp_path_factory) -> dict:
    """Snakemake on the odd tree, SIGKILLed (whole process group) while a crop_faces batch job runs
    that has finished one of its videos, then ``--unlock`` + ``--rerun-incomplete`` to the end.
    Memoised: one run per session."""
    if _RUN:
        return _RUN
    root = tmp_path_factory.mktemp("odd")
    cfg = odd_tree(root / "data")
    work = root / "work"
    work.mkdir()
    t0 = time.time()
    first = subprocess.Popen(_snakemake(cfg, work, *TARGETS), cwd=work, env=ENV, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    faces, logs = work / "results/faces", work / "results/logs/crop_faces"
    killed_in = cached = None
    while first.poll() is None and time.time() - t0 < 400:
        # the stores first, then which batches are unfinished: a batch finishing in between is not "mid"
        stored = {p.name.rsplit(".", 2)[0] for p in (faces / ".cache").glob("*.h5")} if faces.exists() else set()
        running = {p.stem for p in logs.glob("*.log")} if logs.exists() else set()
        mid = {v for v in stored if odd_batch(v) in running and not (faces / odd_batch(v)).exists()}
        if mid:                          # a batch job has stored a video and works on the next: kill all
            os.killpg(first.pid, signal.SIGKILL)
            killed_in = {b for b in running if not (faces / b).exists()}
            cached = {v for v in mid if odd_batch(v) in killed_in}
            break
        time.sleep(0.1)
    first.wait()
    first_log = first.stdout.read().decode("utf-8", "replace")
    assert killed_in and cached, f"the first run was not caught mid-job (rc {first.returncode}):\n{first_log[-3000:]}"
    before = {str(p.relative_to(work)): p.stat().st_mtime_ns for p in (work / "results").rglob("*")
              if p.is_file() and "logs" not in p.parts and not p.name.startswith(".")}
    leftovers = sorted(p.name for p in faces.iterdir())
    unlock = subprocess.run(_snakemake(cfg, work, "--unlock"), cwd=work, env=ENV, capture_output=True, text=True)
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    second = subprocess.run(_snakemake(cfg, work, "--rerun-incomplete", *TARGETS), cwd=work, env=ENV,
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    noop = subprocess.run(_snakemake(cfg, work, "-n", *TARGETS), cwd=work, env=ENV, capture_output=True, text=True)
    print(f"\nodd-id workflow with a kill and a rerun: {time.time() - t0:.0f} s")
    _RUN.update(root=root, cfg=cfg, work=work, killed_in=killed_in, cached=cached, before=before, leftovers=leftovers,
                first_log=first_log, second=second, noop=noop)
    return _RUN
