"""What the temporal stages read: one fold's features and labels.

Features come from shards (``feature_shards.FeatureShard``) given in concatenation order (e.g.
``features/mae/AU/fold1.h5 features/hubert.h5``); a store is named by its shard's extractor
(``mae_AU``, ``hubert``). A job concatenates the stores per frame and standardises every
dimension with the *training* frames' mean / std (audio and visual features live on very
different scales; the statistics, computed in one streaming pass, travel in the checkpoint).
Rows a store marks invalid (no face, no audio) keep their place and become 0 after
standardisation (the training mean); label masks decide what is scored. A small job holds its
standardised features in memory; a large one (Aff-Wild2: ~15 GB as stored) reads each clip's
rows from the shards when a batch needs them, with the same values. How clips are cut from
them is ``clips.py``; the stages' settings and command line are ``settings.py``.
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

#: a job holds its standardised features in memory (float32) up to this size and reads clips
#: from the shards above it (Aff-Wild2 with four stores: ~30 GB in float32, ~15 GB as stored)
IN_MEMORY_BYTES = 2**31
#: rows per read when a whole video is streamed (the statistics pass): bounds that pass's memory
BLOCK_ROWS = 8192


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


def video_flags(shards: list[FeatureShard], video: str, want_dims=None,
                whose: str = "other videos have") -> tuple[np.ndarray, list[int]]:
    """One video's valid flags (n, S), one column per store, and its dimension per store, read
    without its features; every store must hold one row per frame and, given ``want_dims``, the
    dimensions expected (``whose``: the checkpoint's, or the first video's)."""
    flags, dims = [], []
    for i, s in enumerate(shards):
        n, valid = s.n_frames(video), s.rows(video, name="valid").astype(bool)
        if len(valid) != n:
            raise PipelineError(f"{s.path}:{video}: features has {n} rows but valid has {len(valid)}")
        if flags and n != len(flags[0]):
            raise PipelineError(f"video {video!r}: {s.path} has {n} frames but {shards[0].path} "
                                f"has {len(flags[0])}; feature shards must hold one row per decoded frame")
        flags.append(valid)
        dims.append(int(s.rows(video, 0, 0).shape[1]))
        if want_dims is not None and dims[i] != want_dims[i]:
            raise PipelineError(f"{s.path}: video {video!r} has feature dimension {dims[i]} but {whose} "
                                f"{want_dims[i]} for store {s.name!r}")
    return np.stack(flags, 1), dims


def head_logits(shards: list[FeatureShard], video: str) -> np.ndarray | None:
    """The fine-tuned MAE head's logits of one video (the first mae store holding them), or None."""
    s = next((s for s in shards if s.name.startswith("mae") and s.has(video, "logits")), None)
    return None if s is None else np.asarray(s.rows(video, name="logits"), np.float32)


def standardise(raw: np.ndarray, flags: np.ndarray, mean, std, cols) -> np.ndarray:
    """(raw − mean) / std in float32 for rows of concatenated stores; a store's rows its valid
    flags (``flags`` (n, S)) reject become 0, the training mean. Element by element, so a clip
    read alone gives exactly the rows of its video standardised whole."""
    a = (raw.astype(np.float32) - mean) / std
    a[~flags[:, cols]] = 0.0
    return a


class ShardRows:
    """Standardised rows read from the feature shards a clip at a time: what a job whose
    features would not fit :data:`IN_MEMORY_BYTES` reads instead of holding every video."""

    def __init__(self, shards: list[FeatureShard], flags: dict[str, np.ndarray], mean, std, dims):
        self.shards, self.flags, self.mean, self.std = shards, flags, mean, std
        self.cols = np.repeat(np.arange(len(dims)), dims)

    def __call__(self, video: str, start: int, length: int) -> torch.Tensor:
        raw = np.concatenate([s.rows(video, start, start + length) for s in self.shards], 1)
        return torch.from_numpy(standardise(raw, self.flags[video][start:start + length], self.mean, self.std,
                                            self.cols))

    def close(self) -> None:
        for s in self.shards:
            s.close()


def fit_norm(shards: list[FeatureShard], videos: list[str], flags: dict[str, np.ndarray], dims) -> tuple:
    """Per-dimension mean / std of the valid rows of ``videos``, in one pass over the shards
    (:data:`BLOCK_ROWS` rows per read, so a long video costs no more memory than a short one)."""
    mom = Moments(dims)
    for v in progress(videos, desc="feature statistics", unit="video"):
        for i, s in enumerate(shards):
            for b in range(0, len(flags[v]), BLOCK_ROWS):
                mom.add(i, s.rows(v, b, b + BLOCK_ROWS), flags[v][b:b + BLOCK_ROWS, i])
    return mom.result()


