"""``visual_features``: a task's fine-tuned encoders (one a fold) stream its videos into their shards.

The models are loaded once per job and each video's crops decoded once for all of them (at
Aff-Wild2 scale a job per video would spend most of a GPU's time on imports, CUDA start-up and
weight loading; a job per fold, on decoding the same JPEGs again). Per video group: ``features`` =
the encoder's pooled frame feature, pooled as it was fine-tuned (the checkpoint's ``pool``,
``mae.features.pool``: MAE's global pool by default; the head's input, so ``logits = head(features)``),
``valid`` = a face was found, extra ``logits``; frames without a face are not run through the
model: their rows are zeros. A batch holds ``batch_size`` found frames of consecutive videos (a
long video spans batches, a batch holds many short clips: Hume-Reaction's 25,067 clips are not
25,067 forwards), and a video is written once its last frame is. A thread decodes the next batch's
JPEGs (cv2 releases the GIL) while the models run on the current one. Each shard is resumable: a killed or failed
job's finished videos are kept in ``{out}.partial`` and not recomputed by the next attempt.
"""
from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from affect_pipeline.common.config import settings
from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.feature_shards import FeatureShardWriter
from affect_pipeline.common.lists import read_list
from affect_pipeline.common.runtime import (
    autocast,
    file_digest,
    load_checkpoint,
    pick_device,
    progress,
    setup_torch,
    stage_parser,
)
from affect_pipeline.common.stores import FaceStore, face_store_paths, skip_failed
from affect_pipeline.mae.face_reader import resize_crops, standardize, to_unit
from affect_pipeline.mae.model import CHECKPOINT_FORMAT, POOLS, ViTClassifier, model_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureSettings:
    """``mae.features`` of workflow_config.yaml but ``pool``, which the fine-tune reads: an
    encoder's features are pooled as its head learnt them (the checkpoint's ``pool``); a ``pool``
    in --params is checked against it (:func:`check_pool`)."""
    batch_size: int


#: the pooling of finetune_mae checkpoints written before ``pool`` was a setting
LEGACY_POOLING = {"mean_patch_tokens": "mean_norm"}


def checkpoint_pool(obj: dict, path) -> str:
    """The pool a finetune_mae checkpoint was fine-tuned with."""
    stored = obj.get("pool", obj.get("pooling"))
    pool = obj.get("pool", LEGACY_POOLING.get(obj.get("pooling")))
    if pool not in POOLS:
        raise PipelineError(f"{path}: finetune_mae checkpoint with unknown pool {stored!r} "
                            f"(known: {' | '.join(POOLS)}); rerun finetune_mae")
    return pool


def check_pool(model: ViTClassifier, pool, path) -> None:
    """``mae.features.pool`` must be the pool the encoder was fine-tuned with: its head learnt on it."""
    if pool is not None and pool != model.pool:
        raise PipelineError(f"{path}: fine-tuned with mae.features.pool {model.pool!r}, but the config says "
                            f"{pool!r}: rerun finetune_mae (its head learns on the pooled feature)")


# ---------------------------------------------------------------- the model
def load_finetuned(path, device="cpu") -> ViTClassifier:
    """The fine-tuned classifier of ``finetune_mae`` on ``device``, in eval mode; ``.task`` and
    ``.fold`` say which encoder it is."""
    obj = load_checkpoint(path)
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT or obj.get("kind") != "mae_finetune":
        raise PipelineError(f"{path}: not a finetune_mae checkpoint (format {CHECKPOINT_FORMAT}, kind mae_finetune)")
    missing = [k for k in ("task", "fold", "config", "outputs", "model") if k not in obj]
    if missing:
        raise PipelineError(f"{path}: finetune_mae checkpoint lacks {missing}; rerun finetune_mae")
    model = ViTClassifier(int(obj["outputs"]), pool=checkpoint_pool(obj, path), **model_config(obj["config"]))
    try:
        model.load_state_dict(obj["model"])
    except RuntimeError as e:
        raise PipelineError(f"{path}: weights do not match the stored model config: {e}") from e
    model.task, model.fold = str(obj["task"]), str(obj["fold"])
    return model.to(device).eval()


