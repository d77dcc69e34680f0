"""Per-frame audio features (HuBERT, wav2vec2, VGGish) aligned to the videos' frames.

Stage ``audio_features`` (:func:`audio_features`): one job per model loads it once and streams
every video's wav into the shard ``features/{model}.h5``
(:class:`~affect_pipeline.common.feature_shards.FeatureShardWriter`), a group per video id with
``features`` (n_frames, D) and ``valid`` (n_frames,). ``X_left`` / ``X_right`` share media ``X``:
computed once, written under both ids. A killed job resumes: each video's group records the
content digests of the wav and frames JSON it was computed from (:func:`input_digests`), and a
rerun redoes a video whose inputs changed since (e.g. ``extract_frames`` rerun on a new video).

Alignment rule (video frame i at ``timestamps[i]``, its presentation time): linear interpolation
between the two nearest feature centres; before the first / after the last centre the edge
feature is held. ``valid[i]`` is False — and the row is zeros — where the video has no audio
stream (frames JSON ``has_audio`` false), where ``timestamps[i]`` lies at or beyond the audio's
end (``n_samples / sr``), or before 0.

Long audio runs in overlapping chunks of ``chunk_seconds``; consecutive chunks share
``overlap_seconds`` (raised to at least one receptive field), chunk starts sit on the feature
grid, and each feature is taken from the chunk whose core (the chunk minus half the overlap on
each inner side) holds its centre, so stitching reproduces a single pass up to the models'
context at the boundaries (VGGish: exactly). The file is streamed chunk by chunk and the
alignment runs as features arrive, so memory is flat in the audio's duration.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from affect_pipeline.audio.models import MODELS, AudioModel, load_audio_model
from affect_pipeline.common.config import need
from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.lists import read_list
from affect_pipeline.common.runtime import (
    file_digest,
    pick_device,
    progress,
    read_json,
    setup_torch,
    stage_parser,
)

log = logging.getLogger("affect_pipeline.audio.audio_features")

#: config ``audio`` keys every model's job uses (its own section comes on top)
SHARED_KEYS = ("sample_rate", "chunk_seconds", "overlap_seconds", "batch_size")


# ---------------------------------------------------------------- settings
def model_params(audio: dict, model: str) -> dict:
    """What one model's job depends on: the shared ``audio`` keys plus that model's section only,
    so changing the VGGish hop does not rerun HuBERT. This is the rule's ``--params``."""
    if model not in MODELS:
        raise PipelineError(f"unknown audio model {model!r}; known: {', '.join(MODELS)}")
    return {**{k: need(audio, k, "audio") for k in SHARED_KEYS}, model: need(audio, model, "audio")}


def fingerprint(digest: str, params: dict) -> str:
    """Weights digest + settings (the weights path aside): a partial shard is resumed only on a match."""
    clean = {k: ({kk: vv for kk, vv in v.items() if kk != "weights"} if isinstance(v, dict) else v)
             for k, v in params.items()}
    return f"{digest}:{json.dumps(clean, sort_keys=True)}"


@dataclass(frozen=True)
class Chunking:
    """How long audio is cut: chunk and overlap lengths in seconds, chunks per forward."""
    chunk_seconds: float
    overlap_seconds: float
    batch_size: int

    @classmethod
    def from_params(cls, params: dict) -> "Chunking":
        return cls(float(need(params, "chunk_seconds", "audio")), float(need(params, "overlap_seconds", "audio")),
                   int(need(params, "batch_size", "audio")))


# ---------------------------------------------------------------- audio sources
class _Source:
    """Mono float32 samples by range; zero-padded past the end. From an array or a wav (streamed)."""

    def __init__(self, wav, sr: int | None = None):
        self.sf = None
        if isinstance(wav, (str, os.PathLike)):
            import soundfile as sf

            path = Path(wav)
            if not path.exists():
                raise PipelineError(f"{path}: audio file not found")
            try:
                self.sf = sf.SoundFile(str(path))
            except (RuntimeError, sf.LibsndfileError) as e:
                raise PipelineError(f"{path}: unreadable audio ({e})") from e
            self.path, self.sr, self.n = path, self.sf.samplerate, self.sf.frames
        else:
            if sr is None:
                raise ValueError("extract(): a waveform array needs its sample rate sr")
            a = np.asarray(wav, np.float32)
            self.x = a.mean(1) if a.ndim == 2 else a
            self.path, self.sr, self.n = "<array>", int(sr), len(self.x)

    def read(self, start: int, stop: int) -> np.ndarray:
        if self.sf is None:
            out = self.x[start:stop]
        else:
            try:
                self.sf.seek(min(start, self.n))
                out = self.sf.read(max(0, min(stop, self.n) - start), dtype="float32", always_2d=True).mean(1)
            except (RuntimeError, OSError) as e:   # LibsndfileError is a RuntimeError
                raise PipelineError(f"{self.path}: unreadable audio at sample {start} ({e})") from e
        return np.pad(out, (0, stop - start - len(out))) if len(out) < stop - start else out

    def stats(self, block: int = 1 << 20) -> tuple[float, float]:
        """Mean and variance of the whole signal, streamed (float64 sums)."""
        s = s2 = 0.0
        for a in range(0, self.n, block):
            x = self.read(a, min(a + block, self.n)).astype(np.float64)
            s, s2 = s + x.sum(), s2 + (x * x).sum()
        mean = s / max(self.n, 1)
        return mean, max(s2 / max(self.n, 1) - mean * mean, 0.0)

    def close(self):
        if self.sf is not None:
            self.sf.close()


