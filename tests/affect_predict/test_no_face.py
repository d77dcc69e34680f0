"""Frames without a face: empty (NaN) by default in ``affect-predict``, or filled as ``--no-face
interpolate | prior | audio`` says; the same policies (less ``empty``: the submission needs a value
on every row) in the workflow's ``ensemble.no_face``.

Fast: each policy on hand-made outputs, the training prior from a label store and folds file as
the workflow writes them, the submission's ensemble with ``prior``. Slow (the session's trained
run): a clip whose face leaves half-way and a clip without any face, under every policy.
"""
import json

import numpy as np
import pytest
from sibling_tests import sibling

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.stores import Labels, write_labels
from affect_pipeline.submit.no_face import (
    NO_FACE,
    PREDICT_NO_FACE,
    fill_no_face_rows,
    training_prior,
)

sibling("submit")


# ---------------------------------------------------------------- fast
def test_each_policy_fills_only_the_no_face_rows():
    """empty: NaN; interpolate: linear between face rows (edges copy); prior: the prior; audio:
    the models' own values. Face rows are never touched."""
    prob = np.array([[0.0, 1.0], [0.2, 0.8], [0.4, 0.6], [0.6, 0.4], [0.8, 0.2]])
    valid = np.array([False, True, False, False, True])
    prior = np.array([0.5, -0.5])
    empty = fill_no_face_rows(prob, valid, "empty")
    assert np.isnan(empty[~valid]).all() and (empty[valid] == prob[valid]).all()
    np.testing.assert_allclose(fill_no_face_rows(prob, valid, "interpolate")[:, 0], [0.2, 0.2, 0.4, 0.6, 0.8])
    np.testing.assert_allclose(fill_no_face_rows(prob, valid, "prior", prior)[~valid], np.tile(prior, (3, 1)))
    assert fill_no_face_rows(prob, valid, "audio") is prob
    none = np.zeros(5, bool)
    assert np.isnan(fill_no_face_rows(prob, none, "interpolate")).all()        # nothing to interpolate from
    np.testing.assert_allclose(fill_no_face_rows(prob, none, "interpolate", prior), np.tile(prior, (5, 1)))
    assert PREDICT_NO_FACE == ("empty",) + NO_FACE and "empty" not in NO_FACE


def write_training_data(tmp_path, task, labels):
    """index/labels/{task}.h5 and folds/{task}.json: fold1 trains on a, b; fold2 on b, c."""
    lab = tmp_path / "index" / "labels" / f"{task}.h5"
    lab.parent.mkdir(parents=True)
    write_labels(lab, task, {v: Labels(np.asarray(y, np.float32), np.asarray(m, bool), "train")
                             for v, (y, m) in labels.items()})
    folds = tmp_path / "folds" / f"{task}.json"
    folds.parent.mkdir()
    folds.write_text(json.dumps({"task": task, "folds": {"fold1": {"train": ["a", "b"], "validation": ["c"]},
                                                         "fold2": {"train": ["b", "c"], "validation": ["a"]}}}))
    return lab, folds


def test_training_prior_is_the_folds_label_means(tmp_path):
    """VA: per fold the mean of its training videos' valid rows, then the mean over folds; EXPR:
    class frequencies; a missing file names itself."""
    va = {"a": ([[0.5, 0.1], [0.3, 0.3], [9, 9]], [1, 1, 0]), "b": ([[-0.2, 0.4]], [1]), "c": ([[0.0, -0.6]], [1])}
    lab, folds = write_training_data(tmp_path / "va", "VA", va)
    fold1 = np.mean([[0.5, 0.1], [0.3, 0.3], [-0.2, 0.4]], axis=0)
    fold2 = np.mean([[-0.2, 0.4], [0.0, -0.6]], axis=0)
    np.testing.assert_allclose(training_prior("VA", lab, folds, ["fold1", "fold2"]), (fold1 + fold2) / 2, atol=1e-6)
    expr = {"a": ([[4], [4], [0]], [1, 1, 1]), "b": ([[7]], [1]), "c": ([[4]], [0])}
    lab, folds = write_training_data(tmp_path / "expr", "EXPR", expr)
    want = np.zeros(8)
    want[[0, 4, 7]] = [1 / 4, 2 / 4, 1 / 4]
    np.testing.assert_allclose(training_prior("EXPR", lab, folds, ["fold1"]), want)
    with pytest.raises(PipelineError, match=r"gone\.h5: not found; the no-face policy 'prior' needs"):
        training_prior("VA", tmp_path / "gone.h5", folds, ["fold1"])


