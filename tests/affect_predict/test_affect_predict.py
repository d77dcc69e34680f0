"""``affect-predict``: a finished run's models on new videos -> per-frame CSV + timeline PNG.

Fast tests cover the CSV / PNG writers, the run-config and missing-model errors and the choice
of each fold's encoder from the checkpoints' feature_sources record, without a trained run. The
slow ones train a cut-down demo run with snakemake (VA, 2 folds, tiny models; a session fixture
that takes minutes; set AFFECT_PREDICT_RUN=DIR to keep and reuse it), then
call the console script on new videos and on the run's own test video, whose predictions must
equal the workflow's ensemble (crop_faces -> feature stores -> predict -> ensemble: the same
models through the stages' files instead of this command's in-memory path).
"""
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from sibling_tests import sibling

from affect_pipeline.affect_predict.cli import predict
from affect_pipeline.affect_predict.formats import NATIVE_FACE
from affect_pipeline.affect_predict.outputs import VideoResult, csv_header, csv_rows, plot_timeline
from affect_pipeline.affect_predict.run_models import TaskModels, make_sources
from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.tasks import AU_NAMES, EXPR_NAMES

CLI = str(Path(sys.executable).with_name("affect-predict"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
sibling("temporal")                     # test_temporal's synthetic runs (imported where used)


def read_csv(path):
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def run_cli(*args, timeout=300):
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def tiny_video(path):
    """A readable 2-frame video: the input check (before models load) passes, so the error under
    test is the one after it."""
    from affect_pipeline.data.video_writer import write_video

    return write_video(path, [np.zeros((16, 16, 3), np.uint8)] * 2)


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
    lead = ["video", "frame", "face_id", "timestamp", "face_found", *NATIVE_FACE]    # formats.py
    assert head == [*lead, *AU_NAMES, *EXPR_NAMES, "valence", "arousal"]
    assert csv_header(["VA"]) == [*lead, "valence", "arousal"]
    (tmp_path / "x.csv").write_text(",".join(head) + "\n" + csv_rows(r, ["AU", "EXPR", "VA"]))
    h, rows = read_csv(tmp_path / "x.csv")
    assert len(rows) == 40 and all(len(x) == len(h) for x in rows)
    assert [x[1] for x in rows[:3]] == ["1", "2", "3"] and rows[11][4] == "0" and rows[20][4] == "1"
    vals = np.array([[float(v) for v in x[len(lead):]] for x in rows])
    np.testing.assert_allclose(vals[:, :12], r.preds["AU"], atol=1e-6)
    np.testing.assert_allclose(vals[:, 12:20], r.preds["EXPR"], atol=1e-6)
    np.testing.assert_allclose(vals[:, 20:], r.preds["VA"], atol=1e-6)
    np.testing.assert_allclose([float(x[3]) for x in rows], r.timestamps, atol=1e-6)


def test_timeline_png_all_tasks(tmp_path):
    out = tmp_path / "t.png"
    plot_timeline([fake_result(), fake_result(60, 1)], ["AU", "EXPR", "VA"], out)
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 20_000
    assert not list(tmp_path.glob(".*tmp*"))      # written atomically, nothing left behind


def test_missing_models_dir_is_one_line_without_traceback(tmp_path):
    video = tiny_video(tmp_path / "v.mp4")
    p = run_cli(video, "--models", tmp_path / "no_results", "--out", tmp_path / "o.csv", timeout=60)
    assert p.returncode == 2, p.stderr                 # a usage error (fix the call), like argparse's
    assert "Traceback" not in p.stderr
    err = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and str(tmp_path / "no_results") in err[0] and "not found" in err[0], p.stderr
    assert not (tmp_path / "o.csv").exists()


def test_missing_fold_model_names_the_file(tmp_path):
    res = tmp_path / "results"
    (res / "models" / "VA" / "fold1").mkdir(parents=True)
    video = tiny_video(tmp_path / "v.mp4")
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
    video = tiny_video(tmp_path / "v.mp4")
    with pytest.raises(PipelineError, match=r"config\.yaml: missing key 'folds'"):
        predict([str(video), "--models", str(res), "--out", str(tmp_path / "o.csv")])


def test_shards_sources_are_what_a_checkpoint_records(tmp_path):
    """load_features keeps, per store, the shard's extractor, fold and weights digest (root attrs):
    temporal_checkpoint.checkpoint_meta writes them as feature_sources."""
    from test_temporal import make_synthetic

    from affect_pipeline.temporal.fold_data import load_features

    d = make_synthetic(tmp_path, "VA", n_train=2, n_val=1, n_test=0, frames=(10, 12))
    fs = load_features(d["features"], ["pair_left"])
    assert [(s["name"], s["fold"], s["checkpoint_digest"]) for s in fs.sources] == \
        [("mae_VA", "official", "x"), ("hubert", None, "y")]
    assert [s["shard"] for s in fs.sources] == [str(p) for p in d["features"]]


def test_temporal_checkpoint_records_its_shards_and_older_ones_are_refused(tmp_path):
    from test_temporal import SMALL, make_folds, make_synthetic, train_blb

    from affect_pipeline.affect_predict.run_models import load_task_models
    from affect_pipeline.common.runtime import load_checkpoint, save_checkpoint
    from affect_pipeline.temporal.checkpoint import load_temporal

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
    from stage_inputs import VIT, finetuned_checkpoint

    from affect_pipeline.common.runtime import file_digest, load_checkpoint, save_checkpoint

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


# ---------------------------------------------------------------- fast: batches (no trained run)
# The batch logic (inputs, output layout, resume, CSV writing) is given a predictor: here one that
# makes a result from the file's size, counting its calls; the slow test below runs the models.
from affect_pipeline.affect_predict.batches import expand_inputs, plan_batch, run_batch, video_ids
from affect_pipeline.affect_predict.cli import parse_args
from affect_pipeline.affect_predict.outputs import NATIVE, CsvStyle, read_results


def video_tree(root):
    """root/x.mp4, root/a,b.mp4, root/sub/deep/y.AVI, root/sub/x.mkv (+ files that are not videos)."""
    for rel in ("x.mp4", "a,b.mp4", "sub/deep/y.AVI", "sub/x.mkv", ".hidden.mp4", "notes.txt", ".cache/z.mp4"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"\0" * (100 + len(rel)))
    return root


class CountingPredictor:
    def __init__(self, fail_on=None):
        self.calls, self.fail_on, self.built = [], fail_on, 0

    def __call__(self):                      # run_batch builds it only when a video is pending
        self.built += 1
        return self.predict

    def predict(self, path, vid):
        if vid == self.fail_on:
            raise PipelineError(f"{path}: decode failed")
        self.calls.append(vid)
        r = fake_result(20 + Path(path).stat().st_size % 7, seed=len(self.calls))
        r.video_id, r.score = vid, np.where(r.found, 0.97, 0.0)
        return r


def test_ids_with_commas_and_quotes_stay_one_field(tmp_path):
    """The csv module quotes an id with a comma or quote: `a,b.mp4` stays one column."""
    r = fake_result()
    r.video_id = 'a,b "c"'
    head = csv_header(["AU", "EXPR", "VA"])
    rows = list(csv.reader(csv_rows(r, ["AU", "EXPR", "VA"]).splitlines()))
    assert all(len(x) == len(head) for x in rows) and {x[0] for x in rows} == {'a,b "c"'}


def test_folders_and_globs_expand_recursively(tmp_path):
    root = video_tree(tmp_path / "talks")
    vids = expand_inputs([str(root)])
    assert [v.rel.as_posix() for v in vids] == ["a,b.mp4", "sub/deep/y.AVI", "sub/x.mkv", "x.mp4"]
    assert video_ids(vids) == ["a,b", "y", "sub/x", "x"]                 # stems, unless two share one
    g = expand_inputs([str(root / "**" / "*.mkv"), str(root / "x.mp4"), str(root)])   # each video once
    assert [v.rel.as_posix() for v in g] == ["sub/x.mkv", "x.mp4", "a,b.mp4", "sub/deep/y.AVI"]
    with pytest.raises(PipelineError, match=r"gone\.mp4: video not found"):
        expand_inputs([str(root / "gone.mp4")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match=r"empty: no videos \(\.mp4 / \.avi"):
        expand_inputs([str(tmp_path / "empty")])
    with pytest.raises(PipelineError, match=r"\*\.webm: no videos .* match this pattern"):
        expand_inputs([str(root / "*.webm")])


def test_cli_arguments(tmp_path):
    a = parse_args(["v.mp4", "d/", "--models", "r", "--out-dir", "o", "--device", "cuda:1", "--batch-size", "64"])
    assert (a.videos, a.out_dir, a.device, a.batch_size, a.combined, a.overwrite) == \
        (["v.mp4", "d/"], Path("o"), "cuda:1", 64, False, False)
    for bad in (["--out", "o.csv", "--out-dir", "o"], ["--out", "o.csv", "--combined"],
                ["--out-dir", "o", "--timeline", "t.png"], ["--out-dir", "o", "--batch-size", "0"], []):
        with pytest.raises(SystemExit):
            parse_args(["v.mp4", "--models", "r", *bad])


def test_per_video_csvs_resume_and_overwrite(tmp_path, capsys):
    vids = expand_inputs([str(video_tree(tmp_path / "talks"))])
    out = tmp_path / "preds"
    tasks = ["AU", "EXPR", "VA"]
    pred = CountingPredictor()
    assert run_batch(plan_batch(vids, tasks, NATIVE, out), pred) == {"predicted": 4, "skipped": 0}
    assert "videos: 100%" in capsys.readouterr().err                     # the progress bar, on stderr
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                  if p.is_file()) == ["a,b.csv", "a,b.png", "sub/deep/y.csv", "sub/deep/y.png",
                                      "sub/x.csv", "sub/x.png", "x.csv", "x.png"]
    head, rows = read_csv(out / "a,b.csv")
    assert head == csv_header(tasks) and {r[0] for r in rows} == {"a,b"} and all(len(r) == len(head) for r in rows)
    assert (out / "a,b.png").read_bytes()[:8] == PNG_MAGIC

    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*.csv")}
    again = CountingPredictor()
    assert run_batch(plan_batch(vids, tasks, NATIVE, out), again) == {"predicted": 0, "skipped": 4}
    assert again.built == 0 and {p: p.stat().st_mtime_ns for p in out.rglob("*.csv")} == stamp

    (out / "x.csv").unlink()
    (out / ".affect-tmp.x.csv.999@node1").write_text("video,frame\nx,1\n")   # a killed run's leftover: not done
    (out / "sub/x.png").unlink()                                         # a missing PNG is drawn from its CSV
    redo = CountingPredictor()
    assert run_batch(plan_batch(vids, tasks, NATIVE, out), redo) == {"predicted": 1, "skipped": 3}
    assert redo.calls == ["x"] and (out / "sub/x.png").read_bytes()[:8] == PNG_MAGIC

    over = CountingPredictor()
    assert run_batch(plan_batch(vids, tasks, NATIVE, out, timeline=False, overwrite=True), over)["predicted"] == 4
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.csv")} != stamp
    with pytest.raises(PipelineError, match=r"a,b\.csv: written with other columns .* --overwrite"):
        run_batch(plan_batch(vids, ["VA"], NATIVE, out, timeline=False), CountingPredictor())


def test_a_failed_video_leaves_no_csv_and_the_rerun_resumes(tmp_path):
    vids = expand_inputs([str(video_tree(tmp_path / "talks"))])
    out = tmp_path / "preds"
    with pytest.raises(PipelineError, match="decode failed"):
        run_batch(plan_batch(vids, ["VA"], NATIVE, out, timeline=False), CountingPredictor(fail_on="sub/x"))
    assert sorted(p.name for p in out.rglob("*")) == ["a,b.csv", "deep", "sub", "y.csv"]
    pred = CountingPredictor()
    run_batch(plan_batch(vids, ["VA"], NATIVE, out, timeline=False), pred)
    assert pred.calls == ["sub/x", "x"]


def test_same_name_below_two_folders_is_refused_or_combined(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "clip.mp4").write_bytes(b"\0")
    vids = expand_inputs([str(tmp_path / "a" / "clip.mp4"), str(tmp_path / "b" / "clip.mp4")])
    with pytest.raises(PipelineError, match=r"a/clip\.mp4 and \S*b/clip\.mp4: both would write \S*clip\.csv"):
        plan_batch(vids, ["VA"], NATIVE, tmp_path / "o")
    assert len(set(video_ids(vids))) == 2
    out = tmp_path / "all.csv"
    run_batch(plan_batch(vids, ["VA"], NATIVE, combined=out), CountingPredictor())
    assert len({r[0] for r in read_csv(out)[1]}) == 2


def test_combined_csv_resumes_appends_and_keeps_input_order(tmp_path):
    root = video_tree(tmp_path / "talks")
    vids = expand_inputs([str(root)])
    out, png = tmp_path / "o" / "predictions.csv", tmp_path / "o" / "timeline.png"
    with pytest.raises(PipelineError):                                   # killed after two videos
        run_batch(plan_batch(vids, ["VA"], NATIVE, combined=out, timeline=png), CountingPredictor(fail_on="sub/x"))
    assert not out.exists() and len(list((tmp_path / "o" / ".affect-tmp.predictions.csv.parts").glob("*.csv"))) == 2
    pred = CountingPredictor()
    assert run_batch(plan_batch(vids, ["VA"], NATIVE, combined=out, timeline=png), pred)["skipped"] == 2
    assert pred.calls == ["sub/x", "x"] and not (tmp_path / "o" / ".affect-tmp.predictions.csv.parts").exists()
    head, rows = read_csv(out)
    assert head == csv_header(["VA"]) and list(dict.fromkeys(r[0] for r in rows)) == ["a,b", "y", "sub/x", "x"]
    assert png.read_bytes()[:8] == PNG_MAGIC
    n = len(rows)

    (root / "new.webm").write_bytes(b"\0" * 3)
    more = expand_inputs([str(root)])
    pred = CountingPredictor()
    assert run_batch(plan_batch(more, ["VA"], NATIVE, combined=out, timeline=png), pred) == \
        {"predicted": 1, "skipped": 4}
    _, rows2 = read_csv(out)
    assert rows2[:n] == rows and {r[0] for r in rows2[n:]} == {"new"}
    assert [r.video_id for r in read_results(out, ["VA"])] == ["a,b", "y", "sub/x", "x", "new"]


def test_openface_columns(tmp_path):
    """--format openface: OpenFace's lead columns, AUxx_c = the probability thresholded as the
    submission decodes it, ", " separators (tests/affect_predict/test_output_formats.py: the rest)."""
    from affect_pipeline.affect_predict.outputs import write_csv
    from affect_pipeline.affect_predict.run_models import au_threshold

    th = tuple(float(t) for t in np.linspace(0.3, 0.7, 12))
    style = CsvStyle("openface", au_threshold=th)
    head = csv_header(["AU", "EXPR", "VA"], style)
    assert head[:5] == ["frame", "face_id", "timestamp", "confidence", "success"]
    assert head[5:17] == ["AU01_c", "AU02_c", "AU04_c", "AU06_c", "AU07_c", "AU10_c", "AU12_c", "AU15_c",
                          "AU23_c", "AU24_c", "AU25_c", "AU26_c"]
    assert head[17:] == ["neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise", "other",
                         "valence", "arousal"]
    r = fake_result()
    r.score = np.where(r.found, 0.91, 0.5)
    out = tmp_path / "of.csv"
    write_csv(out, [r], ["AU", "EXPR", "VA"], style)
    with open(out, newline="") as fh:
        h, *rows = list(csv.reader(fh, skipinitialspace=True))
    a = np.array(rows, dtype=object)
    assert h == head and out.read_text().startswith("frame, face_id, timestamp, confidence, success, AU01_c, ")
    np.testing.assert_array_equal(a[:, 5:17].astype(float), (r.preds["AU"] >= np.array(th)).astype(int))
    assert set(a[:, 1]) == {"0"} and list(a[:, 4]) == [str(int(f)) for f in r.found]
    assert list(a[:, 3].astype(float)) == [0.91 if f else 0.0 for f in r.found]
    np.testing.assert_allclose(a[:, 17:25].astype(float), r.preds["EXPR"], atol=1e-4)
    back = read_results(out, ["AU", "EXPR", "VA"], style)[0]
    np.testing.assert_allclose(back.preds["VA"], r.preds["VA"], atol=1e-4)
    with pytest.raises(ValueError, match="threshold"):
        csv_rows(r, ["AU"], CsvStyle("openface"))

    (tmp_path / "models" / "AU" / "fold1").mkdir(parents=True)          # the run's threshold, as submitted
    (tmp_path / "models" / "AU" / "fold1" / "dcl_metrics.json").write_text(json.dumps({"au_thresholds_tuned": th}))
    ck = [tmp_path / "models" / "AU" / "fold1" / "dcl.pt"]
    assert au_threshold({"ensemble": {"au_threshold": 0.4}}, ck) == (0.4,) * 12
    np.testing.assert_allclose(au_threshold({"ensemble": {"au_threshold": "tuned"}}, ck), th)


# ---------------------------------------------------------------- slow: a trained run
# (the session fixture `trained_run` in conftest.py: the cut-down demo to `submission`)


def make_video(path, n, audio=True, seed=7):
    """A new clip of the demo's animated face (not in the run), real H.264/AAC or MPEG-4/AVI."""
    from affect_pipeline.demo.labels import (
        class_stream as _class_stream,
    )
    from affect_pipeline.demo.labels import (
        keyed_rng as _rng,
    )
    from affect_pipeline.demo.labels import (
        plan_track,
    )
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

    from affect_pipeline.submit.ensemble import video_order

    run = trained_run / "run"
    new = make_video(tmp_path / "fresh_clip.mp4", 75, audio=True)
    silent = make_video(tmp_path / "silent_clip.avi", 40, audio=False, seed=8)
    with h5py.File(run / "results/submission/VA/ensemble.h5") as f:
        (ref_id,) = [v for v in video_order(f) if not v.startswith("wild_")]   # the demo's own test video
        ref = f[ref_id]["prob"][:]
    test_vid = next((run / "resources/demo/affwild2/videos").glob(f"{ref_id}.*"))
    out, png = tmp_path / "pred.csv", tmp_path / "timeline.png"
    t0 = time.time()
    p = run_cli(new, silent, test_vid, "--models", run / "results",     # the run's config.yaml only
                "--out", out, "--timeline", png, "--threads", "2", "--no-face", "interpolate")   # as submitted
    print(f"affect-predict on 3 videos: {time.time() - t0:.1f} s")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Traceback" not in p.stderr

    head, rows = read_csv(out)
    assert head == csv_header(["VA"]) and head[-2:] == ["valence", "arousal"]
    rows = [[*r[:2], r[3], r[4], *r[-2:]] for r in rows]               # video, frame, timestamp, face_found, VA
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

    from affect_pipeline.audio.models import make_vggish
    from affect_pipeline.demo.make_demo_audio_models import DEMO_VGGISH

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


@pytest.mark.slow
def test_predict_a_folder_per_video_resume_combined_and_openface(trained_run, tmp_path):
    """A folder with a nested subfolder and a file named `a,b.mp4` -> one CSV + PNG per video at
    its relative path, a progress bar per video; a rerun skips, --overwrite redoes; --combined and
    --format openface give the same numbers under their names."""
    run = trained_run / "run"
    talks = tmp_path / "talks"
    (talks / "day1").mkdir(parents=True)
    make_video(talks / "a,b.mp4", 30, seed=11)
    make_video(talks / "day1" / "late.avi", 25, audio=False, seed=12)
    base = ["--models", run / "results", "--threads", "2", "--device", "cpu", "--batch-size", "8"]
    out = tmp_path / "preds"
    t0 = time.time()
    p = run_cli(talks, *base, "--out-dir", out)
    print(f"affect-predict on a folder of 2 videos: {time.time() - t0:.1f} s")
    assert p.returncode == 0, p.stderr[-3000:]
    for vid in ("a,b", "late"):
        assert f"{vid}: 100%" in p.stderr, p.stderr[-3000:]             # its bar, every stage done
    head, rows = read_csv(out / "a,b.csv")
    assert head == csv_header(["VA"])
    assert len(rows) == decoded_frames(talks / "a,b.mp4") and {r[0] for r in rows} == {"a,b"}
    assert all(len(r) == len(head) for r in rows)
    assert len(read_csv(out / "day1" / "late.csv")[1]) == decoded_frames(talks / "day1" / "late.avi")
    assert (out / "day1" / "late.png").read_bytes()[:8] == PNG_MAGIC

    stamp = (out / "a,b.csv").stat().st_mtime_ns
    t0 = time.time()
    p = run_cli(talks, *base, "--out-dir", out)
    assert p.returncode == 0 and "2 of 2 video(s) skipped" in p.stderr, p.stderr[-3000:]
    assert (out / "a,b.csv").stat().st_mtime_ns == stamp
    print(f"rerun, nothing to do: {time.time() - t0:.1f} s")
    p = run_cli(talks / "day1", *base, "--out-dir", out / "day1", "--overwrite", "--no-timeline")
    assert p.returncode == 0 and "1 video(s) predicted, 0 skipped" in p.stderr, p.stderr[-3000:]

    p = run_cli(str(talks / "**" / "*.*"), *base, "--out-dir", tmp_path / "all", "--combined")
    assert p.returncode == 0, p.stderr[-3000:]
    _, rows = read_csv(tmp_path / "all" / "predictions.csv")
    assert list(dict.fromkeys(r[0] for r in rows)) == ["a,b", "late"]
    native = [[float(r[-2]), float(r[-1])] for r in read_csv(out / "a,b.csv")[1] if r[4] == "1"]
    np.testing.assert_allclose([[float(r[-2]), float(r[-1])] for r in rows if r[0] == "a,b" and r[4] == "1"],
                               native, atol=1e-5)
    p = run_cli(talks, *base, "--out-dir", tmp_path / "of", "--format", "openface")
    assert p.returncode == 0, p.stderr[-3000:]
    with open(tmp_path / "of" / "a,b.csv", newline="") as fh:
        head, *rows = list(csv.reader(fh, skipinitialspace=True))
    assert head == ["frame", "face_id", "timestamp", "confidence", "success", "valence", "arousal"]
    np.testing.assert_allclose([[float(r[5]), float(r[6])] for r in rows if r[4] == "1"], native, atol=1e-4)
