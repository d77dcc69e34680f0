"""Clips read from the feature shards a batch at a time (what a job too large to hold its
features does, Aff-Wild2 at the paper's dims) are the very rows the in-memory path holds: same
statistics, same clips, same losses, and a train_blb -> mine_hard_clips -> train_dcl -> predict
chain ends with identical checkpoints, metrics, D_CLB and predictions either way.
"""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from conftest import REPO
from test_temporal import SMALL, make_folds, make_synthetic, run_chain

import affect_pipeline.temporal.fold_data as fold_data
from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.feature_shards import FeatureShard
from affect_pipeline.common.losses import task_loss
from affect_pipeline.common.runtime import load_checkpoint
from affect_pipeline.temporal.clips import eval_clips, gather, train_clips
from affect_pipeline.temporal.fold_data import load_features

torch.set_num_threads(1)


def _both(d, videos, train):
    """The same videos loaded in memory and streamed from the shards."""
    held = load_features(d["features"], videos, train_videos=train, with_logits=True)
    streamed = load_features(d["features"], videos, train_videos=train, with_logits=True, in_memory_bytes=0)
    return held, streamed


def test_streamed_clips_statistics_and_loss_equal_the_in_memory_ones(tmp_path):
    d = make_synthetic(tmp_path, "AU", n_train=5, n_val=2, n_test=0)
    train, videos = ["pair_left", "pair_right", "tr0", "tr1", "tr2"], ["pair_left", "pair_right", "tr0", "tr1",
                                                                       "tr2", "va0", "va1"]
    held, streamed = _both(d, videos, train)
    try:
        assert held.x and streamed.x == {} and streamed.stream is not None   # nothing held when streamed
        assert np.array_equal(held.mean, streamed.mean) and np.array_equal(held.std, streamed.std)
        assert all(np.array_equal(held.valid[v], streamed.valid[v]) for v in videos)
        assert all(np.array_equal(held.logits[v], streamed.logits[v]) for v in videos)
        assert [held.n_frames(v) for v in videos] == [streamed.n_frames(v) for v in videos]
        n = {v: held.n_frames(v) for v in videos}
        labels = {v: (torch.randint(0, 2, (n[v], 12), generator=torch.Generator().manual_seed(i)).float(),
                      torch.ones(n[v], dtype=torch.bool)) for i, v in enumerate(videos)}
        for clips in (train_clips(n, 16, 8), eval_clips(n, 16)):
            a, b = gather(held, clips, 16, labels), gather(streamed, clips, 16, labels)
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
            assert (a["x"][a["pad"]] != 0).any()                              # real rows, not padding
            h = a["x"][..., :12]                                             # a fixed "model": the first columns
            assert torch.equal(task_loss("AU", h, a["y"], a["ymask"], reduce=False),
                               task_loss("AU", b["x"][..., :12], b["y"], b["ymask"], reduce=False))
    finally:
        streamed.close()


