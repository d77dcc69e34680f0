"""``affect-predict``: a finished run's models on new videos -> per-frame CSV + timeline PNG.

Fast tests cover the CSV / PNG writers, the config merge and the missing-model errors without
a trained run. The slow ones train a cut-down demo run with snakemake (VA, 2 folds, tiny models;
session fixture, ~3-4 min on 2 cores; set AFFECT_PREDICT_RUN=DIR to keep and reuse it), then
call the console script on new videos and on the run's own test video, whose predictions must
equal the workflow's ensemble (crop_faces -> feature stores -> predict -> ensemble: the same
models through the stages' files instead of this command's in-memory path).
"""
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import CUT_DEMO, REPO, run_snakemake

from affect_pipeline import AU_NAMES, EXPR_NAMES
from affect_pipeline.predict_cli import (VideoResult, csv_header, csv_rows, load_config, plot_timeline,
                                         predict)
from affect_pipeline.runtime import PipelineError

CLI = str(Path(sys.executable).with_name("affect-predict"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

CUT = CUT_DEMO


def read_csv(path):
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def run_cli(*args, timeout=300):
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------- fast: writers, config, errors
def fake_result(n=40, seed=0):
    rng = np.random.default_rng(seed)
    found = np.ones(n, bool)
    found[10:15] = False
    expr = rng.random((n, 8))
    return VideoResult("clip", np.arange(n) / 25.0, found,
                       {"AU": rng.random((n, 12)), "EXPR": expr / expr.sum(1, keepdims=True),
                        "VA": rng.uniform(-1, 1, (n, 2))})


def test_csv_columns_and_rows(tmp_path):
    r = fake_result()
    head = csv_header(["VA", "AU", "EXPR"])
    assert head == ["video", "frame", "timestamp", "face_found", *AU_NAMES, *EXPR_NAMES, "valence", "arousal"]
    assert csv_header(["VA"]) == ["video", "frame", "timestamp", "face_found", "valence", "arousal"]
    (tmp_path / "x.csv").write_text(",".join(head) + "\n" + csv_rows(r, ["AU", "EXPR", "VA"]))
    h, rows = read_csv(tmp_path / "x.csv")
    assert len(rows) == 40 and all(len(x) == len(h) for x in rows)
    assert [x[1] for x in rows[:3]] == ["1", "2", "3"] and rows[11][3] == "0" and rows[20][3] == "1"
    vals = np.array([[float(v) for v in x[4:]] for x in rows])
    np.testing.assert_allclose(vals[:, :12], r.preds["AU"], atol=1e-6)
    np.testing.assert_allclose(vals[:, 12:20], r.preds["EXPR"], atol=1e-6)
    np.testing.assert_allclose(vals[:, 20:], r.preds["VA"], atol=1e-6)
    np.testing.assert_allclose([float(x[2]) for x in rows], r.timestamps, atol=1e-6)


def test_timeline_png_all_tasks(tmp_path):
    out = tmp_path / "t.png"
    plot_timeline([fake_result(), fake_result(60, 1)], ["AU", "EXPR", "VA"], out)
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 20_000
    assert not list(tmp_path.glob(".*tmp*"))      # written atomically, nothing left behind


def test_config_merge_and_demo_overrides(tmp_path):
    cfg = load_config()
    assert cfg["faces"]["size"] == 112                     # demo.overrides applied (data = demo)
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump({"affwild2": {"videos": "/data/aff/videos"}, "faces": {"margin": 0.1}}))
    cfg = load_config([mine])
    assert cfg["faces"]["size"] == 224 and cfg["faces"]["margin"] == 0.1   # paper defaults, merged key
    assert cfg["faces"]["batch_size"] == 32 and cfg["audio"]["hubert"]["weights"] is None
    with pytest.raises(PipelineError, match="nope.yaml: workflow config not found"):
        load_config([tmp_path / "nope.yaml"])


def test_missing_models_dir_is_one_line_without_traceback(tmp_path):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    p = run_cli(video, "--models", tmp_path / "no_results", "--out", tmp_path / "o.csv", timeout=60)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    err = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and str(tmp_path / "no_results") in err[0] and "not found" in err[0], p.stderr
    assert not (tmp_path / "o.csv").exists()


def test_missing_fold_model_names_the_file(tmp_path):
    res = tmp_path / "results"
    (res / "models" / "VA" / "fold1").mkdir(parents=True)
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    with pytest.raises(PipelineError, match=r"fold1/dcl\.pt: model not found"):
        predict([str(video), "--models", str(res), "--out", str(tmp_path / "o.csv")])
    with pytest.raises(PipelineError, match=r"models/AU/fold1/dcl\.pt: model not found"):
        predict([str(video), "--models", str(res), "--out", str(tmp_path / "o.csv"), "--tasks", "AU"])
    with pytest.raises(PipelineError, match=r"missing\.mp4: video not found"):
        predict([str(tmp_path / "missing.mp4"), "--models", str(res), "--out", str(tmp_path / "o.csv")])


# ---------------------------------------------------------------- slow: a trained run
@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    work = Path(os.environ.get("AFFECT_PREDICT_RUN") or tmp_path_factory.mktemp("predict_run"))
    work.mkdir(parents=True, exist_ok=True)
    cut = work / "cut.yaml"
    cut.write_text(yaml.safe_dump(CUT))
    t0 = time.time()
    run_snakemake("results/submission/VA/ensemble.h5", "--cores", "2", "--directory", str(work / "run"),
                  "--configfile", str(REPO / "workflow_config.yaml"), str(cut), timeout=900)
    print(f"\ncut-down workflow (VA, 2 folds) to the ensemble: {time.time() - t0:.0f} s")
    return work


def make_video(path, n, audio=True, seed=7):
    """A new clip of the demo's animated face (not in the run), real H.264/AAC or MPEG-4/AVI."""
    from affect_pipeline.demo import MediaJob, _class_stream, _rng, plan_track, render_media

    cls = _class_stream(_rng(seed, "classes"))
    plan = plan_track(Path(path).stem, n, 25, seed, lambda: next(cls))
    render_media(MediaJob(Path(path), [plan], 25, 160, audio, Path(path).suffix == ".avi", seed))
    return path


def decoded_frames(path):
    import av

    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(c.streams.video[0]))


