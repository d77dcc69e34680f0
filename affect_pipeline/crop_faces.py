"""crop_faces: one face per decoded frame, detected, tracked and aligned, into ``faces/{video}.h5``.

Detection (backends mtcnn / face_alignment, see :mod:`.faces`) streams the video in batches;
the ``cropped_aligned`` backend reads the official Aff-Wild2 crops
``{cropped_dir}/{video}/{i:05d}.jpg`` (1-based) instead, where a missing image is a frame
without a face. Every decoded frame gets a row; a frame without an accepted face has
found=false (the store fills zeros). The store must have exactly the frames JSON's ``n_frames``
rows and its timestamps, else the job fails naming the video.

The ``faces`` section of workflow_config.yaml arrives complete via ``--params``; torch and the
detector are imported only when detecting.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .faces import FaceParams, faces_in_batch, make_backend
from .runtime import PipelineError, pick_device, progress, setup_torch, stage_parser
from .stores import write_face_store
from .video import iter_frame_batches, read_frames_json

log = logging.getLogger("affect_pipeline.crop_faces")


@dataclass(frozen=True)
class FaceJob:
    """One video into one face store."""

    video: Path                     # the media file
    info: dict                      # its frames JSON: n_frames, fps, timestamps
    out: Path                       # the face store to write
    video_id: str                   # recorded in the store (results/faces/{video_id}.h5)
    side: str = "none"              # none | left | right (X_left / X_right videos)
    cropped_dir: Path | None = None  # official cropped_aligned root (backend cropped_aligned)


def crop_faces(job: FaceJob, params: FaceParams, *, threads: int = 1, device="cpu") -> dict:
    """Write ``job.out``; returns ``{"n_frames", "n_found"}``."""
    if params.backend == "cropped_aligned":
        if job.cropped_dir is None:
            raise PipelineError("faces.backend cropped_aligned needs --cropped-dir (affwild2.cropped_aligned)")
        return official_crops(job, params)
    return detect_faces(job, params, threads=threads, device=device)


# ---------------------------------------------------------------- detection
def release_memory() -> None:
    """Give freed heap back to the OS (glibc malloc_trim) so RSS stays flat over long videos.

    The detector's batch tensors vary in size with the number of candidate boxes; without a trim
    glibc keeps the fragments and peak RSS drifts up with video length. No-op off glibc.
    """
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


def _check_batch(video, idx: np.ndarray, ts: np.ndarray, ref_ts: np.ndarray) -> None:
    """Decoded frames must be the frames JSON's frames (same count so far, same timestamps)."""
    if idx[-1] >= len(ref_ts):
        raise PipelineError(f"{video}: decoding yields more frames than the {len(ref_ts)} in its "
                            f"frames JSON (video changed since extract_frames? rerun it)")
    if np.abs(ts - ref_ts[idx]).max() > 1e-3:
        raise PipelineError(f"{video}: frame timestamps differ from its frames JSON at frame "
                            f"{int(idx[0])}+ (a different or re-encoded video? rerun extract_frames)")


def detect_faces(job: FaceJob, params: FaceParams, *, threads: int = 1, device="cpu") -> dict:
    """Detect, track and align faces in ``job.video``, streaming, into the face store."""
    backend = make_backend(params, device)
    n_expected, prev, n_found = int(job.info["n_frames"]), None, 0
    ref_ts = np.asarray(job.info["timestamps"], np.float64)
    bar = progress(total=n_expected, desc=f"faces {job.video_id}", unit="fr")
    with write_face_store(job.out, video_id=job.video_id, size=params.size, backend=params.backend,
                          fps=job.info["fps"], n_landmarks=backend.n_landmarks, side=job.side,
                          margin=params.margin, source=str(job.video)) as w:
        for idx, ts, frames in iter_frame_batches(job.video, params.batch_size, threads):
            _check_batch(job.video, idx, ts, ref_ts)
            r, prev = faces_in_batch(backend, frames, prev, job.side, params.size, params.margin)
            w.append(r.crops, r.found, r.score, r.box, r.landmarks, ts)
            n_found += int(r.found.sum())
            bar.update(len(frames))
            release_memory()
        bar.close()
        if w.n != n_expected:
            raise PipelineError(f"{job.video}: decoded {w.n} frames but its frames JSON says {n_expected} "
                                f"(truncated or changed video? rerun extract_frames)")
        w.f.attrs["n_found"] = n_found
    return {"n_frames": n_expected, "n_found": n_found}


