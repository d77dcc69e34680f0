"""Ensemble, official submission format + validator, summary / ablation, test metrics.

Inputs are built in tmp_path in the formats the stages write (predictions stores
with h5py, metrics JSONs at their rule paths, videos.tsv, index_report.json); settings come from
workflow_config.yaml (conftest.workflow_defaults); expected numbers are computed independently.
"""
import csv
import json
import re

import h5py
import numpy as np
import pytest
from conftest import workflow_defaults

from affect_pipeline.__main__ import main as cli
from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.stores import Labels, write_labels
from affect_pipeline.common.tasks import AU_NAMES, ERI_NAMES, EXPR_NAMES, TASK_OUTPUTS
from affect_pipeline.submit import ensemble as ens
from affect_pipeline.submit import submission as sub
from affect_pipeline.submit import summarize as summ

INDEX_COLUMNS = ("video_id", "path", "media", "side", "fps", "n_frames", "width", "height",
                 "duration", "has_audio", "split_AU", "split_EXPR", "split_VA", "split_ERI")
TEST = {"vid_a": 7, "vid_b": 5, "vid_c_left": 4}       # test videos -> frames (frame tasks)
ERI_TEST = {"00010": 30, "00011": 30}
OFFICIAL = ["vid_c_left", "vid_a", "vid_b"]           # the name list's order (not sorted)


def write_index(path, extra_train=("vid_t",)):
    rows = []
    for vid, n in TEST.items():
        rows.append([vid, f"/d/{vid}.mp4", vid, "", 25, n, 64, 64, n / 25, "true", "test", "test", "test", ""])
    for vid in extra_train:
        rows.append([vid, f"/d/{vid}.mp4", vid, "", 25, 9, 64, 64, 0.36, "true", "train", "train", "train", ""])
    for vid, n in ERI_TEST.items():
        rows.append([vid, f"/h/{vid}.mp4", vid, "", 25, n, 64, 64, 1.2, "true", "", "", "", "test"])
    with open(path, "w") as fh:
        fh.write("\t".join(INDEX_COLUMNS) + "\n")
        for r in rows:
            fh.write("\t".join(map(str, r)) + "\n")
    return path


def write_index_report(path, order=OFFICIAL, tasks=("AU", "EXPR", "VA")):
    path.write_text(json.dumps({"n_videos": 6, "test_order": {t: list(order) for t in tasks}}))
    return path


def settings(**kw):
    return ens.EnsembleSettings.from_params({**workflow_defaults()["ensemble"], **kw})


def run_ensemble(task, preds, metrics, index, out, report=None, **kw):
    return ens.ensemble(task, ens.EnsembleInputs(tuple(preds), tuple(metrics), index, report), settings(**kw), out)


def fake_preds(task, seed, valid_fn=None):
    """Per test video an activated (n, C) prediction and a valid mask."""
    rng = np.random.default_rng(seed)
    c, out = TASK_OUTPUTS[task], {}
    vids = ERI_TEST if task == "ERI" else TEST
    for vid, n in vids.items():
        n = 1 if task == "ERI" else n
        x = rng.random((n, c))
        if task == "EXPR":
            x = x / x.sum(1, keepdims=True)
        elif task == "VA":
            x = 2.4 * x - 1.2           # beyond [-1, 1] on purpose: decoding must clip
        valid = np.ones(n, bool) if valid_fn is None else valid_fn(vid, n)
        out[vid] = (x.astype(np.float32), valid)
    return out


def write_preds(path, task, fold, preds, score=0.5):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs.update(task=task, fold=fold, score=score)
        for vid, (p, v) in preds.items():
            g = f.create_group(f"test/{vid}")
            g["pred"], g["valid"] = p, v
            g = f.create_group(f"validation/{vid}_val")
            g["pred"], g["valid"] = p, v
    return path


def write_metrics(path, task, fold, score, **extra):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"task": task, "fold": fold, "stage": "dcl", "score": score,
                                "metric": "x", "baseline": 0.1, **extra}))
    return path


def setup_folds(tmp_path, task, scores=(0.2, 0.6, 0.2), valid_fn=None, **metric_extra):
    tmp_path.mkdir(parents=True, exist_ok=True)
    index = write_index(tmp_path / "videos.tsv")
    preds, metrics, data = [], [], []
    for k, s in enumerate(scores, start=1):
        d = fake_preds(task, seed=k, valid_fn=valid_fn)
        data.append(d)
        preds.append(write_preds(tmp_path / "predictions" / task / f"fold{k}.h5", task, f"fold{k}", d))
        metrics.append(write_metrics(tmp_path / "models" / task / f"fold{k}" / "dcl_metrics.json", task,
                                     f"fold{k}", s, **metric_extra))
    return index, preds, metrics, data


def read_h5(path, vid, name="prob"):
    with h5py.File(path, "r") as f:
        return f[vid][name][:]


