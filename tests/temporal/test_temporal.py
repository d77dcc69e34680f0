"""Temporal stages end to end on tiny synthetic stores: clips, BLB, DCL, ERI, predict.

The synthetic videos have a smooth latent state z_t; a "visual" store and a loud "audio" store
(×50 scale, offset) are noisy linear views of it, and every task's labels are a fixed function
of z — so a temporal model can learn them and the constant baseline cannot.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import workflow_defaults

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.feature_shards import FeatureShard, FeatureShardWriter
from affect_pipeline.common.stores import Labels, write_labels
from affect_pipeline.common.tasks import TASK_OUTPUTS
from affect_pipeline.data.index_dataset import write_index_tsv
from affect_pipeline.temporal.clips import Clip, eval_clips, gather, stitch, train_clips
from affect_pipeline.temporal.fold_data import load_features
from affect_pipeline.temporal.settings import temporal_hp

torch.set_num_threads(1)
LAT = 4


def small_temporal() -> dict:
    """workflow_config.yaml's temporal section, shrunk to tiny models and short clips."""
    t = copy.deepcopy(workflow_defaults()["temporal"])
    t.update(features=["mae", "hubert"], clip_len=16, stride=8)
    t["blb"].update(d_model=32, nhead=4, layers=2, dropout=0.1, lr=3e-3, batch_size=8, epochs=6,
                    warmup_epochs=1, ema_decay=0.9)
    t["mining"].update(hard_fraction=0.3)
    t["dcl"].update(tau1=2.0, tau2=2.0, clb_init="blb", inference="mean", epochs=2)
    t["eri"].update(d_model=32, nhead=4, layers=1, dropout=0.1, lr=3e-3, batch_size=4, epochs=12,
                    pooling="attention")
    return t


SMALL = small_temporal()


def write_shard(path: Path, extractor: str, videos: dict, **attrs) -> Path:
    """A feature shard: videos = {video: (features, valid[, extra])}."""
    w = FeatureShardWriter(path, extractor=extractor, fingerprint=f"test-{extractor}", **attrs)
    for v, (feats, valid, *extra) in videos.items():
        w.write(v, feats, valid, fps=25.0, extra=extra[0] if extra else None)
    w.close(list(videos))
    return path


def _labels_of(task, z, rng_w):
    if task == "AU":
        return (z @ rng_w["AU"] > 0).astype(np.float32)
    if task == "EXPR":
        return (z @ rng_w["EXPR"]).argmax(1)[:, None].astype(np.float32)
    if task == "VA":
        return np.tanh(0.7 * z @ rng_w["VA"]).astype(np.float32)
    return (1 / (1 + np.exp(-(z.mean(0, keepdims=True) @ rng_w["ERI"])))).astype(np.float32)


