"""Videos as they arrive in the wild, built with PyAV from a face the project renders.

One short source clip (the demo's animated face, ``affect_pipeline.demo``: MTCNN finds it in
every frame) is re-encoded into the quirks real footage has: a container that declares more
frames than it shows (MP4 edit list), a phone's display rotation, variable frame rate, an odd
frame size, MJPEG/AVI, HEVC, 10-bit, audio at 44.1 kHz stereo / 48 kHz 5.1 / starting late / none.
Each :class:`Variant` knows what a player shows of it (:meth:`Variant.expect`), so a test can
compare the pipeline with that. No ffmpeg CLI is needed (none is installed here); everything is
PyAV's libav*. ``add_wild_variants`` drops them into an Aff-Wild2 videos folder for a workflow run.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

FPS, SIZE, SECONDS, SEED = 25, 192, 2.4, 3
SAMPLE_RATE = 16000
EDIT_LEAD = 3          # frames before an edit list's start: stored and declared, never shown
LATE_AUDIO = 0.5       # seconds of video before the late audio stream starts


# ---------------------------------------------------------------- the source clip
@dataclass(frozen=True)
class Source:
    """Upright RGB frames of the demo's face and the plan they were rendered from."""
    frames: tuple
    plan: object
    fps: int

    @property
    def n(self) -> int:
        return len(self.frames)

    def voice(self, rate: int) -> np.ndarray:
        """The demo voice for this clip at ``rate`` Hz, mono float32 in [-1, 1]."""
        from affect_pipeline.demo.labels import keyed_rng
        from affect_pipeline.demo.media import synth_voice

        return synth_voice(self.plan, keyed_rng(SEED, "voice", self.plan.video_id), rate)


@functools.lru_cache(maxsize=4)
def demo_source(seconds: float = SECONDS, size: int = SIZE, fps: int = FPS, seed: int = SEED) -> Source:
    """Render the clip the way ``make_demo`` renders a video (plan, style, animator)."""
    import cv2

    from affect_pipeline.demo.face import Renderer, make_style
    from affect_pipeline.demo.labels import keyed_rng, plan_track
    from affect_pipeline.demo.media import animator

    cv2.setNumThreads(1)
    n = int(round(seconds * fps))
    cls = keyed_rng(seed, "classes")
    plan = plan_track("wild", n, fps, seed, lambda: int(cls.integers(8)))
    r = Renderer(animator(), make_style(keyed_rng(seed, "style"), size, size), keyed_rng(seed, "render"))
    return Source(tuple(r.frame(plan.au[i], i / fps) for i in range(n)), plan, fps)


# ---------------------------------------------------------------- one variant
@dataclass(frozen=True)
class Audio:
    codec: str = "aac"
    rate: int = SAMPLE_RATE
    layout: str = "mono"
    start: float = 0.0          # media time of the first sample