# ----------------------------------------------------------------------------- averaging / weighting
@pytest.mark.parametrize("weighting", ["uniform", "metric"])
def test_ensemble_average_matches_hand_computation(tmp_path, weighting):
    scores = (0.2, 0.6, 0.2)
    index, preds, metrics, data = setup_folds(tmp_path, "VA", scores)
    out = tmp_path / "submission" / "VA" / "predictions.txt"
    # metrics passed in a shuffled order: they must be matched to folds by their "fold" key
    run_ensemble("VA", preds, metrics[::-1], index, out, weighting=weighting)
    w = np.full(3, 1 / 3) if weighting == "uniform" else np.array(scores) / sum(scores)
    got = sub.read_submission("VA", out)
    for vid in TEST:
        hand = sum(wk * d[vid][0].astype(np.float64) for wk, d in zip(w, data))
        np.testing.assert_allclose(read_h5(out.with_name("ensemble.h5"), vid), hand, atol=1e-6)
        np.testing.assert_allclose(got[vid], np.clip(hand, -1, 1), atol=1e-6)
    assert list(got) == list(TEST)


def test_metric_weighting_ignores_negative_scores(tmp_path):
    folds = [ens.FoldPreds(tmp_path, f"fold{k}", 0.0) for k in range(3)]
    w = ens.fold_weights("metric", [{"score": -0.2}, {"score": 0.3}, {"score": 0.1}], folds)
    np.testing.assert_allclose(w, [0, 0.75, 0.25])
    w = ens.fold_weights("metric", [{"score": -0.2}, {"score": float("nan")}, {}], folds)
    np.testing.assert_allclose(w, [1 / 3] * 3)


def test_expr_argmax_and_au_threshold(tmp_path):
    index, preds, metrics, data = setup_folds(tmp_path, "EXPR", (1, 1, 1))
    out = tmp_path / "EXPR.txt"
    run_ensemble("EXPR", preds, metrics, index, out)
    got = sub.read_submission("EXPR", out)
    for vid in TEST:
        mean = np.mean([d[vid][0] for d in data], axis=0)
        np.testing.assert_array_equal(got[vid], mean.argmax(1))

    index, preds, metrics, data = setup_folds(tmp_path / "au", "AU", (1, 1, 1))
    run_ensemble("AU", preds, metrics, index, tmp_path / "AU.txt", au_threshold=0.7)
    got = sub.read_submission("AU", tmp_path / "AU.txt")
    for vid in TEST:
        mean = np.mean([d[vid][0] for d in data], axis=0)
        np.testing.assert_array_equal(got[vid], (mean >= 0.7).astype(int))


def test_tuned_au_thresholds_are_averaged_over_folds(tmp_path):
    th = [np.linspace(0.1, 0.9, 12), np.linspace(0.3, 0.7, 12), np.full(12, 0.5)]
    metrics = [(f"f{k}.json", {ens.TUNED_KEY: t.tolist()}) for k, t in enumerate(th)]
    np.testing.assert_allclose(ens.resolve_au_threshold("tuned", metrics), np.mean(th, axis=0))
    # the old silent fallback to 0.5: now an error naming the files that lack the key
    with pytest.raises(PipelineError, match=r"(?s)a\.json.*b\.json.*au_thresholds_tuned"):
        ens.resolve_au_threshold("tuned", [("a.json", {}), ("b.json", {"au_thresholds": [0.3] * 12})])
    with pytest.raises(PipelineError, match="c.json"):
        ens.resolve_au_threshold("tuned", metrics[:2] + [("c.json", {ens.TUNED_KEY: [0.5] * 11})])
    with pytest.raises(PipelineError, match="au_threshold"):
        ens.resolve_au_threshold("best", metrics)


def test_tuned_thresholds_from_the_dcl_metrics_train_dcl_writes(tmp_path):
    """Issue 15: the key train_dcl writes is the key the ensemble reads (a real tiny DCL run)."""
    from sibling_tests import sibling

    sibling("temporal")
    from test_temporal import SMALL, fold_args, make_folds, make_synthetic, run, train_blb

    d = make_synthetic(tmp_path / "data", "AU", n_train=4, n_val=3, n_test=2, frames=(30, 40))
    make_folds(d, "AU")
    params = {**SMALL, "blb": {**SMALL["blb"], "epochs": 1}, "dcl": {**SMALL["dcl"], "epochs": 1}}
    o = tmp_path / "models" / "AU" / "official"
    train_blb(d, "AU", o, params)
    assert run("mine_hard_clips", fold_args(d, "AU") + ["--blb", o / "blb.pt", "--out", o / "clb.json"], params) == 0
    assert run("train_dcl", fold_args(d, "AU") + ["--blb", o / "blb.pt", "--clb-clips", o / "clb.json", "--out",
               o / "dcl.pt", "--metrics", o / "dcl_metrics.json", "--curve", o / "dcl_curve.csv"], params) == 0
    written = np.asarray(json.loads((o / "dcl_metrics.json").read_text())[ens.TUNED_KEY])
    assert written.shape == (12,) and not np.allclose(written, 0.5)

    videos = sub.test_videos(d["index"], "AU")
    rng = np.random.default_rng(0)
    probs = {v: (rng.random((n, 12)).astype(np.float32), np.ones(n, bool)) for v, n in videos.items()}
    pred = write_preds(tmp_path / "predictions" / "AU" / "official.h5", "AU", "official", probs)
    out = tmp_path / "submission" / "AU" / "predictions.txt"
    assert cli(["ensemble", "--task", "AU", "--preds", str(pred), "--metrics", str(o / "dcl_metrics.json"),
                "--index", str(d["index"]), "--index-report", str(write_index_report(tmp_path / "r.json", [])),
                "--out", str(out), "--params", json.dumps(settings(au_threshold="tuned").__dict__)]) == 0
    with h5py.File(out.with_name("ensemble.h5")) as f:
        np.testing.assert_allclose(f.attrs["au_threshold"], written)
    got = sub.read_submission("AU", out)
    for v, (p, _) in probs.items():
        np.testing.assert_array_equal(got[v], (p >= written[None]).astype(int))