@pytest.mark.slow
def test_predict_new_videos_and_match_the_workflow(trained_run, tmp_path):
    import h5py

    run = trained_run / "run"
    new = make_video(tmp_path / "fresh_clip.mp4", 75, audio=True)
    silent = make_video(tmp_path / "silent_clip.avi", 40, audio=False, seed=8)
    with h5py.File(run / "results/submission/VA/ensemble.h5") as f:
        (ref_id,) = list(f)
        ref = f[ref_id]["prob"][:]
    test_vid = next((run / "resources/demo/affwild2/videos").glob(f"{ref_id}.*"))
    out, png = tmp_path / "pred.csv", tmp_path / "timeline.png"
    t0 = time.time()
    p = run_cli(new, silent, test_vid, "--models", run / "results", "--config", trained_run / "cut.yaml",
                "--out", out, "--timeline", png, "--threads", "2")
    print(f"affect-predict on 3 videos: {time.time() - t0:.1f} s")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Traceback" not in p.stderr

    head, rows = read_csv(out)
    assert head == ["video", "frame", "timestamp", "face_found", "valence", "arousal"]
    by_video = {}
    for r in rows:
        by_video.setdefault(r[0], []).append(r)
    assert list(by_video) == ["fresh_clip", "silent_clip", ref_id]
    for vid, path in (("fresh_clip", new), ("silent_clip", silent), (ref_id, test_vid)):
        rs = by_video[vid]
        assert len(rs) == decoded_frames(path)
        assert [int(r[1]) for r in rs] == list(range(1, len(rs) + 1))
        ts = np.array([float(r[2]) for r in rs])
        assert ts[0] == pytest.approx(0.0, abs=1e-3) and np.all(np.diff(ts) > 0)
        va = np.array([[float(r[4]), float(r[5])] for r in rs])
        assert np.isfinite(va).all() and np.abs(va).max() <= 1.0
        assert np.mean([r[3] == "1" for r in rs]) > 0.9          # the demo face is found
    assert np.diff(np.array([float(r[2]) for r in by_video["fresh_clip"]])).mean() == pytest.approx(0.04, abs=1e-3)

    # the same models through the workflow's stages and files give the same ensembled outputs
    mine = np.array([[float(r[4]), float(r[5])] for r in by_video[ref_id]])
    assert mine.shape == ref.shape
    np.testing.assert_allclose(mine, ref, atol=2e-3)

    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000
    assert not list(tmp_path.glob(".*.tmp*"))


@pytest.mark.slow
def test_wrong_or_missing_weights_are_refused(trained_run, tmp_path):
    import torch

    from affect_pipeline.audio_features import DEMO_VGGISH, make_vggish

    run = trained_run / "run"
    video = make_video(tmp_path / "clip.mp4", 30)
    base = [str(video), "--models", str(run / "results"), "--out", str(tmp_path / "o.csv"),
            "--config", str(trained_run / "cut.yaml")]

    gone = tmp_path / "gone.yaml"
    gone.write_text(yaml.safe_dump({"demo": {"overrides": {"audio": {"vggish": {"weights": "models/vggish_gone.pth"}}}}}))
    p = run_cli(*base, "--config", gone, timeout=120)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert f"{run / 'models/vggish_gone.pth'}: vggish weights not found" in p.stderr, p.stderr

    torch.manual_seed(123)                      # same architecture and dims, other weights
    other = tmp_path / "vggish_other.pth"
    torch.save(make_vggish(**DEMO_VGGISH).state_dict(), other)
    cfg = tmp_path / "other.yaml"
    cfg.write_text(yaml.safe_dump({"demo": {"overrides": {"audio": {"vggish": {"weights": str(other)}}}}}))
    with pytest.raises(PipelineError, match="the run made its vggish features with weights of digest"):
        predict(base + ["--config", str(cfg)])

    faces = tmp_path / "faces.yaml"              # not the crops the run made
    faces.write_text(yaml.safe_dump({"demo": {"overrides": {"faces": {"size": 224}}}}))
    with pytest.raises(PipelineError, match="the run cropped faces at size 112, margin 0.0, but the config here says size 224"):
        predict(base + ["--config", str(faces)])

    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "models").symlink_to(run / "results" / "models")   # no mae/ folder
    with pytest.raises(PipelineError, match=r"mae/finetune_VA\.pt: fine-tuned MAE not found"):
        predict([str(video), "--models", str(tmp_path / "res"), "--out", str(tmp_path / "o.csv"),
                 "--config", str(trained_run / "cut.yaml"), "--workdir", str(run)])
    assert not (tmp_path / "o.csv").exists()