@dataclass(frozen=True)
class Variant:
    """One way a video arrives: container, codec, pixel format, geometry, timing, audio."""
    name: str
    suffix: str = ".mp4"
    codec: str = "libx264"
    pix_fmt: str = "yuv420p"
    size: tuple[int, int] | None = None      # (width, height) the source is resized to
    rotation: int = 0                        # display matrix, degrees counter-clockwise
    sar: tuple[int, int] | None = None       # anamorphic: stored narrower, shown this much wider
    vfr: bool = False
    lead: int = 0                            # frames before the edit list's start (over-declared)
    audio: Audio | None = field(default_factory=Audio)
    options: tuple = ()                      # encoder options, (key, value) pairs
    container_options: tuple = ()

    def pts(self, n: int) -> np.ndarray:
        """Presentation time of each encoded frame (seconds); the first ``lead`` are negative."""
        if self.vfr:                       # irregular steps over the same span (the audio's)
            steps = np.random.default_rng(7).choice([1.0, 2.0, 3.0, 5.0], n - 1)
            return np.round(np.concatenate([[0.0], np.cumsum(steps)]) * (n - 1) / FPS / steps.sum(), 3)
        return (np.arange(n) - self.lead) / FPS

    def shown(self, src: Source) -> list[np.ndarray]:
        """What a player shows: upright source frames (resized), the lead cut by the edit list."""
        import cv2

        frames = src.frames[self.lead:]
        return [cv2.resize(f, self.size, interpolation=cv2.INTER_AREA) for f in frames] if self.size else list(frames)

    def stored(self, src: Source) -> list[np.ndarray]:
        """Frames as encoded: resized (squeezed by the SAR), turned against the display rotation."""
        import cv2

        w, h = self.size or (src.frames[0].shape[1], src.frames[0].shape[0])
        if self.sar:
            w = int(round(w * self.sar[1] / self.sar[0]))
        frames = [f if f.shape[:2] == (h, w) else cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA)
                  for f in src.frames]
        k = -(self.rotation // 90)                 # undo the counter-clockwise display turn
        return [np.ascontiguousarray(np.rot90(f, k)) for f in frames]

    def voice(self, src: Source, rate: int) -> np.ndarray:
        """The audio as encoded, from its first sample (at media time ``audio.start``): in sync
        with the shown frames (the lead's audio is cut with it) and ending with the video."""
        x = src.voice(rate)
        return x[int(round(self.lead / FPS * rate)): int(len(x) - self.audio.start * rate)]

    def expect(self, src: Source) -> dict:
        """Facts a player (and ffprobe -count_frames) reports of this file."""
        ts = self.pts(src.n)[self.lead:]
        w, h = self.size or (src.frames[0].shape[1], src.frames[0].shape[0])
        a = self.audio
        return {"n_frames": src.n - self.lead, "n_frames_declared": src.n, "timestamps": ts,
                "width": w, "height": h, "rotation": self.rotation, "has_audio": a is not None,
                "audio_start": a.start if a else None, "duration": float(ts[-1] + 1 / FPS)}

    def write(self, path: Path, src: Source) -> Path:
        """Encode ``src`` as this variant into ``path`` (through a temporary name)."""
        from affect_pipeline.common.files import atomic_path

        with atomic_path(path) as tmp:
            _encode(tmp, self, src)
        return path


def _encode(path: Path, var: Variant, src: Source) -> None:
    import av

    stored = var.stored(src)
    tb = Fraction(1, 1000) if var.vfr else Fraction(1, FPS)
    fmt = {".mp4": "mp4", ".mov": "mov", ".avi": "avi", ".mkv": "matroska", ".webm": "webm"}[var.suffix]
    with av.open(str(path), "w", format=fmt, options=dict(var.container_options)) as box:
        vs = box.add_stream(var.codec, rate=FPS)
        vs.width, vs.height, vs.pix_fmt = stored[0].shape[1], stored[0].shape[0], var.pix_fmt
        vs.codec_context.time_base = tb
        vs.options = {"threads": "1", **dict(var.options)}
        if var.rotation:
            vs.set_display_rotation(var.rotation)
        if var.sar:
            vs.codec_context.sample_aspect_ratio = Fraction(*var.sar)
        a = var.audio
        as_ = box.add_stream(a.codec, rate=a.rate, layout=a.layout) if a else None
        for rgb, t in zip(stored, var.pts(src.n)):
            f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            f.time_base, f.pts = tb, int(round(t / tb))
            box.mux(vs.encode(f))
        box.mux(vs.encode())
        if as_ is not None:
            _encode_audio(box, as_, var.voice(src, a.rate), a)


def _encode_audio(box, stream, mono: np.ndarray, a: Audio) -> None:
    """The voice on every channel of ``a.layout``, its first sample at media time ``a.start``."""
    import av

    x = mono
    nch = stream.codec_context.layout.nb_channels
    fs = stream.codec_context.frame_size or 1024
    fmt = "s16" if a.codec.startswith("pcm_s16") else "fltp"
    t0 = int(round(a.start * a.rate))
    for s in range(0, len(x), fs):
        chunk = np.repeat(x[None, s:s + fs], nch, 0)
        if fmt == "s16":
            chunk = (chunk.T.reshape(1, -1) * 32767).astype(np.int16)   # packed: one plane
        f = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format=fmt, layout=a.layout)
        f.sample_rate, f.time_base, f.pts = a.rate, Fraction(1, a.rate), t0 + s
        box.mux(stream.encode(f))
    box.mux(stream.encode())