@torch.inference_mode()
def embed_crops(model: ViTClassifier, crops_uint8: np.ndarray, batch_size: int = 128, device="cpu"):
    """(N, S, S, 3) uint8 RGB crops -> (features (N, D), logits (N, outputs)) float32 numpy."""
    device = torch.device(device)
    size = model.config["img_size"]
    feats, logits = [], []
    for s in range(0, len(crops_uint8), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(resize_crops(crops_uint8[s:s + batch_size], size)))
        with autocast(device):
            f, z = model(standardize(to_unit(x, device)))
        feats.append(f.float().cpu())
        logits.append(z.float().cpu())
    if not feats:
        return np.zeros((0, model.config["embed_dim"]), np.float32), np.zeros((0, model.outputs), np.float32)
    return torch.cat(feats).numpy(), torch.cat(logits).numpy()


# ---------------------------------------------------------------- decoding ahead
@dataclass
class Video:
    """A face store opened by the decoder: what the writer needs besides the crops."""
    video: str
    path: str
    found: np.ndarray
    fps: float
    digest: str


@dataclass
class Chunk:
    """Found frames ``rows`` of ``video`` and their crops; ``last``: the video's final chunk (a
    video without a face has one, empty)."""
    video: Video
    rows: np.ndarray
    crops: np.ndarray           # already resized to the model's img_size
    last: bool


@dataclass
class Failed:
    video: str
    path: str
    error: Exception


def video_chunks(video: str, path: str, size: int, first: int, batch_size: int) -> Iterator[Chunk]:
    """``video``'s found frames in :class:`Chunk` s: ``first`` of them (what the batch being filled
    has room for), then ``batch_size`` at a time."""
    with FaceStore(path) as fs:
        v = Video(video, path, fs.found.astype(bool), float(fs.attrs.get("fps", 0.0)), file_digest(path))
        idx = np.flatnonzero(v.found)
        s, n = 0, first
        while True:
            rows = idx[s:s + n]
            s, n = s + len(rows), batch_size
            yield Chunk(v, rows, resize_crops(fs.read_crops(rows), size), last=s == len(idx))
            if s == len(idx):
                return


def decode_ahead(videos: list[tuple[str, str]], batch_size: int, size: int, depth: int = 2) -> Iterator:
    """Yield batches: lists of :class:`Chunk` s, of consecutive videos, ``batch_size`` found frames
    in all (the last fewer); a long video spans batches, many short ones share one. A store that
    cannot be read yields the batch so far, then :class:`Failed`, and ends the stream. A thread
    decodes up to ``depth`` batches ahead, so memory stays at a few batches; one queue handoff a
    batch, not a video, so a job of 25,000 one-second clips does not wait on the queue."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        batch, filled = [], 0
        for video, path in videos:
            try:
                for chunk in video_chunks(video, path, size, batch_size - filled, batch_size):
                    batch.append(chunk)
                    filled += len(chunk.rows)
                    # handed over at batch_size frames, or batch_size videos (a faceless one adds no frame)
                    if filled == batch_size or len(batch) == batch_size:
                        if not put(batch):
                            return
                        batch, filled = [], 0
            except Exception as e:  # handed to the consumer, which names the video
                done = [c for c in batch if c.video.video != video]
                if done and not put(done):
                    return
                put(Failed(video, path, e))
                return
        if batch and not put(batch):
            return
        put(None)

    t = threading.Thread(target=work, name="decode", daemon=True)
    t.start()
    try:
        while (item := q.get()) is not None:
            yield item
            if isinstance(item, Failed):
                return
    finally:
        stop.set()
        t.join()


# ---------------------------------------------------------------- the stage
def face_videos(faces: list[str]) -> list[tuple[str, str]]:
    """(video id, face store) pairs; the id is the store's file stem."""
    pairs = [(Path(f).stem, str(f)) for f in faces]
    ids = [v for v, _ in pairs]
    dup = sorted({v for v in ids if ids.count(v) > 1})
    if dup:
        raise PipelineError(f"visual_features: --faces lists video(s) {dup[:5]} more than once")
    return pairs


