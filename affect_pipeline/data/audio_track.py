"""A video's audio as a mono PCM16 wav on the media clock (PyAV/FFmpeg): what ``extract_frames``
writes beside the frames JSON and the audio feature extractors read.

Sample k of the wav is media time k / sample_rate: an audio stream that starts late is padded
with leading silence, one that ends early with trailing silence up to the video's end, so a
feature extractor finds frame i's audio at the frames JSON's ``timestamps[i]``
(:mod:`affect_pipeline.data.video`).
"""
from __future__ import annotations

import logging
import wave

import numpy as np

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.files import atomic_path, is_disk_full
from affect_pipeline.data.video import open_media

log = logging.getLogger(__name__)


def extract_audio(video, out, sample_rate: int, duration: float | None = None, threads: int = 1) -> dict:
    """Decode the first audio stream to mono PCM16 at ``sample_rate``, streaming, into ``out``.

    Any rate and channel layout is resampled (libswresample downmix). The wav is on the media
    clock: silence before an audio stream that starts late, and after one that ends before
    ``duration`` (the video's); no audio stream (or no decodable audio) gives ``duration`` seconds
    of silence. Returns a summary dict (samples, seconds, silent).
    """
    with open_media(video) as c, atomic_path(out) as tmp:
        with Pcm16Wav(tmp, sample_rate) as wav:
            n = _write_audio_stream(c, video, wav, sample_rate, threads) if c.streams.audio else 0
            silent = n == 0
            if silent and duration is None:
                raise PipelineError(f"{video}: no audio stream and no duration to make a silent track")
            if silent and c.streams.audio:
                log.warning("%s: audio stream has no decodable samples; writing silence", video)
            total = max(n, int(round(duration * sample_rate))) if duration is not None else n
            for s in range(n, total, 1 << 16):
                wav.write(np.zeros(min(1 << 16, total - s), np.int16))
    return {"samples": total, "seconds": total / sample_rate, "silent": silent}


class Pcm16Wav:
    """A mono PCM16 wav written through Python's own file I/O (the stdlib ``wave``): a full disk
    is then an OSError (ENOSPC) that names the file, where libsndfile reports only "System
    error". The bytes are libsndfile's (the canonical 44-byte header, then the samples)."""

    def __init__(self, path, sample_rate: int):
        self.w = wave.open(str(path), "wb")
        self.w.setnchannels(1)
        self.w.setsampwidth(2)
        self.w.setframerate(int(sample_rate))

    def write(self, samples: np.ndarray) -> None:
        self.w.writeframes(np.ascontiguousarray(samples, dtype=np.int16).tobytes())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.w.close()


def _write_audio_stream(c, video, wav, sample_rate: int, threads: int) -> int:
    """Resampled samples of the first audio stream into ``wav``, its first one at its media time
    (leading silence for a late start, a cut for one before 0); returns the samples written."""
    import av

    a = c.streams.audio[0]
    a.codec_context.thread_count = max(1, int(threads))
    res = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
    n, skip, start = 0, 0, None
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
                x = r.to_ndarray().reshape(-1)
                if skip:
                    x, skip = x[skip:], max(0, skip - len(x))
                wav.write(x)
                n += len(x)
        for r in res.resample(None):
            x = r.to_ndarray().reshape(-1)
            wav.write(x)
            n += len(x)
    except (av.FFmpegError, OSError) as e:
        if is_disk_full(e):          # the wav's write, not the decoding: atomic_path names the wav
            raise
        raise PipelineError(f"{video}: audio decoding failed (corrupt or truncated: {e})") from e
    return n