def make_synthetic(root: Path, task: str, n_train=8, n_val=4, n_test=2, frames=(40, 70), seed=0):
    """Feature shards (mae/{task}/official.h5 = mae_{task}, hubert.h5), a label store, videos.tsv."""
    rng = np.random.default_rng(seed)
    W = {"AU": rng.normal(size=(LAT, 12)), "EXPR": rng.normal(size=(LAT, 8)), "VA": rng.normal(size=(LAT, 2)),
         "ERI": 2 * rng.normal(size=(LAT, 7))}
    A, B = rng.normal(size=(LAT, 8)), rng.normal(size=(LAT, 6))
    vids = [("pair_left", "train"), ("pair_right", "train")]
    vids += [(f"tr{i}", "train") for i in range(n_train - 2)] + [(f"va{i}", "validation") for i in range(n_val)]
    vids += [(f"te{i}", "test") for i in range(n_test)]
    mae, aud = root / "features" / "mae" / task / "official.h5", root / "features" / "hubert.h5"
    vis_rows, aud_rows, labels, rows = {}, {}, {}, []
    for vid, split in vids:
        n = int(rng.integers(*frames))
        z = np.zeros((n, LAT))
        z[0] = rng.normal(size=LAT)
        for t in range(1, n):
            z[t] = 0.9 * z[t - 1] + 0.45 * rng.normal(size=LAT)
        z += rng.normal(size=LAT) * (1.0 if task == "ERI" else 0.3)
        vis = z @ A + 0.1 * rng.normal(size=(n, 8))
        valid = rng.random(n) > 0.05
        vis[~valid] = 0
        y = _labels_of(task, z, W)
        logits = np.zeros((n, TASK_OUTPUTS[task]), np.float32)   # an uninformed "frame-wise head"
        vis_rows[vid] = (vis, valid, {"logits": logits + rng.normal(size=logits.shape).astype(np.float32)})
        aud_rows[vid] = (50 * (z @ B) + 10 + rng.normal(size=(n, 6)), np.ones(n, bool))
        if split != "test":
            mask = np.ones(1 if task == "ERI" else n, bool)
            if task != "ERI":
                mask[rng.random(n) < 0.05] = False
            labels[vid] = Labels(y, mask, split)
        rows.append({"video_id": vid, "path": f"/v/{vid}.mp4", "media": vid.split("_")[0], "side": "",
                     "fps": 25.0, "n_frames": n, "width": 64, "height": 64, "duration": n / 25,
                     "has_audio": True, **{f"split_{t}": (split if t == task else "") for t in ("AU", "EXPR", "VA", "ERI")}})
    write_shard(mae, f"mae_{task}", vis_rows, checkpoint_digest="x", fold="official")
    write_shard(aud, "hubert", aud_rows, checkpoint_digest="y")
    write_labels(root / "labels" / f"{task}.h5", task, labels)
    write_index_tsv(root / "videos.tsv", rows)
    return {"labels": root / "labels" / f"{task}.h5", "index": root / "videos.tsv",
            "features": [str(mae), str(aud)], "folds": root / "folds" / f"{task}.json", "n": {v: r["n_frames"] for v, r in zip([v for v, _ in vids], rows)}}


def run(stage, args, params=None, seed=0):
    from affect_pipeline.__main__ import main
    argv = [stage, *map(str, args), "--threads", "1", "--device", "cpu", "--seed", str(seed)]
    if params is not None:
        argv += ["--params", json.dumps(params)]
    return main(argv)


def make_folds(d, task):
    assert run("make_folds", ["--task", task, "--labels", d["labels"], "--index", d["index"], "--out", d["folds"]],
               {"k": 3, "seed": 0}) == 0


def fold_args(d, task, fold="official"):
    return ["--task", task, "--fold", fold, "--folds", d["folds"], "--labels", d["labels"], "--features", *d["features"]]


def train_blb(d, task, out: Path, params=SMALL, seed=0):
    rc = run("train_blb", fold_args(d, task) + ["--out", out / "blb.pt", "--metrics", out / "blb_metrics.json",
                                                "--curve", out / "blb_curve.csv"], params, seed)
    assert rc == 0
    return json.loads((out / "blb_metrics.json").read_text())


def run_chain(d, o: Path, params, seed: int) -> dict:
    """train_blb -> mine_hard_clips -> train_dcl -> predict of task AU, fold "official", into ``o``
    (blb.pt, clb.json, dcl.pt, dcl_metrics.json, pred.h5...); returns the BLB's metrics."""
    blb = train_blb(d, "AU", o, params, seed=seed)
    assert run("mine_hard_clips", fold_args(d, "AU") + ["--blb", o / "blb.pt", "--out", o / "clb.json"], params, seed) == 0
    assert run("train_dcl", fold_args(d, "AU") + ["--blb", o / "blb.pt", "--clb-clips", o / "clb.json", "--out",
               o / "dcl.pt", "--metrics", o / "dcl_metrics.json", "--curve", o / "dcl_curve.csv"], params, seed) == 0
    assert run("predict", fold_args(d, "AU") + ["--model", o / "dcl.pt", "--index", d["index"],
                                                "--out", o / "pred.h5"], None, seed) == 0
    return blb


