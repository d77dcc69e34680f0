"""Clip dataset for the temporal models: per-frame features of several stores, in memory.

A job reads every video's feature stores once (``--features DIR...`` in concatenation order,
``DIR/{video}.h5``), concatenates them per frame, standardises each dimension with the mean /
std of the *training* frames (audio and visual features live on very different scales; the
statistics travel in the checkpoint) and keeps one tensor per video. Rows that a store marks
invalid (no face, no audio) keep their place and are set to 0 after standardisation, i.e. to the
training mean; label masks decide what is scored.

Clips are ``Clip(video, start, length)`` windows of at most K frames:
- training (frame tasks): stride ``stride``, plus one clip flush with the video's end, so every
  frame is seen; videos shorter than K give one padded clip;
- evaluation: non-overlapping clips 0, K, 2K, ... covering each video, the last one padded and
  masked; :func:`stitch` puts clip outputs back into per-frame rows;
- ERI: one "clip" per video (the whole video); :func:`gather` crops K frames from it at random
  (training) or from the start.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import torch

from .runtime import PipelineError, log, progress
from .stores import Labels, read_features


HALF_ABOVE_BYTES = 2**31   # keep features in float16 when a job's float32 copy would exceed this


@dataclass(frozen=True)
class Clip:
    video: str
    start: int
    length: int


@dataclass
class FeatureSet:
    """Standardised per-frame features of a set of videos (one tensor per video)."""
    x: dict[str, torch.Tensor]                 # video -> (n, D) standardised
    valid: dict[str, np.ndarray]               # video -> (n,) face / primary-store valid
    names: list[str]                           # store names (folder basenames)
    dims: list[int]                            # dimension of each store
    mean: np.ndarray                           # (D,) float32
    std: np.ndarray                            # (D,) float32
    logits: dict[str, np.ndarray] = field(default_factory=dict)  # mae head logits, if stored

    @property
    def dim(self) -> int:
        return int(sum(self.dims))

    def n_frames(self, video: str) -> int:
        return int(self.x[video].shape[0])


def store_names(dirs) -> list[str]:
    return [Path(d).name for d in dirs]


def primary_stores(names: list[str]) -> list[int]:
    """Stores whose valid flag means "face found": the visual (mae*) ones, else all."""
    vis = [i for i, n in enumerate(names) if n.startswith("mae")]
    return vis or list(range(len(names)))


def read_video(dirs, video: str, with_logits: bool = False):
    """Raw features of one video: list of (features (n, D_s), valid (n,)) per store + logits."""
    parts, logits, n0, first = [], None, None, None
    for d in dirs:
        path = Path(d) / f"{video}.h5"
        want = with_logits and Path(d).name.startswith("mae") and logits is None and _has(path, "logits")
        f = read_features(path, extra=("logits",) if want else ())
        if n0 is None:
            n0, first = len(f.features), path
        elif len(f.features) != n0:
            raise PipelineError(f"{path}: {len(f.features)} frames but {first} has {n0}; feature "
                                f"stores of one video must have one row per decoded frame")
        if want:
            logits = np.asarray(f.extra["logits"], np.float32)
        parts.append((f.features, f.valid))
    return parts, logits


def _has(path: Path, name: str) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return name in f
    except OSError:
        return False   # read_features reports the real problem


def load_features(dirs, videos, *, train_videos=None, norm=None, with_logits: bool = False,
                  expect_dims=None) -> FeatureSet:
    """Read ``videos`` once; standardise with ``norm`` (mean, std) or fit it on ``train_videos``.

    Statistics accumulate while reading (float64 sums), and rows are kept in float16 when the
    job's features would exceed 2 GiB in float32 (Aff-Wild2 with four stores is ~30 GB), so
    the peak memory is about the size of what is kept.
    """
    names, videos = store_names(dirs), list(videos)
    if not dirs:
        raise PipelineError("no --features folders given")
    fit_on = set(videos if train_videos is None else train_videos) if norm is None else set()
    keep, valid_s, logits, dims, mom, dtype = {}, {}, {}, None, None, np.float32
    for v in progress(videos, desc="read features", unit="video"):
        parts, lg = read_video(dirs, v, with_logits)
        d = [p[0].shape[1] for p in parts]
        if dims is None:
            dims, mom = d, Moments(d)
            if len(parts[0][0]) * sum(d) * 4 * len(videos) > HALF_ABOVE_BYTES:
                dtype = np.float16
        if d != dims or (expect_dims is not None and d != list(expect_dims)):
            want = list(expect_dims) if expect_dims is not None else dims
            bad = next(i for i in range(len(d)) if d[i] != want[i])
            raise PipelineError(f"{Path(dirs[bad]) / f'{v}.h5'}: feature dimension {d[bad]} but "
                                f"{'the checkpoint expects' if expect_dims is not None else 'other videos have'} "
                                f"{want[bad]} for store {names[bad]!r}")
        if v in fit_on:
            mom.add(parts)
        keep[v] = np.concatenate([p[0] for p in parts], 1).astype(dtype, copy=False)
        valid_s[v] = np.stack([p[1] for p in parts], 1)
        if lg is not None:
            logits[v] = lg
    if dims is None:
        raise PipelineError(f"no videos to read from {list(map(str, dirs))}")
    mean, std = (np.asarray(a, np.float32) for a in (norm if norm is not None else mom.result()))
    cols = np.repeat(np.arange(len(dims)), dims)
    prim = primary_stores(names)
    x, valid = {}, {}
    for v in videos:
        a = (keep.pop(v).astype(np.float32) - mean) / std
        a[~valid_s[v][:, cols]] = 0.0
        x[v] = torch.from_numpy(a.astype(dtype, copy=False))
        valid[v] = valid_s[v][:, prim].all(1)
    log.info("features: %d videos, stores %s, dims %s, %.1f MB in memory (%s)", len(x), names, dims,
             sum(t.numel() * t.element_size() for t in x.values()) / 2**20, np.dtype(dtype).name)
    return FeatureSet(x, valid, names, list(dims), mean, std, logits)


class Moments:
    """Per-dimension mean / std over the valid rows of each store (float64 running sums)."""

    def __init__(self, dims):
        self.bounds = np.cumsum([0] + list(dims))
        self.s1, self.s2, self.n = (np.zeros(self.bounds[-1]) for _ in range(3))

    def add(self, parts) -> None:
        for i, (feats, valid) in enumerate(parts):
            sl, a = slice(self.bounds[i], self.bounds[i + 1]), feats[valid].astype(np.float64)
            self.s1[sl] += a.sum(0)
            self.s2[sl] += (a * a).sum(0)
            self.n[sl] += len(a)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        n = np.maximum(self.n, 1)
        mean = self.s1 / n
        std = np.sqrt(np.maximum(self.s2 / n - mean**2, 0.0))
        return mean.astype(np.float32), np.where(std > 1e-6, std, 1.0).astype(np.float32)


# ---------------------------------------------------------------- clips
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


def label_tensors(labels: dict[str, Labels]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {v: (torch.from_numpy(np.asarray(l.y, np.float32)), torch.from_numpy(np.asarray(l.mask, bool)))
            for v, l in labels.items()}


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
        x[b, :L] = fs.x[c.video][s:s + L].float()
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
