"""Temporal models over clips of per-frame multi-modal features (paper §2.3–2.4).

BLB (frame tasks): projection → learned positions → Transformer encoder (``temporal.blb``)
→ a linear head per frame. ERI model: the same encoder → pooling over the clip (attention or
mean) → 7 raw intensities. Both are built from a plain config dict (saved in checkpoints), so
a checkpoint rebuilds its model without code objects. Padding is a key padding mask; padded
positions never influence real ones. The CLB has the BLB's structure; :class:`DualBranch`
combines the two at inference and :func:`dcl_loss` is the DCL objective.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from affect_pipeline.common.losses import task_loss
from affect_pipeline.common.metrics import EPS
from affect_pipeline.common.tasks import TASK_OUTPUTS
from affect_pipeline.temporal.settings import INFERENCE, POOLINGS

FF_MULT = 4          # feed-forward width / d_model, as in "Attention is all you need"
BLB_WEIGHT = 0.8     # ``blb_weighted`` inference: the authors' fixed 0.8·BLB + 0.2·CLB logits


def model_config(task: str, in_dim: int, branch, clip_len: int, pooling: str | None = None) -> dict:
    """Config dict (data only, saved in checkpoints) from a ``settings.BranchHP``."""
    kind = "video" if task == "ERI" else "frame"
    if kind == "video" and pooling not in POOLINGS:
        raise ValueError(f"temporal.eri.pooling must be {' | '.join(POOLINGS)}, not {pooling!r}")
    return {"task": task, "kind": kind, "in_dim": int(in_dim), "out_dim": TASK_OUTPUTS[task],
            "d_model": int(branch.d_model), "nhead": int(branch.nhead), "layers": int(branch.layers),
            "dropout": float(branch.dropout), "ff_mult": FF_MULT, "max_len": int(clip_len), "pooling": pooling}


class LearnedPositions(nn.Module):
    def __init__(self, d: int, max_len: int):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(max_len, d))   # name: no weight decay (training.param_groups)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, h):
        return h + self.pos_embed[: h.shape[1]]


class TemporalEncoder(nn.Module):
    """(B, T, in_dim) features + (B, T) real-frame mask → (B, T, d_model)."""

    def __init__(self, in_dim, d_model, nhead, layers, dropout, ff_mult, max_len):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(in_dim, d_model), nn.LayerNorm(d_model), nn.Dropout(dropout))
        self.pos = LearnedPositions(d_model, max_len)
        layer = nn.TransformerEncoderLayer(d_model, nhead, d_model * ff_mult, dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.max_len = max_len

    def forward(self, x, real=None):
        if x.shape[1] > self.max_len:
            raise ValueError(f"clip of {x.shape[1]} frames exceeds the model's max_len {self.max_len}")
        h = self.pos(self.proj(x))
        h = self.encoder(h, src_key_padding_mask=None if real is None else ~real)
        return self.norm(h)


class AttentionPool(nn.Module):
    """Softmax-weighted mean over the real frames of a clip."""

    def __init__(self, d):
        super().__init__()
        self.score = nn.Linear(d, 1)

    def forward(self, h, real):
        s = self.score(h).squeeze(-1).masked_fill(~real, float("-inf"))
        return (torch.softmax(s, -1).unsqueeze(-1) * h).sum(1)


class MeanPool(nn.Module):
    def forward(self, h, real):
        m = real.unsqueeze(-1).to(h)
        return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


class TemporalModel(nn.Module):
    """Encoder + per-frame head (``kind="frame"``: (B, T, C)) or pooled head (``"video"``: (B, C))."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = dict(cfg)
        self.encoder = TemporalEncoder(cfg["in_dim"], cfg["d_model"], cfg["nhead"], cfg["layers"],
                                       cfg["dropout"], cfg["ff_mult"], cfg["max_len"])
        self.pool = None
        if cfg["kind"] == "video":
            self.pool = AttentionPool(cfg["d_model"]) if cfg["pooling"] == "attention" else MeanPool()
        self.head = nn.Linear(cfg["d_model"], cfg["out_dim"])

    def forward(self, x, real=None):
        if real is None:
            real = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        h = self.encoder(x, real)
        if self.pool is not None:
            h = self.pool(h, real)
        return self.head(h)


def build_model(cfg: dict) -> TemporalModel:
    return TemporalModel(cfg)


class DualBranch(nn.Module):
    """BLB + CLB at inference, both on the same clip (``temporal.dcl.inference``): ``mean`` of their
    logits, ``blb_weighted`` (the authors' fixed 0.8·BLB + 0.2·CLB), or one branch alone."""

    def __init__(self, blb: TemporalModel, clb: TemporalModel, inference: str = "mean"):
        super().__init__()
        if inference not in INFERENCE:
            raise ValueError(f"dcl.inference must be {' | '.join(INFERENCE)}, not {inference!r}")
        self.blb, self.clb, self.inference = blb, clb, inference
        self.cfg = blb.cfg

    def forward(self, x, real=None):
        if self.inference == "blb":
            return self.blb(x, real)
        if self.inference == "clb":
            return self.clb(x, real)
        w = 0.5 if self.inference == "mean" else BLB_WEIGHT
        return w * self.blb(x, real) + (1 - w) * self.clb(x, real)


# ---------------------------------------------------------------- DCL maths (equations 5-6)
def interpolate_logits(h_blb, h_clb, alpha):
    """Equation 5: h = α·h_BLB + (1 − α)·h_CLB, one α per sample (broadcast over frames/classes)."""
    a = alpha.to(h_blb).reshape((-1,) + (1,) * (h_blb.dim() - 1))
    return a * h_blb + (1 - a) * h_clb


def dcl_loss(task: str, h, y_i, m_i, y_j, m_j, alpha, class_w=None):
    """Equation 6, L = α·L(h, y_i) + (1 − α)·L(h, y_j), with union mask handling.

    Each frame f of pair b weighs w_i = α_b·m_i[f] for the y_i term and w_j = (1 − α_b)·m_j[f]
    for the y_j term (``losses.task_loss`` with these row weights), so an invalid label drops
    only its own term; the two terms mix in proportion Σw_i : Σw_j. With one α and all labels
    valid this is exactly α·L(h, y_i) + (1 − α)·L(h, y_j).
    """
    a = alpha.to(h).reshape((-1,) + (1,) * (m_i.dim() - 1))
    w_i, w_j = a * m_i.to(h), (1 - a) * m_j.to(h)
    li, lj = task_loss(task, h, y_i, w_i, class_w), task_loss(task, h, y_j, w_j, class_w)
    return (w_i.sum() * li + w_j.sum() * lj) / (w_i.sum() + w_j.sum()).clamp_min(EPS)