# ---------------------------------------------------------------- clips
def test_clip_windows_padding_and_stitching(tmp_path):
    n = {"a": 37, "b": 10}
    assert train_clips(n, 16, 8) == [Clip("a", 0, 16), Clip("a", 8, 16), Clip("a", 16, 16), Clip("a", 21, 16),
                                     Clip("b", 0, 10)]
    ev = eval_clips(n, 16)
    assert ev == [Clip("a", 0, 16), Clip("a", 16, 16), Clip("a", 32, 5), Clip("b", 0, 10)]
    d = make_synthetic(tmp_path, "AU", n_train=4, n_val=2, n_test=0)
    fs = load_features(d["features"], ["tr0", "va0"], train_videos=["tr0"])
    n = {v: fs.n_frames(v) for v in ("tr0", "va0")}
    clips = eval_clips(n, 16)
    b = gather(fs, clips, 16)
    last = [i for i, c in enumerate(clips) if c.video == "tr0"][-1]
    L = clips[last].length
    assert b["pad"][last, :L].all() and not b["pad"][last, L:].any() and (b["x"][last, L:] == 0).all()
    back = stitch(clips, b["x"], n)   # identity model: stitching recovers every frame exactly
    for v in n:
        assert torch.equal(back[v], fs.x[v].float())


def test_features_standardised_on_training_frames_and_invalid_rows_zero(tmp_path):
    d = make_synthetic(tmp_path, "AU", n_train=4, n_val=2, n_test=0)
    train = ["pair_left", "pair_right", "tr0", "tr1"]
    fs = load_features(d["features"], train + ["va0"], train_videos=train)
    assert fs.names == ["mae_AU", "hubert"] and fs.dims == [8, 6]
    raw = {v: [FeatureShard(p).read(v) for p in d["features"]] for v in train}
    aud = np.concatenate([raw[v][1].features for v in train])          # independent numpy reference
    np.testing.assert_allclose(fs.mean[8:], aud.mean(0), rtol=1e-4)
    np.testing.assert_allclose(fs.std[8:], aud.std(0), rtol=1e-3)
    x = torch.cat([fs.x[v] for v in train]).numpy()
    vis_valid = np.concatenate([raw[v][0].valid for v in train])
    np.testing.assert_allclose(x[vis_valid, :8].mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(x[vis_valid, :8].std(0), 1, atol=1e-3)
    assert (x[~vis_valid, :8] == 0).all() and (~vis_valid).any()
    assert np.array_equal(fs.valid["tr0"], raw["tr0"][0].valid)


# ---------------------------------------------------------------- DCL maths
def _pair_batch(task, B=3, K=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    C = TASK_OUTPUTS[task]
    shape = (B, C) if task == "ERI" else (B, K, C)
    if task == "EXPR":
        y_i, y_j = (torch.randint(0, 8, shape[:-1] + (1,), generator=g).float() for _ in range(2))
    elif task == "VA":
        y_i, y_j = (torch.rand(shape, generator=g) * 2 - 1 for _ in range(2))
    else:
        y_i, y_j = (torch.randint(0, 2, shape, generator=g).float() if task == "AU" else torch.rand(shape, generator=g)
                    for _ in range(2))
    return shape, y_i, y_j


@pytest.mark.parametrize("task", ["AU", "EXPR", "VA", "ERI"])
def test_dcl_interpolation_matches_the_formula(task):
    from affect_pipeline.common.losses import task_loss
    from affect_pipeline.temporal.model import (
        build_model,
        dcl_loss,
        interpolate_logits,
        model_config,
    )
    torch.manual_seed(0)
    hp = temporal_hp(SMALL, task)
    cfg = model_config(task, 6, dataclasses.replace(hp.branch, d_model=16, nhead=2, layers=1), 5, hp.pooling)
    blb, clb = build_model(cfg).eval(), build_model(cfg).eval()
    shape, y_i, y_j = _pair_batch(task)
    x_i, x_j = torch.randn(3, 5, 6), torch.randn(3, 5, 6)
    alpha = torch.full((3,), 0.3)
    with torch.no_grad():
        hb, hc = blb(x_i), clb(x_j)
    h = interpolate_logits(hb, hc, alpha)
    assert torch.allclose(h, 0.3 * hb + 0.7 * hc)
    m = torch.ones(shape[:-1], dtype=torch.bool)
    w = torch.rand(TASK_OUTPUTS[task]) + 0.5 if task in ("AU", "EXPR") else None   # class weights
    ref = 0.3 * task_loss(task, h, y_i, m, w) + 0.7 * task_loss(task, h, y_j, m, w)
    got = dcl_loss(task, h, y_i, m, y_j, m, alpha, w)
    assert torch.allclose(got, ref, atol=1e-6), (got, ref)


def test_dcl_union_mask_drops_only_its_own_term():
    from affect_pipeline.temporal.model import dcl_loss
    h = torch.tensor([[[0.5, -1.0], [2.0, 0.0]]])          # (B=1, K=2, C=2) AU-like logits
    y_i = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    y_j = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])
    m_i, m_j = torch.tensor([[True, False]]), torch.tensor([[True, True]])
    a = 0.25
    bce = lambda z, t: -(t * np.log(1 / (1 + np.exp(-z))) + (1 - t) * np.log(1 - 1 / (1 + np.exp(-z))))
    l = lambda y, f: bce(h[0, f].numpy(), y[0, f].numpy()).mean()
    # frame 0: both terms; frame 1: y_i invalid -> only the y_j term (weight 1 - a)
    ref = (a * l(y_i, 0) + (1 - a) * l(y_j, 0) + (1 - a) * l(y_j, 1)) / (a + (1 - a) + (1 - a))
    got = dcl_loss("AU", h, y_i, m_i, y_j, m_j, torch.tensor([a]))
    assert abs(float(got) - ref) < 1e-6


