"""What the temporal stages read: one fold's features and labels, in memory.

Features come from shards (``feature_shards.FeatureShard``) given in concatenation order (e.g.
``features/mae/AU/fold1.h5 features/hubert.h5``); a store is named by its shard's extractor
(``mae_AU``, ``hubert``). A job reads each video once, concatenates the stores per frame and
standardises every dimension with the *training* frames' mean / std (audio and visual features
live on very different scales; the statistics travel in the checkpoint). Rows a store marks
invalid (no face, no audio) keep their place and become 0 after standardisation (the training
mean); label masks decide what is scored. How clips are cut from them is ``clips.py``; the
stages' settings and command line are ``settings.py``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.feature_shards import FeatureShard
from affect_pipeline.common.folds import read_fold
from affect_pipeline.common.losses import class_weights
from affect_pipeline.common.runtime import log, progress
from affect_pipeline.common.stores import read_labels
from affect_pipeline.common.tasks import TASK_OUTPUTS
from affect_pipeline.temporal.clips import (
    Clip,
    FeatureSet,
    batches,
    gather,
    train_clips,
    video_clips,
)
from affect_pipeline.temporal.settings import FoldInputs, TemporalHP

HALF_ABOVE_BYTES = 2**31   # keep features in float16 when a job's float32 copy would exceed this


# ---------------------------------------------------------------- features
def primary_stores(names: list[str]) -> list[int]:
    """Stores whose valid flag means "face found": the visual (mae*) ones, else all."""
    vis = [i for i, n in enumerate(names) if n.startswith("mae")]
    return vis or list(range(len(names)))


def shard_names(paths) -> list[str]:
    """The store names (extractors) of the given shards, in order."""
    names = []
    for p in paths:
        with FeatureShard(p) as s:
            names.append(s.name)
    return names


#: the shard root attrs a temporal checkpoint records per store (with the store's name and shard path)
SOURCE_ATTRS = ("fold", "checkpoint_digest", "layer")


def shard_source(shard: FeatureShard) -> dict:
    """Where one store's features came from, from its shard's root attrs: ``name`` (extractor),
    ``fold`` (visual: the encoder's fold), ``checkpoint_digest`` (the extractor's weights),
    ``layer`` (audio), ``shard`` (the path read); None where the shard lacks an attr. Temporal
    checkpoints carry these, so affect-predict can recompute each store with the same weights."""
    def plain(v):
        if v is None:
            return None
        return v.decode() if isinstance(v, bytes) else str(v)

    return {"name": shard.name, **{k: plain(shard.attrs.get(k)) for k in SOURCE_ATTRS}, "shard": str(shard.path)}


def read_video(shards: list[FeatureShard], video: str, with_logits: bool = False):
    """Raw features of one video: [(features (n, D_s), valid (n,)) per shard] + mae logits or None."""
    parts, logits = [], None
    for s in shards:
        want = with_logits and logits is None and s.name.startswith("mae") and s.has(video, "logits")
        f = s.read(video, extra=("logits",) if want else ())
        if parts and len(f.features) != len(parts[0][0]):
            raise PipelineError(f"video {video!r}: {s.path} has {len(f.features)} frames but {shards[0].path} "
                                f"has {len(parts[0][0])}; feature shards must hold one row per decoded frame")
        if want:
            logits = np.asarray(f.extra["logits"], np.float32)
        parts.append((f.features, f.valid))
    return parts, logits


def load_features(shards, videos, *, train_videos=None, norm=None, with_logits: bool = False,
                  expect_dims=None) -> FeatureSet:
    """Read ``videos`` once from the shard files; standardise with ``norm`` (mean, std) or fit it
    on ``train_videos``.

    Statistics accumulate while reading (float64 sums), and rows are kept in float16 when the
    job's features would exceed 2 GiB in float32 (Aff-Wild2 with four stores is ~30 GB), so
    the peak memory is about the size of what is kept.
    """
    if not shards:
        raise PipelineError("no --features shards given")
    videos = list(videos)
    fit_on = set(videos if train_videos is None else train_videos) if norm is None else set()
    keep, valid_s, logits, dims, mom, dtype = {}, {}, {}, None, None, np.float32
    with contextlib.ExitStack() as stack:
        readers = [stack.enter_context(FeatureShard(p)) for p in shards]
        names = [r.name for r in readers]
        sources = [shard_source(r) for r in readers]
        for v in progress(videos, desc="read features", unit="video"):
            parts, lg = read_video(readers, v, with_logits)
            d = [p[0].shape[1] for p in parts]
            if dims is None:
                dims, mom = d, Moments(d)
                if len(parts[0][0]) * sum(d) * 4 * len(videos) > HALF_ABOVE_BYTES:
                    dtype = np.float16
            want = list(expect_dims) if expect_dims is not None else dims
            if d != want:
                bad = next(i for i in range(len(d)) if d[i] != want[i])
                raise PipelineError(f"{readers[bad].path}: video {v!r} has feature dimension {d[bad]} but "
                                    f"{'the checkpoint expects' if expect_dims is not None else 'other videos have'} "
                                    f"{want[bad]} for store {names[bad]!r}")
            if v in fit_on:
                mom.add(parts)
            keep[v] = np.concatenate([p[0] for p in parts], 1).astype(dtype, copy=False)
            valid_s[v] = np.stack([p[1] for p in parts], 1)
            if lg is not None:
                logits[v] = lg
    if dims is None:
        raise PipelineError(f"no videos to read from {[str(p) for p in shards]}")
    mean, std = (np.asarray(a, np.float32) for a in (norm if norm is not None else mom.result()))
    cols, prim = np.repeat(np.arange(len(dims)), dims), primary_stores(names)
    x, valid = {}, {}
    for v in videos:
        a = (keep.pop(v).astype(np.float32) - mean) / std
        a[~valid_s[v][:, cols]] = 0.0
        x[v] = torch.from_numpy(a.astype(dtype, copy=False))
        valid[v] = valid_s[v][:, prim].all(1)
    log.info("features: %d videos, stores %s, dims %s, %.1f MB in memory (%s)", len(x), names, dims,
             sum(t.numel() * t.element_size() for t in x.values()) / 2**20, np.dtype(dtype).name)
    return FeatureSet(x, valid, names, list(dims), mean, std, logits, sources)


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


# ---------------------------------------------------------------- one fold
@dataclass
class FoldData:
    task: str
    fold: str
    fs: FeatureSet
    labels: dict                      # video -> (y tensor, mask tensor)
    labels_np: dict                   # video -> stores.Labels
    train: list[str]
    val: list[str]
    K: int
    stride: int
    weights: torch.Tensor | None = None

    @property
    def per_video(self) -> bool:
        return self.task == "ERI"

    def d_init(self) -> list[Clip]:
        """The training clips of this fold (ERI: one entry per video)."""
        n = {v: self.fs.n_frames(v) for v in self.train}
        return video_clips(n) if self.per_video else train_clips(n, self.K, self.stride)

    def batches(self, clips: list[Clip], batch_size: int, gen: torch.Generator, device) -> Iterator[dict]:
        """One epoch of device batches over ``clips`` (shuffled with ``gen``)."""
        for bc in batches(clips, batch_size, gen):
            b = gather(self.fs, bc, self.K, self.labels, self.per_video, generator=gen)
            yield {k: v.to(device, non_blocking=True) for k, v in b.items()}


def load_fold(inp: FoldInputs, hp: TemporalHP, norm=None, expect_dims=None, with_logits=False) -> FoldData:
    """Labels + features of the fold's train and validation videos, read once."""
    train, val, _ = read_fold(inp.folds, inp.fold)
    labels = read_labels(inp.labels, train + val)
    fs = load_features(inp.features, train + val, train_videos=train, norm=norm, with_logits=with_logits,
                       expect_dims=expect_dims)
    cols = 1 if inp.task == "EXPR" else TASK_OUTPUTS[inp.task]
    for v in train + val:
        n, lab = fs.n_frames(v), labels[v]
        if inp.task != "ERI" and len(lab.y) != n:
            raise PipelineError(f"{inp.labels}: video {v} has {len(lab.y)} label rows but its features in "
                                f"{inp.features[0]} have {n} frames")
        if lab.y.shape[-1] != cols:
            raise PipelineError(f"{inp.labels}: video {v}: labels have {lab.y.shape[-1]} columns, "
                                f"task {inp.task} needs {cols}")
    ytr = np.concatenate([labels[v].y for v in train])
    mtr = np.concatenate([labels[v].mask for v in train])
    w = class_weights(inp.task, ytr, mtr, hp.au_pos_weight)
    tensors = {v: (torch.from_numpy(np.asarray(l.y, np.float32)), torch.from_numpy(np.asarray(l.mask, bool)))
               for v, l in labels.items()}
    return FoldData(inp.task, inp.fold, fs, tensors, labels, train, val, hp.clip_len,
                    hp.stride, None if w is None else torch.from_numpy(w))