def test_ensemble_settings_are_required_and_checked():
    with pytest.raises(PipelineError, match="'no_face'"):
        ens.EnsembleSettings.from_params({"weighting": "uniform", "au_threshold": 0.5})
    with pytest.raises(PipelineError, match="not uniform | metric"):
        settings(weighting="best")
    with pytest.raises(PipelineError, match="not interpolate | model"):
        settings(no_face="drop")


def test_no_face_policies_are_the_schemas():
    """One list: the schema's ensemble.no_face enum is ensemble.NO_FACE, and every policy runs."""
    import yaml
    from conftest import REPO

    schema = yaml.safe_load((REPO / "workflow_config.schema.yaml").read_text())
    assert schema["properties"]["ensemble"]["properties"]["no_face"]["enum"] == list(ens.NO_FACE)
    assert workflow_defaults()["ensemble"]["no_face"] in ens.NO_FACE
    for policy in ens.NO_FACE:
        assert settings(no_face=policy).no_face == policy


# ----------------------------------------------------------------------------- official order
def test_rows_follow_the_official_name_list(tmp_path):
    index, preds, metrics, _ = setup_folds(tmp_path, "VA", (1, 1))
    report = write_index_report(tmp_path / "index_report.json")
    out = tmp_path / "VA.txt"
    run_ensemble("VA", preds, metrics, index, out, report)
    assert list(sub.read_submission("VA", out)) == OFFICIAL != sorted(OFFICIAL)
    first = [ln.split("/")[0] for ln in out.read_text().splitlines()[1:]]
    assert list(dict.fromkeys(first)) == OFFICIAL
    with h5py.File(out.with_name("ensemble.h5")) as f:
        assert ens.video_order(f) == OFFICIAL            # a dataset of ids: an attribute caps at 64 KiB
        assert list(f["videos"].asstr()[:]) == OFFICIAL and "videos" not in f.attrs
    # the validator holds an ordered file to that order; without the report only to the ids
    sub.validate_submission("VA", out, sub.test_videos(index, "VA", report), ordered=True)
    sorted_file = tmp_path / "sorted.txt"
    sorted_file.write_text(sub.format_submission("VA", {v: np.zeros((n, 2)) for v, n in TEST.items()}))
    sub.validate_submission("VA", sorted_file, sub.test_videos(index, "VA"))
    with pytest.raises(PipelineError, match=r"videos out of the official order.*#1 is vid_a, expected vid_c_left"):
        sub.validate_submission("VA", sorted_file, sub.test_videos(index, "VA", report), ordered=True)
    rc = cli(["validate_submission", "--task", "VA", "--file", str(sorted_file), "--index", str(index),
              "--index-report", str(report)])
    assert rc == 1


def test_test_order_that_disagrees_with_the_index_names_the_report(tmp_path):
    index = write_index(tmp_path / "videos.tsv")
    bad = write_index_report(tmp_path / "index_report.json", ["vid_a", "vid_b", "vid_zzz"])
    with pytest.raises(PipelineError, match=r"index_report\.json: test_order\[AU\].*vid_c_left.*vid_zzz"):
        sub.test_videos(index, "AU", bad)
    # ERI has no recorded order: videos.tsv order
    assert list(sub.test_videos(index, "ERI", bad)) == list(ERI_TEST)


# ----------------------------------------------------------------------------- no-face frames
def test_interpolation_hand_case():
    prob = np.array([[9.0], [0.2], [9.0], [9.0], [0.8], [9.0]])
    valid = np.array([False, True, False, False, True, False])
    np.testing.assert_allclose(ens.interpolate_no_face(prob, valid)[:, 0], [0.2, 0.2, 0.4, 0.6, 0.8, 0.8])
    np.testing.assert_allclose(ens.interpolate_no_face(prob, np.zeros(6, bool), np.array([0.3]))[:, 0], 0.3)


