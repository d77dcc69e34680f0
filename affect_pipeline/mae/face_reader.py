"""What the MAE trainers read: face crops from face stores (and image folders), batched.

Crops are decoded once, resized to the model's ``img_size`` and held as one uint8 tensor per job
when that fits ``cache_gb`` (the demo: ~1 k crops of 64 px = 12 MB; Aff-Wild2's 2.6 M frames at
224 px would be ~390 GB, so there they stream: DataLoader workers decode the JPEGs). Frames
without a face are never trained on: a black crop teaches nothing.
"""
from __future__ import annotations

import logging
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.runtime import progress
from affect_pipeline.common.stores import FaceStore, Labels
from affect_pipeline.mae.model import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


# ---------------------------------------------------------------- decoding
def resize_crops(crops: np.ndarray, size: int) -> np.ndarray:
    """(N, S, S, 3) uint8 -> (N, size, size, 3) uint8 (cv2 INTER_AREA; the same in train and inference)."""
    import cv2

    if crops.shape[1] == size and crops.shape[2] == size:
        return crops
    return np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA) for c in crops]) \
        if len(crops) else np.zeros((0, size, size, 3), np.uint8)


def read_image(path, size: int) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise PipelineError(f"{path}: not a readable image")
    return resize_crops(img[None, ..., ::-1].copy(), size)[0]


class Crops(torch.utils.data.Dataset):
    """Face crops addressed by (file, frame): a face-store row, or an image file (frame -1).

    ``load_all`` decodes everything once into a uint8 tensor (N, S, S, 3); ``__getitem__`` decodes
    one crop for streaming through DataLoader workers (each worker opens its own HDF5 handles).
    """

    def __init__(self, files: list[str], file_id: np.ndarray, frame: np.ndarray, img_size: int):
        self.files, self.file_id, self.frame, self.img_size = files, file_id, frame, img_size
        self._stores: dict[int, FaceStore] = {}

    def __len__(self):
        return len(self.frame)

    def nbytes(self) -> int:
        return len(self) * self.img_size ** 2 * 3

    def _store(self, fid: int) -> FaceStore:
        if fid not in self._stores:
            self._stores[fid] = FaceStore(self.files[fid])
        return self._stores[fid]

    def __getitem__(self, i):
        fid, fr = int(self.file_id[i]), int(self.frame[i])
        img = read_image(self.files[fid], self.img_size) if fr < 0 else \
            resize_crops(self._store(fid).read_crops([fr]), self.img_size)[0]
        return torch.from_numpy(np.ascontiguousarray(img)), i

    def load_all(self, chunk: int = 256) -> torch.Tensor:
        out = torch.empty((len(self), self.img_size, self.img_size, 3), dtype=torch.uint8)
        bar = progress(total=len(self), desc="decode crops", unit="crop")
        for fid in np.unique(self.file_id):
            rows = np.flatnonzero(self.file_id == fid)
            if self.frame[rows[0]] < 0:
                for r in rows:
                    out[r] = torch.from_numpy(read_image(self.files[fid], self.img_size))
            else:
                with FaceStore(self.files[fid]) as fs:
                    for s in range(0, len(rows), chunk):
                        r = rows[s:s + chunk]
                        crops = resize_crops(fs.read_crops(self.frame[r]), self.img_size)
                        out[torch.from_numpy(r)] = torch.from_numpy(crops)
            bar.update(len(rows))
        bar.close()
        return out


def stack_crops(parts: list[tuple[str, np.ndarray]], img_size: int) -> Crops:
    """One dataset over (file, frames) parts: frames of a face store, or -1 for an image file."""
    files = [str(f) for f, _ in parts]
    fids = [np.full(len(fr), i, np.int32) for i, (_, fr) in enumerate(parts)]
    frames = [np.asarray(fr, np.int64) for _, fr in parts]
    return Crops(files, np.concatenate(fids) if fids else np.zeros(0, np.int32),
                 np.concatenate(frames) if frames else np.zeros(0, np.int64), img_size)


