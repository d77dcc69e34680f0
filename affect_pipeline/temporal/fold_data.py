"""What the temporal trainers read: one fold's clips, features, labels and settings, in memory.

Features come from shards (``stores.FeatureShard``) given in concatenation order (e.g.
``features/mae/AU/fold1.h5 features/hubert.h5``); a store is named by its shard's extractor
(``mae_AU``, ``hubert``). A job reads each video once, concatenates the stores per frame and
standardises every dimension with the *training* frames' mean / std (audio and visual features
live on very different scales; the statistics travel in the checkpoint). Rows a store marks
invalid (no face, no audio) keep their place and become 0 after standardisation (the training
mean); label masks decide what is scored.

Clips are ``Clip(video, start, length)`` windows of at most K frames: training clips every
``stride`` frames plus one flush with the video's end; evaluation clips 0, K, 2K, ... (the last
padded, :func:`stitch` puts outputs back into frames); ERI: one clip per video, cropped to K
frames by :func:`gather` (at random when training).

Settings: the ``temporal`` config section arrives complete through ``--params``
(workflow_config.yaml is the one source of defaults); a missing key is a PipelineError naming it.
"""
from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import torch

from affect_pipeline.common.config import settings
from affect_pipeline.common.losses import class_weights
from affect_pipeline.common.runtime import (
    PipelineError,
    log,
    pick_device,
    progress,
    read_json,
    setup_torch,
    stage_parser,
)
from affect_pipeline.common.stores import FeatureShard, read_labels
from affect_pipeline.common.tasks import TASK_OUTPUTS
from affect_pipeline.common.training import Schedule
from affect_pipeline.temporal.clips import Clip, batches, gather, train_clips, video_clips
from affect_pipeline.temporal.model import INFERENCE

HALF_ABOVE_BYTES = 2**31   # keep features in float16 when a job's float32 copy would exceed this


# ---------------------------------------------------------------- settings (from --params)
@dataclass(frozen=True)
class BranchHP:
    """One branch's model and optimiser (``temporal.blb``; ERI: ``blb`` overlaid with ``eri``)."""
    d_model: int
    nhead: int
    layers: int
    dropout: float
    lr: float
    weight_decay: float
    batch_size: int
    epochs: int
    warmup_epochs: int
    ema_decay: float

    def schedule(self, epochs: int | None = None):
        """The ``training.Schedule`` of this branch (DCL keeps the optimiser, sets its own epochs)."""
        return Schedule(epochs=int(self.epochs if epochs is None else epochs), lr=float(self.lr),
                        weight_decay=float(self.weight_decay), warmup_epochs=int(self.warmup_epochs),
                        ema_decay=float(self.ema_decay), clip_grad=1.0)


@dataclass(frozen=True)
class DclHP:
    """``temporal.dcl``: Beta(tau1, tau2) for α, how the CLB starts, how branches combine."""
    tau1: float
    tau2: float
    clb_init: str        # blb | fresh
    inference: str       # mean | blb_weighted | blb | clb
    epochs: int


@dataclass(frozen=True)
class MiningHP:
    """``temporal.mining``: share of D_CLB taken by the hardest clips."""
    hard_fraction: float


@dataclass(frozen=True)
class TemporalHP:
    clip_len: int
    stride: int
    au_pos_weight: bool                  # AU loss: + per-AU neg/pos positive weights (not in eq. 1)
    branch: BranchHP
    pooling: str | None = None           # ERI's clip pooling (attention | mean); None: frame tasks
    mining: MiningHP | None = None       # the sections a stage asks for; None when it does not
    dcl: DclHP | None = None


def temporal_hp(params: dict, task: str, *sections: str) -> TemporalHP:
    """The settings of one task from the ``temporal`` section; ``sections``: "mining", "dcl"."""
    for key in ("clip_len", "stride", "au_pos_weight", "blb") + (("eri",) if task == "ERI" else ()) + sections:
        if key not in params:
            raise PipelineError(f"temporal: missing key {key!r} in --params (see workflow_config.yaml)")
    pooling = None
    if task == "ERI":     # the ERI model: the BLB's settings overlaid with temporal.eri (+ its pooling)
        eri = dict(params["eri"])
        pooling = eri.pop("pooling", None)
        _check("eri.pooling", pooling, ("attention", "mean"))
        branch = settings(BranchHP, {**params["blb"], **eri}, "temporal.blb + temporal.eri")
    else:
        branch = settings(BranchHP, params["blb"], "temporal.blb")
    mining = settings(MiningHP, params["mining"], "temporal.mining") if "mining" in sections else None
    dcl = settings(DclHP, params["dcl"], "temporal.dcl") if "dcl" in sections else None
    if dcl is not None:
        _check("dcl.clb_init", dcl.clb_init, ("blb", "fresh"))
        _check("dcl.inference", dcl.inference, INFERENCE)
    return TemporalHP(int(params["clip_len"]), int(params["stride"]), bool(params["au_pos_weight"]), branch,
                      pooling, mining, dcl)


