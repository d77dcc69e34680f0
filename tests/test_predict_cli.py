"""``affect-predict``: a finished run's models on new videos -> per-frame CSV + timeline PNG.

Fast tests cover the CSV / PNG writers, the run-config and missing-model errors and the choice
of each fold's encoder from the checkpoints' feature_sources record, without a trained run. The slow ones train a cut-down demo run with snakemake (VA, 2 folds, tiny models;
session fixture, ~3-4 min on 2 cores; set AFFECT_PREDICT_RUN=DIR to keep and reuse it), then
call the console script on new videos and on the run's own test video, whose predictions must
equal the workflow's ensemble (crop_faces -> feature stores -> predict -> ensemble: the same
models through the stages' files instead of this command's in-memory path).
"""
import csv
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml


from affect_pipeline import AU_NAMES, EXPR_NAMES
from affect_pipeline.run_models import TaskModels, make_sources
from affect_pipeline.predict_cli import (VideoResult, csv_header, csv_rows,
                                         plot_timeline, predict)
from affect_pipeline.runtime import PipelineError

CLI = str(Path(sys.executable).with_name("affect-predict"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"



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
    args = [str(video), "--models", str(res), "--out", str(tmp_path / "o.csv")]
    with pytest.raises(PipelineError, match=r"config\.yaml: the run's saved config not found"):
        predict(args)
    (res / "config.yaml").write_text(yaml.safe_dump({"tasks": ["VA", "ERI"], "folds": 2}))
    with pytest.raises(PipelineError, match=r"models/VA/fold1/dcl\.pt: model not found"):
        predict(args)
    with pytest.raises(PipelineError, match=r"models/AU/fold1/dcl\.pt: model not found \(task AU was not trained"):
        predict(args + ["--tasks", "AU"])
    with pytest.raises(PipelineError, match=r"missing\.mp4: video not found"):
        predict([str(tmp_path / "missing.mp4"), "--models", str(res), "--out", str(tmp_path / "o.csv")])


def test_missing_config_key_is_named_not_defaulted(tmp_path):
    """Every setting comes from the run's saved config: an absent key is an error naming it."""
    res = tmp_path / "results"
    res.mkdir()
    (res / "config.yaml").write_text(yaml.safe_dump({"tasks": ["VA"]}))     # no "folds"
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    with pytest.raises(PipelineError, match=r"config\.yaml: missing key 'folds'"):
        predict([str(video), "--models", str(res), "--out", str(tmp_path / "o.csv")])


def test_shards_sources_are_what_a_checkpoint_records(tmp_path):
    """load_features keeps, per store, the shard's extractor, fold and weights digest (root attrs):
    temporal_checkpoint.checkpoint_meta writes them as feature_sources."""
    from test_temporal import make_synthetic

    from affect_pipeline.fold_data import load_features

    d = make_synthetic(tmp_path, "VA", n_train=2, n_val=1, n_test=0, frames=(10, 12))
    fs = load_features(d["features"], ["pair_left"])
    assert [(s["name"], s["fold"], s["checkpoint_digest"]) for s in fs.sources] == \
        [("mae_VA", "official", "x"), ("hubert", None, "y")]
    assert [s["shard"] for s in fs.sources] == [str(p) for p in d["features"]]


def test_temporal_checkpoint_records_its_shards_and_older_ones_are_refused(tmp_path):
    from test_temporal import SMALL, make_folds, make_synthetic, train_blb

    from affect_pipeline.run_models import load_task_models
    from affect_pipeline.runtime import load_checkpoint, save_checkpoint
    from affect_pipeline.temporal_checkpoint import load_temporal

    d = make_synthetic(tmp_path / "data", "VA", n_train=4, n_val=2, n_test=0, frames=(20, 24))
    make_folds(d, "VA")
    train_blb(d, "VA", tmp_path / "m", params={**SMALL, "blb": {**SMALL["blb"], "epochs": 1}})
    ck = tmp_path / "m" / "blb.pt"
    m = load_temporal(ck)
    assert [(s["name"], s["fold"], s["checkpoint_digest"], s["shard"]) for s in m.feature_sources] == \
        [("mae_VA", "official", "x", str(d["features"][0])), ("hubert", None, "y", str(d["features"][1]))]
    old = {k: v for k, v in load_checkpoint(ck).items() if k != "feature_sources"}
    save_checkpoint(old, tmp_path / "old" / "dcl.pt")
    with pytest.raises(PipelineError, match=r"old/dcl\.pt: the checkpoint does not record the feature shards"):
        load_task_models(tmp_path, "VA", [tmp_path / "old" / "dcl.pt"], "cpu")


class FakeModel:
    """What make_sources reads of a TemporalPredictor: stores, dims and their recorded sources."""

    def __init__(self, sources, dim):
        self.feature_sources = sources
        self.feature_names = [s["name"] for s in sources]
        self.feature_dims = [dim] * len(sources)


def test_each_fold_model_gets_its_own_encoder(tmp_path):
    """mae_X of fold F -> {models}/mae/X/F/finetune.pt, loaded once per encoder; a digest that
    differs from the one the shard recorded is refused, naming the checkpoint, shard and both."""
    from test_determinism import VIT, finetuned_checkpoint

    from affect_pipeline.runtime import file_digest, load_checkpoint, save_checkpoint

    res = tmp_path / "results"
    enc = {f: finetuned_checkpoint(res / "mae" / "VA" / f / "finetune.pt", "VA", seed=i)
           for i, f in enumerate(["fold1", "fold2"])}
    for f, p in enc.items():        # the helper writes fold "official": make each its own fold's
        save_checkpoint({**load_checkpoint(p), "fold": f}, p)
    dig = {f: file_digest(p) for f, p in enc.items()}

    def src(fold, digest):
        return {"name": "mae_VA", "fold": fold, "checkpoint_digest": digest, "layer": None,
                "shard": f"results/features/mae/VA/{fold}.h5"}

    cfg = {"mae": {"features": {"batch_size": 4}}, "_files": ["config.yaml"]}
    ckpts = [res / "models" / "VA" / f / "dcl.pt" for f in ("fold1", "fold2", "fold2")]
    tm = TaskModels("VA", ["fold1", "fold2", "fold2"], ckpts,
                    [FakeModel([src(f, dig[f])], VIT["embed_dim"]) for f in ("fold1", "fold2", "fold2")],
                    [{}, {}, {}])
    sources = make_sources({"VA": tm}, res, cfg, tmp_path, "cpu")
    assert sorted(sources) == ["mae_VA@fold1", "mae_VA@fold2"]            # one encoder each, loaded once
    assert tm.keys == [["mae_VA@fold1"], ["mae_VA@fold2"], ["mae_VA@fold2"]]
    assert {k: s.path for k, s in sources.items()} == {"mae_VA@fold1": enc["fold1"], "mae_VA@fold2": enc["fold2"]}

    bad = TaskModels("VA", ["fold1"], ckpts[:1], [FakeModel([src("fold1", dig["fold2"])], VIT["embed_dim"])], [{}])
    with pytest.raises(PipelineError) as e:
        make_sources({"VA": bad}, res, cfg, tmp_path, "cpu")
    msg = str(e.value)
    assert str(ckpts[0]) in msg and "features/mae/VA/fold1.h5" in msg and dig["fold2"] in msg and dig["fold1"] in msg

    gone = TaskModels("VA", ["fold3"], ckpts[:1], [FakeModel([src("fold3", "z")], VIT["embed_dim"])], [{}])
    with pytest.raises(PipelineError, match=r"mae/VA/fold3/finetune\.pt: fine-tuned MAE not found"):
        make_sources({"VA": gone}, res, cfg, tmp_path, "cpu")


# ---------------------------------------------------------------- slow: a trained run
# (the session fixture `trained_run` in conftest.py: the cut-down demo to `submission`)


def make_video(path, n, audio=True, seed=7):
    """A new clip of the demo's animated face (not in the run), real H.264/AAC or MPEG-4/AVI."""
    from affect_pipeline.demo.labels import class_stream as _class_stream, keyed_rng as _rng, plan_track
    from affect_pipeline.demo.media import MediaJob, render_media

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
    p = run_cli(new, silent, test_vid, "--models", run / "results",     # the run's config.yaml only
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

    from affect_pipeline.audio_models import make_vggish
    from affect_pipeline.demo.audio_models import DEMO_VGGISH

    run = trained_run / "run"
    video = make_video(tmp_path / "clip.mp4", 30)
    base = [str(video), "--models", str(run / "results"), "--out", str(tmp_path / "o.csv")]

    gone = tmp_path / "gone.yaml"
    gone.write_text(yaml.safe_dump({"audio": {"vggish": {"weights": "models/vggish_gone.pth"}}}))
    p = run_cli(*base, "--config", gone, timeout=120)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert f"{run / 'models/vggish_gone.pth'}: vggish weights not found" in p.stderr, p.stderr

    torch.manual_seed(123)                      # same architecture and dims, other weights
    other = tmp_path / "vggish_other.pth"
    torch.save(make_vggish(**DEMO_VGGISH).state_dict(), other)
    cfg = tmp_path / "other.yaml"
    cfg.write_text(yaml.safe_dump({"audio": {"vggish": {"weights": str(other)}}}))
    with pytest.raises(PipelineError, match="the run made its vggish features with weights of digest"):
        predict(base + ["--config", str(cfg)])

    faces = tmp_path / "faces.yaml"              # not the crops the run made
    faces.write_text(yaml.safe_dump({"faces": {"size": 224}}))
    with pytest.raises(PipelineError, match="the run cropped faces at size 112, margin 0.0, but the config here says size 224"):
        predict(base + ["--config", str(faces)])

    res = tmp_path / "res"
    res.mkdir()
    for name in ("models", "config.yaml"):
        (res / name).symlink_to(run / "results" / name)                    # no mae/ folder
    elsewhere = ["--out", str(tmp_path / "o.csv"), "--workdir", str(run)]
    with pytest.raises(PipelineError, match=r"mae/VA/fold1/finetune\.pt: fine-tuned MAE not found"):
        predict([str(video), "--models", str(res), *elsewhere])

    (res / "mae" / "VA").mkdir(parents=True)                               # fold1's encoder swapped for fold2's
    (res / "mae" / "VA" / "fold1").symlink_to(run / "results/mae/VA/fold2")
    (res / "mae" / "VA" / "fold2").symlink_to(run / "results/mae/VA/fold2")
    with pytest.raises(PipelineError, match=r"models/VA/fold1/dcl\.pt: the run made its mae_VA features "
                                            r"\(shard \S*features/mae/VA/fold1\.h5\) with weights of digest"):
        predict([str(video), "--models", str(res), *elsewhere])
    assert not (tmp_path / "o.csv").exists()