# ---------------------------------------------------------------- chunking + alignment
def chunk_plan(n_samples: int, stride: int, rf: int, chunk: int, overlap: int):
    """[(start, stop, g_lo, g_hi)]: chunk sample range and the global features it keeps.

    Starts lie on the feature grid; the overlap is at least rf + stride, so a kept feature's
    window lies inside its chunk. Boundary between chunks k, k+1 = middle of their overlap.
    """
    n = max(n_samples, rf)                       # audio shorter than one window: zero-padded
    g_total = (n - rf) // stride + 1
    overlap = math.ceil(max(overlap, rf + stride) / stride) * stride
    step = max(stride, (max(chunk, overlap + stride) - overlap) // stride * stride)
    size, half = step + overlap, (rf - 1) / 2
    plan, a, lo = [], 0, 0
    while True:
        last = a + size >= n
        hi = g_total if last else min(g_total, math.ceil((a + step + overlap / 2 - half) / stride))
        plan.append((a, min(a + size, n), lo, hi))
        if last:
            return plan, g_total
        a, lo = a + step, hi


class Aligner:
    """Streams features in grid order and linearly interpolates them at video timestamps."""

    def __init__(self, times: np.ndarray, centre0: float, step: float, g_total: int, dim: int):
        self.out = np.zeros((len(times), dim), np.float32)
        p = np.clip((np.asarray(times, np.float64) - centre0) / step, 0, max(g_total - 1, 0))
        self.g0 = np.minimum(np.floor(p).astype(np.int64), max(g_total - 2, 0))
        self.w = (p - self.g0).astype(np.float32)[:, None]
        self.order = np.argsort(self.g0, kind="stable")
        self.sorted_g0 = self.g0[self.order]
        self.prev, self.g_total, self.done = None, g_total, 0

    def push(self, g_start: int, feats: np.ndarray) -> None:
        """Features of grid indices g_start .. g_start+len-1 (contiguous with the previous push)."""
        if not len(feats):
            return
        if self.prev is not None:
            feats, g_start = np.concatenate([self.prev[None], feats]), g_start - 1
        g_end = g_start + len(feats)              # rows g_start..g_end-1 available
        lim = g_end if self.g_total == 1 else g_end - 1   # frame needs rows g0 and g0 + 1
        k = int(np.searchsorted(self.sorted_g0, lim, side="left"))
        idx = self.order[self.done:k]
        if len(idx):
            a = self.g0[idx] - g_start
            b = np.minimum(a + 1, len(feats) - 1)
            self.out[idx] = (1 - self.w[idx]) * feats[a] + self.w[idx] * feats[b]
        self.done, self.prev = k, feats[-1].copy()


def extract(model: AudioModel, wav, sr: int | None, timestamps, chunking: Chunking, show_progress: bool = False):
    """(features (n_frames, dim) float32, valid (n_frames,) bool) of ``wav`` at ``timestamps``.

    ``wav``: a path (streamed) or a mono/(n, channels) array with sample rate ``sr``.
    """
    times = np.asarray(timestamps, np.float64)
    src = _Source(wav, sr)
    try:
        if src.sr != model.sample_rate:
            raise PipelineError(f"{src.path}: sample rate {src.sr} Hz, but {model.name} needs "
                                f"{model.sample_rate} Hz (resample in extract_frames)")
        valid = (times >= 0) & (times < src.n / src.sr) & (src.n > 0)
        if not valid.any():
            return np.zeros((len(times), model.dim), np.float32), valid
        mean, var = src.stats() if model.normalize else (0.0, 1.0)
        scale = 1.0 / math.sqrt(var + 1e-7)
        plan, g_total = chunk_plan(src.n, model.stride, model.rf, int(chunking.chunk_seconds * src.sr),
                                   int(chunking.overlap_seconds * src.sr))
        al = Aligner(times, float(model.centres(0)), model.stride / model.sample_rate, g_total, model.dim)
        groups = _batches(plan, chunking.batch_size)
        for group in progress(groups, desc=model.name, unit="batch", disable=not show_progress):
            x = np.stack([src.read(a, b) for a, b, _, _ in group])
            if model.normalize:
                x = (x - mean) * scale
            y = model.forward(x)
            for (a, _, lo, hi), f in zip(group, y):
                s = a // model.stride
                if hi - s > f.shape[0]:
                    raise RuntimeError(f"{model.name}: chunk gave {f.shape[0]} features, need {hi - s}")
                al.push(lo, f[lo - s:hi - s])
        out = al.out
        out[~valid] = 0
        return out, valid
    finally:
        src.close()


def _batches(plan, batch_size):
    """Consecutive chunks of equal length, ``batch_size`` at a time (no padding, no masks)."""
    out, cur = [], []
    for c in plan:
        if cur and (len(cur) == batch_size or c[1] - c[0] != cur[0][1] - cur[0][0]):
            out.append(cur)
            cur = []
        cur.append(c)
    return out + [cur] if cur else out


# ---------------------------------------------------------------- stage: audio_features
@dataclass(frozen=True)
class Media:
    """One media file's inputs (``X_left`` / ``X_right`` share ``X``'s)."""
    name: str
    wav: Path
    frames: Path


def media_inputs(videos: dict[str, str], wavs, frames) -> dict[str, Media]:
    """video id -> its Media, the wavs and frames JSONs matched to media by file stem; a folder
    (extract_frames' batch folders) gives its ``*.wav`` / ``*.json``. A video whose media file did
    not decode (its frames JSON records ``error``, and there is no wav) is left out, logged."""
    by_stem = {}
    for kind, paths, ext in (("--audio", wavs, "*.wav"), ("--frames", frames, "*.json")):
        stems: dict[str, Path] = {}
        for p in (q for f in map(Path, paths) for q in (sorted(f.glob(ext)) if f.is_dir() else [f])):
            if p.stem in stems:
                raise PipelineError(f"{kind}: {stems[p.stem]} and {p} have the same stem {p.stem!r}")
            stems[p.stem] = p
        by_stem[kind] = stems
    out = {}
    for vid, media in videos.items():
        # extract_frames writes no wav for a file it could not decode: only then is its JSON read here
        if (media not in by_stem["--audio"] and media in by_stem["--frames"]
                and (error := _decode_error(by_stem["--frames"][media])) is not None):
            log.error("video %s: left out, its media file did not decode (%s): %s", vid, by_stem["--frames"][media],
                      error)
            continue
        lacking = [k for k in ("--audio", "--frames") if media not in by_stem[k]]
        if lacking:
            raise PipelineError(f"video {vid}: no {' / '.join(lacking)} file for its media {media!r}")
        out[vid] = Media(media, by_stem["--audio"][media], by_stem["--frames"][media])
    return out


def _decode_error(path) -> str | None:
    """The error extract_frames recorded in a frames JSON for a file it could not decode, or None
    (also for a frames JSON absent or unreadable: where it is read, the error names it)."""
    try:
        fr = read_json(path)
    except PipelineError:
        return None
    return fr.get("error") if isinstance(fr, dict) and "n_frames" not in fr else None


def _frames(path) -> dict:
    fr = read_json(path)
    for k in ("timestamps", "n_frames", "fps", "has_audio"):
        if k not in fr:
            raise PipelineError(f"{path}: frames JSON lacks {k!r}; rerun extract_frames")
    if len(fr["timestamps"]) != int(fr["n_frames"]):
        raise PipelineError(f"{path}: {len(fr['timestamps'])} timestamps but n_frames = {fr['n_frames']}")
    return fr


def input_digests(media: Media) -> dict[str, str]:
    """Content digests (sha256) of a media file's wav and frames JSON: what its features are made
    of, recorded in its groups. A wav's hash costs a fraction of running a model over it; size and
    mtime would not do (an ``extract_frames`` rerun rewrites both files, maybe to the same size).
    A file absent is ``absent`` (a wav with ``has_audio`` false is never read; a frames JSON
    absent fails where it is read)."""
    out = {}
    for name, path in (("wav", media.wav), ("frames", media.frames)):
        try:
            out[name] = file_digest(path)
        except FileNotFoundError:
            out[name] = "absent"
        except OSError as e:
            raise PipelineError(f"{path}: unreadable ({e.strerror})") from e
    return out


def _todo(writer, groups: dict[Media, list[str]]) -> list[tuple[Media, list[str]]]:
    """(media, its video ids) still to compute: not all finished in the partial shard, or
    finished from inputs that have changed since (logged, naming the video and the inputs)."""
    todo = []
    for media, ids in groups.items():
        if all(writer.done(v) for v in ids):
            try:
                digests = input_digests(media)
            except PipelineError as e:
                raise PipelineError(f"video {' / '.join(ids)}: {e}") from e
            changed = sorted({k for v in ids for k in writer.changed_inputs(v, digests)})
            if not changed:
                continue
            log.info("video %s: its %s changed since its features in %s were computed (or were not recorded "
                     "there); computing them again", " / ".join(ids), " and ".join(changed), writer.partial)
        todo.append((media, ids))
    return todo


def media_features(model: AudioModel, media: Media, chunking: Chunking) -> tuple[np.ndarray, np.ndarray, dict]:
    """(features, valid, frames JSON) of one media file; zeros and valid = false without audio."""
    fr = _frames(media.frames)
    times = np.asarray(fr["timestamps"], np.float64)
    if not fr["has_audio"]:
        return np.zeros((len(times), model.dim), np.float32), np.zeros(len(times), bool), fr
    feats, valid = extract(model, media.wav, None, times, chunking)
    return feats, valid, fr


def audio_features(model: str, weights, videos: dict[str, Media], out, params: dict,
                   device: str = "cpu", weights_key: str | None = None) -> list[str]:
    """Load ``model`` once, stream every video not yet in the (partial) shard; return those computed.

    ``params``: :func:`model_params` of the config. A failing video raises a PipelineError naming
    it and its file; the videos finished before it stay in ``{out}.partial`` for the next attempt.
    """
    chunking, settings = Chunking.from_params(params), need(params, model, "audio")
    sr = int(need(params, "sample_rate", "audio"))
    m = load_audio_model(model, weights, settings, pick_device(device), weights_key)
    if sr != m.sample_rate:
        raise PipelineError(f"audio.sample_rate = {sr}, but {model} ({weights}) expects {m.sample_rate} Hz")
    from affect_pipeline.common.feature_shards import FeatureShardWriter

    writer = FeatureShardWriter(out, extractor=model, fingerprint=fingerprint(m.digest, params),
                                checkpoint_digest=m.digest, layer=str(m.layer), sample_rate=m.sample_rate,
                                feature_stride_s=m.stride / m.sample_rate, feature_centre0_s=float(m.centres(0)),
                                alignment="linear-between-centres")
    groups: dict[Media, list[str]] = {}
    for vid, media in videos.items():
        groups.setdefault(media, []).append(vid)
    computed = []
    try:
        todo = _todo(writer, groups)
        log.info("%s: %d videos from %d media files; %d media files to compute", out, len(videos), len(groups),
                 len(todo))
        for k, (media, ids) in enumerate(todo, 1):
            t0 = time.perf_counter()
            try:
                digests = input_digests(media)          # before reading: a change while we run is caught next time
                feats, valid, fr = media_features(m, media, chunking)
            except PipelineError as e:
                raise PipelineError(f"video {' / '.join(ids)}: {e}") from e
            for vid in ids:
                writer.write(vid, feats, valid, fps=float(fr["fps"]), inputs=digests, has_audio=bool(fr["has_audio"]),
                             media=media.name)
            computed += ids
            log.info("[%d/%d] computed %s: %d frames x %d, %d valid, %.1f s", k, len(todo), " / ".join(ids),
                     len(feats), m.dim, int(valid.sum()), time.perf_counter() - t0)
        writer.close(list(videos))
    except BaseException:
        writer.abort()
        raise
    return computed


def main(argv: list[str]) -> int:
    p = stage_parser("audio_features", "HuBERT / wav2vec2 / VGGish features per video frame, one shard per model")
    p.add_argument("--model", required=True, choices=MODELS)
    p.add_argument("--weights", required=True, help="local weights: HuBERT / wav2vec2 save_pretrained folder, "
                   "torchaudio bundle .pth or fairseq .pt (audio_models); VGGish state dict .pth")
    p.add_argument("--weights-key", default=None, help="config key named in errors (audio.<model>.weights)")
    p.add_argument("--videos", required=True, help='@FILE (or JSON text): {"video id": "media stem"}; '
                   "write --videos=@FILE (an id may start with '-')")
    p.add_argument("--audio", nargs="+", required=True, help="results/audio/{batch} folders or {media}.wav files")
    p.add_argument("--frames", nargs="+", required=True, help="results/frames/{batch} folders or {media}.json files")
    p.add_argument("--out", required=True, help="results/features/{model}.h5")
    a = p.parse_args(argv)
    videos = read_list(a.videos)
    if not isinstance(videos, dict) or not all(isinstance(v, str) for v in videos.values()):
        raise PipelineError('--videos must be a JSON object {"video id": "media stem"}')
    setup_torch(a.threads, a.seed)
    audio_features(a.model, a.weights, media_inputs(videos, a.audio, a.frames), a.out, a.params, a.device,
                   a.weights_key or f"audio.{a.model}.weights")
    return 0