# ---------------------------------------------------------------- stages
@pytest.mark.parametrize("task", ["AU", "EXPR", "VA", "ERI"])
def test_blb_beats_constant_baseline(tmp_path, task):
    eri = task == "ERI"
    d = make_synthetic(tmp_path, task, n_train=16 if eri else 8, n_val=6 if eri else 4)
    make_folds(d, task)
    m = train_blb(d, task, tmp_path / "m")
    assert m["stage"] == "blb" and m["task"] == task and m["fold"] == "official"
    assert m["score"] > m["baseline"] + 0.15, m
    if task == "ERI":       # no frame-wise head of its own: nothing to compare with
        assert m["framewise_score"] is None
    else:
        assert m["framewise_score"] is not None and m["framewise_score"] < m["score"]
    assert (task == "EXPR") == ("confusion" in m)
    epochs = SMALL["eri" if eri else "blb"]["epochs"]
    rows = (tmp_path / "m" / "blb_curve.csv").read_text().splitlines()
    assert rows[0] == "epoch,train_loss,val_loss,val_score,lr" and len(rows) == epochs + 1
    assert 1 <= m["best_epoch"] <= epochs


def _pred(path):
    import h5py
    with h5py.File(path) as f:
        return {f"{s}/{v}": (f[s][v]["pred"][:], f[s][v]["valid"][:]) for s in f for v in f[s]}, dict(f.attrs)


def test_chain_is_deterministic_and_predict_covers_every_test_frame(tmp_path):
    d = make_synthetic(tmp_path / "data", "AU")
    make_folds(d, "AU")
    params = {**SMALL, "blb": {**SMALL["blb"], "epochs": 2}}
    outs = []
    for rep in ("a", "b"):
        o = tmp_path / rep
        blb = run_chain(d, o, params, seed=3)
        outs.append((blb, json.loads((o / "dcl_metrics.json").read_text()), (o / "clb.json").read_text(),
                     _pred(o / "pred.h5")[0]))
    (b1, d1, c1, p1), (b2, d2, c2, p2) = outs
    assert b1 == b2 and d1 == d2 and c1 == c2
    assert p1.keys() == p2.keys() and all(np.array_equal(p1[k][0], p2[k][0]) for k in p1)
    assert d1["stage"] == "dcl" and d1["inference"] == "mean" and d1["score"] > d1["baseline"]
    folds = json.loads(d["folds"].read_text())
    assert sorted(k.split("/")[1] for k in p1 if k.startswith("test/")) == sorted(folds["test"]) == ["te0", "te1"]
    for v in folds["test"]:
        pred, valid = p1[f"test/{v}"]
        assert pred.shape == (d["n"][v], 12) and valid.shape == (d["n"][v],)
        assert ((pred >= 0) & (pred <= 1)).all()
    # the library entry points give the same numbers as the predict stage
    from affect_pipeline.temporal.checkpoint import load_temporal, predict_video
    model = load_temporal(tmp_path / "a" / "dcl.pt", "cpu")
    assert model.batch_size == params["blb"]["batch_size"]      # predict's clips per call: from the config
    parts = [FeatureShard(p).read("te0") for p in d["features"]]
    got = predict_video(model, np.concatenate([p.features for p in parts], 1), np.stack([p.valid for p in parts], 1))
    np.testing.assert_allclose(got, p1["test/te0"][0], atol=1e-5)


