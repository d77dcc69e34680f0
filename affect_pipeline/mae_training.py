"""MAE stages: face pretraining (or MAE-Face import), frame-wise fine-tuning, per-frame features.

- ``pretrain_main``: MAE on the found face crops of the face stores (+ image folders). AdamW,
  lr = base_lr × effective batch / base_batch, warmup + per-step cosine, bf16 autocast on GPU,
  gradient accumulation, DDP under torchrun. Crash-safe: ``{out}.resume.pt`` is written
  atomically after every epoch and picked up on restart when the settings match; ``--out`` is
  written only at the end (then the resume file is removed).
- ``finetune_main``: encoder + linear head on one task's train videos, EMA weights, best epoch by
  the validation metric, optional model soup over the per-epoch EMA weights.
- ``features_main``: the fine-tuned encoder's per-frame features + head logits for one video.
  The feature is the mean of the final-norm patch tokens (the head's input, so
  ``logits = head(features)``); frames without a face are not run through the model: their
  features and logits are zeros and ``valid`` is False.

Data: crops are decoded once, resized to the model's ``img_size`` and held as one uint8 tensor
per job when that fits ``cache_gb`` (the demo: ~1 k crops of 64 px = 12 MB; Aff-Wild2's 2.6 M
frames at 224 px would be ~390 GB, so there it streams: DataLoader workers decode the JPEGs).
With ``soup`` != none the per-epoch EMA weights are kept on the host (ViT-B: ~0.35 GB each).
Under torchrun each of the W processes uses ``--threads // W`` CPU threads; only rank 0 validates
and writes files.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import TASK_OUTPUTS
from .losses import activate, class_weights, task_loss
from .mae import (CHECKPOINT_FORMAT, IMAGENET_MEAN, IMAGENET_STD, MaskedAutoencoderViT, ViTClassifier,
                  encoder_checkpoint, import_mae_face, load_encoder_state, model_config,
                  read_encoder_checkpoint)
from .metrics import MAIN_METRIC, constant_baseline, score
from .runtime import (PipelineError, autocast, file_digest, load_checkpoint, pick_device,
                      progress, save_checkpoint, setup_torch, stage_parser, write_json, write_text)
from .stores import FaceStore, read_labels, write_features

log = logging.getLogger("affect_pipeline.mae")

PRETRAIN_DEFAULTS = dict(epochs=800, batch_size=64, accum_steps=64, base_lr=0.0024, base_batch=4096,
                         weight_decay=0.05, warmup_epochs=40, mask_ratio=0.75, norm_pix_loss=True,
                         frames_per_video=0, extra_image_dirs=[], cache_gb=16.0)
FINETUNE_DEFAULTS = dict(epochs=10, batch_size=64, lr=1e-4, weight_decay=0.05, warmup_epochs=1,
                         ema_decay=0.999, augment=True, frames_per_video=0, val_frames_per_video=0,
                         soup="none", cache_gb=16.0)
FEATURES_DEFAULTS = dict(batch_size=128)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


def _section(params: dict, name: str, defaults: dict) -> dict:
    sec = {**defaults, **(params.get(name) or {})}
    unknown = sorted(set(sec) - set(defaults))
    if unknown:
        raise PipelineError(f"mae.{name}: unknown key(s) {unknown}; known: {sorted(defaults)}")
    return sec


# ================================================================ data
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
    """In-memory when the decoded crops fit ``cache_gb``; else streamed. Returns (loader, torch threads)."""
    if ds.nbytes() <= cache_gb * 2**30:
        log.info("holding %d crops of %d px in memory (%.1f MB)", len(ds), ds.img_size, ds.nbytes() / 2**20)
        return Loader(ds, ds.load_all()), threads
    workers = min(8, max(1, threads - 1))
    log.info("streaming %d crops (%.1f GB > cache_gb %.1f) with %d decode workers",
             len(ds), ds.nbytes() / 2**30, cache_gb, workers)
    return Loader(ds, None, workers), max(1, threads - workers)


def face_frames(path, frames_per_video: int, seed: int) -> np.ndarray:
    """Found frames of a face store; with ``frames_per_video`` > 0 a fixed random subset of them."""
    with FaceStore(path) as fs:
        idx = np.flatnonzero(fs.found)
    if frames_per_video and len(idx) > frames_per_video:
        rng = np.random.default_rng([seed, zlib.crc32(Path(path).stem.encode())])
        idx = np.sort(rng.choice(idx, frames_per_video, replace=False))
    return idx


def pretrain_dataset(faces: list[str], p: dict, img_size: int, seed: int) -> Crops:
    files, fids, frames = [], [], []
    for path in faces:
        idx = face_frames(path, int(p["frames_per_video"]), seed)
        files.append(str(path))
        fids.append(np.full(len(idx), len(files) - 1, np.int32))
        frames.append(idx.astype(np.int64))
    for d in p["extra_image_dirs"] or []:
        if not Path(d).is_dir():
            raise PipelineError(f"{d}: mae.pretrain.extra_image_dirs entry is not a folder")
        imgs = sorted(q for q in Path(d).rglob("*") if q.suffix.lower() in IMAGE_EXTS)
        for q in imgs:
            files.append(str(q))
        fids.append(np.arange(len(files) - len(imgs), len(files), dtype=np.int32))
        frames.append(np.full(len(imgs), -1, np.int64))
    ds = Crops(files, np.concatenate(fids) if fids else np.zeros(0, np.int32),
               np.concatenate(frames) if frames else np.zeros(0, np.int64), img_size)
    if len(ds) == 0:
        raise PipelineError(f"no face crops to pretrain on: {len(faces)} face store(s) without found "
                            f"faces and no images in extra_image_dirs")
    return ds


def to_unit(imgs_uint8: torch.Tensor, device) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1] on ``device``."""
    return imgs_uint8.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)


