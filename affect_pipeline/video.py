"""Video decoding (PyAV/FFmpeg): probe, streaming frame iterators, the frames JSON, 16 kHz audio.

The stage ``extract_frames`` (extract_frames.py) writes both per media file: the frames JSON
(:func:`frame_info`) and the wav (:func:`extract_audio`).

Conventions every later stage relies on:
- Frame i of an annotation file (1-based) is the i-th frame the decoder outputs (presentation
  order), whatever the container says about frame counts.
- Timestamps are seconds on the media clock (``pts x time_base``), not renumbered from 0; a
  variable-frame-rate (VFR) file keeps its irregular timestamps and is flagged ``vfr: true``.
- The wav of :func:`extract_audio` is on the same clock: sample k is media time k / sample_rate
  (an audio stream that starts late is padded with leading silence), so a feature extractor
  finds frame i's audio at ``timestamps[i]``.
- Decoded frames are never written to disk: ``extract_frames`` decodes once to count frames and
  record timestamps, and ``crop_faces`` decodes again, streaming, through :func:`iter_frame_batches`
  (cheaper than writing and re-reading ~10^5 JPEGs per video; DESIGN allows temp frames, we
  don't need them). Memory stays flat: one batch of frames at a time.
"""
from __future__ import annotations

import contextlib
import logging
import queue
import threading
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .runtime import PipelineError, atomic_path, progress, read_json

log = logging.getLogger("affect_pipeline.video")

#: relative spread of frame intervals above which a file counts as variable frame rate
VFR_TOLERANCE = 0.1


