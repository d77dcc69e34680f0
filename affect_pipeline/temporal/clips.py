"""The per-frame features clips are cut from, what a clip is and how batches are cut.

Training clips are K-frame windows every ``stride`` frames plus one flush with the video's end;
evaluation clips tile a video without overlap (the last one shorter); ERI: one clip per video,
cropped to K frames by :func:`gather` (at random when training). ``gather`` pads a batch of
clips to K frames with a validity mask, ``stitch`` puts clip outputs back on each video's frame
axis.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch


@dataclass
class FeatureSet:
    """Standardised per-frame features of a set of videos; ``fold_data.load_features`` reads
    them from the feature shards. Held in memory (``x``: one tensor per video) or, when too large
    for that, read a clip at a time (``stream(video, start, length)``): :meth:`rows` either way."""
    x: dict[str, torch.Tensor]                 # video -> (n, D) standardised float32 (empty when streamed)
    valid: dict[str, np.ndarray]               # video -> (n,) face / primary-store valid
    names: list[str]                           # store names (shard extractors)
    dims: list[int]                            # dimension of each store
    mean: np.ndarray                           # (D,) float32
    std: np.ndarray                            # (D,) float32
    logits: dict[str, np.ndarray] = field(default_factory=dict)  # mae head logits, if stored
    sources: list[dict] = field(default_factory=list)  # per store: ``fold_data.shard_source`` (checkpoints record it)
    stream: Callable[[str, int, int], torch.Tensor] | None = None  # ``fold_data.ShardRows``; has close()

    @property
    def dim(self) -> int:
        return int(sum(self.dims))

    def n_frames(self, video: str) -> int:
        return len(self.valid[video])

    def rows(self, video: str, start: int, length: int) -> torch.Tensor:
        """Standardised rows [start, start + length) of ``video``, float32 (L, D)."""
        if self.stream is not None:
            return self.stream(video, start, length)
        return self.x[video][start:start + length].float()

    def close(self) -> None:
        """Close the shards a streamed set reads from (nothing to do for one in memory)."""
        if self.stream is not None:
            self.stream.close()


@dataclass(frozen=True)
class Clip:
    video: str
    start: int
    length: int


def train_clips(n_frames: dict[str, int], K: int, stride: int) -> list[Clip]:
    """Windows of K frames every ``stride`` frames plus one flush with the end of each video."""
    out = []
    for v in sorted(n_frames):
        n = n_frames[v]
        if n <= K:
            out.append(Clip(v, 0, n))
            continue
        starts = list(range(0, n - K + 1, max(1, stride)))
        if starts[-1] != n - K:
            starts.append(n - K)
        out += [Clip(v, s, K) for s in starts]
    return out


def eval_clips(n_frames: dict[str, int], K: int) -> list[Clip]:
    """Non-overlapping clips covering each video; the last one is shorter (padded when batched)."""
    return [Clip(v, s, min(K, n_frames[v] - s)) for v in sorted(n_frames) for s in range(0, n_frames[v], K)]


def video_clips(n_frames: dict[str, int]) -> list[Clip]:
    """ERI: one entry per video, cropped to K frames when batched."""
    return [Clip(v, 0, n_frames[v]) for v in sorted(n_frames)]


def batches(items: list, batch_size: int, generator: torch.Generator | None = None) -> Iterator[list]:
    """Consecutive batches; shuffled with ``generator`` when given (seeded → reproducible)."""
    order = torch.randperm(len(items), generator=generator).tolist() if generator is not None else range(len(items))
    order = list(order)
    for s in range(0, len(order), batch_size):
        yield [items[i] for i in order[s:s + batch_size]]


def gather(fs: FeatureSet, clips: list[Clip], K: int, labels=None, per_video: bool = False,
           generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Stack clips into a batch: x (B, K, D) f32, pad (B, K) True on real frames, and labels.

    Frame tasks: y (B, K, C), ymask (B, K) (label valid and not padding). ``per_video`` (ERI):
    clips longer than K are cropped to K frames (random start with ``generator``, else the
    first K); y (B, C), ymask (B,).
    """
    B, D = len(clips), fs.dim
    x = torch.zeros(B, K, D)
    pad = torch.zeros(B, K, dtype=torch.bool)
    starts = []
    for b, c in enumerate(clips):
        s, L = c.start, c.length
        if L > K:
            off = int(torch.randint(0, L - K + 1, (1,), generator=generator)) if generator is not None else 0
            s, L = s + off, K
        x[b, :L] = fs.rows(c.video, s, L)
        pad[b, :L] = True
        starts.append((s, L))
    out = {"x": x, "pad": pad}
    if labels is None:
        return out
    if per_video:
        out["y"] = torch.stack([labels[c.video][0].reshape(-1) for c in clips])
        out["ymask"] = torch.stack([labels[c.video][1].reshape(-1)[:1].any() for c in clips])
        return out
    C = next(iter(labels.values()))[0].shape[1]
    y = torch.zeros(B, K, C)
    ym = torch.zeros(B, K, dtype=torch.bool)
    for b, (c, (s, L)) in enumerate(zip(clips, starts)):
        yv, mv = labels[c.video]
        y[b, :L], ym[b, :L] = yv[s:s + L], mv[s:s + L]
    out["y"], out["ymask"] = y, ym
    return out


def stitch(clips: list[Clip], outputs: torch.Tensor, n_frames: dict[str, int]) -> dict[str, torch.Tensor]:
    """Per-clip outputs (N, K, C) → per-frame (n, C) per video, averaging where clips overlap."""
    C = outputs.shape[-1]
    used = {c.video for c in clips}
    acc = {v: torch.zeros(n, C) for v, n in n_frames.items() if v in used}
    cnt = {v: torch.zeros(n, 1) for v, n in n_frames.items() if v in used}
    for c, o in zip(clips, outputs):
        L = min(c.length, o.shape[0])
        acc[c.video][c.start:c.start + L] += o[:L].float()
        cnt[c.video][c.start:c.start + L] += 1
    return {v: acc[v] / cnt[v].clamp_min(1) for v in acc}