def standardize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mild random resized crop + horizontal flip + colour jitter on a (N, 3, H, W) [0, 1] batch.

    One affine warp per sample (scale 0.8–1 of the area, aspect 0.9–1.1, shift within the frame,
    mirror with p = 0.5: AUs, expressions and VA are left/right symmetric labels), then brightness,
    contrast and saturation factors in [0.8, 1.2].
    """
    n, dev = x.shape[0], x.device
    u = torch.rand(n, 8, device=dev, generator=generator)
    area, ratio = 0.8 + 0.2 * u[:, 0], torch.exp(math.log(0.9) + (math.log(1.1) - math.log(0.9)) * u[:, 1])
    sw, sh = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)
    tx, ty = (1 - sw) * (2 * u[:, 2] - 1), (1 - sh) * (2 * u[:, 3] - 1)
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sw * flip, tx, sh, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    b, c, s = (0.8 + 0.4 * u[:, 5:8]).unbind(1)
    x = x * b.view(n, 1, 1, 1)
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * c.view(n, 1, 1, 1) + mean
    gray = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (x - gray) * s.view(n, 1, 1, 1) + gray
    return x.clamp(0.0, 1.0)


# ================================================================ optimisation helpers
def lr_at(step: int, total: int, warmup: int, peak: float, min_lr: float = 0.0) -> float:
    """Linear warmup for ``warmup`` steps, then half-cosine to ``min_lr`` at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms, the CLS token and position embeddings (as MAE)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(("cls_token", "pos_embed", "mask_token")) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def set_lr(opt, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


# ================================================================ distributed
def dist_env() -> tuple[int, int, int]:
    """(world size, rank, local rank) from torchrun's environment; (1, 0, 0) without it."""
    return int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))


def init_distributed(requested_device: str):
    """Start the process group under torchrun (nccl on GPU, gloo on CPU); returns (device, world, rank)."""
    world, rank, local = dist_env()
    device = pick_device(requested_device)
    if world > 1:
        import torch.distributed as dist

        if device.type == "cuda":
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        log.info("DDP rank %d/%d on %s", rank, world, device)
    return device, world, rank