def load_features(shards, videos, *, train_videos=None, norm=None, with_logits: bool = False,
                  expect_dims=None, in_memory_bytes: int | None = None) -> FeatureSet:
    """``videos``' features from the shard files, standardised with ``norm`` (mean, std) or with
    the statistics of ``train_videos`` (all ``videos`` when None), computed in one streaming pass.

    Held in memory in float32 when they fit ``in_memory_bytes`` (default :data:`IN_MEMORY_BYTES`),
    else read from the shards clip by clip (:class:`ShardRows`): the same rows either way, and
    a job's memory then no longer grows with the features' size (only the valid flags, logits
    and labels stay in memory).
    """
    if not shards:
        raise PipelineError("no --features shards given")
    videos = list(videos)
    limit = IN_MEMORY_BYTES if in_memory_bytes is None else in_memory_bytes
    with contextlib.ExitStack() as stack:
        readers = [stack.enter_context(FeatureShard(p)) for p in shards]
        names, sources = [r.name for r in readers], [shard_source(r) for r in readers]
        flags, logits, dims = {}, {}, None if expect_dims is None else list(expect_dims)
        whose = "other videos have" if expect_dims is None else "the checkpoint expects"
        for v in progress(videos, desc="read features", unit="video"):
            flags[v], dims = video_flags(readers, v, dims, whose)
            lg = head_logits(readers, v) if with_logits else None
            if lg is not None:
                logits[v] = lg
        if not videos:
            raise PipelineError(f"no videos to read from {[str(p) for p in shards]}")
        if norm is None:
            fit_on = set(videos if train_videos is None else train_videos)
            norm = fit_norm(readers, [v for v in videos if v in fit_on], flags, dims)
        mean, std = (np.asarray(a, np.float32) for a in norm)
        prim = primary_stores(names)
        valid = {v: flags[v][:, prim].all(1) for v in videos}
        rows = ShardRows(readers, flags, mean, std, dims)
        if sum(len(f) for f in flags.values()) * sum(dims) * 4 > limit:
            stack.pop_all()                  # the readers stay open: they serve the clips
            log.info("features: %d videos, stores %s, dims %s, read from the shards clip by clip",
                     len(videos), names, dims)
            return FeatureSet({}, valid, names, list(dims), mean, std, logits, sources, stream=rows)
        x = {v: rows(v, 0, len(flags[v])) for v in videos}
    log.info("features: %d videos, stores %s, dims %s, %.1f MB in memory", len(x), names, dims,
             sum(t.numel() * t.element_size() for t in x.values()) / 2**20)
    return FeatureSet(x, valid, names, list(dims), mean, std, logits, sources)


class Moments:
    """Per-dimension mean / std over the valid rows of each store (float64 running sums)."""

    def __init__(self, dims):
        self.bounds = np.cumsum([0] + list(dims))
        self.s1, self.s2, self.n = (np.zeros(self.bounds[-1]) for _ in range(3))

    def add(self, store: int, feats: np.ndarray, valid: np.ndarray) -> None:
        """Rows ``feats`` of store number ``store``, of which those ``valid`` marks count."""
        sl, a = slice(self.bounds[store], self.bounds[store + 1]), feats[valid].astype(np.float64)
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

    def close(self) -> None:
        """Close the feature shards a streamed fold reads its clips from."""
        self.fs.close()

    def d_init(self) -> list[Clip]:
        """The training clips of this fold (ERI: one entry per video)."""
        n = {v: self.fs.n_frames(v) for v in self.train}
        return video_clips(n) if self.per_video else train_clips(n, self.K, self.stride)

    def batches(self, clips: list[Clip], batch_size: int, gen: torch.Generator, device) -> Iterator[dict]:
        """One epoch of device batches over ``clips`` (shuffled with ``gen``)."""
        for bc in batches(clips, batch_size, gen):
            b = gather(self.fs, bc, self.K, self.labels, self.per_video, generator=gen)
            yield {k: v.to(device, non_blocking=True) for k, v in b.items()}


def check_labels(inp: FoldInputs, fs: FeatureSet, labels: dict) -> None:
    """Every video's labels have the task's columns and, frame tasks, one row per feature row."""
    cols = 1 if inp.task == "EXPR" else TASK_OUTPUTS[inp.task]
    for v, lab in labels.items():
        n = fs.n_frames(v)
        if inp.task != "ERI" and len(lab.y) != n:
            raise PipelineError(f"{inp.labels}: video {v} has {len(lab.y)} label rows but its features in "
                                f"{inp.features[0]} have {n} frames")
        if lab.y.shape[-1] != cols:
            raise PipelineError(f"{inp.labels}: video {v}: labels have {lab.y.shape[-1]} columns, "
                                f"task {inp.task} needs {cols}")


def load_fold(inp: FoldInputs, hp: TemporalHP, norm=None, expect_dims=None, with_logits=False) -> FoldData:
    """Labels + features of the fold's train and validation videos, read once."""
    train, val, _ = read_fold(inp.folds, inp.fold)
    labels = read_labels(inp.labels, train + val)
    fs = load_features(inp.features, train + val, train_videos=train, norm=norm, with_logits=with_logits,
                       expect_dims=expect_dims)
    try:
        check_labels(inp, fs, labels)
    except PipelineError:
        fs.close()
        raise
    ytr = np.concatenate([labels[v].y for v in train])
    mtr = np.concatenate([labels[v].mask for v in train])
    w = class_weights(inp.task, ytr, mtr, hp.au_pos_weight)
    tensors = {v: (torch.from_numpy(np.asarray(l.y, np.float32)), torch.from_numpy(np.asarray(l.mask, bool)))
               for v, l in labels.items()}
    return FoldData(inp.task, inp.fold, fs, tensors, labels, train, val, hp.clip_len,
                    hp.stride, None if w is None else torch.from_numpy(w))
