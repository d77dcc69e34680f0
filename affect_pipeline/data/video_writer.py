"""Encode RGB frames and a mono track into a video file (PyAV/FFmpeg): the test, benchmark and
demo videos, made with a real encoder so they decode as a camera's would."""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import numpy as np


@dataclass(frozen=True)
class Soundtrack:
    """A mono audio stream: ``samples`` float in [-1, 1] at ``rate`` Hz; ``codec`` None picks
    PCM for ``.avi`` and AAC for the other containers."""
    samples: np.ndarray
    rate: int = 16000
    codec: str | None = None


def write_video(path, frames: Iterable[np.ndarray], fps: float = 25, codec: str = "libx264",
                pts: Iterable[float] | None = None, audio: Soundtrack | None = None,
                options: dict | None = None) -> Path:
    """Encode RGB uint8 frames (streaming) to ``path``; the container follows the suffix.

    ``pts`` (seconds per frame) makes a variable-frame-rate file; ``options`` are the video
    encoder's (e.g. ``{"preset": "ultrafast"}``).
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
            acodec = audio.codec or ("pcm_s16le" if path.suffix.lower() == ".avi" else "aac")
            as_ = c.add_stream(acodec, rate=audio.rate, layout="mono")
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
            s16 = (np.clip(np.asarray(audio.samples, np.float64), -1, 1) * 32767).astype(np.int16)
            fs = as_.codec_context.frame_size or 1024
            for s in range(0, len(s16), fs):
                af = av.AudioFrame.from_ndarray(s16[None, s:s + fs], format="s16", layout="mono")
                af.sample_rate, af.pts, af.time_base = audio.rate, s, Fraction(1, audio.rate)
                c.mux(as_.encode(af))
            c.mux(as_.encode())
    return path
