"""``pretrain_mae``: MAE on the found face crops of the face stores (+ image folders), or the
import of a pretrained encoder (MAE-Face) when ``mae.checkpoint`` is set.

AdamW (betas 0.9 / 0.95, as MAE), lr = base_lr × effective batch / base_batch, warmup + per-update
cosine, bf16 autocast on GPU, gradient accumulation, DDP under torchrun (each of the W processes
uses ``--threads // W`` CPU threads; only rank 0 writes). Pretraining runs for days at Aff-Wild2
scale, so it is crash-safe: ``{out}.resume.pt`` is written atomically after every epoch and picked
up on restart when the run is the same (:func:`fingerprint`: face stores and images, settings, code,
world size, seed); a stale or unreadable one starts afresh. ``--out`` is written only at the end.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from affect_pipeline.common.config import settings
from affect_pipeline.common.digests import code_digest
from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.lists import read_list
from affect_pipeline.common.runtime import (
    autocast,
    load_checkpoint,
    progress,
    save_checkpoint,
    setup_torch,
    stage_parser,
    write_text,
)
from affect_pipeline.common.stores import face_store_paths, skip_failed
from affect_pipeline.common.training import (
    Dist,
    adamw,
    all_mean,
    finish_distributed,
    init_distributed,
    shard,
    warmup_cosine,
    wrap_ddp,
)
from affect_pipeline.mae.checkpoints import encoder_checkpoint, import_mae_face
from affect_pipeline.mae.face_reader import (
    Crops,
    Loader,
    face_frames,
    image_files,
    make_loader,
    stack_crops,
    standardize,
    to_unit,
)
from affect_pipeline.mae.model import MaskedAutoencoderViT, model_config

log = logging.getLogger(__name__)
CURVE_HEADER = "epoch,step,loss,lr\n"


@dataclass(frozen=True)
class PretrainSettings:
    """``mae.pretrain`` of workflow_config.yaml."""
    epochs: int
    batch_size: int          # per device and step
    accum_steps: int
    base_lr: float
    base_batch: int
    weight_decay: float
    warmup_epochs: int
    mask_ratio: float
    norm_pix_loss: bool
    frames_per_video: int
    extra_image_dirs: list
    cache_gb: float


@dataclass(frozen=True)
class Plan:
    """How long one run is, counted in optimiser updates."""
    steps_per_epoch: int
    total: int
    warmup: int
    peak_lr: float


@dataclass
class Run:
    """What every epoch of one pretraining run works with."""
    ddp: torch.nn.Module          # the model, DDP-wrapped under torchrun
    opt: torch.optim.Optimizer
    sched: object                 # training.warmup_cosine, stepped per update
    loader: Loader
    p: PretrainSettings
    plan: Plan
    d: Dist
    seed: int


def resume_path(out) -> Path:
    return Path(f"{out}.resume.pt")


def pretrain_crops(faces: list[str], p: PretrainSettings, img_size: int, seed: int):
    """Found face crops of every store (a fixed subset with frames_per_video) + extra images."""
    parts = [(str(f), face_frames(f, p.frames_per_video, seed)) for f in faces]
    parts += [(str(q), np.array([-1])) for q in image_files(p.extra_image_dirs)]
    ds = stack_crops(parts, img_size)
    if len(ds) == 0:
        raise PipelineError(f"no face crops to pretrain on: {len(faces)} face store(s) without found "
                            f"faces and no images in extra_image_dirs")
    return ds


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_stamp(path: str) -> list:
    """Size + mtime: every store is written through an atomic rename, so a rewrite changes both
    (a copy that does not keep mtimes only costs a fresh start); a stat, not a read of ~GBs."""
    st = os.stat(path)
    return [path, st.st_size, st.st_mtime_ns]


def fingerprint(ds: Crops, cfg: dict, p: PretrainSettings, world: int, seed: int) -> dict:
    """What decides a run's result, digest by part: a resume file is continued only if all match."""
    frames = hashlib.sha256(np.ascontiguousarray(ds.file_id).tobytes() + np.ascontiguousarray(ds.frame).tobytes())
    return {"inputs": _digest([[_file_stamp(f) for f in ds.files], frames.hexdigest()]),
            "settings": _digest([cfg, asdict(p)]), "code": code_digest(__name__),
            "run": _digest({"world": world, "seed": seed})}


