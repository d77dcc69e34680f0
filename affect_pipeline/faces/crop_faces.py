"""crop_faces: one face per decoded frame, detected, tracked and aligned, into ``faces/{video}.h5``;
a whole batch of videos (``faces/{batch}/``, one Snakemake job) with the detector loaded once.

Detection (backends mtcnn / face_alignment, see :mod:`.detection`) streams the video in batches;
the ``cropped_aligned`` backend reads the official Aff-Wild2 crops
``{cropped_dir}/{video}/{i:05d}.jpg`` (1-based) instead, where a missing image is a frame
without a face. Every decoded frame gets a row; a frame without an accepted face has
found=false (the store fills zeros). The store must have exactly the frames JSON's ``n_frames``
rows and its timestamps, else the job fails naming the video.

A batch keeps what it computed: each store is written to ``{cache}/{video}.{key}.h5`` (key: the
params, the stage's code digest, the media file's size and mtime, its frames JSON, side and crop
folder) and hard-linked into the batch directory, which appears, complete, only when every video
succeeded. A failing video fails the job naming itself; its batch-mates' stores are reused by the
rerun, as they are when the batch gains a video. A video whose media file extract_frames could
not decode (its frames JSON records the ``error``; index_dataset leaves it out of the run) is
skipped instead: named in the log and in the batch's ``failed.json``, its batch mates' stores written.
The workflow hands the batch over in a list file (``--batch=@FILE``), never on the command line.

The ``faces`` section of workflow_config.yaml arrives complete via ``--params``; torch and the
detector are imported only when detecting.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.files import atomic_dir
from affect_pipeline.common.lists import read_list
from affect_pipeline.common.runtime import (
    pick_device,
    progress,
    read_json,
    setup_torch,
    stage_parser,
    write_json,
)
from affect_pipeline.common.stores import FaceStore, write_face_store
from affect_pipeline.data.video import iter_frame_batches, read_frames_json
from affect_pipeline.faces.detection import FaceParams, faces_in_batch, make_backend

log = logging.getLogger("affect_pipeline.faces.crop_faces")


@dataclass(frozen=True)
class FaceJob:
    """One video into one face store."""

    video: Path                     # the media file
    info: dict                      # its frames JSON: n_frames, fps, timestamps
    out: Path                       # the face store to write
    video_id: str                   # recorded in the store (faces/{batch}/{video_id}.h5)
    side: str = "none"              # none | left | right (X_left / X_right videos)
    cropped_dir: Path | None = None  # official cropped_aligned root (backend cropped_aligned)


def crop_faces(job: FaceJob, params: FaceParams, *, threads: int = 1, device="cpu", backend=None) -> dict:
    """Write ``job.out``; returns ``{"n_frames", "n_found"}``. ``backend``: a loaded detector."""
    if job.cropped_dir is not None:
        params = replace(params, backend="cropped_aligned")
    if params.backend == "cropped_aligned":
        if job.cropped_dir is None:
            raise PipelineError("faces.backend cropped_aligned needs --cropped-dir (affwild2.cropped_aligned)")
        return official_crops(job, params)
    return detect_faces(job, params, threads=threads, device=device, backend=backend)


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


def detect_faces(job: FaceJob, params: FaceParams, *, threads: int = 1, device="cpu", backend=None) -> dict:
    """Detect, track and align faces in ``job.video``, streaming, into the face store."""
    backend = backend or make_backend(params, device)
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


# ---------------------------------------------------------------- batches
def store_key(job: FaceJob, params: FaceParams, frames_file, code: str) -> str:
    """What a cached store was made from; a rerun reuses it only when all of it is unchanged."""
    st = job.video.stat()
    made_of = [asdict(params), code, str(job.video), st.st_size, st.st_mtime_ns,
               hashlib.sha256(Path(frames_file).read_bytes()).hexdigest(), job.side, str(job.cropped_dir)]
    return hashlib.sha256(json.dumps(made_of, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _prune(cache: Path, video_id: str, keep: Path) -> None:
    """Drop a video's cached stores from other keys (older params, code or media)."""
    own = re.compile(re.escape(video_id) + r"\.[0-9a-f]{16}\.h5")
    for p in cache.glob(f"{glob.escape(video_id)}.*.h5"):
        if p != keep and own.fullmatch(p.name):
            p.unlink(missing_ok=True)


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:            # a filesystem without hard links: a copy
        shutil.copy2(src, dst)


def decode_failed(frames) -> str | None:
    """The error extract_frames recorded in a frames JSON for a file it could not decode, or None."""
    try:
        info = read_json(frames)
    except PipelineError:
        return None                     # unreadable: read_frames_json names the problem
    return info.get("error") if isinstance(info, dict) else None