def shard(n: int, world: int, rank: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """This rank's share of a permutation of range(n) (DistributedSampler, drop_last: equal counts)."""
    from torch.utils.data import DistributedSampler

    s = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=world > 1)
    s.set_epoch(epoch)
    return np.fromiter(iter(s), dtype=np.int64)


def all_mean(value: float, world: int, device) -> float:
    if world == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world


def finish_distributed(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def _wrap_ddp(model, device, world):
    if world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


# ================================================================ pretraining
def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resume_path(out) -> Path:
    return Path(f"{out}.resume.pt")


def pretrain(faces: list[str], out, curve, params: dict, threads: int = 1, device: str = "auto",
             seed: int = 0, stop_after: int | None = None) -> dict | None:
    """Pretrain (or import) the MAE and write ``out`` + ``curve``. ``stop_after`` epochs ends this
    run early like a crash would (resume file written, no ``out``): used to test resuming."""
    cfg = model_config(params.get("model"))
    p = _section(params, "pretrain", PRETRAIN_DEFAULTS)
    if params.get("checkpoint"):
        setup_torch(threads, seed)
        ckpt = import_mae_face(params["checkpoint"], cfg)
        if dist_env()[1] == 0:  # under torchrun only rank 0 writes
            save_checkpoint(ckpt, out)
            write_text(curve, "epoch,step,loss,lr\n")
            log.info("imported encoder %s -> %s", params["checkpoint"], out)
        return ckpt

    dev, world, rank = init_distributed(device)
    setup_torch(max(1, threads // world), seed)
    ds = pretrain_dataset(faces, p, cfg["img_size"], seed)
    loader, torch_threads = make_loader(ds, float(p["cache_gb"]), max(1, threads // world))
    torch.set_num_threads(torch_threads)

    torch.manual_seed(seed)
    model = MaskedAutoencoderViT(norm_pix_loss=bool(p["norm_pix_loss"]), **cfg).to(dev)
    bs, accum, epochs = int(p["batch_size"]), int(p["accum_steps"]), int(p["epochs"])
    eff = bs * accum * world
    peak = float(p["base_lr"]) * eff / float(p["base_batch"])
    n_local = len(shard(len(ds), world, rank, seed, 0))
    steps_per_epoch = math.ceil(math.ceil(n_local / bs) / accum)
    total, warmup = steps_per_epoch * epochs, steps_per_epoch * int(p["warmup_epochs"])
    opt = torch.optim.AdamW(param_groups(model, float(p["weight_decay"])), lr=peak, betas=(0.9, 0.95))
    log.info("MAE pretraining: %d crops, %d epochs x %d steps, effective batch %d (=%d x %d x %d), peak lr %.3g",
             len(ds), epochs, steps_per_epoch, eff, bs, accum, world, peak)

    fp = _fingerprint(cfg, p, [str(f) for f in ds.files], len(ds), world, seed)
    start, rows, rpath = 0, [], resume_path(out)
    if rpath.exists():
        state = load_checkpoint(rpath, map_location=str(dev))
        if state.get("fingerprint") == fp:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            start, rows = int(state["epoch"]), list(state["curve"])
            log.info("resuming from %s after epoch %d", rpath, start)
        else:
            log.warning("%s belongs to other settings/inputs; starting afresh", rpath)
    ddp = _wrap_ddp(model, dev, world)

    for epoch in range(start, epochs):
        if stop_after is not None and epoch >= stop_after:
            finish_distributed(world)
            return None
        loss_sum, n_batches = _pretrain_epoch(ddp, opt, loader, ds, dev, world, rank, seed, epoch, p,
                                              steps_per_epoch, total, warmup, peak)
        loss = all_mean(loss_sum / max(1, n_batches), world, dev)
        step = (epoch + 1) * steps_per_epoch
        rows.append([epoch + 1, step, loss, opt.param_groups[0]["lr"]])
        log.info("epoch %d/%d loss %.4f lr %.3g", epoch + 1, epochs, loss, opt.param_groups[0]["lr"])
        if rank == 0:
            save_checkpoint({"fingerprint": fp, "epoch": epoch + 1, "model": model.state_dict(),
                             "opt": opt.state_dict(), "curve": rows}, rpath)
    ckpt = encoder_checkpoint(model.encoder.state_dict(), cfg, "mae_pretrain",
                              decoder={k: v.detach().cpu() for k, v in model.decoder.state_dict().items()},
                              epochs=epochs, n_crops=len(ds), final_loss=rows[-1][2] if rows else float("nan"))
    if rank == 0:
        save_checkpoint(ckpt, out)
        write_text(curve, "epoch,step,loss,lr\n" + "".join(f"{e},{s},{l:.6f},{lr:.6g}\n" for e, s, l, lr in rows))
        rpath.unlink(missing_ok=True)
    finish_distributed(world)
    return ckpt


def _pretrain_epoch(ddp, opt, loader, ds, dev, world, rank, seed, epoch, p, steps_per_epoch, total, warmup, peak):
    """One epoch; every random draw is seeded by (seed, epoch, rank) so a resumed run is identical."""
    import contextlib

    ddp.train()
    order = shard(len(ds), world, rank, seed, epoch)
    gen = torch.Generator(device=dev).manual_seed(seed * 1_000_003 + epoch * 1009 + rank)
    accum, bs = int(p["accum_steps"]), int(p["batch_size"])
    n_batches = math.ceil(len(order) / bs)
    loss_sum, step0 = 0.0, epoch * steps_per_epoch
    opt.zero_grad(set_to_none=True)
    bar = progress(loader.batches(order, bs), total=n_batches, desc=f"pretrain {epoch + 1}", disable=rank != 0)
    for b, (imgs, _) in enumerate(bar):
        last = (b + 1) % accum == 0 or b + 1 == n_batches
        x = standardize(to_unit(imgs, dev))
        sync = contextlib.nullcontext() if (last or world == 1) else ddp.no_sync()
        with sync:
            with autocast(dev):
                loss, _, _ = ddp(x, float(p["mask_ratio"]), gen)
            (loss / accum).backward()
        loss_sum += float(loss.detach())
        if last:
            set_lr(opt, lr_at(step0 + b // accum, total, warmup, peak))
            opt.step()
            opt.zero_grad(set_to_none=True)
    if not math.isfinite(loss_sum):
        raise PipelineError(f"MAE pretraining diverged in epoch {epoch + 1} (loss {loss_sum}); "
                            f"lower mae.pretrain.base_lr")
    return loss_sum, n_batches


def pretrain_main(argv: list[str]) -> int:
    ap = stage_parser("pretrain_mae", "MAE pretraining on face crops (or import of a pretrained encoder)")
    ap.add_argument("--faces", nargs="*", default=[], help="face stores (faces/{video}.h5)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--curve", required=True, help="CSV: epoch, step, loss, lr")
    a = ap.parse_args(argv)
    pretrain(a.faces, a.out, a.curve, a.params, a.threads, a.device, a.seed)
    return 0


# ================================================================ fine-tuning
@dataclass
class FrameSet:
    """Labelled frames of one split: crops addressed through ``ds``, labels aligned row by row."""
    ds: Crops
    y: np.ndarray        # (N, C) as in the label store
    video: np.ndarray    # (N,) index into ``videos``
    videos: list[str]


def _labelled_frames(task, labels, faces_dir, split, img_size, per_video=0, seed=0) -> FrameSet:
    """Frames of ``split`` videos with a valid label AND a found face (a black crop teaches nothing)."""
    files, fids, frames, ys, vids = [], [], [], [], []
    for vid in sorted(v for v, lab in labels.items() if lab.split == split):
        lab, path = labels[vid], Path(faces_dir) / f"{vid}.h5"
        with FaceStore(path) as fs:
            found = fs.found
        n = min(len(found), len(lab.mask))
        if len(found) != len(lab.mask):
            log.warning("%s: %d face-store frames vs %d %s labels; using the first %d", path, len(found),
                        len(lab.mask), task, n)
        idx = np.flatnonzero(lab.mask[:n] & found[:n])
        if per_video and len(idx) > per_video:  # a fixed subset (validation)
            rng = np.random.default_rng([seed, zlib.crc32(vid.encode())])
            idx = np.sort(rng.choice(idx, per_video, replace=False))
        files.append(str(path))
        fids.append(np.full(len(idx), len(files) - 1, np.int32))
        frames.append(idx)
        ys.append(lab.y[idx])
        vids.append(np.full(len(idx), len(files) - 1, np.int32))
    if not files or sum(map(len, frames)) == 0:
        raise PipelineError(f"{task}: no {split} frames with a valid label and a detected face "
                            f"(label videos with split={split}: {len(files)})")
    ds = Crops(files, np.concatenate(fids), np.concatenate(frames), img_size)
    return FrameSet(ds, np.concatenate(ys).astype(np.float32), np.concatenate(vids), [Path(f).stem for f in files])


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


@torch.inference_mode()
def predict_logits(model, loader: Loader, n: int, batch_size: int, device) -> tuple[np.ndarray, np.ndarray]:
    """(features, logits) float32 for rows 0..n-1 of the loader's dataset."""
    model.eval()
    feats, logits = [], []
    for imgs, _ in loader.batches(np.arange(n), batch_size):
        with autocast(device):
            f, z = model(standardize(to_unit(imgs, device)))
        feats.append(f.float().cpu())
        logits.append(z.float().cpu())
    return torch.cat(feats).numpy(), torch.cat(logits).numpy()


def _evaluate(task, model, val: FrameSet, vloader, bs, dev, weights) -> tuple[dict, float]:
    _, z = predict_logits(model, vloader, len(val.y), bs, dev)
    zt, yt = torch.from_numpy(z), torch.from_numpy(val.y)
    vloss = float(task_loss(task, zt, yt, torch.ones(len(yt), dtype=torch.bool), weights))
    return score(task, activate(task, zt).numpy(), val.y), vloss


@torch.no_grad()
def ema_update(ema, model, decay: float) -> None:
    for e, m in zip(ema.state_dict().values(), model.state_dict().values()):
        if e.dtype.is_floating_point:
            e.mul_(decay).add_(m.detach(), alpha=1 - decay)
        else:
            e.copy_(m)


def average_states(states: list[dict]) -> dict:
    return {k: (sum(s[k].float() for s in states) / len(states)).to(states[0][k].dtype) for k in states[0]}


def model_soup(recipe: str, states: list[dict], scores: list[float], evaluate) -> tuple[dict, float, list[int]]:
    """Wortsman et al. 2022. uniform: mean of all; greedy: add epochs best-first while the
    validation score does not drop. Returns (state, val score, member epochs 0-based)."""
    if recipe == "uniform":
        sd = average_states(states)
        return sd, evaluate(sd), list(range(len(states)))
    if recipe != "greedy":
        raise PipelineError(f"mae.finetune.soup: unknown recipe {recipe!r} (none | uniform | greedy)")
    ranked = list(np.argsort(scores)[::-1])
    members, best = [int(ranked[0])], scores[ranked[0]]
    for i in ranked[1:]:
        s = evaluate(average_states([states[j] for j in members + [int(i)]]))
        if s >= best:
            members, best = members + [int(i)], s
    return average_states([states[j] for j in members]), best, sorted(members)


def finetune(task: str, pretrained, labels_path, faces_dir, out, metrics_path, curve, params: dict,
             threads: int = 1, device: str = "auto", seed: int = 0) -> dict:
    """Frame-wise fine-tuning of encoder + linear head for one task; returns the metrics dict."""
    if task not in ("AU", "EXPR", "VA"):
        raise PipelineError(f"finetune_mae: task must be AU, EXPR or VA, not {task!r}")
    p = _section(params, "finetune", FINETUNE_DEFAULTS)
    dev, world, rank = init_distributed(device)
    setup_torch(max(1, threads // world), seed)
    cfg, enc_sd = read_encoder_checkpoint(pretrained)
    labels = read_labels(labels_path)
    train = _labelled_frames(task, labels, faces_dir, "train", cfg["img_size"])
    val = _labelled_frames(task, labels, faces_dir, "validation", cfg["img_size"], int(p["val_frames_per_video"]), seed)
    tloader, t_threads = make_loader(train.ds, float(p["cache_gb"]), max(1, threads // world))
    vloader = make_loader(val.ds, float(p["cache_gb"]), max(1, threads // world))[0] if rank == 0 else None
    torch.set_num_threads(t_threads)

    y_tr_all = np.concatenate([l.y for l in labels.values() if l.split == "train"])
    m_tr_all = np.concatenate([l.mask for l in labels.values() if l.split == "train"])
    cw = class_weights(task, y_tr_all, m_tr_all)
    weights = None if cw is None else torch.from_numpy(cw)
    baseline = constant_baseline(task, y_tr_all[m_tr_all], val.y)

    torch.manual_seed(seed)
    model = ViTClassifier(TASK_OUTPUTS[task], **cfg)
    load_encoder_state(model.encoder, enc_sd, pretrained)
    model.to(dev)
    ema = copy.deepcopy(model).eval()
    ddp = _wrap_ddp(model, dev, world)
    bs, epochs, per_video = int(p["batch_size"]), int(p["epochs"]), int(p["frames_per_video"])
    n_local = len(shard(len(epoch_order(train, per_video, seed, 0)), world, rank, seed, 0))
    steps_per_epoch = math.ceil(n_local / bs)
    total, warmup = steps_per_epoch * epochs, steps_per_epoch * int(p["warmup_epochs"])
    opt = torch.optim.AdamW(param_groups(model, float(p["weight_decay"])), lr=float(p["lr"]))
    w_dev = None if weights is None else weights.to(dev)
    log.info("%s fine-tuning: %d train / %d val frames, %d epochs x %d steps, constant baseline %.4f",
             task, len(train.y), len(val.y), epochs, steps_per_epoch, baseline)

    rows, states, scores, evals, step = [], [], [], [], 0
    best = (-math.inf, -1, None)
    for epoch in range(epochs):
        ddp.train()
        rows_ep = epoch_order(train, per_video, seed, epoch)
        order = rows_ep[shard(len(rows_ep), world, rank, seed, epoch)]
        gen = torch.Generator(device=dev).manual_seed(seed * 1_000_003 + epoch * 1009 + rank)
        loss_sum, nb = 0.0, 0
        for imgs, idx in progress(tloader.batches(order, bs), total=math.ceil(len(order) / bs),
                                  desc=f"{task} finetune {epoch + 1}", disable=rank != 0):
            x = to_unit(imgs, dev)
            x = standardize(augment(x, gen) if p["augment"] else x)
            y = torch.from_numpy(train.y[idx.numpy()]).to(dev)
            set_lr(opt, lr_at(step, total, warmup, float(p["lr"])))
            with autocast(dev):
                _, z = ddp(x)
            loss = task_loss(task, z.float(), y, torch.ones(len(y), dtype=torch.bool, device=dev), w_dev)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            ema_update(ema, _unwrap(ddp), min(float(p["ema_decay"]), (1 + step) / (10 + step)))
            loss_sum, nb = loss_sum + float(loss.detach()), nb + 1
        train_loss = all_mean(loss_sum / max(1, nb), world, dev)
        if rank == 0:
            sc, vloss = _evaluate(task, ema, val, vloader, bs, dev, weights)
            rows.append([epoch + 1, train_loss, vloss, sc["score"], opt.param_groups[0]["lr"]])
            log.info("%s epoch %d: train loss %.4f, val loss %.4f, val %s %.4f (baseline %.4f)", task, epoch + 1,
                     train_loss, vloss, MAIN_METRIC[task], sc["score"], baseline)
            sd = {k: v.detach().cpu().clone() for k, v in ema.state_dict().items()}
            if p["soup"] != "none":
                states.append(sd)
            scores.append(sc["score"])
            evals.append(sc)
            if best[2] is None or sc["score"] > best[0]:
                best = (sc["score"], epoch, sd)
    metrics = None
    if rank == 0:
        metrics = _finish_finetune(task, p, ema, val, vloader, bs, dev, weights, best, states, scores, evals,
                                   baseline, train, rows, cfg, out, metrics_path, curve, pretrained)
    finish_distributed(world)
    return metrics


def _finish_finetune(task, p, ema, val, vloader, bs, dev, weights, best, states, scores, evals, baseline,
                     train, rows, cfg, out, metrics_path, curve, pretrained) -> dict:
    """Pick the best epoch (or the soup), write --out, --metrics, --curve (rank 0)."""
    best_score, best_epoch, sd = best
    final = evals[best_epoch]
    soup = {"recipe": "none", "score": best_score, "members": [best_epoch + 1]}
    if p["soup"] != "none" and states:
        def evaluate(state):
            ema.load_state_dict(state)
            return _evaluate(task, ema, val, vloader, bs, dev, weights)[0]["score"]
        sd, s, members = model_soup(str(p["soup"]), states, scores, evaluate)
        ema.load_state_dict(sd)
        final = _evaluate(task, ema, val, vloader, bs, dev, weights)[0]
        soup = {"recipe": p["soup"], "score": s, "members": [m + 1 for m in members]}
    metrics = {"task": task, "stage": "finetune_mae", "score": final["score"], "metric": MAIN_METRIC[task],
               "baseline": baseline, "per_class": final.get("per_class"), "best_epoch": best_epoch + 1,
               "best_single_score": best_score, "soup": soup, "n_train_frames": int(len(train.y)),
               "n_val_frames": int(len(val.y)), "epochs": len(rows), "pretrained": str(pretrained),
               "eval_frames": "frames with a valid label and a detected face"}
    for k in ("confusion", "ccc_valence", "ccc_arousal"):
        if k in final:
            metrics[k] = final[k]
    save_checkpoint({"format": CHECKPOINT_FORMAT, "kind": "mae_finetune", "task": task, "config": cfg,
                     "outputs": TASK_OUTPUTS[task], "pooling": "mean_patch_tokens", "model": sd,
                     "metrics": json.dumps(metrics)}, out)
    write_json(metrics_path, metrics)
    write_text(curve, "epoch,train_loss,val_loss,val_score,lr\n" +
               "".join(f"{e},{tl:.6f},{vl:.6f},{vs:.6f},{lr:.6g}\n" for e, tl, vl, vs, lr in rows))
    log.info("%s: val %s %.4f (constant baseline %.4f), best epoch %d, soup %s",
             task, MAIN_METRIC[task], final["score"], baseline, best_epoch + 1, soup)
    return metrics


def finetune_main(argv: list[str]) -> int:
    ap = stage_parser("finetune_mae", "frame-wise fine-tuning of the MAE encoder + linear head")
    ap.add_argument("--task", required=True, choices=["AU", "EXPR", "VA"])
    ap.add_argument("--pretrained", required=True)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--faces-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--curve", required=True)
    a = ap.parse_args(argv)
    finetune(a.task, a.pretrained, a.labels, a.faces_dir, a.out, a.metrics, a.curve, a.params,
             a.threads, a.device, a.seed)
    return 0


# ================================================================ features
def load_finetuned(path, device="cpu") -> ViTClassifier:
    """The fine-tuned classifier of ``finetune_mae`` on ``device``, in eval mode."""
    obj = load_checkpoint(path)
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT or obj.get("kind") != "mae_finetune":
        raise PipelineError(f"{path}: not a finetune_mae checkpoint (format {CHECKPOINT_FORMAT}, kind mae_finetune)")
    model = ViTClassifier(int(obj["outputs"]), **model_config(obj["config"]))
    try:
        model.load_state_dict(obj["model"])
    except RuntimeError as e:
        raise PipelineError(f"{path}: weights do not match the stored model config: {e}") from e
    model.task = obj.get("task")
    return model.to(device).eval()


@torch.inference_mode()
def embed_crops(model: ViTClassifier, crops_uint8: np.ndarray, batch_size: int = 128, device="cpu"):
    """(N, S, S, 3) uint8 RGB crops -> (features (N, D), logits (N, outputs)) float32 numpy."""
    device = torch.device(device)
    size = model.config["img_size"]
    feats, logits = [], []
    for s in range(0, len(crops_uint8), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(resize_crops(crops_uint8[s:s + batch_size], size)))
        with autocast(device):
            f, z = model(standardize(to_unit(x, device)))
        feats.append(f.float().cpu())
        logits.append(z.float().cpu())
    if not feats:
        return np.zeros((0, model.config["embed_dim"]), np.float32), np.zeros((0, model.outputs), np.float32)
    return torch.cat(feats).numpy(), torch.cat(logits).numpy()


def prefetch(fn, items, depth: int = 2):
    """``map(fn, items)`` computed one thread ahead: JPEG decoding (cv2 releases the GIL) overlaps
    the model's forward pass instead of adding to it."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as ex:
        futures = [ex.submit(fn, it) for it in items[:depth]]
        for k in range(len(items)):
            if k + depth < len(items):
                futures.append(ex.submit(fn, items[k + depth]))
            yield futures[k].result()
            futures[k] = None


def extract_features(task, model_path, faces, out, params: dict, threads: int = 1, device: str = "auto",
                     seed: int = 0) -> None:
    """Features of every frame with a face; rows without a face are zeros with valid=False."""
    p = _section(params, "features", FEATURES_DEFAULTS)
    setup_torch(threads, seed)
    dev = pick_device(device)
    model = load_finetuned(model_path, dev)
    if model.task and model.task != task:
        raise PipelineError(f"{model_path}: fine-tuned for {model.task}, not {task}")
    bs = int(p["batch_size"])
    with FaceStore(faces) as fs:
        found = fs.found.astype(bool)
        feats = np.zeros((fs.n_frames, model.config["embed_dim"]), np.float32)
        logits = np.zeros((fs.n_frames, model.outputs), np.float32)
        idx = np.flatnonzero(found)
        chunks = [idx[s:s + bs] for s in range(0, len(idx), bs)]
        size = model.config["img_size"]
        decoded = prefetch(lambda rows: resize_crops(fs.read_crops(rows), size), chunks)
        for rows, crops in progress(zip(chunks, decoded), total=len(chunks), desc=f"mae_{task} {Path(faces).stem}",
                                    unit="batch"):
            feats[rows], logits[rows] = embed_crops(model, crops, bs, dev)
        fps = float(fs.attrs.get("fps", 0.0))
    write_features(out, feats, found, extractor=f"mae_{task}", checkpoint_digest=file_digest(model_path),
                   fps=fps, extra={"logits": logits}, pooling="mean_patch_tokens", task=task,
                   no_face="zeros", video_id=Path(faces).stem)


def features_main(argv: list[str]) -> int:
    ap = stage_parser("visual_features", "per-frame features + logits of the fine-tuned MAE encoder")
    ap.add_argument("--task", required=True, choices=["AU", "EXPR", "VA"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--faces", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    extract_features(a.task, a.model, a.faces, a.out, a.params, a.threads, a.device, a.seed)
    return 0
