"""Images, folders of frames and a frame stride as ``affect-predict`` inputs: each becomes, in the
job's temporary folder, a lossless video of exactly the frames to predict, so that every input
goes through the one video path (frames JSON, face store, features, models) with its pixels intact.

Inputs (found by ``batches.expand_inputs``, checked by :func:`check_inputs` before a model loads):
- a video: every frame a player shows;
- an image (``.jpg .jpeg .png .bmp .tif .tiff .webp``): a one-frame input;
- a folder of frames: a folder holding images and no videos (below it) is a frame sequence, as
  OpenFace's ``-fdir``: its images (hidden files skipped) in natural name order (``f2`` before
  ``f10``); a tree of such folders (``frames/{clip}/00001.jpg``) is one input per folder. Frame
  k (1-based, its position in that order) is at ``(k - 1) / --fps`` seconds (default 30, OpenFace's
  ``-fps`` default for image sequences). Every frame must have one size: a mixed-size folder is
  refused, naming two files and their sizes, rather than letterboxed (padding would change what
  the detector and the crops see, silently). No audio: the audio stores are marked invalid, their
  rows zeroed to the training mean exactly as for a video without a soundtrack.
Images are read upright (the EXIF orientation applied, as ffmpeg's autorotate turns videos),
alpha dropped, grey and palette images as RGB, 16-bit ones scaled to 8 bits.

``--stride N`` (py-feat's ``skip_frames``): only frames 1, 1+N, 1+2N, ... are predicted. The
temporal models see the kept frames as one sequence at their real timestamps, as if the video
had been recorded at fps/N (a clip of ``clip_len`` frames then spans N times as long; the audio
features are taken at the kept timestamps): the models run on what the rows report, nothing is
interpolated. The CSV has the kept frames only, with their frame numbers and timestamps in the
whole input. Faces, encoders and models run on 1/N of the frames; decoding still reads them all.

The temporary video is NUT with a microsecond time base, its frames stored losslessly: decoding
it gives the source's RGB exactly and its timestamps to the microsecond (the frames JSON keeps
six decimals). It takes disk in ``--tmpdir`` while its input runs (removed with the job's folder)
and is decoded twice (frames JSON, faces), so the codec is chosen by size: raw RGB (3 bytes a
pixel; writing and reading cost next to nothing) up to :data:`RAW_LIMIT` bytes of kept frames,
FFV1 (``bgr0``) above, which stores per pixel 0.7 bytes on the demo's clip, 1.5 on a smooth frame
with camera-like noise (sd 3), 3.3 on pure noise (measured) but writes and reads 1080p at a few
frames a second per core (``--stride`` divides both).
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from affect_pipeline.common.errors import PipelineError, UsageError

#: image files read as frames (OpenFace's ``-fdir`` set, plus TIFF and WebP)
FRAME_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: seconds between frames of an image input: OpenFace's ``-fps`` default for image sequences
DEFAULT_FPS = 30.0
TIME_BASE = Fraction(1, 1_000_000)          # the temporary video's: timestamps to the microsecond
#: kept frames of up to this many raw bytes are stored raw, larger inputs as FFV1 (a third to a half)
RAW_LIMIT = 2 << 30
RAW, FFV1 = ("rawvideo", "rgb24"), ("ffv1", "bgr0")
EXIF_ORIENTATION = 0x0112
TURNED = (5, 6, 7, 8)                       # EXIF orientations that swap width and height


@dataclass(frozen=True)
class FrameOptions:
    """Which frames of an input are predicted and when image frames are: ``--stride``, ``--fps``."""
    fps: float = DEFAULT_FPS
    stride: int = 1


# ---------------------------------------------------------------- finding frames
def is_image(p: Path) -> bool:
    return p.suffix.lower() in FRAME_EXTS


def natural_key(name: str) -> list:
    """Sort key with digit runs compared as numbers: ``f2`` < ``f10`` (OpenFace, ls -v)."""
    return [(0, int(t), t) if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", name) if t]


def frame_files(folder: Path) -> list[Path]:
    """A folder's images (its own files, hidden ones skipped), in natural name order."""
    files = [q for q in folder.iterdir() if not q.name.startswith(".") and is_image(q) and q.is_file()]
    return sorted(files, key=lambda q: natural_key(q.name))


