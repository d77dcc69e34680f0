"""Video decoding (PyAV/FFmpeg): probe, streaming frame iterators, the frames JSON.

The stage ``extract_frames`` writes the frames JSON (:func:`frame_info`) of every media file
beside its wav (:mod:`affect_pipeline.data.audio_track`).

Conventions every later stage relies on -- the frames are what a player shows:
- Frame i of an annotation file (1-based) is the i-th frame the decoder outputs (presentation
  order), whatever the container says about frame counts: containers over-declare (edit lists,
  dropped trailing B-frames), so a declared/decoded difference is logged and recorded
  (``n_frames_declared``, ``n_packets``); only a file whose packets stop short of its declared
  count (truncated) or a decoder error is refused.
- Frames come upright and with square pixels: a display matrix (phone video) is applied as
  ffmpeg's autorotate applies it (``rotation`` in the frames JSON), a sample aspect ratio
  stretches the width; ``width``/``height`` are the shown size.
- Timestamps are seconds on the media clock (``pts x time_base``), not renumbered from 0; a
  variable-frame-rate (VFR) file keeps its irregular timestamps and is flagged ``vfr: true``.
- Decoded frames are never written to disk: ``extract_frames`` decodes once to count frames and
  record timestamps, and ``crop_faces`` decodes again, streaming, through :func:`iter_frame_batches`
  (cheaper than writing and re-reading ~10^5 JPEGs per video). Memory stays flat: one batch of
  frames at a time.
"""
from __future__ import annotations

import contextlib
import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.runtime import progress, read_json

log = logging.getLogger("affect_pipeline.data.video")

#: relative spread of frame intervals above which a file counts as variable frame rate
VFR_TOLERANCE = 0.1


# ---------------------------------------------------------------- opening and probing
@contextlib.contextmanager
def open_media(path) -> Iterator:
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
    with open_media(path) as c:
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
@dataclass
class DecodeStats:
    """What one decode pass saw besides the frames: for the frames JSON and the truncation check."""

    packets: int = 0                  # video packets with data that the demuxer returned
    skipped: int = 0                  # damaged packets the decoder refused (skipped, as a player does)
    rotation: int = 0                 # display rotation applied, degrees counter-clockwise
    size: tuple[int, int] = (0, 0)    # (width, height) of the frames yielded: upright, square pixels


def _display_matrix(frame) -> np.ndarray | None:
    sd = frame.side_data.get("DISPLAYMATRIX")
    return None if sd is None else np.frombuffer(bytes(sd), np.int32)[:9]


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def _upright(frame, path=None) -> tuple[int, Callable[[np.ndarray], np.ndarray]]:
    """The display rotation of ``frame`` (degrees ccw) and the array op that shows it the way
    ffmpeg's autorotate (players, ffmpeg -i) does: phones store portrait video turned, with a
    display matrix saying how to turn it back. Quarter turns and mirrors; other angles warn."""
    m = _display_matrix(frame)
    if m is None:
        return 0, _identity
    rot = int(frame.rotation)
    theta = (-rot) % 360                        # clockwise, as fftools' get_rotation reads it
    k = int(round(theta / 90)) % 4
    if abs(theta - 90 * round(theta / 90)) > 1:
        log.warning("%s: display rotation %d deg is not a quarter turn; frames left as stored", path, rot)
        return rot, _identity
    if k == 1:
        return rot, (lambda a: a.transpose(1, 0, 2)) if m[3] > 0 else (lambda a: np.rot90(a, -1))
    if k == 3:
        return rot, (lambda a: a[::-1, ::-1].transpose(1, 0, 2)) if m[3] < 0 else (lambda a: np.rot90(a, 1))
    flip_x, flip_y = k == 2 and m[0] < 0, m[4] < 0
    if not (flip_x or flip_y):
        return rot, _identity
    return rot, lambda a: a[::-1 if flip_y else 1, ::-1 if flip_x else 1]


def _display_size(frame, stream) -> tuple[int, int]:
    """(width, height) to convert to: square pixels (a sample aspect ratio stretches the width)."""
    sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio   # as av_guess_sample_aspect_ratio
    w = frame.width
    if sar and float(sar) > 0 and sar != 1:
        w = max(1, int(round(frame.width * float(sar))))
    return w, frame.height


def _decoded(c, v, path, stats: DecodeStats) -> Iterator:
    """The stream's frames in presentation order, packet by packet. A packet the demuxer flags as
    damaged (the cut-off last one of a truncated file) that the decoder refuses is skipped, as a
    player does; any other decoder or demuxer error is fatal."""
    import av

    packets = c.demux(v)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except (av.FFmpegError, OSError) as e:
            raise PipelineError(f"{path}: reading failed after {stats.packets} video packets (corrupt or "
                                f"truncated video: {e})") from e
        stats.packets += bool(packet.size)
        try:
            frames = packet.decode()           # the last, empty packet flushes the decoder
        except (av.FFmpegError, OSError) as e:
            if not packet.is_corrupt:
                raise PipelineError(f"{path}: decoding failed at video packet {stats.packets} (corrupt "
                                    f"or truncated video: {e})") from e
            log.warning("%s: skipped damaged video packet %d (%s)", path, stats.packets, e)
            stats.skipped += 1
            continue
        yield from frames


