"""Every face of a video, tracked across frames: one face store per track (``affect-predict``).

The workflow's ``crop_faces`` keeps one face per frame (the annotated person, or the ``side``
of a ``_left`` / ``_right`` video). A new video may show several people, so ``affect-predict``
detects every face, links the detections of consecutive frames into tracks and writes one face
store per track, each with a row for every frame of the video (``found`` false where that face
is not seen), so the feature and temporal models run on each track exactly as on a one-face store.

Tracking (the IoU tracker of SORT without its Kalman filter: enough for faces at video rates):
each frame's detections are matched to the live tracks by the Hungarian assignment
(scipy ``linear_sum_assignment``) on the cost ``centre distance / diagonal of the track's last
box - IoU``, the cost ``crop_faces`` uses to keep its one face; a pair costing
:data:`MAX_COST` or more is no match. An unmatched detection starts a track; a track unseen for
more than :data:`MAX_GAP_S` seconds ends. Tracks seen in fewer than :data:`MIN_FRAMES` frames
(a detector's flicker) are dropped, unless no track reaches it (then the longest one stays).
Face ids are 0, 1, ... in order of first appearance (then left to right); a video without any
face gets one empty track, face 0.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.runtime import progress
from affect_pipeline.common.stores import write_face_store
from affect_pipeline.data.video import iter_frame_batches
from affect_pipeline.faces.detection import (
    FaceParams,
    align_face,
    box_iou,
    make_backend,
)

#: a detection continues a track only when centre distance / diagonal - IoU is below this
MAX_COST = 0.5
#: a track unseen for longer than this (seconds) ends; a face seen again later starts a new one
MAX_GAP_S = 1.0
#: tracks detected in fewer frames are dropped (false detections flicker for a frame or two)
MIN_FRAMES = 3


@dataclass
class FaceTrack:
    """One tracked face: its id in the outputs, its face store and how many frames it was seen in."""
    face_id: int
    path: Path
    n_found: int


def match_cost(boxes: np.ndarray, last: np.ndarray) -> np.ndarray:
    """(detections, tracks) cost: centre distance in units of the track box's diagonal, minus IoU."""
    c = (boxes[:, None, :2] + boxes[:, None, 2:]) / 2
    lc = (last[None, :, :2] + last[None, :, 2:]) / 2
    diag = np.maximum(np.hypot(last[:, 2] - last[:, 0], last[:, 3] - last[:, 1]), 1e-6)[None]
    iou = np.stack([box_iou(boxes, b) for b in last], 1) if len(last) else np.zeros((len(boxes), 0))
    return np.linalg.norm(c - lc, axis=2) / diag - iou


class IouTracker:
    """Track ids for each frame's detections (see the module docstring)."""

    def __init__(self, max_gap: int):
        self.max_gap, self.next_id = max_gap, 0
        self.last: dict[int, tuple[int, np.ndarray]] = {}     # track id -> (frame, last box)

    def update(self, frame: int, boxes: np.ndarray) -> list[int]:
        from scipy.optimize import linear_sum_assignment

        self.last = {t: (f, b) for t, (f, b) in self.last.items() if frame - f <= self.max_gap}
        live = list(self.last)
        ids = [-1] * len(boxes)
        if len(boxes) and live:
            cost = match_cost(boxes, np.stack([self.last[t][1] for t in live]))
            for i, j in zip(*linear_sum_assignment(cost)):
                if cost[i, j] < MAX_COST:
                    ids[i] = live[j]
        for i, box in enumerate(boxes):
            if ids[i] < 0:
                ids[i], self.next_id = self.next_id, self.next_id + 1
            self.last[ids[i]] = (frame, np.asarray(box, np.float64))
        return ids


class TrackWriters:
    """One streaming face store per track, opened when the track starts (earlier frames: no face)."""

    def __init__(self, folder: Path, video_id: str, info: dict, params: FaceParams, source: str):
        self.folder, self.video_id, self.info, self.params, self.source = folder, video_id, info, params, source
        self.stack, self.writers, self.found = contextlib.ExitStack(), {}, {}

    def writer(self, tid: int, n_before: int):
        if tid not in self.writers:
            w = self.stack.enter_context(write_face_store(
                self.folder / f"track{tid}.h5", video_id=self.video_id, size=self.params.size,
                backend=self.params.backend, fps=self.info["fps"], n_landmarks=5, side="none",
                margin=self.params.margin, source=self.source, track=tid))
            ts = np.asarray(self.info["timestamps"], np.float64)
            for s in range(0, n_before, 4096):
                b = min(4096, n_before - s)
                w.append([None] * b, np.zeros(b, bool), np.zeros(b), np.zeros((b, 4)), np.zeros((b, 5, 2)),
                         ts[s:s + b])
            self.writers[tid], self.found[tid] = w, 0
        return self.writers[tid]