@dataclass
class Loader:
    """Batches of (uint8 crops, dataset indices) in a given order: from memory or streamed."""
    ds: Crops
    cache: torch.Tensor | None
    workers: int = 0

    def batches(self, order: np.ndarray, batch_size: int):
        chunks = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
        if self.cache is not None:
            for c in chunks:
                idx = torch.from_numpy(np.asarray(c, np.int64))
                yield self.cache[idx], idx
            return
        dl = torch.utils.data.DataLoader(self.ds, batch_sampler=[list(map(int, c)) for c in chunks],
                                         num_workers=self.workers, pin_memory=torch.cuda.is_available())
        yield from dl


def make_loader(ds: Crops, cache_gb: float, threads: int) -> tuple[Loader, int]:
    """In-memory when the decoded crops fit ``cache_gb``; else streamed. Returns (loader, torch threads).

    Streamed, the model keeps all ``threads``: a decode worker only runs while its prefetch queue
    has room, so it uses the CPU in proportion to what the model consumes (a 224-px JPEG decodes in
    about a millisecond, a ViT-B training step spends hundreds per crop on the CPU), while a thread
    taken from the model costs it that thread's share of every step. Not yet timed on an idle
    machine (on a loaded 2-core VM, 2 OpenMP threads ran slower than 1 even with no worker)."""
    if ds.nbytes() <= cache_gb * 2**30:
        log.info("holding %d crops of %d px in memory (%.1f MB)", len(ds), ds.img_size, ds.nbytes() / 2**20)
        return Loader(ds, ds.load_all()), threads
    workers = min(8, max(1, threads - 1))
    log.info("streaming %d crops (%.1f GB > cache_gb %.1f) with %d decode workers",
             len(ds), ds.nbytes() / 2**30, cache_gb, workers)
    return Loader(ds, None, workers), threads


# ---------------------------------------------------------------- which frames
def subsample(idx: np.ndarray, per_video: int, seed: int, key: str) -> np.ndarray:
    """A fixed random subset of ``per_video`` rows (0: all), the same for a video in every run."""
    if per_video and len(idx) > per_video:
        rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
        idx = np.sort(rng.choice(idx, per_video, replace=False))
    return idx


def face_frames(path, frames_per_video: int, seed: int) -> np.ndarray:
    """Found frames of a face store; with ``frames_per_video`` > 0 a fixed random subset of them."""
    with FaceStore(path) as fs:
        idx = np.flatnonzero(fs.found)
    return subsample(idx, frames_per_video, seed, Path(path).stem)


def image_files(dirs: list[str]) -> list[Path]:
    """Every image under the given folders (e.g. AffectNet for pretraining), through linked
    folders (data sets on shared disks are linked in); hidden files (macOS ``._x.jpg``) are not
    images. A folder without any image is a mistake (a wrong path, an unpacked archive)."""
    out = []
    for d in dirs or []:
        if not Path(d).is_dir():
            raise PipelineError(f"{d}: mae.pretrain.extra_image_dirs entry is not a folder")
        found = sorted(q for q in _walk_files(Path(d)) if q.suffix.lower() in IMAGE_EXTS)
        if not found:
            raise PipelineError(f"{d}: mae.pretrain.extra_image_dirs entry holds no images "
                                f"({', '.join(IMAGE_EXTS)}, searched recursively)")
        out += found
    return out


def _walk_files(root: Path):
    """Files under ``root`` that are not hidden, following linked folders (each real folder once)."""
    seen = set()
    for top, subdirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:                  # a link back up, or a second link to the same folder
            subdirs.clear()
            continue
        seen.add(real)
        subdirs[:] = [s for s in subdirs if not s.startswith(".")]
        yield from (Path(top, f) for f in files if not f.startswith("."))