# ---------------------------------------------------------------- official crops
def _cropped_dir(root, video_id: str) -> Path:
    root = Path(root)
    for d in (root / video_id, root):
        if d.is_dir() and (d is not root or next(d.glob("[0-9][0-9][0-9][0-9][0-9].jpg"), None)):
            return d
    raise PipelineError(f"{root / video_id}: no official cropped_aligned folder for video {video_id}")


def _read_crop(f: Path, size: int) -> np.ndarray | None:
    """An official crop as RGB (size, size, 3), or None where the image is absent (no face)."""
    import cv2

    if not f.exists():
        return None
    img = cv2.imread(str(f), cv2.IMREAD_COLOR)
    if img is None:
        raise PipelineError(f"{f}: not a readable JPEG")
    if img.shape[:2] != (size, size):
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return img[..., ::-1]


def official_crops(job: FaceJob, params: FaceParams) -> dict:
    """Official crops ``{dir}/{video}/{i:05d}.jpg`` into the store; a missing image = no face."""
    d = _cropped_dir(job.cropped_dir, job.video_id)
    size, bs, n = params.size, params.batch_size, int(job.info["n_frames"])
    ts, n_found = np.asarray(job.info["timestamps"], np.float64), 0
    with write_face_store(job.out, video_id=job.video_id, size=size, backend="cropped_aligned",
                          fps=job.info["fps"], n_landmarks=5, side=job.side, margin=0.0, source=str(d)) as w:
        for s in progress(range(0, n, bs), desc=f"crops {job.video_id}", unit="batch"):
            crops = [_read_crop(d / f"{i + 1:05d}.jpg", size) for i in range(s, min(s + bs, n))]
            b = len(crops)
            found = np.array([c is not None for c in crops])
            w.append(crops, found, found.astype(np.float32), np.zeros((b, 4)), np.zeros((b, 5, 2)), ts[s:s + b])
            n_found += int(found.sum())
        w.f.attrs["n_found"] = n_found
    extra = len(list(d.glob("*.jpg"))) - n_found
    if extra > 0:
        log.warning("%s: %d images beyond the video's %d frames are ignored", d, extra, n)
    return {"n_frames": n, "n_found": n_found}


# ---------------------------------------------------------------- CLI
def main(argv: list[str]) -> int:
    p = stage_parser("crop_faces", "Detect, track and align one face per frame into faces/{video}.h5.")
    p.add_argument("--video", required=True, help="the media file")
    p.add_argument("--frames", required=True, help="frames JSON of the media file (n_frames, timestamps)")
    p.add_argument("--out", required=True, help="results/faces/{video}.h5 (the stem is the video id)")
    p.add_argument("--side", choices=["left", "right", "none"], default="none")
    p.add_argument("--cropped-dir", default=None, help="official cropped_aligned root (backend cropped_aligned)")
    a = p.parse_args(argv)
    params = FaceParams.from_config(a.params)
    if a.cropped_dir:
        params = replace(params, backend="cropped_aligned")
    job = FaceJob(Path(a.video), read_frames_json(a.frames), Path(a.out), Path(a.out).stem, a.side,
                  Path(a.cropped_dir) if a.cropped_dir else None)
    import cv2

    cv2.setNumThreads(a.threads)
    device = "cpu"
    if params.backend != "cropped_aligned":
        setup_torch(a.threads, a.seed)
        device = pick_device(a.device)
    r = crop_faces(job, params, threads=a.threads, device=device)
    if r["n_found"] == 0:
        log.warning("%s: no face found in any of its %d frames; the store marks every frame found=false",
                    a.video, r["n_frames"])
    log.info("%s: face in %d/%d frames (%.1f %%) -> %s [%d threads]", job.video_id, r["n_found"],
             r["n_frames"], 100 * r["n_found"] / max(r["n_frames"], 1), a.out, a.threads)
    return 0