def pretrain_mae(faces: list[str], out, curve, params: dict, threads: int = 1, device: str = "auto",
                 seed: int = 0, stop_after: int | None = None) -> dict | None:
    """Pretrain (or import) the MAE and write ``out`` + ``curve``. ``stop_after`` epochs ends this
    run early like a crash would (resume file written, no ``out``): used to test resuming."""
    for key in ("model", "checkpoint"):
        if key not in params:
            raise PipelineError(f"pretrain_mae: --params lacks mae.{key} (pass the mae section of the config)")
    cfg = model_config(params["model"])
    if params["checkpoint"]:
        return _import(params["checkpoint"], cfg, out, curve, threads, seed)
    p = settings(PretrainSettings, params.get("pretrain"), "mae.pretrain")
    d = init_distributed(device)
    setup_torch(max(1, threads // d.world), seed)
    ds = pretrain_crops(faces, p, cfg["img_size"], seed)
    loader, torch_threads = make_loader(ds, float(p.cache_gb), max(1, threads // d.world))
    torch.set_num_threads(torch_threads)

    torch.manual_seed(seed)
    model = MaskedAutoencoderViT(norm_pix_loss=bool(p.norm_pix_loss), **cfg).to(d.device)
    eff = p.batch_size * p.accum_steps * d.world
    n_local = len(shard(len(ds), d, seed, 0))
    spe = math.ceil(math.ceil(n_local / p.batch_size) / p.accum_steps)
    plan = Plan(spe, spe * p.epochs, spe * p.warmup_epochs, p.base_lr * eff / p.base_batch)
    opt = adamw(model, plan.peak_lr, p.weight_decay, betas=(0.9, 0.95))
    sched = warmup_cosine(opt, plan.total, plan.warmup)
    log.info("MAE pretraining: %d crops, %d epochs x %d steps, effective batch %d (=%d x %d x %d), peak lr %.3g",
             len(ds), p.epochs, spe, eff, p.batch_size, p.accum_steps, d.world, plan.peak_lr)

    fp = fingerprint(ds, cfg, p, d.world, seed)
    start, rows = _resume(resume_path(out), fp, model, opt, d)
    sched.step_update(start * spe)
    run = Run(wrap_ddp(model, d), opt, sched, loader, p, plan, d, seed)
    for epoch in range(start, p.epochs):
        if stop_after is not None and epoch >= stop_after:
            finish_distributed(d)
            return None
        loss = all_mean(_epoch(run, epoch), d)
        rows.append([epoch + 1, (epoch + 1) * spe, loss, opt.param_groups[0]["lr"]])
        log.info("epoch %d/%d loss %.4f lr %.3g", epoch + 1, p.epochs, loss, opt.param_groups[0]["lr"])
        if d.main:
            save_checkpoint({"fingerprint": fp, "epoch": epoch + 1, "model": model.state_dict(),
                             "opt": opt.state_dict(), "curve": rows}, resume_path(out))
    ckpt = encoder_checkpoint(model.encoder.state_dict(), cfg, "mae_pretrain",
                              decoder={k: v.detach().cpu() for k, v in model.decoder.state_dict().items()},
                              epochs=p.epochs, n_crops=len(ds), final_loss=rows[-1][2] if rows else float("nan"))
    if d.main:
        save_checkpoint(ckpt, out)
        write_text(curve, CURVE_HEADER + "".join(f"{e},{s},{l:.6f},{lr:.6g}\n" for e, s, l, lr in rows))
        resume_path(out).unlink(missing_ok=True)
    finish_distributed(d)
    return ckpt


def _import(checkpoint, cfg: dict, out, curve, threads: int, seed: int) -> dict:
    """MAE-Face (or any timm-keyed ViT) instead of pretraining; the same output format."""
    setup_torch(threads, seed)
    ckpt = import_mae_face(checkpoint, cfg)
    if int(os.environ.get("RANK", 0)) == 0:  # under torchrun only rank 0 writes
        save_checkpoint(ckpt, out)
        write_text(curve, CURVE_HEADER)
        log.info("imported encoder %s -> %s", checkpoint, out)
    return ckpt


def _resume(rpath: Path, fp: dict, model, opt, d: Dist) -> tuple[int, list]:
    """(first epoch, curve rows so far) from a resume file of the same run, else (0, []): a stale
    one (other inputs, settings, code) or an unreadable one (truncated by a kill, damaged) starts
    afresh with a warning, and is replaced after the next epoch."""
    if not rpath.exists():
        return 0, []
    fresh = ({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, copy.deepcopy(opt.state_dict()))
    try:
        state = load_checkpoint(rpath, map_location=str(d.device))
        old = state.get("fingerprint") if isinstance(state, dict) else None
        changed = [k for k in fp if not isinstance(old, dict) or old.get(k) != fp[k]]
        if changed:
            log.warning("%s was made with other %s; starting afresh", rpath, "/".join(changed))
            return 0, []
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        epoch, rows = int(state["epoch"]), [list(r) for r in state["curve"]]
    except (PipelineError, KeyError, TypeError, ValueError, RuntimeError) as e:
        log.warning("%s: unusable resume file (%s); starting afresh", rpath, e)
        model.load_state_dict(fresh[0])
        opt.load_state_dict(fresh[1])
        return 0, []
    log.info("resuming from %s after epoch %d", rpath, epoch)
    return epoch, rows


def _epoch(run: Run, epoch: int) -> float:
    """One epoch's mean loss; every random draw is seeded by (seed, epoch, rank) so a resumed run
    is identical to an uninterrupted one."""
    ddp, opt, p, d = run.ddp, run.opt, run.p, run.d
    ddp.train()
    order = shard(len(run.loader.ds), d, run.seed, epoch)
    gen = torch.Generator(device=d.device).manual_seed(run.seed * 1_000_003 + epoch * 1009 + d.rank)
    n_batches = math.ceil(len(order) / p.batch_size)
    loss_sum, update = 0.0, epoch * run.plan.steps_per_epoch
    opt.zero_grad(set_to_none=True)
    bar = progress(run.loader.batches(order, p.batch_size), total=n_batches, desc=f"pretrain {epoch + 1}",
                   disable=not d.main)
    for b, (imgs, _) in enumerate(bar):
        last = (b + 1) % p.accum_steps == 0 or b + 1 == n_batches
        x = standardize(to_unit(imgs, d.device))
        sync = contextlib.nullcontext() if (last or d.world == 1) else ddp.no_sync()
        with sync:
            with autocast(d.device):
                loss, _, _ = ddp(x, float(p.mask_ratio), gen)
            (loss / p.accum_steps).backward()
        loss_sum += float(loss.detach())
        if last:
            opt.step()
            opt.zero_grad(set_to_none=True)
            update += 1
            run.sched.step_update(update)
    if not math.isfinite(loss_sum):
        raise PipelineError(f"MAE pretraining diverged in epoch {epoch + 1} (loss {loss_sum}); "
                            f"lower mae.pretrain.base_lr")
    return loss_sum / max(1, n_batches)


def main(argv: list[str]) -> int:
    ap = stage_parser("pretrain_mae", "MAE pretraining on face crops (or import of a pretrained encoder)")
    ap.add_argument("--faces", nargs="*", default=[], help="face stores or batch directories (faces/{batch})")
    ap.add_argument("--videos", default=None, help="@FILE (or JSON text): learn from these ids' stores only, written "
                    "--videos=@FILE (an id may start with '-'); those a batch's failed.json names are left out "
                    "(default, or an empty list: every store)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--curve", required=True, help="CSV: epoch, step, loss, lr")
    a = ap.parse_args(argv)
    ids = read_list(a.videos) if a.videos is not None and a.faces else None
    faces = list(face_store_paths(a.faces, skip_failed(a.faces, ids) if ids else None).values()) if a.faces else []
    pretrain_mae(faces, a.out, a.curve, a.params, a.threads, a.device, a.seed)
    return 0
