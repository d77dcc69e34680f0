"""The demo workflow end to end: `snakemake submission` in a fresh directory, then its products.

One run (session fixture, a few minutes on 2 cores) serves every test here: submission files pass the
validator, test metrics beat a constant baseline, the report builds, a no-op rerun does nothing,
and a hyperparameter change reruns exactly the affected rules.
"""
import json
import os
import time
from pathlib import Path

import pytest
from conftest import REPO, face_store_of, run_snakemake

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
    from affect_pipeline.submit.submission import test_videos, validate_submission

    for task in ("AU", "EXPR", "VA", "ERI"):
        f = work / "results/submission" / task / "predictions.txt"
        assert f.exists(), f
        validate_submission(task, f, test_videos(work / "results/index/videos.tsv", task))
    header = (work / "results/submission/VA/predictions.txt").read_text().splitlines()[0]
    assert header == "image_location,valence,arousal"


def test_every_frame_of_every_test_video_has_a_row(demo_run):
    work, _ = demo_run
    from affect_pipeline.data.index_dataset import read_index

    idx = read_index(work / "results/index/videos.tsv")
    rows = (work / "results/submission/AU/predictions.txt").read_text().splitlines()[1:]
    tests = [v for v, r in idx.items() if r["split_AU"] == "test"]
    assert len(rows) == sum(idx[v]["n_frames"] for v in tests)
    # rows follow the official name list (recorded by the index), not sorted ids
    order = json.loads((work / "results/index/index_report.json").read_text())["test_order"]["AU"]
    assert sorted(order) == sorted(tests)
    assert rows[0].startswith(f"{order[0]}/00001.jpg,")


def test_demo_learns_every_task(demo_run):
    """Held-back demo test labels (seed 0, 8 test videos, measured AU 0.74, EXPR 0.82 with every
    class 0.56-0.96, VA 0.82, ERI 0.82 over 10 videos): every task well above the best constant
    prediction and chance, every expression class recognised (Disgust, before its AU10 showed,
    was taken for Neutral: 0.12-0.41), ERI scored over its 10 Hume test videos. The demo is
    byte-reproducible (test_demo), so the margins leave room for float rounding only, not for a
    demo that stopped learning."""
    work, _ = demo_run
    summary = json.loads((work / "results/metrics/summary.json").read_text())
    margins = {"AU": 0.15, "EXPR": 0.3, "VA": 0.4, "ERI": 0.3}
    for task, margin in margins.items():
        t = summary["test"][task]
        print(task, t["score"], "baseline", t["baseline"], "chance", t["chance"], "videos", t["videos"])
        assert t["score"] > max(t["baseline"], t["chance"] or 0.0) + margin, (task, t)
    assert min(summary["test"]["EXPR"]["per_class"]) > 0.2, summary["test"]["EXPR"]["per_class"]
    assert summary["test"]["ERI"]["videos"] >= 10


def test_framewise_finetune_beats_its_baseline(demo_run):
    """The frame-wise MAE fine-tune carries the visual signal on its own: on the official
    validation split each frame task's head beats the constant predictor by a clear margin
    (seed 0: AU +0.36, EXPR +0.56, VA +0.77)."""
    work, _ = demo_run
    for task in ("AU", "EXPR", "VA"):
        m = json.loads((work / f"results/mae/{task}/official/finetune_metrics.json").read_text())
        print(task, "finetune", m["score"], "baseline", m["baseline"])
        assert m["score"] > m["baseline"] + 0.12, (task, m["score"], m["baseline"])
    rows = {tuple(r.split("\t")[:2]): r.split("\t") for r in (work / "results/metrics/ablation.tsv").read_text().splitlines()}
    assert {("AU", "MAE finetune"), ("AU", "BLB"), ("AU", "DCL"), ("EXPR", "MAE finetune"), ("VA", "DCL"),
            ("ERI", "BLB")} <= set(rows)
    header = (work / "results/metrics/ablation.tsv").read_text().splitlines()[0].split("\t")
    mean_col = next(h for h in header if h.startswith("mean(fold1-"))
    cv = float(rows[("ERI", "BLB")][header.index(mean_col)])
    print(f"ERI BLB mean PCC over {mean_col[5:-1]} validation:", cv)
    assert cv > 0.2


