"""How a temporal model is run and judged on a fold: clip-wise logits, validation metrics, the
metrics document of ``train_blb`` / ``train_dcl`` and the fit loop that keeps the best epoch's.

Validation is per frame over whole videos: non-overlapping clips are stitched back into
frames (ERI: the mean logits of a video's clips), so scores are comparable with the challenge's.
"""
from __future__ import annotations

import numpy as np
import torch

from affect_pipeline.common.losses import activate, task_loss
from affect_pipeline.common.metrics import (
    MAIN_METRIC,
    constant_baseline,
    score,
    tune_au_thresholds,
)
from affect_pipeline.common.runtime import autocast
from affect_pipeline.common.training import fit
from affect_pipeline.temporal.clips import (
    FeatureSet,
    batches,
    eval_clips,
    gather,
    stitch,
)
from affect_pipeline.temporal.fold_data import FoldData


@torch.inference_mode()
def infer_logits(model, fs: FeatureSet, videos, K: int, batch_size: int, device, per_video: bool):
    """Raw logits per video: (n, C) stitched from non-overlapping clips, or (1, C) (ERI: mean)."""
    model.eval()
    n = {v: fs.n_frames(v) for v in videos}
    clips = eval_clips(n, K)
    outs = []
    for bc in batches(clips, batch_size):
        b = gather(fs, bc, K)
        with autocast(device):
            outs.append(model(b["x"].to(device), b["pad"].to(device)).float().cpu())
    out = torch.cat(outs) if outs else torch.zeros(0, K, 1)
    if not per_video:
        return stitch(clips, out, n)
    idx: dict[str, list[int]] = {}
    for i, c in enumerate(clips):
        idx.setdefault(c.video, []).append(i)
    return {v: out[idx[v]].mean(0, keepdim=True) for v in n}


def evaluate(model, data: FoldData, batch_size: int, device) -> dict:
    """Validation loss (``loss``) + metrics (``score``, per class) over whole validation videos."""
    logits = infer_logits(model, data.fs, data.val, data.K, batch_size, device, data.per_video)
    h = torch.cat([logits[v] for v in data.val])
    y = torch.cat([data.labels[v][0] for v in data.val])
    m = torch.cat([data.labels[v][1].reshape(-1)[: len(logits[v])] for v in data.val])
    if data.per_video:
        loss = task_loss("ERI", h[m], y[m], m[m])
    else:
        loss = task_loss(data.task, h, y, m, data.weights)
    pred = activate(data.task, h).numpy()
    res = score(data.task, pred, y.numpy(), m.numpy())
    res["loss"] = res["val_loss"] = float(loss)
    if data.task == "AU" and m.any():
        res["au_thresholds_tuned"] = tune_au_thresholds(pred[m.numpy()], y.numpy()[m.numpy()]).tolist()
    return res


def baseline_score(data: FoldData) -> float:
    """The best constant predictor's score (fit on train, scored on validation)."""
    def cat(vs):
        y = np.concatenate([data.labels_np[v].y for v in vs])
        m = np.concatenate([data.labels_np[v].mask for v in vs]).astype(bool)
        return y[m]
    return float(constant_baseline(data.task, cat(data.train), cat(data.val)))


def framewise_score(data: FoldData) -> float | None:
    """Score of the fine-tuned MAE head (logits stored in the mae_{task} shard) on the same
    frames as BLB / DCL: every validation frame with a valid label, face or not.

    A frame without a face has no head output (its stored logits are zeros, which would say
    "every AU on"); it gets the training labels' prior instead (AU rates, EXPR class
    frequencies, VA means): what a frame-wise model can say about a frame it cannot see.
    None for ERI: its visual stream is another task's head (temporal.eri_visual_task), whose
    logits say nothing about the 7 reaction intensities."""
    if data.task == "ERI" or not all(v in data.fs.logits for v in data.val):
        return None
    prior = train_prior(data)
    preds, ys, ms = [], [], []
    for v in data.val:
        p = activate(data.task, torch.from_numpy(data.fs.logits[v]).float()).numpy()
        p[~data.fs.valid[v][: len(p)]] = prior
        preds.append(p)
        ys.append(data.labels_np[v].y)
        ms.append(data.labels_np[v].mask)
    try:
        return float(score(data.task, np.concatenate(preds), np.concatenate(ys), np.concatenate(ms))["score"])
    except (ValueError, IndexError):
        return None


def train_prior(data: FoldData) -> np.ndarray:
    """The training videos' label prior in the head's output space (AU / VA: means; EXPR: class
    frequencies)."""
    y = np.concatenate([data.labels_np[v].y[data.labels_np[v].mask.astype(bool)] for v in data.train])
    if data.task == "EXPR":
        return np.bincount(y.reshape(-1).astype(np.int64), minlength=8) / max(1, len(y))
    return y.mean(0)


def metrics_doc(stage: str, data: FoldData, best: dict, best_epoch: int, extra: dict) -> dict:
    """``{stage}_metrics.json``: the best epoch's validation metrics, the baseline, run facts."""
    doc = {"task": data.task, "fold": data.fold, "stage": stage, "score": best.get("score"),
           "metric": MAIN_METRIC[data.task], "baseline": baseline_score(data), **extra,
           "per_class": best.get("per_class"), "best_epoch": best_epoch, "val_loss": best.get("val_loss"),
           "n_train_videos": len(data.train), "n_val_videos": len(data.val), "n_val": best.get("n")}
    for k in ("confusion", "ccc_valence", "ccc_arousal", "au_thresholds_tuned"):
        if k in best:
            doc[k] = best[k]
    return doc


def fit_scored(model, step, epoch_batches, judge, sched, steps_per_epoch: int, desc: str):
    """``training.fit`` that also returns the best epoch's full validation metrics.

    ``judge(model) -> dict`` is called once per epoch (on the EMA weights); ``fit`` logs each."""
    seen: list[dict] = []

    def scored(m):
        seen.append(judge(m))
        return seen[-1]

    res = fit(model, step, epoch_batches, scored, sched, steps_per_epoch, desc=desc)
    return res, seen[res.best_epoch - 1] if seen else {}