def test_ensemble_fills_no_face_frames(tmp_path, caplog):
    def valid_fn(vid, n):
        if vid == "vid_c_left":
            return np.zeros(n, bool)                          # no face at all -> prior
        v = np.ones(n, bool)
        v[[0, 2, 3]] = False                                  # an edge frame and a gap
        return v

    index, preds, metrics, data = setup_folds(tmp_path, "VA", (1, 1), valid_fn=valid_fn)
    out = tmp_path / "VA.txt"
    run_ensemble("VA", preds, metrics, index, out, no_face="interpolate")
    mean = {vid: np.mean([d[vid][0] for d in data], axis=0).astype(np.float64) for vid in TEST}
    p = read_h5(out.with_name("ensemble.h5"), "vid_a")
    np.testing.assert_allclose(p[0], mean["vid_a"][1], atol=1e-6)                     # edge: nearest
    np.testing.assert_allclose(p[2], mean["vid_a"][1] + (mean["vid_a"][4] - mean["vid_a"][1]) / 3, atol=1e-6)
    np.testing.assert_allclose(p[3], mean["vid_a"][1] + 2 * (mean["vid_a"][4] - mean["vid_a"][1]) / 3, atol=1e-6)
    np.testing.assert_allclose(p[5:], mean["vid_a"][5:], atol=1e-6)                   # face frames untouched
    face = np.concatenate([np.delete(mean[v], [0, 2, 3], axis=0) for v in ("vid_a", "vid_b")])
    np.testing.assert_allclose(read_h5(out.with_name("ensemble.h5"), "vid_c_left"),
                               np.tile(face.mean(0), (4, 1)), atol=1e-6)
    assert "vid_c_left has no face frame" in caplog.text
    # the submission still has every frame
    assert {v: len(x) for v, x in sub.read_submission("VA", out).items()} == TEST
    # no_face: audio keeps the models' own outputs
    run_ensemble("VA", preds, metrics, index, tmp_path / "m" / "VA.txt", no_face="audio")
    np.testing.assert_allclose(read_h5(tmp_path / "m" / "ensemble.h5", "vid_a"), mean["vid_a"], atol=1e-6)


# ----------------------------------------------------------------------------- format round trip
@pytest.mark.parametrize("task", ["AU", "EXPR", "VA", "ERI"])
def test_format_round_trip_and_validates(tmp_path, task):
    rng = np.random.default_rng(0)
    vids = ERI_TEST if task == "ERI" else TEST
    vals = {}
    for vid, n in vids.items():
        vals[vid] = {"AU": lambda: rng.integers(0, 2, (n, 12)), "EXPR": lambda: rng.integers(0, 8, (n, 1)),
                     "VA": lambda: rng.uniform(-1, 1, (n, 2)), "ERI": lambda: rng.uniform(0, 1, (1, 7))}[task]()
    path = tmp_path / "p.txt"
    path.write_text(sub.format_submission(task, vals))
    lines = path.read_text().splitlines()
    assert lines[0] == {"AU": "image_location," + ",".join(AU_NAMES),
                        "EXPR": "image_location," + ",".join(EXPR_NAMES),
                        "VA": "image_location,valence,arousal",
                        "ERI": "File_ID," + ",".join(ERI_NAMES)}[task]
    if task != "ERI":
        assert lines[1].startswith("vid_a/00001.jpg,") and lines[7].startswith("vid_a/00007.jpg,")
        assert lines[8].startswith("vid_b/00001.jpg,")
    assert len(lines) == 1 + (len(vids) if task == "ERI" else sum(vids.values()))
    back = sub.read_submission(task, path)
    for vid, v in vals.items():
        want = v[:, 0] if task == "EXPR" else v[0] if task == "ERI" else v
        np.testing.assert_allclose(back[vid], want, atol=1e-6)
    index = write_index(tmp_path / "videos.tsv")
    sub.validate_submission(task, path, sub.test_videos(index, task))


# ----------------------------------------------------------------------------- validator
@pytest.fixture
def good_va(tmp_path):
    index = write_index(tmp_path / "videos.tsv")
    vals = {vid: np.full((n, 2), 0.25) for vid, n in TEST.items()}
    path = tmp_path / "va.txt"
    path.write_text(sub.format_submission("VA", vals))
    return path, sub.test_videos(index, "VA")


def _mutate(path, fn):
    lines = path.read_text().splitlines()
    path.write_text("\n".join(fn(lines)) + "\n")


@pytest.mark.parametrize("mutation, expect", [
    (lambda ls: ls[:3] + ls[4:], "frames not consecutive"),                       # a missing frame
    (lambda ls: ls[:-1], "missing frames"),                                       # truncated
    (lambda ls: ["image_location,arousal,valence"] + ls[1:], "wrong header"),
    (lambda ls: ls[:2] + ["vid_a/00002.jpg,0.25,1.5"] + ls[3:], "VA outside [-1, 1]"),
    (lambda ls: ls[:2] + ["vid_a/00002.jpg,0.25,nan"] + ls[3:], "non-finite"),
    (lambda ls: ls + ["vid_zzz/00001.jpg,0.1,0.1"], "unknown video"),
    (lambda ls: [ls[0]] + [l for l in ls[1:] if not l.startswith("vid_b/")], "missing video"),
    (lambda ls: ls + ["vid_a/00008.jpg,0.1,0.1"], "more rows than frames"),
    (lambda ls: ls[:2] + ["vid_a/2.jpg,0.1,0.1"] + ls[3:], "bad image_location"),
])
def test_validator_catches(good_va, mutation, expect):
    path, videos = good_va
    sub.validate_submission("VA", path, videos)          # valid before the mutation
    _mutate(path, mutation)
    with pytest.raises(PipelineError, match=expect.replace("[", r"\[").replace("]", r"\]")) as e:
        sub.validate_submission("VA", path, videos)
    assert str(path) in str(e.value)