@dataclass(eq=False)  # hashed by identity: the per-video dict of who still lacks it
class Encoder:
    """One fine-tuned encoder of the job and the shard it fills."""
    model: ViTClassifier
    writer: FeatureShardWriter


def fingerprint(model_digest: str, params: dict) -> str:
    return hashlib.sha256(json.dumps([model_digest, params], sort_keys=True).encode()).hexdigest()[:16]


def visual_features(models, faces: list[str], outs, params: dict, threads: int = 1,
                    device: str = "auto") -> list[Path]:
    """Features + logits of every video's frames, one shard per encoder (``models[i]`` into
    ``outs[i]``; a single path each is one encoder). Each face store is decoded once for all the
    encoders: a task's fold encoders share one pass over its videos."""
    models = [models] if isinstance(models, (str, Path)) else list(models)
    outs = [outs] if isinstance(outs, (str, Path)) else list(outs)
    if len(models) != len(outs) or not models:
        raise PipelineError(f"visual_features: {len(models)} --model for {len(outs)} --out; need one shard per encoder")
    if isinstance(params, dict):     # pool: the fine-tune's setting, here only checked per encoder
        pool, params = params.get("pool"), {k: v for k, v in params.items() if k != "pool"}
    else:
        pool = None
    p = settings(FeatureSettings, params, "mae.features")
    setup_torch(threads, 0)
    dev = pick_device(device)
    videos = face_videos(faces)
    encoders = []
    try:
        for path, out in zip(models, outs):
            model, digest = load_finetuned(path, dev), file_digest(path)
            check_pool(model, pool, path)
            encoders.append(Encoder(model, FeatureShardWriter(
                out, extractor=f"mae_{model.task}", fingerprint=fingerprint(digest, params), task=model.task,
                fold=model.fold, checkpoint_digest=digest, pooling=model.pool, no_face="zeros")))
        sizes = {e.model.config["img_size"] for e in encoders}
        if len(sizes) > 1:
            raise PipelineError(f"visual_features: encoders of different img_size {sorted(sizes)} in one job")
        todo = {v: [e for e in encoders if not _reusable(e.writer, v, f)] for v, f in videos}
        for e in encoders:
            n = sum(e in need for need in todo.values())
            log.info("%s: %d videos, %d already in %s, %d to compute", e.writer.out, len(videos), len(videos) - n,
                     e.writer.partial, n)
        _run([(v, f) for v, f in videos if todo[v]], todo, sizes.pop(), p.batch_size, dev)
        for e in encoders:
            e.writer.close([v for v, _ in videos])
    except BaseException:
        for e in encoders:
            e.writer.abort()
        raise
    return [Path(o) for o in outs]


def _reusable(writer: FeatureShardWriter, video: str, path: str) -> bool:
    """A finished group of a partial shard, made from this very face store."""
    return writer.done(video) and writer.f[video].attrs.get("faces_digest") == file_digest(path)


@dataclass
class Pending:
    """A video being embedded: its encoders' (features, logits) rows, filled batch by batch, and
    the share of it done so far (the progress bar counts videos, a long one in fractions)."""
    out: dict
    done: float = 0.0


def _run(videos: list[tuple[str, str]], todo: dict, size: int, bs: int, dev) -> None:
    """Decode each video's found frames once, ``bs`` frames a batch across consecutive videos;
    every encoder that lacks a video embeds its frames; a video is written once its last frame is."""
    encoders = list(dict.fromkeys(e for v, _ in videos for e in todo[v]))
    tasks = "+".join(dict.fromkeys(f"mae_{e.model.task}" for e in encoders))
    bar = progress(total=len(videos), desc=f"{tasks} ({', '.join(e.model.fold for e in encoders)})", unit="video",
                   unit_scale=True)
    pending: dict[str, Pending] = {}
    try:
        for batch in decode_ahead(videos, bs, size):
            if isinstance(batch, Failed):
                raise _failed(batch) from batch.error
            for c in batch:
                if c.video.video not in pending:
                    pending[c.video.video] = _pending(c.video, todo[c.video.video])
            _embed_batch(batch, pending, encoders, bs, dev)
            bar.update(sum(_share(c, pending[c.video.video]) for c in batch))
            for c in batch:
                if c.last:
                    _write(c.video, pending.pop(c.video.video).out)
            bar.set_postfix_str(batch[-1].video.video, refresh=False)
    finally:
        bar.close()


