"""Task losses of the paper (equations 1–4), shared by frame-wise fine-tuning, BLB and DCL.

All losses take the model's raw outputs ("logits"): AU and EXPR logits, VA pre-tanh values,
ERI raw intensities. :func:`activate` maps them to probabilities / values. Every loss weighs
its rows by ``mask``: the label mask (invalid annotations AU -1, EXPR -1, VA -5 weigh 0) or
DCL's per-row weights (``temporal.model.dcl_loss``). CCC and PCC are ``metrics.ccc`` /
``metrics.pcc``, the very functions the challenge scores are computed with.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from affect_pipeline.common.metrics import EPS, ccc, pcc


def activate(task: str, logits: torch.Tensor) -> torch.Tensor:
    """Raw outputs -> AU probabilities, EXPR class probabilities, VA in [-1, 1], ERI in [0, 1]."""
    if task == "AU":
        return torch.sigmoid(logits)
    if task == "EXPR":
        return torch.softmax(logits, dim=-1)
    if task == "VA":
        return torch.tanh(logits)
    if task == "ERI":
        return torch.sigmoid(logits)
    raise ValueError(f"unknown task {task!r}")


def class_weights(task: str, y: np.ndarray, mask: np.ndarray, au_pos_weight: bool) -> np.ndarray | None:
    """Weights inversely proportional to class counts in the training set (mean weight 1).

    AU: the per-AU weights W_au of equation 1 (the rarer an AU fires, the larger its weight),
    shape (12,) — what the paper specifies. With ``au_pos_weight`` (config ``au_pos_weight``;
    neither in eq. 1 nor in the authors' code) shape (2, 12): row 1 adds each AU's positive
    weight neg/pos (clipped to [1, 20]), so a rare AU's positives are not drowned by its
    negatives. EXPR: one weight per class from its frame count. Absent classes get the largest
    weight seen. VA / ERI: None.
    """
    y = np.asarray(y)[np.asarray(mask, bool)]
    if task == "AU":
        pos = y.sum(0).astype(np.float64)
        per_au = _inverse(pos)
        if not au_pos_weight:
            return per_au.astype(np.float32)
        pos_weight = np.clip((len(y) - pos) / np.maximum(pos, 1.0), 1.0, 20.0)
        return np.stack([per_au, pos_weight]).astype(np.float32)
    if task == "EXPR":
        return _inverse(np.bincount(y.reshape(-1).astype(np.int64), minlength=8).astype(np.float64))
    return None


def _inverse(counts: np.ndarray) -> np.ndarray:
    inv = np.where(counts > 0, 1.0 / np.maximum(counts, 1.0), np.nan)
    if np.all(np.isnan(inv)):
        return np.ones_like(counts, dtype=np.float32)
    inv = np.where(np.isnan(inv), np.nanmax(inv), inv)
    return (inv / inv.mean()).astype(np.float32)


def au_loss(logits, y, mask, class_w=None, reduce: bool = True):
    """Equation 1: weighted binary cross-entropy averaged over the 12 AUs.

    ``class_w``: (12,) per-AU weights, or (2, 12) per-AU weights + positive weights
    (see :func:`class_weights`)."""
    w, pos_weight = torch.ones(logits.shape[-1], device=logits.device), None
    if class_w is not None:
        class_w = class_w.to(logits)
        w, pos_weight = (class_w[0], class_w[1]) if class_w.dim() == 2 else (class_w, None)
    bce = F.binary_cross_entropy_with_logits(logits, y.to(logits), pos_weight=pos_weight, reduction="none")
    per_row = (bce * w).mean(-1)
    return _weighted_mean(per_row, mask, reduce)


def expr_loss(logits, y, mask, class_w=None, reduce: bool = True):
    """Equation 2: weighted cross-entropy over the 8 expression classes."""
    target = y.reshape(logits.shape[:-1]).long().clamp(0, logits.shape[-1] - 1)
    w = None if class_w is None else class_w.to(logits)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), weight=w,
                         reduction="none").reshape(target.shape)
    return _weighted_mean(ce, mask, reduce)


def va_loss(logits, y, mask, reduce: bool = True):
    """Equation 3: (1 − CCC(valence)) + (1 − CCC(arousal)), rows weighted by ``mask``.

    With ``reduce=False`` and inputs shaped (B, T, 2) the CCC is taken within each clip,
    giving one sequence loss per clip (what mining ranks clips by).
    """
    pred, w = torch.tanh(logits), _row_weights(mask, logits)
    y = y.to(pred)
    if reduce:
        return _va(pred.reshape(-1, 2), y.reshape(-1, 2), w.reshape(-1))
    return torch.stack([_va(pred[b], y[b], w[b]) for b in range(pred.shape[0])])


def _va(p, t, w):
    if (w > 0).sum() < 2:               # a CCC needs two rows
        return p.sum() * 0.0
    return (1 - ccc(p[:, 0], t[:, 0], w)) + (1 - ccc(p[:, 1], t[:, 1], w))


def eri_loss(logits, y, mask=None, reduce: bool = True):
    """ERI: (1 − mean PCC over the 7 intensities across the batch) + MSE (anchors the scale),
    videos weighted by ``mask``. ``reduce=False``: each video's MSE (what mining ranks by)."""
    p, w = torch.sigmoid(logits), _row_weights(mask, logits)
    y = y.to(p)
    mse = (p - y).pow(2).mean(-1)
    if not reduce:
        return mse
    wmse = (w * mse).sum() / w.sum().clamp_min(EPS)
    if (w > 0).sum() < 2:               # a PCC needs two videos
        return wmse
    return (1 - pcc(p, y, w).mean()) + wmse


def _row_weights(mask, logits):
    """One float weight per row of ``logits`` (all rows but the last axis); None: every row 1."""
    if mask is None:
        return torch.ones(logits.shape[:-1], dtype=logits.dtype, device=logits.device)
    return mask.to(logits).reshape(logits.shape[:-1])


def _weighted_mean(values, mask, reduce: bool):
    m = mask.to(values.dtype).reshape(values.shape)
    if reduce:
        return (values * m).sum() / m.sum().clamp_min(EPS)
    # one value per leading item (clip): mean over the remaining dims
    dims = tuple(range(1, values.dim()))
    if not dims:
        return values * m
    return (values * m).sum(dims) / m.sum(dims).clamp_min(EPS)


def task_loss(task: str, logits, y, mask, class_w=None, reduce: bool = True):
    """The task's loss on raw outputs; ``reduce=False`` gives one loss per clip (dim 0).

    ``mask``: one weight per row (frame; ERI: video), the label mask (bool) or any non-negative
    weights (DCL's α-scaled masks): a row of weight 0 contributes nothing, and with 0/1 weights
    the loss is the loss over the rows marked 1. ``class_w``: :func:`class_weights` (AU, EXPR).
    """
    if task == "AU":
        return au_loss(logits, y, mask, class_w, reduce)
    if task == "EXPR":
        return expr_loss(logits, y, mask, class_w, reduce)
    if task == "VA":
        return va_loss(logits, y, mask, reduce)
    if task == "ERI":
        return eri_loss(logits, y, mask, reduce)
    raise ValueError(f"unknown task {task!r}")