# ---------------------------------------------------------------- opening and probing
@contextlib.contextmanager
def _open(path) -> Iterator:
    """av.open with every FFmpeg failure turned into a PipelineError naming the file."""
    import av

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: video not found")
    try:
        container = av.open(str(path), "r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise PipelineError(f"{path}: unreadable video (corrupt, truncated or not a media file: {e})") from e
    try:
        yield container
    finally:
        container.close()


def _video_stream(container, path):
    if not container.streams.video:
        raise PipelineError(f"{path}: no video stream")
    return container.streams.video[0]


def _rate(stream) -> float:
    for r in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if r is not None and float(r) > 0:
            return float(r)
    return 0.0


def probe(path) -> dict:
    """Container metadata without decoding: what the header claims (``n_frames_declared`` may be 0)."""
    with _open(path) as c:
        v = _video_stream(c, path)
        cc = v.codec_context
        audio = c.streams.audio[0] if c.streams.audio else None
        duration = float(c.duration / 1_000_000) if c.duration else (
            float(v.duration * v.time_base) if v.duration else 0.0)
        return {"path": str(path), "fps": _rate(v), "width": int(cc.width), "height": int(cc.height),
                "duration": duration, "has_audio": audio is not None,
                "audio_sample_rate": int(audio.codec_context.sample_rate) if audio else 0,
                "codec": cc.name, "container": c.format.name, "n_frames_declared": int(v.frames or 0)}


# ---------------------------------------------------------------- streaming decode
def iter_frames(path, threads: int = 1) -> Iterator[tuple[int, float, np.ndarray]]:
    """Yield ``(index, timestamp_s, rgb uint8 HxWx3)`` for every decoded frame, streaming.

    Every frame is converted to the size of the stream's first frame, so batches stack even if a
    stream changes resolution mid-way. ``threads`` sets FFmpeg's decoder threads.
    """
    import av

    with _open(path) as c:
        v = _video_stream(c, path)
        v.thread_type = "AUTO"
        v.codec_context.thread_count = max(1, int(threads))
        fps = _rate(v) or 25.0
        size, t_prev, i = None, None, 0
        decoded = c.decode(v)
        while True:
            try:
                frame = next(decoded)
            except StopIteration:
                break
            except (av.FFmpegError, OSError) as e:
                raise PipelineError(f"{path}: decoding failed after {i} frames (corrupt or truncated "
                                    f"video: {e})") from e
            if size is None:
                size = (frame.width, frame.height)
            t = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else (
                0.0 if t_prev is None else t_prev + 1.0 / fps)
            rgb = frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
            yield i, t, rgb
            t_prev, i = t, i + 1


def _batches(path, batch_size: int, threads: int):
    idx, ts, frames = [], [], []
    for i, t, rgb in iter_frames(path, threads):
        idx.append(i), ts.append(t), frames.append(rgb)
        if len(idx) == batch_size:
            yield np.array(idx), np.array(ts), np.stack(frames)
            idx, ts, frames = [], [], []
    if idx:
        yield np.array(idx), np.array(ts), np.stack(frames)


def iter_frame_batches(path, batch_size: int = 32, threads: int = 1, prefetch: int = 0
                       ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(indices, timestamps, frames (B, H, W, 3) uint8)``, ``batch_size`` frames at a time.

    With ``prefetch > 0`` a background thread decodes the next batches while the caller runs its
    model (FFmpeg releases the GIL), holding at most ``prefetch`` batches in memory. Off by
    default: decoding and the model then take turns on the job's ``threads`` cores, so a job
    never uses more than it was given (decoding is ~50x cheaper than detection anyway).
    """
    if prefetch <= 0:
        yield from _batches(path, batch_size, threads)
        return
    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    done = object()

    def work():
        try:
            for item in _batches(path, batch_size, threads):
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as e:  # handed to the consumer, re-raised there
            q.put(e)

    th = threading.Thread(target=work, name="decode", daemon=True)
    th.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                q.get_nowait()
        th.join(timeout=10)


# ---------------------------------------------------------------- frames JSON
def frame_info(path, threads: int = 1, show_progress: bool = True) -> dict:
    """Decode the whole video once: exact frame count, timestamps, VFR flag, plus the probe."""
    meta = probe(path)
    declared = meta.pop("n_frames_declared")
    ts = []
    bar = progress(total=declared or None, desc=f"decode {Path(path).name}", unit="fr",
                   disable=not show_progress)
    for _, t, _ in iter_frames(path, threads):
        ts.append(t)
        bar.update()
    bar.close()
    n = len(ts)
    if n == 0:
        raise PipelineError(f"{path}: the video stream has no decodable frames")
    if declared and n < 0.99 * declared:
        raise PipelineError(f"{path}: decoded only {n} of the {declared} frames the container declares "
                            f"(truncated or corrupt video)")
    if declared and n != declared:
        log.warning("%s: decoded %d frames, container declares %d; using the decoded count", path, n, declared)
    ts = np.asarray(ts, np.float64)
    d = np.diff(ts)
    if (d <= 0).any():
        log.warning("%s: %d non-increasing frame timestamps", path, int((d <= 0).sum()))
    vfr = bool(len(d) > 1 and np.ptp(d) > VFR_TOLERANCE * max(np.median(d), 1e-9))
    fps = meta["fps"]
    if vfr or not fps:
        fps = float((n - 1) / (ts[-1] - ts[0])) if n > 1 and ts[-1] > ts[0] else (fps or 25.0)
    last = float(np.median(d)) if len(d) else 1.0 / fps
    return {**meta, "n_frames": n, "fps": fps, "duration": float(ts[-1] + last), "vfr": vfr,
            "timestamps": [round(float(t), 6) for t in ts]}


def read_frames_json(path) -> dict:
    """Load and check a frames JSON (what crop_faces and audio_features receive)."""
    info = read_json(path)
    missing = [k for k in ("n_frames", "fps", "duration", "has_audio", "timestamps") if k not in info]
    if missing:
        raise PipelineError(f"{path}: frames JSON lacks {missing}; rerun extract_frames")
    if len(info["timestamps"]) != info["n_frames"]:
        raise PipelineError(f"{path}: {len(info['timestamps'])} timestamps for n_frames={info['n_frames']}")
    return info


# ---------------------------------------------------------------- audio
def extract_audio(video, out, sample_rate: int, duration: float | None = None, threads: int = 1) -> dict:
    """Decode the first audio stream to mono PCM16 at ``sample_rate``, streaming, into ``out``.

    No audio stream (or no decodable audio): a silent wav of ``duration`` seconds. Returns a
    summary dict (samples, seconds, silent).
    """
    import av
    import soundfile as sf

    with _open(video) as c, atomic_path(out) as tmp:
        with sf.SoundFile(tmp, "w", samplerate=sample_rate, channels=1, subtype="PCM_16", format="WAV") as wav:
            n = 0
            if c.streams.audio:
                a = c.streams.audio[0]
                a.codec_context.thread_count = max(1, int(threads))
                res = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
                start = None
                try:
                    for frame in c.decode(a):
                        if start is None:
                            start = float(frame.time or 0.0)
                            lead = int(round(start * sample_rate))
                            if lead > 0:  # keep the wav on the media clock
                                wav.write(np.zeros(lead, np.int16))
                                n += lead
                            skip = max(0, -lead)
                        for r in res.resample(frame):
                            s = r.to_ndarray().reshape(-1)
                            if skip:
                                s, skip = s[skip:], max(0, skip - len(s))
                            wav.write(s)
                            n += len(s)
                    for r in res.resample(None):
                        s = r.to_ndarray().reshape(-1)
                        wav.write(s)
                        n += len(s)
                except (av.FFmpegError, OSError) as e:
                    raise PipelineError(f"{video}: audio decoding failed (corrupt or truncated: {e})") from e
            silent = n == 0
            if silent:
                if duration is None:
                    raise PipelineError(f"{video}: no audio stream and no duration to make a silent track")
                if c.streams.audio:
                    log.warning("%s: audio stream has no decodable samples; writing silence", video)
                n = int(round(duration * sample_rate))
                for s in range(0, n, 1 << 16):
                    wav.write(np.zeros(min(1 << 16, n - s), np.int16))
    return {"samples": n, "seconds": n / sample_rate, "silent": silent}


# ---------------------------------------------------------------- encoding (tests, benchmarks, demo)
def write_video(path, frames: Iterable[np.ndarray], fps: float = 25, codec: str = "libx264",
                pts: Iterable[float] | None = None, audio: np.ndarray | None = None,
                audio_rate: int = 16000, audio_codec: str | None = None, options: dict | None = None) -> Path:
    """Encode RGB uint8 frames (streaming) to ``path``; the container follows the suffix.

    ``pts`` (seconds per frame) makes a variable-frame-rate file; ``audio`` is a mono float array
    in [-1, 1]. Used to make test, benchmark and demo videos with a real encoder.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tb = Fraction(1, 1000) if pts is not None else Fraction(1, int(round(fps))) if float(fps).is_integer() \
        else Fraction(fps).limit_denominator(1001) ** -1
    pts = None if pts is None else list(pts)
    with av.open(str(path), "w") as c:
        vs = None
        if audio is not None:
            acodec = audio_codec or ("pcm_s16le" if path.suffix.lower() == ".avi" else "aac")
            as_ = c.add_stream(acodec, rate=audio_rate, layout="mono")
        for i, rgb in enumerate(frames):
            if vs is None:
                vs = c.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
                vs.width, vs.height = rgb.shape[1], rgb.shape[0]
                vs.pix_fmt = "yuv420p"
                vs.codec_context.time_base = tb
                if options:
                    vs.options = dict(options)
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            f.time_base = tb
            f.pts = int(round(pts[i] / tb)) if pts is not None else i
            c.mux(vs.encode(f))
        if vs is not None:
            c.mux(vs.encode())
        if audio is not None:
            s16 = (np.clip(np.asarray(audio, np.float64), -1, 1) * 32767).astype(np.int16)
            fs = as_.codec_context.frame_size or 1024
            for k, s in enumerate(range(0, len(s16), fs)):
                af = av.AudioFrame.from_ndarray(s16[None, s:s + fs], format="s16", layout="mono")
                af.sample_rate, af.pts, af.time_base = audio_rate, s, Fraction(1, audio_rate)
                c.mux(as_.encode(af))
            c.mux(as_.encode())
    return path