def test_faces_found_and_stores_complete(demo_run):
    work, _ = demo_run
    from affect_pipeline.common.stores import FaceStore
    from affect_pipeline.data.index_dataset import read_index

    idx = read_index(work / "results/index/videos.tsv")
    found = total = 0
    for vid, r in idx.items():
        with FaceStore(face_store_of(work / "results", vid)) as fs:
            assert fs.n_frames == r["n_frames"]
            found += int(fs.found.sum())
            total += fs.n_frames
    assert found / total >= 0.95, found / total


def test_noop_rerun_and_params_change(demo_run):
    work, _ = demo_run
    p = run_snakemake("-n", "submission", "--directory", str(work))
    assert "Nothing to be done" in p.stdout + p.stderr
    demo = str(REPO / "demo_config.yaml")
    cfg = work / "change.yaml"
    cfg.write_text("temporal:\n  dcl:\n    tau1: 3.0\n")
    p = run_snakemake("-n", "submission", "--directory", str(work), "--configfile", demo, str(cfg), "--quiet", "rules")
    out = p.stdout + p.stderr
    assert "train_dcl" in out and "ensemble" in out
    for untouched in ("crop_faces", "finetune_mae", "audio_features", "train_blb ", "mine_hard_clips"):
        assert untouched not in out, untouched
    # a BLB change reruns BLB onward, nothing upstream of it
    cfg.write_text("temporal:\n  blb:\n    lr: 0.0002\n")
    p = run_snakemake("-n", "submission", "--directory", str(work), "--configfile", demo, str(cfg), "--quiet", "rules")
    out = p.stdout + p.stderr
    for rerun in ("train_blb", "mine_hard_clips", "train_dcl", "predict", "ensemble"):
        assert rerun in out, rerun
    for untouched in ("crop_faces", "finetune_mae", "visual_features", "audio_features", "extract_frames"):
        assert untouched not in out, untouched
    # an ERI model change retrains ERI's temporal models only, not the frame tasks' BLBs
    cfg.write_text("temporal:\n  eri:\n    d_model: 128\n")
    p = run_snakemake("-n", "submission", "--directory", str(work), "--configfile", demo, str(cfg), "--quiet", "rules")
    counts = _job_counts(p.stdout + p.stderr)
    folds = len(json.loads((work / "results/folds/ERI.json").read_text())["folds"])
    assert counts.get("train_blb") == folds and counts.get("train_dcl") == folds, counts
    assert "visual_features" not in counts and "finetune_mae" not in counts, counts
    # changing the VGGish hop reruns VGGish features only, not HuBERT / wav2vec2
    cfg.write_text("audio:\n  vggish:\n    hop_seconds: 0.2\n")
    p = run_snakemake("-n", "submission", "--directory", str(work), "--configfile", demo, str(cfg), "--quiet", "rules")
    counts = _job_counts(p.stdout + p.stderr)
    assert counts.get("audio_features") == 1 and "finetune_mae" not in counts, counts


def _job_counts(text):
    rows = [ln.split() for ln in text.splitlines()]
    return {r[0]: int(r[1]) for r in rows if len(r) == 2 and r[1].isdigit() and r[0] != "total"}


def test_each_fold_encoder_never_saw_its_validation_labels(demo_run):
    """Per-fold fine-tuning: fold k's encoder trained on fold k's train videos only, and the
    features of fold k's temporal models come from that encoder."""
    work, _ = demo_run
    import h5py

    for task in ("AU", "EXPR", "VA"):
        folds = json.loads((work / f"results/folds/{task}.json").read_text())["folds"]
        assert len(folds) >= 3
        for fold in folds:
            m = json.loads((work / f"results/mae/{task}/{fold}/finetune_metrics.json").read_text())
            assert m["fold"] == fold and m["validation_videos"] == sorted(folds[fold]["validation"])
            assert set(m["train_videos"]).isdisjoint(folds[fold]["validation"]), (task, fold)
            assert set(m["train_videos"]) <= set(folds[fold]["train"]), (task, fold)
            with h5py.File(work / f"results/features/mae/{task}/{fold}.h5", "r") as f:
                assert f.attrs["fold"] == fold and f.attrs["task"] == task


def test_report_builds(demo_run):
    work, _ = demo_run
    run_snakemake("--report", str(work / "report.zip"), "submission", "--directory", str(work))
    assert (work / "report.zip").stat().st_size > 50_000
