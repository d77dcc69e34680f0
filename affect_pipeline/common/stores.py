"""The HDF5 stores that connect stages: face crops, per-frame features, labels.

Formats:
- face store ``faces/{batch}/{video}.h5`` (a directory per ``crop_faces`` batch) — one row per
  decoded frame: ``jpeg`` (vlen uint8, empty when no face), ``found`` bool, ``score`` f4,
  ``box`` f4 (x1, y1, x2, y2), ``landmarks`` f4 (L, 2), ``timestamps`` f8 seconds; attrs
  video_id, n_frames, size, backend, fps, fill ("zeros": a frame without a face decodes to a
  black crop that later stages mask with ``found``).
- feature shard ``features/{model}.h5`` / ``features/mae/{task}/{fold}.h5`` — one job's output:
  a group per video with ``features`` (n_frames, D) f2, ``valid`` (n_frames,) bool, optional
  extras (e.g. ``logits``), attrs n_frames, fps; root attrs extractor, fold, checkpoint digest.
- labels ``index/labels/{task}.h5`` — a group per video with ``y`` f4 (n_frames, C) (EXPR: C=1
  class index; ERI: (1, 7)) and ``mask`` bool (n_frames,); attrs split, source.
All writers go through :func:`affect_pipeline.common.runtime.atomic_path` (shards through
``{out}.partial``, which a rerun resumes): a killed job leaves no file under the real name.
"""
from __future__ import annotations

import contextlib
import errno
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.files import atomic_path, reserve_h5
from affect_pipeline.common.runtime import read_json

log = logging.getLogger(__name__)


def is_lock_error(e: OSError) -> bool:
    """HDF5 could not take its file lock (held elsewhere, or unsupported by the file system)."""
    return "unable to lock file" in str(e).lower()


def lock_message(path, kind: str, e: OSError) -> str:
    """What a lock failure means and what to do: never "corrupt, delete it"."""
    if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK) or f"errno = {errno.EAGAIN}," in str(e):
        return (f"{path}: {kind} is locked by another process that has it open ({e}): a job still "
                f"running (e.g. one left on a compute node after its Snakemake died) or a notebook; "
                f"let it finish or stop it. If no process has it open (a lock a shared file system "
                f"kept after a crash), export HDF5_USE_FILE_LOCKING=FALSE before Snakemake "
                f"(docs/cluster.md)")
    return (f"{path}: the file system refuses HDF5's file lock for this {kind} ({e}); export "
            f"HDF5_USE_FILE_LOCKING=FALSE before Snakemake (shared file systems: docs/cluster.md)")


def h5_file(path, mode: str, kind: str) -> h5py.File:
    """``h5py.File`` that reports a lock failure as a lock (never as corruption), with its fix."""
    try:
        return h5py.File(path, mode)
    except OSError as e:
        if is_lock_error(e):
            raise PipelineError(lock_message(path, kind, e)) from e
        raise


def _open(path, kind: str) -> h5py.File:
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: {kind} not found")
    try:
        return h5_file(path, "r", kind)
    except OSError as e:
        raise PipelineError(f"{path}: unreadable {kind} (truncated or corrupt HDF5: {e}); "
                            f"delete it and rerun the rule that makes it") from e


def _require(f: h5py.File, path, names, kind):
    missing = [n for n in names if n not in f]
    if missing:
        raise PipelineError(f"{path}: {kind} lacks dataset(s) {missing}")


# ---------------------------------------------------------------- face store
class FaceStoreWriter:
    """Streaming writer: ``append`` batches of frames; file appears only on clean exit."""

    def __init__(self, f: h5py.File, n_landmarks: int, size: int):
        self.f, self.n = f, 0
        vlen = h5py.vlen_dtype(np.uint8)
        f.create_dataset("jpeg", (0,), maxshape=(None,), dtype=vlen, chunks=(256,))
        f.create_dataset("found", (0,), maxshape=(None,), dtype=bool, chunks=(4096,))
        f.create_dataset("score", (0,), maxshape=(None,), dtype="f4", chunks=(4096,))
        f.create_dataset("box", (0, 4), maxshape=(None, 4), dtype="f4", chunks=(4096, 4))
        f.create_dataset("landmarks", (0, n_landmarks, 2), maxshape=(None, n_landmarks, 2),
                         dtype="f4", chunks=(1024, n_landmarks, 2))
        f.create_dataset("timestamps", (0,), maxshape=(None,), dtype="f8", chunks=(4096,))
        self.size = size

    def append(self, crops: list[np.ndarray | None], found, score, box, landmarks, timestamps,
               quality: int = 95) -> None:
        """crops: per frame an RGB uint8 (size, size, 3) array, or None for no face."""
        import cv2

        b = len(crops)
        enc = []
        for c in crops:
            if c is None:
                enc.append(np.zeros(0, np.uint8))
            else:
                ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(c[..., ::-1]),
                                       [cv2.IMWRITE_JPEG_QUALITY, quality])
                enc.append(buf.ravel())
        reserve_h5(self.f.filename, sum(e.nbytes for e in enc) + b * (64 + 8 * self.f["landmarks"].shape[1]))
        for name, val in (("jpeg", None), ("found", found), ("score", score), ("box", box),
                          ("landmarks", landmarks), ("timestamps", timestamps)):
            ds = self.f[name]
            ds.resize(self.n + b, axis=0)
            if name == "jpeg":
                for i, e in enumerate(enc):
                    ds[self.n + i] = e
            else:
                ds[self.n:self.n + b] = np.asarray(val, dtype=ds.dtype).reshape((b,) + ds.shape[1:])
        self.n += b
        self.f.flush()      # onto the room reserve_h5 made, not left in HDF5's caches for later