def _failed(item: Failed) -> PipelineError:
    """The one-line error naming the video and store that could not be read."""
    e = item.error
    cause = str(e) if isinstance(e, PipelineError) else \
        f"{item.path}: unreadable face store, truncated or corrupt? ({type(e).__name__}: {e})"
    return PipelineError(f"video {item.video!r}: {cause}")


def _pending(v: Video, encoders: list[Encoder]) -> Pending:
    """Zero rows (a frame without a face stays zero) for each encoder that lacks ``v``."""
    n = len(v.found)
    return Pending({enc: (np.zeros((n, enc.model.config["embed_dim"]), np.float32),
                          np.zeros((n, enc.model.outputs), np.float32)) for enc in encoders})


def _embed_batch(batch: list[Chunk], pending: dict, encoders: list[Encoder], bs: int, dev) -> None:
    """One forward of each encoder over the batch's crops of the videos that lack it, into their rows."""
    for enc in encoders:
        parts = [c for c in batch if len(c.rows) and enc in pending[c.video.video].out]
        if not parts:
            continue
        crops = parts[0].crops if len(parts) == 1 else np.concatenate([c.crops for c in parts])
        feats, logits = embed_crops(enc.model, crops, bs, dev)
        ends = np.cumsum([len(c.rows) for c in parts])
        for c, f, z in zip(parts, np.split(feats, ends[:-1]), np.split(logits, ends[:-1])):
            rows_f, rows_z = pending[c.video.video].out[enc]
            rows_f[c.rows], rows_z[c.rows] = f, z


#: a long video's progress in 1/1024ths: sums of them are exact in float, so the bar ends at its total
SHARE_STEP = 1024


def _share(chunk: Chunk, video: Pending) -> float:
    """The part of its video ``chunk`` completes, in videos (the last chunk rounds it up to one)."""
    found = max(int(chunk.video.found.sum()), 1)
    part = 1.0 - video.done if chunk.last else (len(chunk.rows) * SHARE_STEP // found) / SHARE_STEP
    video.done += part
    return part


def _write(v: Video, out: dict) -> None:
    """A finished video's group into each encoder's shard."""
    for enc, (feats, logits) in out.items():
        enc.writer.write(v.video, feats, v.found, fps=v.fps, extra={"logits": logits}, faces_digest=v.digest)
    log.info("video %s: %d frames, %d with a face (%d encoders)", v.video, len(v.found), int(v.found.sum()), len(out))


def main(argv: list[str]) -> int:
    ap = stage_parser("visual_features", "per-frame features + logits of one fine-tuned MAE encoder")
    ap.add_argument("--model", nargs="+", required=True, help="results/mae/{task}/{fold}/finetune.pt, one a shard")
    ap.add_argument("--faces", nargs="+", required=True, help="face stores or batch directories (faces/{batch})")
    ap.add_argument("--videos", default=None, help="@FILE (or JSON text): the ids to encode, written --videos=@FILE "
                    "(an id may start with '-'); those a batch's failed.json names are left out (default: every store)")
    ap.add_argument("--out", nargs="+", required=True, help="results/features/mae/{task}/{fold}.h5, in --model order")
    a = ap.parse_args(argv)
    videos = None if a.videos is None else skip_failed(a.faces, read_list(a.videos))
    faces = list(face_store_paths(a.faces, videos).values())
    visual_features(a.model, faces, a.out, a.params, a.threads, a.device)
    return 0