def frame_folders(root: Path) -> list[Path]:
    """``root`` and every folder below it (hidden ones skipped) that holds images: one frame
    sequence each, in natural order of their paths."""
    dirs = [root] + [d for d in root.rglob("*") if d.is_dir()
                     and not any(s.startswith(".") for s in d.relative_to(root).parts)]
    return sorted((d for d in dirs if frame_files(d)), key=lambda d: natural_key(d.relative_to(root).as_posix()))


# ---------------------------------------------------------------- reading images
@contextlib.contextmanager
def _open_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    if path.stat().st_size == 0:
        raise UsageError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            yield im
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UsageError(f"{path}: unreadable image (not an image, or corrupt: {e})") from None


def upright_size(path: Path) -> tuple[int, int]:
    """(width, height) as shown (EXIF orientation applied), from the header only."""
    with _open_image(path) as im:
        w, h = im.size
        return (h, w) if im.getexif().get(EXIF_ORIENTATION) in TURNED else (w, h)


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3), upright; 16-bit images scaled to 8 bits, alpha dropped."""
    from PIL import ImageOps

    with _open_image(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode.startswith("I"):                  # 16 / 32-bit grey: top 8 bits, as OpenCV reads it
            a = np.asarray(im).astype(np.uint32)
            grey = (a >> (8 if a.max() < 65536 else 24)).astype(np.uint8)
            return np.repeat(grey[..., None], 3, 2)
        return np.asarray(im.convert("RGB"))


# ---------------------------------------------------------------- checks before any model loads
def check_inputs(paths: Iterable[Path]) -> None:
    """Every input readable: a video's first frame decodes, an image decodes, a frame folder's
    images have readable headers and one size. Each failure is a :class:`UsageError` naming
    the file (exit 2), raised before the models load."""
    for p in paths:
        if p.is_dir():
            check_frame_folder(p)
        elif is_image(p):
            read_image(p)
        else:
            check_video(p)


def check_video(path: Path) -> None:
    from affect_pipeline.data.video import iter_frames

    if not path.is_file():
        raise UsageError(f"{path}: video not found")
    if path.stat().st_size == 0:
        raise UsageError(f"{path}: empty file (0 bytes)")
    try:
        with contextlib.closing(iter_frames(path)) as frames:
            if next(frames, None) is None:
                raise UsageError(f"{path}: the video stream has no decodable frames")
    except UsageError:
        raise
    except PipelineError as e:
        raise UsageError(f"{e} (videos: any format FFmpeg reads; images: {' '.join(FRAME_EXTS)})") from None


def check_frame_folder(folder: Path) -> None:
    files = frame_files(folder)
    if not files:
        raise UsageError(f"{folder}: no frames in this folder (images {' / '.join(FRAME_EXTS)})")
    first = upright_size(files[0])
    for f in files[1:]:
        size = upright_size(f)
        if size != first:
            raise _sizes_differ(folder, (files[0], first), (f, size))


def _sizes_differ(folder: Path, a: tuple[Path, tuple], b: tuple[Path, tuple]) -> UsageError:
    return UsageError(f"{folder}: frames of different sizes: {a[0].name} is {a[1][0]}x{a[1][1]}, {b[0].name} is "
                      f"{b[1][0]}x{b[1][1]} (a frame sequence has one size: resize or pad them first)")


# ---------------------------------------------------------------- the job's video
def temp_codec(n_frames: int, size: tuple[int, int]) -> tuple[str, str]:
    """(codec, pixel format) of the temporary video of ``n_frames`` frames of ``size`` (w, h)."""
    return RAW if n_frames * size[0] * size[1] * 3 <= RAW_LIMIT else FFV1


def lossless_video(out: Path, frames: Iterable[tuple[float, np.ndarray]], fps: float, codec=FFV1) -> Path:
    """``(timestamp_s, rgb uint8)`` frames into NUT (``codec``: RAW or FFV1): exact pixels,
    timestamps to the µs (a repeated timestamp, which a damaged source can have, moves on by 1 µs:
    a muxer needs them rising)."""
    import av

    with av.open(str(out), "w", format="nut") as c:
        vs, last = None, None
        for t, rgb in frames:
            if vs is None:
                vs = c.add_stream(codec[0], rate=Fraction(fps).limit_denominator(1001))
                vs.width, vs.height, vs.pix_fmt = rgb.shape[1], rgb.shape[0], codec[1]
                vs.codec_context.time_base = TIME_BASE
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            pts = int(round(t / TIME_BASE))
            last = pts if last is None else max(pts, last + 1)
            f.time_base, f.pts = TIME_BASE, last
            c.mux(vs.encode(f))
        c.mux(vs.encode())
    return out


def _image_frames(files: list[Path], keep: np.ndarray, fps: float, folder: Path) -> Iterator[tuple[float, np.ndarray]]:
    size = None
    for k in keep:
        rgb = read_image(files[k])
        if size is not None and rgb.shape[:2] != size:
            raise _sizes_differ(folder, (files[keep[0]], size[::-1]), (files[k], rgb.shape[1::-1]))
        size = rgb.shape[:2]
        yield float(k / fps), rgb


def _video_frames(path: Path, stride: int, threads: int) -> Iterator[tuple[float, np.ndarray]]:
    from affect_pipeline.data.video import iter_frames

    for i, t, rgb in iter_frames(path, threads):
        if i % stride == 0:
            yield t, rgb


@dataclass(frozen=True)
class Media:
    """What the video path runs on for one input: the file it decodes; the 1-based numbers of
    its frames in the whole input (None: all, the file is the input); a soundtrack to take from
    another file (the strided video's original) and the duration it covers."""
    video: Path
    frames: np.ndarray | None = None
    audio: Path | None = None
    duration: float = 0.0


def job_media(path: Path, tmp: Path, opts: FrameOptions, threads: int = 1) -> Media:
    """A video at stride 1 as it is; anything else as a lossless video of its kept frames in ``tmp``."""
    from affect_pipeline.data.video import frame_info

    if path.is_dir() or is_image(path):
        files = frame_files(path) if path.is_dir() else [path]
        if not files:
            raise UsageError(f"{path}: no frames in this folder (images {' / '.join(FRAME_EXTS)})")
        keep = np.arange(0, len(files), opts.stride)
        video = lossless_video(tmp / "frames.nut", _image_frames(files, keep, opts.fps, path), opts.fps / opts.stride,
                               temp_codec(len(keep), upright_size(files[0])))
        return Media(video, keep + 1)
    if opts.stride == 1:
        return Media(path)
    info = frame_info(path, threads)                 # the whole video's checks, frame count, soundtrack
    keep = np.arange(0, int(info["n_frames"]), opts.stride)
    video = lossless_video(tmp / "strided.nut", _video_frames(path, opts.stride, threads), info["fps"] / opts.stride,
                           temp_codec(len(keep), (info["width"], info["height"])))
    return Media(video, keep + 1, path if info["has_audio"] else None, float(info["duration"]))


def prepare_input(path: Path, video_id: str, tmp: Path, run) -> tuple:
    """``video_job.prepare_video`` on the input's :class:`Media` (``run``: the command's Run:
    frames, fparams, sample_rate, threads, device), the soundtrack taken from the original; returns
    the job and the 1-based numbers of its frames in the whole input."""
    from affect_pipeline.affect_predict.video_job import prepare_video
    from affect_pipeline.data.audio_track import extract_audio

    media = job_media(path, tmp, run.frames, run.threads)
    job = prepare_video(media.video, video_id, tmp, run.fparams, run.sample_rate, run.threads, run.device)
    n = len(job.timestamps)
    if media.frames is not None and len(media.frames) != n:
        raise PipelineError(f"{path}: {n} frames decoded from {media.video}, {len(media.frames)} kept "
                            f"(the input changed while it ran?)")
    if media.audio is not None and run.sample_rate:      # the strided video's soundtrack: the original's
        extract_audio(media.audio, job.wav, run.sample_rate, duration=media.duration, threads=run.threads)
        job.info["has_audio"] = True
    return job, np.arange(1, n + 1) if media.frames is None else media.frames
