"""The demo's media files: a voice-like audio track and the encoded videos (one face or a pair).

The voice's pitch and loudness rise with arousal and its timbre brightens with valence, so the
audio carries part of the signal. The same plan renders the same frames and samples (their digests
go into the manifest) and the same encoded bytes (``X264_REPRODUCIBLE``).
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from affect_pipeline.common.files import atomic_path
from affect_pipeline.demo.face import FaceAnimator, Renderer, make_style
from affect_pipeline.demo.labels import Plan, keyed_rng

SAMPLE_RATE = 16000
#: x264's lookahead carries state from one encoder to the next in a process, so without these
#: options a fork-pool worker's bytes depend on which videos it encoded before; with them the same
#: frames give the same bytes (tests/demo/test_demo.py::test_same_seed_same_bytes_other_seed_other_labels).
X264_REPRODUCIBLE = "rc-lookahead=0:sync-lookahead=0"


# ---------------------------------------------------------------- audio
def synth_voice(plan: Plan, rng, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A voice-like harmonic signal: syllable envelopes; pitch/loudness ↑ arousal, brighter ↑ valence."""
    n = int(round(plan.n_frames / plan.fps * sr))
    ts = np.arange(n) / sr
    ft = (np.arange(plan.n_frames) + 0.5) / plan.fps
    val = np.interp(ts, ft, plan.va[:, 0])
    a01 = (np.interp(ts, ft, plan.va[:, 1]) + 1) / 2
    env, pitch = np.zeros(n), np.ones(n)
    t = rng.uniform(0, 0.2)
    while t < ts[-1]:
        i = min(int(t * sr), n - 1)
        if rng.random() < 0.12 - 0.08 * (a01[i] - 0.5):           # pauses, more when calm
            t += rng.uniform(0.2, 0.5)
            continue
        d = rng.uniform(0.12, 0.28)
        s, e = int(t * sr), min(int((t + d) * sr), n)
        if e > s:
            env[s:e] = np.sin(np.linspace(0, np.pi, e - s)) ** 2
            pitch[s:e] = rng.uniform(0.93, 1.07) * np.linspace(1.02, 0.97, e - s)
        t += d + rng.uniform(0.03, 0.12)
    f0 = 115.0 * 2 ** (1.1 * a01) * pitch * (1 + 0.03 * np.sin(2 * np.pi * 5.5 * ts))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    tilt = 1.5 - 0.6 * val
    voice = np.zeros(n)
    norm = np.zeros(n)
    for k in range(1, 16):
        ak = np.exp(-tilt * np.log(k)) * (k * f0 < 0.45 * sr)
        voice += ak * np.sin(k * phase)
        norm += ak
    loud = 0.04 + 0.3 * a01 ** 1.5
    noise = np.convolve(rng.standard_normal(n), np.ones(4) / 4, mode="same") * 0.006
    return np.clip(loud * env * voice / norm * 2.0 + noise, -1, 1).astype(np.float32)


# ---------------------------------------------------------------- video writing
def write_video(path: Path, frames, n_frames: int, fps: int, width: int, height: int,
                audio: np.ndarray | None, avi: bool = False) -> None:
    """Encode frames (+ mono audio) through a temporary file; the same frames give the same bytes."""
    import av

    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format="avi" if avi else "mp4") as box:
            vs = box.add_stream("mpeg4" if avi else "libx264", rate=fps)
            vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
            vs.codec_context.thread_count = 1
            if avi:
                vs.codec_context.qscale = 3
                vs.codec_context.flags |= av.codec.context.Flags.qscale
            else:
                vs.options = {"crf": "20", "preset": "veryfast", "threads": "1",
                              "x264-params": X264_REPRODUCIBLE}
            as_ = None
            if audio is not None:
                as_ = box.add_stream("pcm_s16le" if avi else "aac", rate=SAMPLE_RATE, layout="mono")
                if not avi:
                    as_.bit_rate = 64000
            sent = 0
            for i, rgb in enumerate(frames):
                vf = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                vf.pts, vf.time_base = i, Fraction(1, fps)
                box.mux(vs.encode(vf))
                if as_ is not None:                      # keep audio interleaved with video
                    upto = len(audio) if i == n_frames - 1 else int((i + 1) / fps * SAMPLE_RATE)
                    sent = _push_audio(box, as_, audio, sent, upto, avi)
            box.mux(vs.encode(None))
            if as_ is not None:
                box.mux(as_.encode(None))


def _push_audio(box, stream, audio, sent: int, upto: int, avi: bool) -> int:
    import av

    chunk = 1024
    while sent < upto and (upto - sent >= chunk or upto == len(audio)):
        x = audio[sent:min(sent + chunk, upto)]
        if avi:
            af = av.AudioFrame.from_ndarray((x * 32767).astype(np.int16)[None], format="s16", layout="mono")
        else:
            af = av.AudioFrame.from_ndarray(x[None], format="fltp", layout="mono")
        af.sample_rate, af.pts, af.time_base = SAMPLE_RATE, sent, Fraction(1, SAMPLE_RATE)
        box.mux(stream.encode(af))
        sent += len(x)
    return sent


# ---------------------------------------------------------------- jobs
@dataclass
class MediaJob:
    """One media file to render: its face tracks (one, or left + right), rate, size, streams."""
    path: Path
    plans: list            # one Plan (single face) or two (left, right)
    fps: int
    size: int
    has_audio: bool
    avi: bool
    seed: int


def render_media(job: MediaJob) -> dict:
    """Render and encode one media file; returns its probe facts for the manifest."""
    import cv2

    cv2.setNumThreads(1)
    anim = animator()
    rends = [Renderer(anim, make_style(keyed_rng(job.seed, "style", p.video_id), job.size, job.size),
                      keyed_rng(job.seed, "render", p.video_id)) for p in job.plans]
    n = job.plans[0].n_frames
    width = job.size * len(job.plans)

    digest = hashlib.sha256()

    def frames():        # the rendered frames' digest: what the seed fixes (the encoder rounds on)
        for i in range(n):
            f = np.concatenate([r.frame(p.au[i], i / job.fps) for r, p in zip(rends, job.plans)], 1)
            digest.update(f.tobytes())
            yield f

    audio = None
    if job.has_audio:
        audio = sum(synth_voice(p, keyed_rng(job.seed, "voice", p.video_id)) for p in job.plans)
        audio = np.clip(audio / len(job.plans) ** 0.5, -1, 1).astype(np.float32)
    write_video(job.path, frames(), n, job.fps, width, job.size, audio, job.avi)
    return {"media": job.path.name, "n_frames": n, "fps": job.fps, "width": width,
            "height": job.size, "has_audio": job.has_audio, "frames_sha256": digest.hexdigest(),
            "audio_sha256": hashlib.sha256(audio.tobytes()).hexdigest() if audio is not None else None}


@functools.lru_cache(maxsize=1)
def animator() -> FaceAnimator:
    """The AU bases, built once per process (pool workers inherit it) and shared by every file."""
    return FaceAnimator()