def test_validator_values_au_expr_eri(tmp_path):
    index = write_index(tmp_path / "videos.tsv")
    for task, bad, expect in [("AU", "2", "AU values must be 0 or 1"), ("EXPR", "8", "class index must be 0..7"),
                              ("EXPR", "1.0", "class index")]:
        n = TEST["vid_a"]
        vals = {vid: np.zeros((m, 12 if task == "AU" else 1), int) for vid, m in TEST.items()}
        path = tmp_path / f"{task}.txt"
        path.write_text(sub.format_submission(task, vals))
        _mutate(path, lambda ls: ls[:n] + [ls[n].rsplit(",", 1)[0] + "," + bad] + ls[n + 1:])
        with pytest.raises(PipelineError, match=expect):
            sub.validate_submission(task, path, sub.test_videos(index, task))
    path = tmp_path / "eri.txt"
    path.write_text(sub.format_submission("ERI", {v: np.full((1, 7), 0.5) for v in ERI_TEST}))
    _mutate(path, lambda ls: ls + [ls[1]])
    with pytest.raises(PipelineError, match="duplicate File_ID"):
        sub.validate_submission("ERI", path, sub.test_videos(index, "ERI"))


def test_validator_reports_counts_and_first_few(good_va):
    path, videos = good_va
    _mutate(path, lambda ls: [ls[0]] + [l.replace(",0.250000,", ",3.0,") for l in ls[1:]])
    with pytest.raises(PipelineError) as e:
        sub.validate_submission("VA", path, videos)
    msg = str(e.value)
    assert f"bad values ({sum(TEST.values())}x)" in msg and msg.count("VA outside") == sub.MAX_SHOWN


def test_validate_cli_exit_codes(good_va, tmp_path, capsys):
    path, _ = good_va
    index = str(tmp_path / "videos.tsv")
    assert cli(["validate_submission", "--task", "VA", "--file", str(path), "--index", index]) == 0
    _mutate(path, lambda ls: ls[:-2])
    assert cli(["validate_submission", "--task", "VA", "--file", str(path), "--index", index]) == 1
    err = capsys.readouterr().err
    assert "ERROR [validate_submission]" in err and "missing frames" in err and "Traceback" not in err


def test_ensemble_cli_refuses_wrong_shapes_and_leaves_no_file(tmp_path, capsys):
    index, preds, metrics, _ = setup_folds(tmp_path, "AU", (1, 1))
    with h5py.File(preds[1], "a") as f:                    # fold2 lost two frames of vid_b
        del f["test/vid_b/pred"]
        f["test/vid_b/pred"] = np.zeros((3, 12), np.float32)
    out = tmp_path / "submission" / "AU" / "predictions.txt"
    rc = cli(["ensemble", "--task", "AU", "--preds", *map(str, preds), "--metrics", *map(str, metrics),
              "--index", str(index), "--index-report", str(write_index_report(tmp_path / "r.json")),
              "--out", str(out), "--params", json.dumps(settings(au_threshold="tuned").__dict__)])
    assert rc == 1 and not out.exists()
    assert "fold2.h5: test/vid_b/pred has shape (3, 12), expected (5, 12)" in capsys.readouterr().err
    assert not out.parent.exists() or not any(out.parent.iterdir())   # no temp leftovers


def test_ensemble_cli_names_a_missing_settings_key_and_metrics_without_the_fold(tmp_path, capsys):
    index, preds, metrics, _ = setup_folds(tmp_path, "VA", (1, 1))
    base = ["ensemble", "--task", "VA", "--preds", *map(str, preds), "--index", str(index),
            "--index-report", str(write_index_report(tmp_path / "r.json")), "--out", str(tmp_path / "o.txt")]
    assert cli(base + ["--metrics", *map(str, metrics), "--params", '{"weighting": "uniform"}']) == 1
    assert "missing key 'au_threshold'" in capsys.readouterr().err
    params = json.dumps(settings().__dict__)
    assert cli(base + ["--metrics", str(metrics[0]), "--params", params]) == 1
    assert "hold no fold ['fold2']" in capsys.readouterr().err