def iter_frames(path, threads: int = 1, stats: DecodeStats | None = None
                ) -> Iterator[tuple[int, float, np.ndarray]]:
    """Yield ``(index, timestamp_s, rgb uint8 HxWx3)`` for every frame a player shows, streaming.

    Frames come upright (display rotation applied) with square pixels, all at the display size
    of the stream's first frame, so batches stack even if a stream changes resolution mid-way.
    ``threads`` sets FFmpeg's decoder threads; ``stats`` (if given) is filled as decoding goes.
    """
    stats = DecodeStats() if stats is None else stats
    with open_media(path) as c:
        v = _video_stream(c, path)
        v.thread_type = "AUTO"
        v.codec_context.thread_count = max(1, int(threads))
        fps = _rate(v) or 25.0
        size, turn, t_prev, i = None, _identity, None, 0
        for frame in _decoded(c, v, path, stats):
            if size is None:
                size = _display_size(frame, v)
                stats.rotation, turn = _upright(frame, path)
            t = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else (
                0.0 if t_prev is None else t_prev + 1.0 / fps)
            rgb = frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
            if turn is not _identity:
                rgb = np.ascontiguousarray(turn(rgb))
            if i == 0:
                stats.size = (rgb.shape[1], rgb.shape[0])
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
    never uses more than it was given, and decoding is a small share of a crop_faces job
    (``python benchmarks/bench_faces.py`` times decoding, the detector and the whole stage).
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
    """Decode the whole video once: what a player shows (frame count, per-frame timestamps,
    upright size, VFR flag) plus the probe, with what the container declared beside it."""
    meta = probe(path)
    declared, stats, ts = meta["n_frames_declared"], DecodeStats(), []
    bar = progress(total=declared or None, desc=f"decode {Path(path).name}", unit="fr",
                   disable=not show_progress)
    for _, t, _ in iter_frames(path, threads, stats):
        ts.append(t)
        bar.update()
    bar.close()
    n = len(ts)
    if n == 0:
        raise PipelineError(f"{path}: the video stream has no decodable frames")
    _check_count(path, n, declared, stats)
    ts = np.asarray(ts, np.float64)
    d = np.diff(ts)
    if (d <= 0).any():
        log.warning("%s: %d non-increasing frame timestamps", path, int((d <= 0).sum()))
    vfr = bool(len(d) > 1 and np.ptp(d) > VFR_TOLERANCE * max(np.median(d), 1e-9))
    fps = meta["fps"]
    if vfr or not fps:
        fps = float((n - 1) / (ts[-1] - ts[0])) if n > 1 and ts[-1] > ts[0] else (fps or 25.0)
    last = float(np.median(d)) if len(d) else 1.0 / fps
    return {**meta, "width": stats.size[0], "height": stats.size[1], "rotation": stats.rotation,
            "n_packets": stats.packets, "skipped_packets": stats.skipped, "n_frames": n, "fps": fps,
            "duration": float(ts[-1] + last), "vfr": vfr, "timestamps": [round(float(t), 6) for t in ts]}


def _check_count(path, n: int, declared: int, stats: DecodeStats) -> None:
    """Decoded frames are the truth. Containers over-declare (edit lists, dropped trailing
    B-frames: every packet is there, fewer frames are shown) -- logged; a file whose packets stop
    short of what it declares was cut off -- refused."""
    if declared and stats.packets < 0.99 * declared:
        raise PipelineError(f"{path}: decoded only {n} of the {declared} frames the container declares; "
                            f"the file holds {stats.packets} of their packets (truncated or corrupt video)")
    if declared and n != declared:
        log.warning("%s: decoded %d frames, the container declares %d (%d packets: edit list or dropped "
                    "frames); using the %d decoded, as a player shows them", path, n, declared,
                    stats.packets, n)


def read_frames_json(path) -> dict:
    """Load and check a frames JSON (what crop_faces and audio_features receive)."""
    info = read_json(path)
    missing = [k for k in ("n_frames", "fps", "duration", "has_audio", "timestamps") if k not in info]
    if missing:
        raise PipelineError(f"{path}: frames JSON lacks {missing}; rerun extract_frames")
    if len(info["timestamps"]) != info["n_frames"]:
        raise PipelineError(f"{path}: {len(info['timestamps'])} timestamps for n_frames={info['n_frames']}")
    return info