@dataclass
class FrameSet:
    """Labelled frames of some videos: crops addressed through ``ds``, labels aligned row by row."""
    ds: Crops
    y: np.ndarray        # (N, C) as in the label store
    video: np.ndarray    # (N,) index into ``videos``
    videos: list[str]


def labelled_frames(task: str, labels: dict[str, Labels], faces: dict[str, str], img_size: int,
                    per_video: int = 0, seed: int = 0) -> FrameSet:
    """Frames of ``labels``' videos with a valid label AND a found face; ``faces`` maps each video
    to its face store. ``per_video`` > 0 keeps a fixed random subset per video (validation)."""
    parts, ys = [], []
    for vid in sorted(labels):
        if vid not in faces:
            raise PipelineError(f"{task}: no face store for video {vid!r} among --faces "
                                f"(expected results/faces/{vid}.h5)")
        lab, path = labels[vid], faces[vid]
        with FaceStore(path) as fs:
            found = fs.found
        n = min(len(found), len(lab.mask))
        if len(found) != len(lab.mask):
            log.warning("%s: %d face-store frames vs %d %s labels; using the first %d", path, len(found),
                        len(lab.mask), task, n)
        idx = subsample(np.flatnonzero(lab.mask[:n] & found[:n]), per_video, seed, vid)
        parts.append((path, idx))
        ys.append(lab.y[idx])
    if sum(len(fr) for _, fr in parts) == 0:
        raise PipelineError(f"{task}: no frames with a valid label and a detected face in "
                            f"{len(parts)} video(s) {sorted(labels)[:5]}")
    video = np.concatenate([np.full(len(fr), i, np.int32) for i, (_, fr) in enumerate(parts)])
    return FrameSet(stack_crops(parts, img_size), np.concatenate(ys).astype(np.float32), video, sorted(labels))


def epoch_order(fs: FrameSet, per_video: int, seed: int, epoch: int) -> np.ndarray:
    """Rows for one epoch: all, or ``per_video`` random valid frames of each video (fresh each epoch)."""
    if not per_video:
        return np.arange(len(fs.y))
    rng = np.random.default_rng([seed, epoch])
    parts = []
    for v in range(len(fs.videos)):
        rows = np.flatnonzero(fs.video == v)
        parts.append(rng.choice(rows, per_video, replace=False) if len(rows) > per_video else rows)
    return np.sort(np.concatenate(parts))


# ---------------------------------------------------------------- tensors
def to_unit(imgs_uint8: torch.Tensor, device) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1] on ``device``."""
    return imgs_uint8.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)


def standardize(x: torch.Tensor) -> torch.Tensor:
    """ImageNet mean / std, as MAE and MAE-Face were trained with."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mild random resized crop + horizontal flip + colour jitter on a (N, 3, H, W) [0, 1] batch.

    One affine warp per sample (scale 0.8–1 of the area, aspect 0.9–1.1, shift within the frame,
    mirror with p = 0.5: AUs, expressions and VA are left/right symmetric labels), then brightness,
    contrast and saturation factors in [0.8, 1.2], and per-channel gains in [0.85, 1.15] (a face's
    colour cast says nothing about its expression: without them the model learns video identity).
    """
    n, dev = x.shape[0], x.device
    u = torch.rand(n, 11, device=dev, generator=generator)
    area, ratio = 0.8 + 0.2 * u[:, 0], torch.exp(math.log(0.9) + (math.log(1.1) - math.log(0.9)) * u[:, 1])
    sw, sh = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)
    tx, ty = (1 - sw) * (2 * u[:, 2] - 1), (1 - sh) * (2 * u[:, 3] - 1)
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sw * flip, tx, sh, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    b, c, s = (0.8 + 0.4 * u[:, 5:8]).unbind(1)
    x = x * b.view(n, 1, 1, 1) * (0.85 + 0.3 * u[:, 8:11]).view(n, 3, 1, 1)
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * c.view(n, 1, 1, 1) + mean
    gray = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (x - gray) * s.view(n, 1, 1, 1) + gray
    return x.clamp(0.0, 1.0)