def _check(key: str, value, allowed) -> None:
    if value not in allowed:
        raise PipelineError(f"temporal.{key} in --params must be {' | '.join(allowed)}, not {value!r}")


# ---------------------------------------------------------------- command line
@dataclass(frozen=True)
class FoldInputs:
    """Where one task × fold's data lives."""
    task: str
    fold: str
    folds: Path
    labels: Path
    features: tuple[Path, ...]   # shards, in concatenation order

    @classmethod
    def from_args(cls, a) -> "FoldInputs":
        return cls(a.task, a.fold, Path(a.folds), Path(a.labels), tuple(Path(p) for p in a.features))


@dataclass(frozen=True)
class TrainOutputs:
    model: Path
    metrics: Path
    curve: Path

    @classmethod
    def from_args(cls, a) -> "TrainOutputs":
        return cls(Path(a.out), Path(a.metrics), Path(a.curve))


@dataclass(frozen=True)
class Job:
    """How a job runs: CPU threads, device, seed."""
    threads: int = 1
    device: str = "auto"
    seed: int = 0

    @classmethod
    def from_args(cls, a) -> "Job":
        return cls(a.threads, a.device, a.seed)

    def start(self) -> torch.device:
        setup_torch(self.threads, self.seed)
        return pick_device(self.device)


def fold_parser(stage: str, doc: str | None, train_outputs: bool = True) -> argparse.ArgumentParser:
    """The arguments every temporal stage shares (+ --out/--metrics/--curve for the trainers)."""
    p = stage_parser(stage, doc)
    p.add_argument("--task", required=True, choices=list(TASK_OUTPUTS))
    p.add_argument("--fold", required=True)
    p.add_argument("--folds", required=True, help="results/folds/{task}.json")
    p.add_argument("--labels", required=True, help="results/index/labels/{task}.h5")
    p.add_argument("--features", required=True, nargs="+",
                   help="feature shards in concatenation order, e.g. features/mae/AU/fold1.h5 features/hubert.h5")
    if train_outputs:
        p.add_argument("--out", required=True)
        p.add_argument("--metrics", required=True)
        p.add_argument("--curve", required=True)
    return p


# ---------------------------------------------------------------- features
@dataclass
class FeatureSet:
    """Standardised per-frame features of a set of videos (one tensor per video)."""
    x: dict[str, torch.Tensor]                 # video -> (n, D) standardised
    valid: dict[str, np.ndarray]               # video -> (n,) face / primary-store valid
    names: list[str]                           # store names (shard extractors)
    dims: list[int]                            # dimension of each store
    mean: np.ndarray                           # (D,) float32
    std: np.ndarray                            # (D,) float32
    logits: dict[str, np.ndarray] = field(default_factory=dict)  # mae head logits, if stored
    sources: list[dict] = field(default_factory=list)  # per store: :func:`shard_source` (checkpoints record it)

    @property
    def dim(self) -> int:
        return int(sum(self.dims))

    def n_frames(self, video: str) -> int:
        return int(self.x[video].shape[0])


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


class FoldSplit(NamedTuple):
    train: list[str]
    val: list[str]
    test: list[str]


def read_fold(folds_path, fold: str) -> FoldSplit:
    """The fold's train / validation videos and the task's test videos (make_folds output)."""
    doc = read_json(folds_path)
    if fold not in doc.get("folds", {}):
        raise PipelineError(f"{folds_path}: no fold {fold!r} (has {sorted(doc.get('folds', {}))})")
    f = doc["folds"][fold]
    if not f.get("train") or not f.get("validation"):
        raise PipelineError(f"{folds_path}: fold {fold!r} has an empty train or validation list")
    return FoldSplit(list(f["train"]), list(f["validation"]), list(doc.get("test", [])))


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