@contextlib.contextmanager
def write_face_store(path, *, video_id: str, size: int, backend: str, fps: float,
                     n_landmarks: int = 5, **attrs) -> Iterator[FaceStoreWriter]:
    with atomic_path(path) as tmp:
        with h5_file(tmp, "w", "face store") as f:
            w = FaceStoreWriter(f, n_landmarks, size)
            yield w
            f.attrs.update(dict(video_id=video_id, n_frames=w.n, size=size, backend=backend,
                                fps=float(fps), fill="zeros", **attrs))


class _Reader:
    """An open HDF5 store (``self.f``), usable as a context manager."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.f.close()


def face_store_paths(faces, videos=None) -> dict[str, str]:
    """video id -> face store, from store files ``{video}.h5`` and/or the batch directories
    ``crop_faces`` writes (``faces/{batch}/{video}.h5``). ``videos``: keep just these, each of
    which must be there; a video found twice is refused."""
    out: dict[str, str] = {}
    for f in map(Path, faces):
        for p in sorted(f.glob("*.h5")) if f.is_dir() else [f]:
            if p.stem in out:
                raise PipelineError(f"--faces gives video {p.stem!r} twice: {out[p.stem]} and {p}")
            out[p.stem] = str(p)
    if videos is None:
        return out
    missing = [v for v in videos if v not in out]
    if missing:
        raise PipelineError(f"no face store for video(s) {missing[:5]} in --faces {[str(f) for f in faces][:3]}")
    return {v: out[v] for v in videos}


def skip_failed(faces, videos: list[str]) -> list[str]:
    """``videos`` less those a crop_faces batch folder of ``faces`` names in its ``failed.json`` (their
    media file did not decode in extract_frames, so they have no store), each logged with its error."""
    failed: dict = {}
    for f in map(Path, faces):
        if (f / "failed.json").is_file():
            failed.update({v: (f / "failed.json", r) for v, r in read_json(f / "failed.json").items()})
    for v in (v for v in videos if v in failed):
        path, r = failed[v]
        log.error("video %s: left out, named in %s: %s", v, path, r.get("error") if isinstance(r, dict) else r)
    return [v for v in videos if v not in failed]


class FaceStore(_Reader):
    """Reader for a face store ``faces/{batch}/{video}.h5``: metadata arrays loaded, crops decoded on demand."""

    def __init__(self, path):
        self.path = Path(path)
        self.f = _open(path, "face store")
        _require(self.f, path, ["jpeg", "found", "box", "landmarks", "timestamps"], "face store")
        self.attrs = dict(self.f.attrs)
        self.found = self.f["found"][:]
        self.n_frames = len(self.found)
        self.size = int(self.attrs.get("size", 224))

    def __len__(self):
        return self.n_frames

    @property
    def timestamps(self) -> np.ndarray:
        return self.f["timestamps"][:]

    def read_crops(self, idx) -> np.ndarray:
        """Decode crops ``idx`` (sorted or not) to (len(idx), S, S, 3) RGB uint8; zeros where no face."""
        import cv2

        idx = np.asarray(idx, dtype=np.int64)
        out = np.zeros((len(idx), self.size, self.size, 3), np.uint8)
        ds = self.f["jpeg"]
        lo, hi = (int(idx.min()), int(idx.max()) + 1) if len(idx) else (0, 0)
        # one slice read when the rows asked are dense (their span at most 4x their number): h5py
        # pays per read call, so reading row by row is the slow path
        block = ds[lo:hi] if 0 <= lo and hi <= ds.shape[0] and hi - lo <= 4 * len(idx) else None
        for k, i in enumerate(idx):
            buf = block[i - lo] if block is not None else ds[int(i)]
            if buf.size:
                img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
                if img is None:
                    raise PipelineError(f"{self.path}: crop of frame {i} is not a decodable JPEG")
                if img.shape[0] != self.size:
                    img = cv2.resize(img, (self.size, self.size), interpolation=cv2.INTER_AREA)
                out[k] = img[..., ::-1]
        return out

    def iter_crops(self, batch_size: int = 64) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (frame indices, crops) in order, ``batch_size`` frames at a time (memory flat)."""
        for s in range(0, self.n_frames, batch_size):
            idx = np.arange(s, min(s + batch_size, self.n_frames))
            yield idx, self.read_crops(idx)


# ---------------------------------------------------------------- labels
@dataclass
class Labels:
    y: np.ndarray       # (n_frames, C) float32; EXPR: (n, 1) class index; ERI: (1, 7)
    mask: np.ndarray    # (n_frames,) bool — rows with a valid annotation
    split: str


def write_labels(path, task: str, labels: dict[str, Labels], **attrs) -> None:
    with atomic_path(path) as tmp:
        with h5_file(tmp, "w", "label store") as f:
            reserve_h5(tmp, sum(np.asarray(l.y).nbytes + np.asarray(l.mask).nbytes + 256 for l in labels.values()))
            f.attrs.update(dict(task=task, **attrs))
            for vid, lab in labels.items():
                g = f.create_group(vid)
                g.create_dataset("y", data=np.asarray(lab.y, np.float32))
                g.create_dataset("mask", data=np.asarray(lab.mask, bool))
                g.attrs["split"] = lab.split


def read_labels(path, videos=None) -> dict[str, Labels]:
    """All (or the listed) videos' labels of one task; an unknown video id is an error."""
    out = {}
    with _open(path, "label store") as f:
        names = list(f.keys()) if videos is None else list(videos)
        for vid in names:
            if vid not in f:
                raise PipelineError(f"{path}: no labels for video {vid!r}")
            g = f[vid]
            out[vid] = Labels(g["y"][:], g["mask"][:], str(g.attrs["split"]))
    return out