def crop_batch(videos: list[dict], out, cache, params: FaceParams, code: str, *, threads: int = 1,
               device="cpu") -> dict:
    """Every video of a batch (``videos``: dicts id, video, frames, side, cropped_dir) into
    ``out/{id}.h5``, the detector loaded once; returns per video ``{"n_frames", "n_found"}``."""
    out, cache = Path(out), Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    backend, stores, results, failed, skipped = None, {}, {}, {}, {}
    for i, v in enumerate(videos, 1):
        error = decode_failed(v["frames"])
        if error is not None:
            skipped[v["id"]] = {"video": str(v["video"]), "error": f"extract_frames: {error}"}
            log.error("[%d/%d] %s: skipped, its media file did not decode (%s): %s", i, len(videos), v["id"],
                      v["frames"], error)
            continue
        try:
            cdir = Path(v["cropped_dir"]) if v.get("cropped_dir") else None
            job = FaceJob(Path(v["video"]), read_frames_json(v["frames"]), Path(), v["id"], v.get("side") or "none", cdir)
            stored = cache / f"{v['id']}.{store_key(job, params, v['frames'], code)}.h5"
            if stored.exists():
                log.info("[%d/%d] %s: store kept from an earlier run (%s)", i, len(videos), v["id"], stored)
                with FaceStore(stored) as fs:
                    results[v["id"]] = {"n_frames": fs.n_frames, "n_found": int(fs.found.sum())}
            else:
                log.info("[%d/%d] %s", i, len(videos), v["id"])
                if backend is None and cdir is None and params.backend != "cropped_aligned":
                    backend = make_backend(params, device)
                results[v["id"]] = r = crop_faces(replace(job, out=stored), params, threads=threads,
                                                  device=device, backend=backend)
                report(job, r)
            stores[v["id"]] = stored
            _prune(cache, v["id"], stored)
        except Exception as e:  # noqa: BLE001 - the video's own failure: named; its batch-mates go on
            failed[v["id"]] = str(e) if isinstance(e, PipelineError) else f"{type(e).__name__}: {e}"
            log.error("%s: %s", v["id"], failed[v["id"]], exc_info=not isinstance(e, PipelineError))
    if failed:
        raise PipelineError(f"{out.name}: {len(failed)} of {len(videos)} video(s) failed (the other stores are "
                            f"kept in {cache} for the rerun): " + "; ".join(f"{k}: {m}" for k, m in failed.items()))
    with atomic_dir(out) as tmp:
        for vid, stored in stores.items():
            _link(stored, tmp / f"{vid}.h5")
        if skipped:
            write_json(tmp / "failed.json", skipped)
    return results


def report(job: FaceJob, r: dict) -> None:
    if r["n_found"] == 0:
        log.warning("%s: no face found in any of its %d frames; the store marks every frame found=false",
                    job.video, r["n_frames"])
    log.info("%s: face in %d/%d frames (%.1f %%)", job.video_id, r["n_found"], r["n_frames"],
             100 * r["n_found"] / max(r["n_frames"], 1))


# ---------------------------------------------------------------- CLI
def main(argv: list[str]) -> int:
    p = stage_parser("crop_faces", "Detect, track and align one face per frame: one video into faces/{video}.h5, "
                     "or a batch of videos into faces/{batch}/{video}.h5.")
    p.add_argument("--out", required=True, help="the store (--video), or the batch directory (--batch)")
    p.add_argument("--batch", default=None, help="@FILE (or JSON text): a list of {id, video, frames, side, "
                   "cropped_dir}, the batch's videos (instead of --video ...)")
    p.add_argument("--cache", default=None, help="with --batch: where each video's store is kept between runs")
    p.add_argument("--code-digest", default="", help="with --batch: the stage code's digest (a cached store "
                   "made by other code is not reused)")
    p.add_argument("--video", help="the media file")
    p.add_argument("--frames", help="frames JSON of the media file (n_frames, timestamps)")
    p.add_argument("--side", choices=["left", "right", "none"], default="none")
    p.add_argument("--cropped-dir", default=None, help="official cropped_aligned root (backend cropped_aligned)")
    a = p.parse_args(argv)
    if (a.batch is None) == (a.video is None) or (a.video and not a.frames) or (a.batch and not a.cache):
        p.error("give --batch JSON --cache DIR, or --video and --frames")
    params = FaceParams.from_config(a.params)
    if a.cropped_dir:
        params = replace(params, backend="cropped_aligned")
    import cv2

    cv2.setNumThreads(a.threads)
    device = "cpu"
    if params.backend != "cropped_aligned":
        setup_torch(a.threads, a.seed)
        device = pick_device(a.device)
    if a.batch is not None:
        videos = read_list(a.batch)
        r = crop_batch(videos, a.out, a.cache, params, a.code_digest, threads=a.threads, device=device)
        n, found = sum(x["n_frames"] for x in r.values()), sum(x["n_found"] for x in r.values())
        log.info("%s: %d videos, face in %d/%d frames -> %s [%d threads]", Path(a.out).name, len(r), found, n,
                 a.out, a.threads)
        return 0
    job = FaceJob(Path(a.video), read_frames_json(a.frames), Path(a.out), Path(a.out).stem, a.side,
                  Path(a.cropped_dir) if a.cropped_dir else None)
    report(job, crop_faces(job, params, threads=a.threads, device=device))
    return 0
