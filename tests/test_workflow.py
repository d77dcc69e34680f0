"""The demo workflow end to end: `snakemake submission` in a fresh directory, then its products.

One run (session fixture, ~10 min on 2 cores) serves every test here: submission files pass the
validator, test metrics beat a constant baseline, the report builds, a no-op rerun does nothing,
and a hyperparameter change reruns exactly the affected rules.
"""
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from conftest import REPO, run_snakemake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    work = Path(os.environ.get("AFFECT_DEMO_DIR") or tmp_path_factory.mktemp("demo"))
    t0 = time.time()
    p = run_snakemake("--cores", "2", "submission", "--directory", str(work), timeout=3000)
    wall = time.time() - t0
    print(f"\ndemo workflow: {wall:.0f} s")
    (work / "demo_wall_seconds.txt").write_text(f"{wall:.1f}\n")
    return work, p


def test_submission_files_are_valid(demo_run):
    work, _ = demo_run
    from affect_pipeline.submission import test_videos, validate_submission

    for task in ("AU", "EXPR", "VA", "ERI"):
        f = work / "results/submission" / task / "predictions.txt"
        assert f.exists(), f
        validate_submission(task, f, test_videos(work / "results/index/videos.tsv", task))
    header = (work / "results/submission/VA/predictions.txt").read_text().splitlines()[0]
    assert header == "image_location,valence,arousal"


def test_every_frame_of_every_test_video_has_a_row(demo_run):
    work, _ = demo_run
    from affect_pipeline.dataset import read_index

    idx = read_index(work / "results/index/videos.tsv")
    rows = (work / "results/submission/AU/predictions.txt").read_text().splitlines()[1:]
    tests = [v for v, r in idx.items() if r["split_AU"] == "test"]
    assert len(rows) == sum(idx[v]["n_frames"] for v in tests)
    assert rows[0].startswith(f"{sorted(tests)[0]}/00001.jpg,")


def test_demo_metrics_beat_baselines(demo_run):
    """Held-back demo test labels: the submission beats both the best constant prediction and
    chance. ERI has only three test videos (a PCC over 3 points is noise), so it is held to its
    cross-validated score over the five folds instead."""
    work, _ = demo_run
    summary = json.loads((work / "results/metrics/summary.json").read_text())
    for task in ("AU", "EXPR", "VA"):
        t = summary["test"][task]
        print(task, t["score"], "baseline", t["baseline"], "chance", t["chance"])
        assert t["score"] > max(t["baseline"], t["chance"]) + 0.02, (task, t)
    eri = summary["test"]["ERI"]
    assert eri["videos"] == 3 and -1 <= eri["score"] <= 1
    rows = {tuple(r.split("\t")[:2]): r.split("\t") for r in (work / "results/metrics/ablation.tsv").read_text().splitlines()}
    assert {("AU", "BLB"), ("AU", "DCL"), ("EXPR", "MAE finetune"), ("VA", "DCL")} <= set(rows)
    header = (work / "results/metrics/ablation.tsv").read_text().splitlines()[0].split("\t")
    cv = float(rows[("ERI", "BLB")][header.index("mean(fold1-5)")])
    print("ERI BLB mean PCC over fold1-5 validation:", cv)
    assert cv > 0.1


def test_faces_found_and_stores_complete(demo_run):
    work, _ = demo_run
    from affect_pipeline.dataset import read_index
    from affect_pipeline.stores import FaceStore

    idx = read_index(work / "results/index/videos.tsv")
    found = total = 0
    for vid, r in idx.items():
        with FaceStore(work / "results/faces" / f"{vid}.h5") as fs:
            assert fs.n_frames == r["n_frames"]
            found += int(fs.found.sum())
            total += fs.n_frames
    assert found / total >= 0.95, found / total


def test_noop_rerun_and_params_change(demo_run):
    work, _ = demo_run
    p = run_snakemake("-n", "submission", "--directory", str(work))
    assert "Nothing to be done" in p.stdout + p.stderr
    cfg = work / "change.yaml"
    cfg.write_text("temporal:\n  dcl:\n    tau1: 3.0\n")
    p = run_snakemake("-n", "submission", "--directory", str(work), "--configfile", str(cfg), "--quiet", "rules")
    out = p.stdout + p.stderr
    assert "train_dcl" in out and "ensemble" in out
    for untouched in ("crop_faces", "finetune_mae", "audio_features", "train_blb ", "mine_hard_clips"):
        assert untouched not in out, untouched


def test_report_builds(demo_run):
    work, _ = demo_run
    run_snakemake("--report", str(work / "report.zip"), "submission", "--directory", str(work))
    assert (work / "report.zip").stat().st_size > 50_000