def test_ensemble_validates_before_renaming(tmp_path, monkeypatch):
    index, preds, metrics, _ = setup_folds(tmp_path, "VA", (1, 1))
    out = tmp_path / "submission" / "VA" / "predictions.txt"
    monkeypatch.setattr(ens, "decode", lambda task, p, th=None: p * 0 + 1.5)   # a broken decoder
    with pytest.raises(PipelineError, match=r"(?s)before renaming into place.*VA outside"):
        run_ensemble("VA", preds, metrics, index, out)
    assert list(out.parent.iterdir()) == []               # neither the file nor ensemble.h5 nor temps


def test_ensemble_cli_eri(tmp_path):
    index, preds, metrics, data = setup_folds(tmp_path, "ERI", (0.3, 0.4))
    out = tmp_path / "submission" / "ERI" / "predictions.txt"
    assert cli(["ensemble", "--task", "ERI", "--preds", *map(str, preds), "--metrics", *map(str, metrics),
                "--index", str(index), "--index-report", str(write_index_report(tmp_path / "r.json")),
                "--out", str(out), "--params", json.dumps(settings(weighting="metric").__dict__)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert [r["File_ID"] for r in rows] == list(ERI_TEST)
    hand = (0.3 * data[0]["00011"][0] + 0.4 * data[1]["00011"][0]) / 0.7
    np.testing.assert_allclose([float(rows[1][c]) for c in ERI_NAMES], hand[0], atol=1e-6)


# ----------------------------------------------------------------------------- summary / ablation
def _blb(task, fold, score, fw, **kw):
    return {"task": task, "fold": fold, "stage": "blb", "score": score, "framewise_score": fw, **kw}


def write_fold_metrics(res, tasks, folds, seed=3):
    """Per task x fold the three stages' metrics at their rule paths -> (table, finetune, stage files)."""
    rng = np.random.default_rng(seed)
    table, ft_files, st_files = {}, [], []
    for task in tasks:
        s = rng.uniform(0.2, 0.7, (3, len(folds))).round(4)            # finetune, blb, dcl x folds
        table[task] = s
        for j, fold in enumerate(folds):
            d = res / "models" / task / fold
            d.mkdir(parents=True)
            extra = {"ccc_valence": s[2, j] - 0.05, "ccc_arousal": s[2, j] + 0.05} if task == "VA" else {}
            ft = res / "mae" / task / fold / "finetune_metrics.json"
            ft.parent.mkdir(parents=True)
            # face frames only: the ablation's MAE row is BLB's framewise_score (BLB / DCL's frames)
            ft.write_text(json.dumps({"task": task, "stage": "finetune_mae", "score": 0.999}))
            (d / "blb_metrics.json").write_text(json.dumps(_blb(task, fold, s[1, j], s[0, j])))
            inf = {"mean": s[2, j], "blb_weighted": s[2, j] + 0.01 * j}
            (d / "dcl_metrics.json").write_text(json.dumps({"score": s[2, j], "fold": fold, "inference_scores": inf,
                                                            **extra}))
            ft_files.append(ft)
            st_files += [d / "blb_metrics.json", d / "dcl_metrics.json"]
    return table, ft_files, st_files


@pytest.mark.parametrize("k", [5, 3])
def test_summary_and_ablation_equal_the_inputs(tmp_path, k):
    res = tmp_path / "results"
    folds = ["official", *(f"fold{i}" for i in range(1, k + 1))]
    table, ft, st = write_fold_metrics(res, ("AU", "VA"), folds)
    out, abl = res / "metrics" / "summary.json", res / "metrics" / "ablation.tsv"
    assert cli(["summarize", "--tasks", "AU", "VA", "ERI", "--folds", *folds,
                "--finetune-metrics", *map(str, ft), "--stage-metrics", *map(str, st),
                "--out", str(out), "--ablation", str(abl)]) == 0
    summary = json.loads(out.read_text())
    rows = list(csv.reader(open(abl), delimiter="\t"))
    assert rows[0] == ["task", "method", "metric", *folds, f"mean(fold1-{k})"]
    assert summary["ensemble_folds"] == folds[1:] and summary["fold_span"] == f"fold1-{k}"
    assert summary["encoder"] == "per_fold" and summary["leaky_folds"] == [] and not summary["note"]
    for task in ("AU", "VA"):
        for i, (stage, name) in enumerate([("finetune", "MAE finetune"), ("blb", "BLB"), ("dcl", "DCL")]):
            row = next(r for r in rows if r[0] == task and r[1] == name and not r[2].startswith("CCC "))
            np.testing.assert_allclose([float(x) for x in row[3:4 + k]], table[task][i], atol=1e-4)
            np.testing.assert_allclose(float(row[4 + k]), table[task][i, 1:].mean(), atol=1e-4)
            assert summary["tasks"][task]["mean"][stage] == pytest.approx(table[task][i, 1:].mean())
            assert summary["tasks"][task]["folds"]["fold3"][stage] == pytest.approx(table[task][i, 3])
    val = next(r for r in rows if r[0] == "VA" and r[1] == "DCL" and r[2] == "CCC valence")
    np.testing.assert_allclose([float(x) for x in val[3:4 + k]], table["VA"][2] - 0.05, atol=1e-4)
    np.testing.assert_allclose(float(val[4 + k]), (table["VA"][2, 1:] - 0.05).mean(), atol=1e-4)
    inf = summary["tasks"]["VA"]["dcl_inference"]                   # over every fold, official too
    assert inf["mean"]["mean"] == pytest.approx(table["VA"][2].mean())
    assert inf["mean"]["blb_weighted"] == pytest.approx(table["VA"][2].mean() + 0.01 * np.arange(k + 1).mean())
    assert not any(r[0] == "ERI" for r in rows[1:])                 # nothing given -> no rows
    assert "fold5" not in rows[0] if k == 3 else "fold5" in rows[0]


def test_shared_encoder_marks_the_fold_rows_leaky(tmp_path):
    res = tmp_path / "results"
    folds = ["official", "fold1", "fold2", "fold3"]
    table, ft, st = write_fold_metrics(res, ("EXPR",), folds)
    official_ft = [p for p in ft if p.parent.name == "official"]        # one encoder per task
    s = summ.summarize(summ.SummaryInputs(("EXPR",), tuple(folds), tuple(official_ft), tuple(st),
                                          shared_encoder=True), res / "s.json", res / "a.tsv")
    assert s["encoder"] == "shared" and s["leaky_folds"] == ["fold1", "fold2", "fold3"]
    assert "fold1-3 rows" in s["note"] and "leaky" not in s["note"].split("official row")[1]
    assert json.loads((res / "s.json").read_text())["note"] == s["note"]
    rows = [r.split("\t") for r in (res / "a.tsv").read_text().splitlines()]
    ft_row = next(r for r in rows if r[1] == "MAE finetune")
    # the shared head scored on each fold's validation frames (BLB's framewise_score): as leaky
    # as the BLB / DCL fold rows, which the note says
    np.testing.assert_allclose([float(x) for x in ft_row[3:7]], table["EXPR"][0], atol=1e-4)


def test_summarize_refuses_files_it_cannot_place(tmp_path):
    res = tmp_path / "results"
    folds = ("official", "fold1", "fold2")
    _, ft, st = write_fold_metrics(res, ("AU",), folds)
    inp = summ.SummaryInputs(("AU",), folds[:2], tuple(ft), tuple(st))
    with pytest.raises(PipelineError, match=r"fold2/.*metrics of fold fold2, not among --folds"):
        summ.summarize(inp, res / "s.json", res / "a.tsv")
    with pytest.raises(PipelineError, match=r"task AU, not among --tasks \['VA'\]"):
        summ.summarize(summ.SummaryInputs(("VA",), folds, tuple(ft), ()), res / "s.json", res / "a.tsv")
    st[0].write_text(json.dumps({"task": "AU", "fold": "fold2", "stage": "blb", "score": 0.3}))
    with pytest.raises(PipelineError, match=r"official/blb_metrics\.json: the file says fold 'fold2' but its path"):
        summ.summarize(summ.SummaryInputs(("AU",), folds, (), tuple(st)), res / "s.json", res / "a.tsv")
    loose = tmp_path / "loose.json"
    loose.write_text(json.dumps({"score": 0.3, "stage": "dcl"}))
    with pytest.raises(PipelineError, match="loose.json: cannot tell its task"):
        summ.summarize(summ.SummaryInputs(("AU",), folds, (), (loose,)), res / "s.json", res / "a.tsv")
    assert not (res / "s.json").exists()


def _ccc(x, y):
    return 2 * np.cov(x, y, bias=True)[0, 1] / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)


def _write_test_truth(res, truth, rng):
    """Test truth + submissions (frame tasks and ERI); returns the valid (y, p) per task."""
    y_all, p_all = {}, {}
    for task in ("AU", "EXPR", "VA"):
        (truth / task).mkdir(parents=True)
        ys, ps = {}, {}
        for vid, n in TEST.items():
            if task == "AU":
                y = rng.integers(0, 2, (n, 12)); p = np.where(rng.random((n, 12)) < 0.8, y, 1 - y)
            elif task == "EXPR":
                y = rng.integers(0, 8, (n, 1)); p = np.where(rng.random((n, 1)) < 0.7, y, rng.integers(0, 8, (n, 1)))
            else:
                y = rng.uniform(-1, 1, (n, 2)).round(3); p = np.clip(y + rng.normal(0, 0.3, (n, 2)), -1, 1)
            if vid == "vid_b":
                y = y.astype(float); y[1] = {"AU": -1, "EXPR": -1, "VA": -5}[task]   # an invalid row
            header = {"AU": ",".join(AU_NAMES), "EXPR": ",".join(EXPR_NAMES), "VA": "valence,arousal"}[task]
            fmt = "%d" if task != "VA" else "%.3f"
            np.savetxt(truth / task / f"{vid}.txt", y, fmt=fmt, delimiter=",", header=header, comments="")
            ys[vid], ps[vid] = y, p
        (res / "submission" / task).mkdir(parents=True)
        (res / "submission" / task / "predictions.txt").write_text(sub.format_submission(task, ps))
        y_all[task] = np.concatenate([np.delete(ys[v], 1, 0) if v == "vid_b" else ys[v] for v in TEST])
        p_all[task] = np.concatenate([np.delete(ps[v], 1, 0) if v == "vid_b" else ps[v] for v in TEST])
    y_eri = rng.uniform(0, 1, (2, 7)); p_eri = np.clip(y_eri + rng.normal(0, 0.2, (2, 7)), 0, 1)
    with open(truth / "ERI.csv", "w") as fh:
        fh.write("File_ID," + ",".join(ERI_NAMES) + "\n")
        for vid, y in zip(ERI_TEST, y_eri):
            fh.write(vid + "," + ",".join(f"{v:.6f}" for v in y) + "\n")
    (res / "submission" / "ERI").mkdir(parents=True)
    (res / "submission" / "ERI" / "predictions.txt").write_text(
        sub.format_submission("ERI", {v: p[None] for v, p in zip(ERI_TEST, p_eri)}))
    y_all["ERI"], p_all["ERI"] = y_eri, p_eri
    return y_all, p_all


def test_test_metrics_against_numpy_reference(tmp_path):
    from sklearn.metrics import f1_score

    res, truth = tmp_path / "results", tmp_path / "test_labels"
    y_all, p_all = _write_test_truth(res, truth, np.random.default_rng(7))
    # training labels for the constant baseline: EXPR majority class 4, VA mean (0.2, -0.1)
    write_labels(res / "index" / "labels" / "EXPR.h5", "EXPR",
                 {"t": Labels(np.array([[4], [4], [1]], np.float32), np.ones(3, bool), "train")})
    write_labels(res / "index" / "labels" / "VA.h5", "VA",
                 {"t": Labels(np.array([[0.1, -0.2], [0.3, 0.0]], np.float32), np.ones(2, bool), "train")})
    tasks = ("AU", "EXPR", "VA", "ERI")
    inp = summ.SummaryInputs(tasks, ("official", "fold1"),
                             submissions=tuple(res / "submission" / t / "predictions.txt" for t in tasks),
                             labels=(res / "index" / "labels" / "EXPR.h5", res / "index" / "labels" / "VA.h5"),
                             index=write_index(tmp_path / "videos.tsv"), test_labels=truth)
    s = summ.summarize(inp, res / "s.json", res / "a.tsv")["test"]
    y, p = y_all["AU"], p_all["AU"]
    assert s["AU"]["score"] == pytest.approx(f1_score(y, p, average="macro", zero_division=0))
    assert s["AU"]["n"] == sum(TEST.values()) - 1
    assert s["EXPR"]["score"] == pytest.approx(f1_score(y_all["EXPR"][:, 0], p_all["EXPR"][:, 0], average="macro",
                                                        labels=range(8), zero_division=0), abs=1e-6)
    assert s["EXPR"]["baseline"] == pytest.approx(f1_score(y_all["EXPR"][:, 0], np.full(len(y_all["EXPR"]), 4),
                                                           average="macro", labels=range(8), zero_division=0))
    yv, pv = y_all["VA"], np.round(p_all["VA"], 6)
    assert s["VA"]["score"] == pytest.approx(0.5 * (_ccc(pv[:, 0], yv[:, 0]) + _ccc(pv[:, 1], yv[:, 1])), abs=1e-6)
    base = np.tile([0.2, -0.1], (len(yv), 1))
    assert s["VA"]["baseline"] == pytest.approx(0.5 * (_ccc(base[:, 0], yv[:, 0]) + _ccc(base[:, 1], yv[:, 1])), abs=1e-6)
    pe, y_eri = np.round(p_all["ERI"], 6), y_all["ERI"]
    assert s["ERI"]["score"] == pytest.approx(np.mean([np.corrcoef(pe[:, j], y_eri[:, j])[0, 1] for j in range(7)]),
                                              abs=1e-5)
    # chance: analytic expectation vs a Monte-Carlo estimate of random guessing
    ye = y_all["EXPR"][:, 0].astype(int)
    mc = np.mean([f1_score(ye, np.random.default_rng(k).integers(0, 8, len(ye)), average="macro",
                           labels=range(8), zero_division=0) for k in range(300)])
    assert s["EXPR"]["chance"] == pytest.approx(mc, abs=0.04)
    assert s["VA"]["chance"] == 0.0 and s["AU"]["score"] > s["AU"]["chance"]


@pytest.mark.parametrize("task, vid", [("VA", 'a"b'), ("VA", "a,b"), ("AU", "a\nb"), ("ERI", "x,y"), ("ERI", " 00013")])
def test_writer_refuses_ids_the_official_rows_cannot_carry(task, vid):
    """The scan refuses such ids already; the writer refuses them anyway (rows are never written raw)."""
    vals = np.zeros((1, 7) if task == "ERI" else (3, TASK_OUTPUTS[task]))
    with pytest.raises(PipelineError, match=re.escape(f"video id {vid!r}: ") + ".*cannot carry it"):
        sub.format_submission(task, {"ok": vals, vid: vals})
