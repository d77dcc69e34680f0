"""Temporal models over clips of per-frame multi-modal features (paper §2.3–2.4).

BLB (frame tasks): projection → positions → 4-layer Transformer encoder (dropout 0.3) → a
linear head per frame. ERI model: the same encoder → pooling over the clip (attention or
mean) → 7 raw intensities. Both are built from a plain config dict (saved in checkpoints), so
a checkpoint rebuilds its model without code objects. Padding is a key padding mask; padded
positions never influence real ones.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from . import TASK_OUTPUTS


def model_config(task: str, in_dim: int, params: dict, clip_len: int) -> dict:
    """Config dict (data only) from the ``temporal.blb`` / ``temporal.eri`` section."""
    return {"task": task, "kind": "video" if task == "ERI" else "frame", "in_dim": int(in_dim),
            "out_dim": TASK_OUTPUTS[task], "d_model": int(params.get("d_model", 512)),
            "nhead": int(params.get("nhead", 8)), "layers": int(params.get("layers", 4)),
            "dropout": float(params.get("dropout", 0.3)), "ff_mult": int(params.get("ff_mult", 4)),
            "positions": params.get("positions", "learned"), "max_len": int(clip_len),
            "pooling": params.get("pooling", "attention")}


class SinusoidalPositions(nn.Module):
    def __init__(self, d: int, max_len: int):
        super().__init__()
        pos = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, d, 2) * (-math.log(10000.0) / d))
        pe = torch.zeros(max_len, d)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div)[:, : d // 2]
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, h):
        return h + self.pe[: h.shape[1]]


class LearnedPositions(nn.Module):
    def __init__(self, d: int, max_len: int):
        super().__init__()
        self.pe = nn.Parameter(torch.zeros(max_len, d))
        nn.init.trunc_normal_(self.pe, std=0.02)

    def forward(self, h):
        return h + self.pe[: h.shape[1]]


class TemporalEncoder(nn.Module):
    """(B, T, in_dim) features + (B, T) real-frame mask → (B, T, d_model)."""

    def __init__(self, in_dim, d_model, nhead, layers, dropout, ff_mult, positions, max_len):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(in_dim, d_model), nn.LayerNorm(d_model), nn.Dropout(dropout))
        self.pos = (SinusoidalPositions if positions == "sinusoidal" else LearnedPositions)(d_model, max_len)
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
                                       cfg["dropout"], cfg.get("ff_mult", 4), cfg.get("positions", "learned"),
                                       cfg["max_len"])
        self.pool = None
        if cfg["kind"] == "video":
            self.pool = AttentionPool(cfg["d_model"]) if cfg.get("pooling", "attention") == "attention" else MeanPool()
        self.head = nn.Linear(cfg["d_model"], cfg["out_dim"])

    def forward(self, x, real=None):
        if real is None:
            real = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        h = self.encoder(x, real)
        if self.pool is not None:
            h = self.pool(h, real)
        return self.head(h)


class DualBranch(nn.Module):
    """BLB + CLB at inference: ``mean`` of both branches' logits on the same clip, or one branch."""

    def __init__(self, blb: TemporalModel, clb: TemporalModel, inference: str = "mean"):
        super().__init__()
        if inference not in ("mean", "blb", "clb"):
            raise ValueError(f"dcl.inference must be mean | blb | clb, not {inference!r}")
        self.blb, self.clb, self.inference = blb, clb, inference
        self.cfg = blb.cfg

    def forward(self, x, real=None):
        if self.inference == "blb":
            return self.blb(x, real)
        if self.inference == "clb":
            return self.clb(x, real)
        return 0.5 * (self.blb(x, real) + self.clb(x, real))


def build_model(cfg: dict) -> TemporalModel:
    return TemporalModel(cfg)