def test_streaming_statistics_pass_reads_in_blocks_and_matches_numpy(tmp_path, monkeypatch):
    """Statistics read a few rows at a time (blocks shorter than every video, so each video spans
    several reads) are numpy's mean / std over the training frames each store marks valid."""
    d = make_synthetic(tmp_path, "AU", n_train=4, n_val=1, n_test=0)
    train = ["pair_left", "pair_right", "tr0", "tr1"]
    reads = []
    rows = FeatureShard.rows

    def counted(self, video, start=0, stop=None, name="features"):
        out = rows(self, video, start, stop, name)
        if name == "features" and len(out):
            reads.append(len(out))
        return out

    monkeypatch.setattr(FeatureShard, "rows", counted)
    monkeypatch.setattr(fold_data, "BLOCK_ROWS", 7)
    fs = load_features(d["features"], train + ["va0"], train_videos=train, in_memory_bytes=0)
    fs.close()
    assert reads and max(reads) == 7 and len(reads) > 2 * len(train) * len(d["features"])
    for i, (path, sl) in enumerate(zip(d["features"], (slice(0, 8), slice(8, 14)))):
        parts = [FeatureShard(path).read(v) for v in train]
        ref = np.concatenate([p.features[p.valid] for p in parts]).astype(np.float64)
        np.testing.assert_allclose(fs.mean[sl], ref.mean(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(fs.std[sl], ref.std(0), rtol=1e-4)


def _chain(d, o, params):
    """BLB, mining, DCL and predict of fold "official" (``run_chain``); returns everything they wrote."""
    blb = run_chain(d, o, params, seed=1)
    with h5py.File(o / "pred.h5") as f:
        pred = {g: {v: f[g][v]["pred"][:] for v in f[g]} for g in f}
    ck = load_checkpoint(o / "dcl.pt")
    return {"blb": blb, "dcl": json.loads((o / "dcl_metrics.json").read_text()), "pred": pred,
            "curves": [(o / c).read_text() for c in ("blb_curve.csv", "dcl_curve.csv")],
            "clb": (o / "clb.json").read_text(), "state": {**ck["blb_state"], **{f"c.{k}": v for k, v in ck["clb_state"].items()}},
            "norm": (ck["norm_mean"], ck["norm_std"])}


def test_jobs_streaming_from_the_shards_write_what_the_in_memory_jobs_write(tmp_path, monkeypatch):
    d = make_synthetic(tmp_path / "data", "AU")
    make_folds(d, "AU")
    params = {**SMALL, "blb": {**SMALL["blb"], "epochs": 2}, "dcl": {**SMALL["dcl"], "epochs": 1}}
    held = _chain(d, tmp_path / "held", params)
    served = []
    call = fold_data.ShardRows.__call__

    def serve(self, video, start, length):
        served.append(length)
        return call(self, video, start, length)

    monkeypatch.setattr(fold_data.ShardRows, "__call__", serve)
    monkeypatch.setattr(fold_data, "IN_MEMORY_BYTES", 0)
    streamed = _chain(d, tmp_path / "streamed", params)
    assert sum(served) > sum(d["n"].values())             # every job read its clips from the shards
    assert held["blb"] == streamed["blb"] and held["dcl"] == streamed["dcl"]
    assert held["curves"] == streamed["curves"] and held["clb"] == streamed["clb"]   # same losses, same D_CLB
    assert all(torch.equal(held["norm"][i], streamed["norm"][i]) for i in (0, 1))
    assert held["state"].keys() == streamed["state"].keys()
    assert all(torch.equal(held["state"][k], streamed["state"][k]) for k in held["state"])
    assert held["pred"].keys() == streamed["pred"].keys() and held["pred"]["test"]
    for g in held["pred"]:
        assert all(np.array_equal(held["pred"][g][v], streamed["pred"][g][v]) for v in held["pred"][g])


def test_a_streamed_job_closes_its_shards(tmp_path):
    """Once its data is closed, a streamed job holds no shard open (a later writer could not take
    it under HDF5 file locking, and the warm launcher runs many jobs in one process)."""
    d = make_synthetic(tmp_path, "AU", n_train=3, n_val=1, n_test=0)
    fs = load_features(d["features"], ["tr0", "va0"], train_videos=["tr0"], in_memory_bytes=0)
    assert gather(fs, eval_clips({"va0": fs.n_frames("va0")}, 16), 16)["x"].shape[0] >= 1
    fs.close()
    with h5py.File(d["features"][1], "a") as f:            # writable again: no reader left
        f.attrs["touched"] = 1
    with pytest.raises(PipelineError):                   # the set reads nothing any more
        fs.rows("va0", 0, 4)


def test_memory_benchmark_tree_is_what_the_jobs_read(tmp_path):
    """benchmarks/bench_train_memory.py's placeholder tree (here 40 videos, 6,000 frames, not 598 and 2.8 M):
    the four stores at the paper's dims in the workflow's shard format, one row per frame in each,
    labels and a fold document per scale that a temporal job's loader accepts."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_train_memory", REPO / "benchmarks" / "bench_train_memory.py")
    bench = importlib.util.module_from_spec(spec)           # the benchmarks folder beside tests/, not installed
    spec.loader.exec_module(bench)
    bench.N_VIDEOS = 40                                     # this module's copy only: a quick tree
    tree = bench.write_tree(tmp_path, [0.5], total=6000)
    assert len(tree["features"]) == 4 and bench.video_lengths(6000).sum() == 6000
    folds = json.loads(tree["folds"][0.5].read_text())
    train, val = folds["folds"]["1"]["train"], folds["folds"]["1"]["validation"]
    assert len(val) == bench.N_VAL and len(folds["test"]) == bench.N_TEST and not set(train) & set(folds["test"])
    fs = load_features(tree["features"], train + val, train_videos=train, with_logits=True, in_memory_bytes=0)
    try:
        assert fs.names == list(bench.STORES) and fs.dims == list(bench.STORES.values())
        assert sum(fs.n_frames(v) for v in train + val) == tree["frames"][0.5]
        assert set(fs.logits) == set(train + val) and not all(fs.valid[v].all() for v in train)
        argv = bench.job_argv("train_blb", tree, 0.5, tmp_path / "out", bench.paper_params())
        assert argv[0] == "train_blb" and json.loads(argv[-1])["blb"]["d_model"] == 512
    finally:
        fs.close()
