"""``train_blb``: the Basic Learning Branch of one task × fold (paper §2.3).

Clips of K frames of the fold's training videos (D_init; ERI: whole videos, cropped to K at
random) train a temporal Transformer with the task loss (eq. 1–3) through ``training.fit``:
AdamW, warmup + cosine per update, EMA weights evaluated and saved; the best epoch is chosen
by the validation metric over whole validation videos (clips stitched back into frames).

    python -m affect_pipeline train_blb --task T --fold F --folds folds/T.json
        --labels index/labels/T.h5 --features SHARD... --out blb.pt --metrics blb_metrics.json
        --curve blb_curve.csv --params TEMPORAL_JSON [--threads N --device D --seed S]
"""
from __future__ import annotations

import contextlib
import math

import torch

from affect_pipeline.common.losses import task_loss
from affect_pipeline.common.runtime import autocast, log
from affect_pipeline.temporal.checkpoint import TrainOutputs, save_trained
from affect_pipeline.temporal.evaluation import (
    evaluate,
    fit_scored,
    framewise_score,
    metrics_doc,
)
from affect_pipeline.temporal.fold_data import FoldData, load_fold
from affect_pipeline.temporal.model import build_model, model_config
from affect_pipeline.temporal.settings import (
    FoldInputs,
    Job,
    TemporalHP,
    fold_parser,
    temporal_hp,
)


def clip_loss(task: str, model, b: dict, weights, device):
    """Task loss of a batch (eq. 1–3 on the clips' frames; ERI on the pooled outputs)."""
    with autocast(device):
        h = model(b["x"], b["pad"]).float()
    if task == "ERI":
        m = b["ymask"]
        return task_loss("ERI", h[m], b["y"][m], m[m])
    return task_loss(task, h, b["y"], b["ymask"], None if weights is None else weights.to(device))


def fit_blb(model, data: FoldData, hp: TemporalHP, device, seed: int, desc: str):
    """Train ``model`` on D_init; returns (FitResult, best epoch's metrics, |D_init|)."""
    clips = data.d_init()
    gen = torch.Generator().manual_seed(seed)
    bs = int(hp.branch.batch_size)
    res, best = fit_scored(model, lambda b: clip_loss(data.task, model, b, data.weights, device),
                           lambda epoch: data.batches(clips, bs, gen, device),
                           lambda m: evaluate(m, data, bs, device), hp.branch.schedule(),
                           math.ceil(len(clips) / bs), desc)
    return res, best, len(clips)


def train_blb(inp: FoldInputs, out: TrainOutputs, hp: TemporalHP, job: Job = Job()) -> dict:
    """Train, then write the checkpoint, the metrics and the curve; returns the metrics."""
    device = job.start()
    with contextlib.closing(load_fold(inp, hp, with_logits=True)) as data:
        cfg = model_config(inp.task, data.fs.dim, hp.branch, data.K, hp.pooling)
        model = build_model(cfg).to(device)
        res, best, n_clips = fit_blb(model, data, hp, device, job.seed, desc=f"blb {inp.task}/{inp.fold}")
        doc = metrics_doc("blb", data, best, res.best_epoch,
                          {"framewise_score": framewise_score(data), "n_clips": n_clips})
        save_trained(out, data, hp, res, doc, stage="blb", config=cfg, blb_state=res.best_state)
    log.info("blb %s/%s: %s %.4f (baseline %.4f, frame-wise MAE %s) at epoch %d", inp.task, inp.fold,
             doc["metric"], doc["score"], doc["baseline"], doc["framewise_score"], res.best_epoch)
    return doc


def main(argv: list[str]) -> int:
    a = fold_parser("train_blb", __doc__).parse_args(argv)
    train_blb(FoldInputs.from_args(a), TrainOutputs.from_args(a), temporal_hp(a.params, a.task), Job.from_args(a))
    return 0