def test_dcl_inference_modes_and_checkpoint_holds_both_branches(tmp_path):
    from affect_pipeline.common.runtime import load_checkpoint
    from affect_pipeline.temporal.checkpoint import load_temporal
    d = make_synthetic(tmp_path / "data", "VA", n_train=4, n_val=2, n_test=1)
    make_folds(d, "VA")
    params = {**SMALL, "blb": {**SMALL["blb"], "epochs": 1}, "dcl": {**SMALL["dcl"], "epochs": 1}}
    o = tmp_path / "m"
    train_blb(d, "VA", o, params)
    assert run("mine_hard_clips", fold_args(d, "VA") + ["--blb", o / "blb.pt", "--out", o / "clb.json"], params) == 0
    preds = {}
    for mode in ("mean", "blb_weighted", "blb", "clb"):
        p = {**params, "dcl": {**params["dcl"], "inference": mode, "clb_init": "fresh"}}
        assert run("train_dcl", fold_args(d, "VA") + ["--blb", o / "blb.pt", "--clb-clips", o / "clb.json", "--out",
                   o / f"dcl_{mode}.pt", "--metrics", o / f"m_{mode}.json", "--curve", o / f"c_{mode}.csv"], p) == 0
        ck = load_checkpoint(o / f"dcl_{mode}.pt")
        assert {"blb_state", "clb_state", "norm_mean", "norm_std", "feature_dims", "feature_names"} <= set(ck)
        # every combination scored on the best epoch; the configured one is the reported score
        scores = json.loads((o / f"m_{mode}.json").read_text())
        assert set(scores["inference_scores"]) == {"mean", "blb_weighted", "blb", "clb"}
        assert scores["inference_scores"][mode] == pytest.approx(scores["score"], abs=1e-9)
        model = load_temporal(o / f"dcl_{mode}.pt")
        x = torch.randn(2, 16, 14)
        with torch.no_grad():
            preds[mode] = (model(x), model.net.blb(x), model.net.clb(x))
    out, hb, hc = preds["mean"]
    assert torch.allclose(out, 0.5 * (hb + hc))
    out, hb, hc = preds["blb_weighted"]                 # the authors' fixed combination
    assert torch.allclose(out, 0.8 * hb + 0.2 * hc, atol=1e-6)
    assert not torch.allclose(out, 0.5 * (hb + hc))
    assert torch.allclose(preds["blb"][0], preds["blb"][1]) and torch.allclose(preds["clb"][0], preds["clb"][2])
    blb_only = load_temporal(o / "blb.pt")
    assert torch.allclose(preds["blb"][0], blb_only(x), atol=1e-6)   # frozen BLB is untouched by DCL


def test_feature_mismatch_is_a_pipeline_error_naming_the_file(tmp_path, capsys):
    d = make_synthetic(tmp_path / "data", "AU", n_train=4, n_val=2, n_test=1)
    make_folds(d, "AU")
    o = tmp_path / "m"
    train_blb(d, "AU", o, {**SMALL, "blb": {**SMALL["blb"], "epochs": 1}})
    bad = write_shard(tmp_path / "other" / "hubert.h5", "hubert",   # same store name, different dimension
                      {v: (np.zeros((n, 5)), np.ones(n, bool)) for v, n in d["n"].items()}, checkpoint_digest="z")
    args = ["--task", "AU", "--fold", "official", "--folds", d["folds"], "--labels", d["labels"],
            "--features", d["features"][0], bad, "--model", o / "blb.pt", "--index", d["index"], "--out", o / "p.h5"]
    capsys.readouterr()
    assert run("predict", args) == 1
    err = capsys.readouterr().err
    assert "ERROR [predict]" in err and str(bad) in err and "dimension 5" in err and "expects 6" in err
    assert not (o / "p.h5").exists()
    args[args.index(bad)] = d["features"][0]     # wrong store order/names
    assert run("predict", args) == 1
    assert "blb.pt" in capsys.readouterr().err
    from affect_pipeline.temporal.checkpoint import load_temporal, predict_video
    with pytest.raises(PipelineError, match="expects"):
        predict_video(load_temporal(o / "blb.pt"), np.zeros((10, 13)))


