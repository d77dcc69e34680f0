"""Temporal training throughput: is a BLB / DCL step bound by clip loading or by the model?

Rows (median over ``steps`` timed repetitions after ``warmup``):
- ``read_hdf5``: reading + standardising all feature shards once per job (per video);
- ``gather``: assembling one batch of clips from the in-memory per-video tensors;
- ``blb_step``: gather + forward + backward + AdamW step (what ``train_blb`` does per batch);
- ``blb_model_only``: forward + backward + step on a random tensor of the same shape;
- ``dcl_step``: two gathers + frozen-BLB forward + CLB forward / backward + step;
with ``load_pct`` = share of a step spent gathering clips and ``steps_per_s``.

    python benchmarks/bench_temporal.py [--d-model 64 --dims 96 64 64 128 --clip-len 50 ...]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from affect_pipeline.common.feature_shards import FeatureShardWriter
from affect_pipeline.common.losses import task_loss
from affect_pipeline.temporal.clips import gather, train_clips
from affect_pipeline.temporal.fold_data import load_features
from affect_pipeline.temporal.model import build_model, model_config
from affect_pipeline.temporal.settings import BranchHP
from affect_pipeline.temporal.train_dcl import dcl_step

STORE_NAMES = ["mae_AU", "hubert", "wav2vec2", "vggish"]


def _time(fn, steps, warmup, sync):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(steps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def step_functions(dims=(96, 64, 64, 128), n_videos=8, frames=600, clip_len=50, stride=25, batch_size=8,
                   d_model=64, nhead=4, layers=4, device="cpu", threads=1, seed=0) -> dict:
    """The timed callables on feature shards of the given dims (see module docstring): ``read_hdf5``
    (seconds per video, measured once), ``gather``, ``blb_step``, ``blb_model_only``, ``dcl_step``,
    ``dcl_model_only`` (the frozen BLB forward + CLB step on random batches), ``sync``, ``shape``."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        shards = [Path(tmp) / f"{n}.h5" for n in STORE_NAMES[: len(dims)]]
        vids = [f"v{i}" for i in range(n_videos)]
        for path, D in zip(shards, dims):
            w = FeatureShardWriter(path, extractor=path.stem, fingerprint="bench")
            for v in vids:
                w.write(v, rng.normal(size=(frames, D)), np.ones(frames, bool), fps=25.0)
            w.close(vids)
        t0 = time.perf_counter()
        fs = load_features(shards, vids)
        t_read = (time.perf_counter() - t0) / n_videos
    labels = {v: (torch.randint(0, 2, (frames, 12)).float(), torch.ones(frames, dtype=torch.bool)) for v in vids}
    clips = train_clips({v: frames for v in vids}, clip_len, stride)
    branch = BranchHP(d_model=d_model, nhead=nhead, layers=layers, dropout=0.3, lr=1e-4, weight_decay=0.01,
                      batch_size=batch_size, epochs=1, warmup_epochs=0, ema_decay=0.0, clip_grad=1.0)
    cfg = model_config("AU", fs.dim, branch, clip_len)
    model, clb = build_model(cfg).to(dev), build_model(cfg).to(dev)
    blb = build_model(cfg).to(dev).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    opt_c = torch.optim.AdamW(clb.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(seed)

    def batch():
        idx = torch.randint(0, len(clips), (batch_size,), generator=g).tolist()
        b = gather(fs, [clips[i] for i in idx], clip_len, labels)
        return {k: v.to(dev) for k, v in b.items()}

    def train(o, loss):
        o.zero_grad(set_to_none=True)
        loss.backward()
        o.step()

    def blb_step():
        b = batch()
        train(opt, task_loss("AU", model(b["x"], b["pad"]), b["y"], b["ymask"]))

    fixed, fixed_j = batch(), batch()
    random_i = {**fixed, "x": torch.randn_like(fixed["x"])}
    random_j = {**fixed_j, "x": torch.randn_like(fixed_j["x"])}

    def model_only():
        train(opt, task_loss("AU", model(random_i["x"], fixed["pad"]), fixed["y"], fixed["ymask"]))

    def dcl():
        bi, bj = batch(), batch()
        alpha = torch.from_numpy(rng.beta(2.0, 2.0, size=batch_size)).float().to(dev)
        train(opt_c, dcl_step("AU", blb, clb, bi, bj, alpha, None, dev))

    def dcl_model_only():
        alpha = torch.from_numpy(rng.beta(2.0, 2.0, size=batch_size)).float().to(dev)
        train(opt_c, dcl_step("AU", blb, clb, random_i, random_j, alpha, None, dev))

    model.train(); clb.train()
    return {"read_hdf5": t_read, "gather": batch, "blb_step": blb_step, "blb_model_only": model_only,
            "dcl_step": dcl, "dcl_model_only": dcl_model_only, "sync": sync,
            "shape": f"B={batch_size} K={clip_len} D={fs.dim} d_model={d_model} L={layers}", "device": str(dev)}


def run(dims=(96, 64, 64, 128), n_videos=8, frames=600, clip_len=50, stride=25, batch_size=8,
        d_model=64, nhead=4, layers=4, steps=10, warmup=2, device="cpu", threads=1, seed=0) -> list[dict]:
    """Benchmark rows (see module docstring); sizes default to the demo configuration."""
    f = step_functions(dims, n_videos, frames, clip_len, stride, batch_size, d_model, nhead, layers, device,
                       threads, seed)
    sync = f["sync"]
    t_gather = _time(f["gather"], steps, warmup, sync)
    t_blb = _time(f["blb_step"], steps, warmup, sync)
    t_model = _time(f["blb_model_only"], steps, warmup, sync)
    t_dcl = _time(f["dcl_step"], steps, warmup, sync)
    row = lambda name, t, load=None: {"name": name, "shape": f["shape"], "device": f["device"], "threads": threads,
                                      "ms": 1e3 * t, "steps_per_s": 1 / t if t else float("inf"),
                                      "load_pct": None if load is None else 100 * load / t}
    return [row("read_hdf5 (per video)", f["read_hdf5"]), row("gather (1 batch)", t_gather),
            row("blb_step", t_blb, t_gather), row("blb_model_only", t_model),
            row("dcl_step", t_dcl, 2 * t_gather)]


def print_table(rows) -> None:
    print(f"{'name':24} {'ms':>9} {'steps/s':>9} {'load %':>7}  shape / device")
    for r in rows:
        lp = "" if r["load_pct"] is None else f"{r['load_pct']:.1f}"
        print(f"{r['name']:24} {r['ms']:9.2f} {r['steps_per_s']:9.2f} {lp:>7}  {r['shape']} {r['device']} x{r['threads']}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dims", type=int, nargs="+", default=[96, 64, 64, 128])
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--frames", type=int, default=600)
    p.add_argument("--clip-len", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--nhead", type=int, default=4)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    print_table(run(tuple(a.dims), a.videos, a.frames, a.clip_len, a.clip_len // 2, a.batch_size, a.d_model,
                    a.nhead, a.layers, a.steps, device=a.device, threads=a.threads))