def test_predict_prior_from_the_run_or_a_recorded_file(tmp_path):
    """affect-predict's prior: the run's labels and folds, or (a bundle without label stores)
    the recorded no_face_prior.json, which must hold the task."""
    from affect_pipeline.affect_predict.predict_tracks import PRIORS, run_prior

    write_training_data(tmp_path, "VA", {"a": ([[0.4, 0.2]], [1]), "b": ([[0.0, -0.2]], [1]), "c": ([[1, 1]], [1])})
    np.testing.assert_allclose(run_prior(tmp_path, "VA", ["fold1"]), [0.2, 0.0], atol=1e-6)
    (tmp_path / PRIORS).write_text(json.dumps({"VA": [0.1, -0.3]}))
    np.testing.assert_allclose(run_prior(tmp_path, "VA", ["fold1"]), [0.1, -0.3])
    with pytest.raises(PipelineError, match=r"no_face_prior\.json: no training prior for AU"):
        run_prior(tmp_path, "AU", ["fold1"])


def test_submission_ensemble_with_the_prior_keeps_every_row_valid(tmp_path):
    """ensemble.no_face: prior puts the training prior on every no-face frame and the submission
    still validates (a value on every row)."""
    from test_submission import TEST, read_h5, settings, setup_folds

    from affect_pipeline.submit import ensemble as ens
    from affect_pipeline.submit import submission as sub

    def valid_fn(vid, n):
        return np.arange(n) % 3 != 0

    index, preds, metrics, data = setup_folds(tmp_path, "VA", (1, 1), valid_fn=valid_fn)
    va = {"a": ([[0.4, 0.2]], [1]), "b": ([[0.0, -0.2]], [1]), "c": ([[-0.4, 0.6]], [1])}
    lab, folds = write_training_data(tmp_path, "VA", va)
    out = tmp_path / "VA.txt"
    ens.ensemble("VA", ens.EnsembleInputs(tuple(preds), tuple(metrics), index, None, lab, folds),
                 settings(no_face="prior"), out)
    prior = training_prior("VA", lab, folds, ["fold1", "fold2"])
    for vid, n in TEST.items():
        p = read_h5(out.with_name("ensemble.h5"), vid)
        np.testing.assert_allclose(p[::3], np.tile(prior, (len(p[::3]), 1)), atol=1e-6)
        mean = np.mean([d[vid][0] for d in data], axis=0)
        np.testing.assert_allclose(p[valid_fn(vid, n)], mean[valid_fn(vid, n)], atol=1e-6)
    assert {v: len(x) for v, x in sub.read_submission("VA", out).items()} == TEST
    with pytest.raises(PipelineError, match="is not interpolate | prior | audio"):
        settings(no_face="empty")


# ---------------------------------------------------------------- slow: the trained run
def face_then_blank(path, n=50, face=26, seed=31):
    """A demo clip whose face is there for the first ``face`` frames, then a grey frame (the
    voice goes on); ``face=0``: no face at all."""
    import av

    from affect_pipeline.demo.labels import keyed_rng, plan_track
    from affect_pipeline.demo.media import MediaJob, render_media, synth_voice, write_video

    plan = plan_track(path.stem, n, 25, seed, lambda: 4)
    src = path.with_name(f"src_{path.name}")
    render_media(MediaJob(src, [plan], 25, 160, False, False, seed))
    with av.open(str(src)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]
    frames = [f if i < face else np.full_like(f, 128) for i, f in enumerate(frames)]
    write_video(path, iter(frames), n, 25, 160, 160, synth_voice(plan, keyed_rng(seed, "voice")), False)
    return path