def test_shards_disagreeing_on_frame_count_name_the_video_and_both_shards(tmp_path):
    a = write_shard(tmp_path / "mae" / "AU" / "fold1.h5", "mae_AU",
                    {"v1": (np.ones((20, 3)), np.ones(20, bool)), "v2": (np.ones((12, 3)), np.ones(12, bool))})
    b = write_shard(tmp_path / "hubert.h5", "hubert",
                    {"v1": (np.ones((20, 2)), np.ones(20, bool)), "v2": (np.ones((11, 2)), np.ones(11, bool))})
    fs = load_features([a, b], ["v1"])                    # the consistent video reads fine
    assert fs.names == ["mae_AU", "hubert"] and fs.n_frames("v1") == 20
    with pytest.raises(PipelineError) as e:
        load_features([a, b], ["v1", "v2"])
    msg = str(e.value)
    assert "'v2'" in msg and str(a) in msg and str(b) in msg and "11" in msg and "12" in msg
    with pytest.raises(PipelineError, match="no features for video 'v3'"):   # absent from a shard
        load_features([a, b], ["v3"])


def test_settings_come_complete_from_params():
    hp = temporal_hp(SMALL, "ERI", "mining", "dcl")
    assert hp.branch.d_model == SMALL["eri"]["d_model"] and hp.pooling == "attention"
    assert hp.branch.weight_decay == SMALL["blb"]["weight_decay"]       # ERI shares the BLB's optimiser
    assert hp.mining.hard_fraction == 0.3 and hp.dcl.inference == "mean"
    assert temporal_hp(SMALL, "AU").dcl is None
    broken = copy.deepcopy(SMALL)
    del broken["blb"]["ema_decay"]
    with pytest.raises(PipelineError, match="ema_decay"):
        temporal_hp(broken, "AU")
    with pytest.raises(PipelineError, match="'dcl'"):
        temporal_hp({k: v for k, v in SMALL.items() if k != "dcl"}, "AU", "dcl")
    with pytest.raises(PipelineError, match="blb_weighted"):
        temporal_hp({**SMALL, "dcl": {**SMALL["dcl"], "inference": "max"}}, "AU", "dcl")


def test_framewise_score_gives_no_face_frames_the_training_prior():
    """The MAE row is scored on BLB's frames: a no-face frame (zero logits = every AU "on")
    gets the training prior (AU rates: here all off), not sigmoid(0) = 0.5 -> on."""
    from types import SimpleNamespace

    from affect_pipeline.common.metrics import score
    from affect_pipeline.common.stores import Labels
    from affect_pipeline.temporal.evaluation import framewise_score

    rng = np.random.default_rng(0)
    y_tr = (rng.random((200, 12)) < 0.1).astype(np.float32)          # AUs rarely on: prior off
    y_va = (rng.random((40, 12)) < 0.5).astype(np.float32)
    logits = np.where(y_va > 0, 3.0, -3.0).astype(np.float32)        # a perfect head ...
    valid = np.arange(40) < 30
    logits[~valid] = 0.0                                              # ... that saw no face in 10 frames
    lab = {"t": Labels(y_tr, np.ones(200, bool), "train"), "v": Labels(y_va, np.ones(40, bool), "validation")}
    data = SimpleNamespace(task="AU", train=["t"], val=["v"], labels_np=lab,
                           fs=SimpleNamespace(logits={"v": logits}, valid={"v": valid}))
    want = np.where(valid[:, None], y_va, 0.0)
    assert framewise_score(data) == pytest.approx(score("AU", want, y_va, np.ones(40, bool))["score"])
    zeros_on = np.where(valid[:, None], y_va, 1.0)
    assert framewise_score(data) != pytest.approx(score("AU", zeros_on, y_va, np.ones(40, bool))["score"])
