"""The training toolbox shared by MAE pre-/fine-tuning and the temporal models.

Built on what timm and torch already give: timm's ``ModelEmaV3`` (weights EMA with a warmup
ramp), timm's ``CosineLRScheduler`` (linear warmup, then half-cosine, stepped per update) and
torch's ``DistributedSampler`` / DDP. What is left here is the glue: parameter groups, the
torchrun environment and a step loop with its curve.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch

from affect_pipeline.common.runtime import pick_device

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- optimiser, schedule, EMA
def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms, tokens and position embeddings (as MAE / timm)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        flat = p.ndim <= 1 or name.endswith(("cls_token", "pos_embed", "mask_token"))
        (no_decay if flat else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(model: torch.nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.999)) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas)


def warmup_cosine(opt: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_lr: float = 0.0):
    """timm's cosine schedule counted in optimiser updates: call ``.step_update(n)`` after update n."""
    from timm.scheduler import CosineLRScheduler

    warmup_steps = min(warmup_steps, max(0, total_steps - 1))
    return CosineLRScheduler(opt, t_initial=max(1, total_steps - warmup_steps), lr_min=min_lr,
                             warmup_t=warmup_steps, warmup_lr_init=0.0, warmup_prefix=True,
                             t_in_epochs=False)


def ema(model: torch.nn.Module, decay: float):
    """timm's ``ModelEmaV3`` with its warmup ramp (early averages are not dominated by the
    random initialisation); ``.update(model, step)`` after each update, ``.module`` to evaluate."""
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay, use_warmup=True)


# ---------------------------------------------------------------- distributed (torchrun)
@dataclass(frozen=True)
class Dist:
    device: torch.device
    world: int = 1
    rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(requested_device: str = "auto") -> Dist:
    """One process, or the process group torchrun describes (nccl on GPU, gloo on CPU)."""
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    device = pick_device(requested_device)
    if world > 1:
        import torch.distributed as dist

        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        log.info("DDP rank %d/%d on %s", rank, world, device)
    return Dist(device, world, rank)


def shard(n: int, d: Dist, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """This rank's share of a permutation of range(n) (DistributedSampler; equal counts under DDP)."""
    from torch.utils.data import DistributedSampler

    s = DistributedSampler(range(n), num_replicas=d.world, rank=d.rank, shuffle=shuffle, seed=seed,
                           drop_last=d.world > 1)
    s.set_epoch(epoch)
    return np.fromiter(iter(s), dtype=np.int64)


def all_mean(value: float, d: Dist) -> float:
    if d.world == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return float(t.item()) / d.world


def wrap_ddp(model: torch.nn.Module, d: Dist) -> torch.nn.Module:
    if d.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def finish_distributed(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


# ---------------------------------------------------------------- the step loop
@dataclass
class Schedule:
    """What a training run is: how long, how fast, how smoothed, how clipped. Each stage fills it
    from its config section (``mae.finetune``, ``temporal.blb``), so nothing here has a default
    but the cosine's floor, which no stage moves."""
    epochs: int
    lr: float
    weight_decay: float
    warmup_epochs: int
    ema_decay: float                # 0: no EMA, evaluate the raw weights
    clip_grad: float                # max gradient norm; 0: no clipping
    min_lr: float = 0.0


@dataclass
class FitResult:
    best_state: dict | None = None  # state dict (EMA weights when used) of the best epoch
    best_score: float = float("-inf")
    best_epoch: int = 0             # 1-based
    curve: list[dict] = field(default_factory=list)   # one row per epoch


def fit(model: torch.nn.Module, step: Callable[[object], torch.Tensor],
        epoch_batches: Callable[[int], Iterable], evaluate: Callable[[torch.nn.Module], dict],
        sched: Schedule, steps_per_epoch: int, d: Dist | None = None, desc: str = "train") -> FitResult:
    """AdamW + warmup-cosine + optional EMA; keeps the best epoch by ``evaluate(model)["score"]``.

    ``step(batch)`` returns the loss of one batch (forward only: the loop does backward and the
    update); ``evaluate`` gets the EMA model when EMA is on and returns at least ``score`` and
    ``loss``. Under DDP only rank 0 evaluates. A model with a ``param_groups(weight_decay)`` method
    gives its own AdamW groups (layer-wise lr decay: the schedule scales a group's lr by its
    ``lr_scale``), as timm's optimizer factory asks a model for its groups; others get
    :func:`param_groups`.
    """
    from affect_pipeline.common.runtime import progress

    d = d or Dist(next(model.parameters()).device)
    net = unwrap(model)
    opt = (torch.optim.AdamW(net.param_groups(sched.weight_decay), lr=sched.lr)
           if hasattr(net, "param_groups") else adamw(net, sched.lr, sched.weight_decay))
    total = max(1, steps_per_epoch * sched.epochs)
    lr_sched = warmup_cosine(opt, total, steps_per_epoch * sched.warmup_epochs, sched.min_lr)
    averaged = ema(unwrap(model), sched.ema_decay) if sched.ema_decay > 0 else None
    res, n = FitResult(), 0
    for epoch in range(sched.epochs):
        model.train()
        loss_sum, nb = 0.0, 0
        for batch in progress(epoch_batches(epoch), total=steps_per_epoch, desc=f"{desc} {epoch + 1}",
                              disable=not d.main):
            loss = step(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if sched.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), sched.clip_grad)
            opt.step()
            n += 1
            lr_sched.step_update(n)
            if averaged is not None:
                averaged.update(unwrap(model), step=n)
            loss_sum, nb = loss_sum + float(loss.detach()), nb + 1
        train_loss = all_mean(loss_sum / max(1, nb), d)
        if not d.main:
            continue
        judged = averaged.module if averaged is not None else unwrap(model)
        judged.eval()
        ev = evaluate(judged)
        res.curve.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": float(ev.get("loss", float("nan"))),
                          "val_score": float(ev["score"]), "lr": opt.param_groups[0]["lr"]})
        log.info("%s epoch %d/%d: train loss %.4f, val loss %.4f, val score %.4f", desc, epoch + 1,
                 sched.epochs, train_loss, res.curve[-1]["val_loss"], ev["score"])
        if res.best_state is None or ev["score"] > res.best_score or np.isnan(res.best_score):
            res.best_score, res.best_epoch = float(ev["score"]), epoch + 1
            res.best_state = {k: v.detach().cpu().clone() for k, v in judged.state_dict().items()}
    return res


def curve_csv(rows: list[dict]) -> str:
    """The per-epoch curve as CSV text (epoch, train_loss, val_loss, val_score, lr)."""
    cols = ["epoch", "train_loss", "val_loss", "val_score", "lr"]
    return ",".join(cols) + "\n" + "".join(",".join(f"{r[c]:.6g}" if c != "epoch" else str(r[c]) for c in cols) + "\n"
                                           for r in rows)