def native_va(csv_path):
    import pandas as pd

    d = pd.read_csv(csv_path)
    return d.face_found.to_numpy() == 1, d[["valence", "arousal"]].to_numpy()


@pytest.mark.slow
def test_predict_no_face_policies(trained_run, tmp_path):
    """One clip whose face leaves after 26 of 50 frames, one without any face: by default their
    no-face rows are empty (face_found 0) and the timeline is drawn; interpolate copies the last
    face frame forward (nothing to copy in the faceless clip: empty); prior writes the training
    prior there; audio the models' finite audio-only outputs. Face rows are the same every time."""
    from test_affect_predict import PNG_MAGIC, run_cli

    run = trained_run / "run"
    half = face_then_blank(tmp_path / "half.mp4")
    blank = face_then_blank(tmp_path / "blank.mp4", face=0)
    got = {}
    for policy in PREDICT_NO_FACE:
        out = tmp_path / policy
        p = run_cli(half, blank, "--models", run / "results", "--out-dir", out, "--threads", "2",
                    "--no-face", policy, *(["--no-timeline"] if policy != "empty" else []))
        assert p.returncode == 0, p.stderr[-3000:]
        assert f"no-face rows: {policy}" in p.stderr
        got[policy] = {v: native_va(out / f"{v}.csv") for v in ("half", "blank")}
    found, va = got["empty"]["half"]
    assert found[:20].all() and not found[30:].any()
    assert np.isfinite(va[found]).all() and np.isnan(va[~found]).all()
    assert not got["empty"]["blank"][0].any() and np.isnan(got["empty"]["blank"][1]).all()
    assert (tmp_path / "empty" / "half.png").read_bytes()[:8] == PNG_MAGIC
    for policy in NO_FACE:
        np.testing.assert_array_equal(got[policy]["half"][0], found)
        np.testing.assert_allclose(got[policy]["half"][1][found], va[found], atol=1e-6)
    last = np.flatnonzero(found)[-1]
    np.testing.assert_allclose(got["interpolate"]["half"][1][last:], np.tile(va[last], (50 - last, 1)), atol=1e-6)
    assert np.isnan(got["interpolate"]["blank"][1]).all()
    prior = training_prior("VA", run / "results/index/labels/VA.h5", run / "results/folds/VA.json",
                           ["fold1", "fold2", "fold3"])
    np.testing.assert_allclose(got["prior"]["half"][1][~found], np.tile(prior, ((~found).sum(), 1)), atol=1e-5)
    np.testing.assert_allclose(got["prior"]["blank"][1], np.tile(prior, (50, 1)), atol=1e-5)
    audio = got["audio"]["blank"][1]
    assert np.isfinite(audio).all() and np.isfinite(got["audio"]["half"][1]).all()
    assert np.abs(audio - prior).max() > 1e-3                  # the models' own, not a constant


def test_audio_policy_needs_models_that_hear(tmp_path):
    """--no-face audio with models trained on visual features only is refused, naming the task."""
    from affect_pipeline.affect_predict.predict_tracks import no_face_settings
    from affect_pipeline.affect_predict.run_models import TaskModels

    tm = TaskModels("VA", ["fold1"], [tmp_path / "dcl.pt"], [None], [{}], [["mae_VA@fold1"]])
    with pytest.raises(PipelineError, match="--no-face audio: the run's VA models use no audio features"):
        no_face_settings("audio", tmp_path, {"VA": tm}, {"mae_VA@fold1": object()})
    assert no_face_settings("empty", tmp_path, {"VA": tm}, {}).policy == "empty"