# ---------------------------------------------------------------- the matrix
X265 = (("x265-params", "log-level=none"),)

#: every playable variant; each must go through the whole pipeline like the plain clip
VARIANTS = (
    Variant("plain"),
    Variant("overdeclared", lead=EDIT_LEAD),            # MP4 edit list: declares n, shows n - 3
    Variant("rotated", rotation=-90),                   # phone portrait: "rotate=90" tag
    Variant("vfr", vfr=True),
    Variant("anamorphic", sar=(4, 3)),                  # 144x192 stored, 192x192 shown
    Variant("oddsize", suffix=".webm", codec="libvpx-vp9", size=(321, 239),
            options=(("deadline", "realtime"), ("cpu-used", "8")), audio=Audio("libopus", 48000)),
    Variant("mjpeg", suffix=".avi", codec="mjpeg", pix_fmt="yuvj420p", audio=Audio("pcm_s16le")),
    Variant("hevc", suffix=".mov", codec="libx265", options=X265),
    Variant("tenbit", suffix=".mkv", codec="libx264", pix_fmt="yuv420p10le"),
    Variant("a44k_stereo", audio=Audio("aac", 44100, "stereo")),
    Variant("a48k_51", audio=Audio("aac", 48000, "5.1")),
    Variant("late_audio", suffix=".mkv", audio=Audio("aac", 48000, "stereo", start=LATE_AUDIO)),
    Variant("noaudio", audio=None),
)


def missing_encoders(var: Variant) -> list[str]:
    """Encoders this PyAV/FFmpeg build lacks for ``var`` (its test is skipped, naming them)."""
    import av

    need = [var.codec] + ([var.audio.codec] if var.audio else [])
    return [c for c in need if c not in av.codecs_available]


def truncated(path: Path, src: Source, keep: float = 0.6) -> Path:
    """A file cut short that still opens: MP4 with its index first (faststart), data cut at ``keep``.

    The container declares every frame; only the first ~``keep`` of them can be decoded.
    """
    full = Variant("full", container_options=(("movflags", "faststart"),)).write(path.with_name("." + path.name), src)
    data = full.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    full.unlink()
    return path


def add_wild_variants(videos_dir: Path, names_prefix: str = "wild_") -> list[str]:
    """Write every playable variant this build can encode into ``videos_dir``; return their ids.

    The ids are the file stems (``{names_prefix}{variant}``), as the Aff-Wild2 scanner reads them;
    put them in a test list to send them through a workflow run to ``submission``.
    """
    src = demo_source()
    videos_dir = Path(videos_dir)
    ids = []
    for var in VARIANTS:
        if var.name == "plain" or missing_encoders(var):
            continue
        vid = f"{names_prefix}{var.name}"
        var.write(videos_dir / f"{vid}{var.suffix}", src)
        ids.append(vid)
    return ids


def long_video(path: Path, seconds: float, size: int = 64) -> Path:
    """``seconds`` of low-res H.264 + AAC, the demo clip looped, encoded streaming (flat memory)."""
    import itertools

    from affect_pipeline.data.video_writer import Soundtrack, write_video

    src = demo_source(size=size)
    n = int(round(seconds * FPS))
    voice = np.resize(src.voice(SAMPLE_RATE), int(seconds * SAMPLE_RATE))
    frames = itertools.islice(itertools.cycle(src.frames + src.frames[::-1]), n)
    return write_video(path, frames, FPS, "libx264", audio=Soundtrack(voice), options={"preset": "ultrafast", "threads": "1"})