def faces_of_batch(backend, frames: np.ndarray):
    """Every detection of a batch: (frame in batch, box, score, 5 points) each, landmarks for all."""
    rows = [(j, b, s, None if p is None else p[k]) for j, (boxes, scores, p) in enumerate(backend.detect(frames))
            for k, (b, s) in enumerate(zip(boxes, scores))]
    if rows and not backend.detector_landmarks:
        pts = backend.landmarks(frames[[r[0] for r in rows]], np.stack([r[1] for r in rows]).astype(np.float64))
        rows = [(j, b, s, p) for (j, b, s, _), p in zip(rows, pts)]
    return rows


def track_faces(video: Path, info: dict, folder: Path, video_id: str, params: FaceParams, *,
                threads: int = 1, device="cpu") -> list[FaceTrack]:
    """Detect, track and align every face of ``video`` into ``folder/track{k}.h5``; the kept tracks."""
    backend = make_backend(params, device)
    n, fps = int(info["n_frames"]), float(info["fps"]) or 25.0
    tracker, folder = IouTracker(max(1, round(MAX_GAP_S * fps))), Path(folder)
    bar = progress(total=n, desc=f"faces {video_id}", unit="fr")
    out = TrackWriters(folder, video_id, info, params, str(video))
    with out.stack:
        done = 0
        for idx, ts, frames in iter_frame_batches(video, params.batch_size, threads):
            if idx[-1] >= n:
                raise PipelineError(f"{video}: decoding yields more frames than the {n} its first decode counted")
            rows = faces_of_batch(backend, frames)
            per_frame: dict[int, list] = {}
            for r in rows:
                per_frame.setdefault(r[0], []).append(r)
            batch = {}
            for j in range(len(frames)):
                dets = per_frame.get(j, [])
                ids = tracker.update(int(idx[j]), np.array([d[1] for d in dets]).reshape(-1, 4))
                for tid, (_, box, score, pts) in zip(ids, dets):
                    batch.setdefault(tid, {})[j] = (box, score, pts)
            for tid in batch:
                out.writer(tid, done)
            for tid, w in out.writers.items():
                _append(w, frames, batch.get(tid, {}), ts, params)
                out.found[tid] += len(batch.get(tid, {}))
            done += len(frames)
            bar.update(len(frames))
        bar.close()
        if done != n:
            raise PipelineError(f"{video}: decoded {done} frames, its first decode counted {n} (changed file?)")
    return keep_tracks(folder, out.found, n, info, video_id, params, str(video))


def _append(w, frames, seen: dict, ts, params: FaceParams) -> None:
    b = len(frames)
    found, score = np.zeros(b, bool), np.zeros(b, np.float32)
    box, lmk = np.zeros((b, 4), np.float32), np.zeros((b, 5, 2), np.float32)
    crops = [None] * b
    for j, (bx, s, pts) in seen.items():
        found[j], score[j], box[j], lmk[j] = True, s, bx, pts
        crops[j] = align_face(frames[j], lmk[j], params.size, params.margin)
    w.append(crops, found, score, box, lmk, ts)


def keep_tracks(folder: Path, found: dict[int, int], n: int, info: dict, video_id: str, params: FaceParams,
                source: str) -> list[FaceTrack]:
    """Drop flicker tracks, renumber the rest 0, 1, ... by first appearance; one empty track if none."""
    keep = [t for t, k in found.items() if k >= MIN_FRAMES] or ([max(found, key=found.get)] if found else [])
    for t in set(found) - set(keep):
        (folder / f"track{t}.h5").unlink()
    if not keep:
        path = folder / "track0.h5"
        ts = np.asarray(info["timestamps"], np.float64)
        with write_face_store(path, video_id=video_id, size=params.size, backend=params.backend, fps=info["fps"],
                              n_landmarks=5, side="none", margin=params.margin, source=source, track=0) as w:
            if n:
                w.append([None] * n, np.zeros(n, bool), np.zeros(n), np.zeros((n, 4)), np.zeros((n, 5, 2)), ts)
        return [FaceTrack(0, path, 0)]
    order = sorted(keep, key=lambda t: (_first_seen(folder / f"track{t}.h5"), t))
    return [FaceTrack(i, folder / f"track{t}.h5", found[t]) for i, t in enumerate(order)]


def _first_seen(path: Path) -> tuple[int, float]:
    from affect_pipeline.common.stores import FaceStore

    with FaceStore(path) as fs:
        found = fs.found.astype(bool)
        first = int(np.argmax(found))
        return first, float(fs.f["box"][first, 0])
