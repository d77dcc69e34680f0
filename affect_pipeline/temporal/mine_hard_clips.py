"""``mine_hard_clips``: build D_CLB from the trained BLB's per-clip losses (paper §2.4).

The trained BLB scores every training clip of the fold (D_init; ERI: every training video)
with its sequence loss (``losses.task_loss(reduce=False)``: masked mean per clip for AU / EXPR,
1 − CCC within the clip for VA, MSE of the video-level intensities for ERI). The hardest
``round(hard_fraction·|D_init|)`` clips go into D_CLB; then clips drawn uniformly *with
replacement* from all of D_init are added until |D_CLB| = |D_init| (drawing the rest without
replacement would just give back D_init, so hard clips are deliberately over-represented).

    python -m affect_pipeline mine_hard_clips --task T --fold F --folds folds/T.json
        --labels index/labels/T.h5 --features SHARD... --blb blb.pt --out clb_clips.json
        --params TEMPORAL_JSON [--threads N --device D --seed S]
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.losses import task_loss
from affect_pipeline.common.runtime import autocast, log, write_json
from affect_pipeline.temporal.checkpoint import continue_from_blb
from affect_pipeline.temporal.clips import Clip, batches, gather
from affect_pipeline.temporal.evaluation import infer_logits
from affect_pipeline.temporal.fold_data import FoldData
from affect_pipeline.temporal.settings import (
    FoldInputs,
    Job,
    TemporalHP,
    fold_parser,
    temporal_hp,
)


def select_hard_clips(losses, hard_fraction: float, seed: int) -> list[tuple[int, str]]:
    """Indices into D_init forming D_CLB, each tagged "hard" or "random".

    Hard: the ``round(hard_fraction·n)`` largest losses (ties → lower index first), in
    descending loss order. Random: ``n − n_hard`` indices from ``default_rng(seed).integers(0, n)``.
    """
    losses = np.asarray(losses, np.float64)
    n = len(losses)
    if not 0.0 <= hard_fraction <= 1.0:
        raise ValueError(f"hard_fraction must be in [0, 1], got {hard_fraction}")
    n_hard = min(n, int(round(hard_fraction * n)))
    order = np.lexsort((np.arange(n), -losses))         # loss descending, index ascending
    hard = [(int(i), "hard") for i in order[:n_hard]]
    rand = np.random.default_rng(seed).integers(0, n, size=n - n_hard) if n > n_hard else []
    return hard + [(int(i), "random") for i in rand]


@torch.inference_mode()
def clip_losses(model, data: FoldData, clips: list[Clip], batch_size: int, device) -> np.ndarray:
    """The model's sequence loss of each clip (no reduction over clips)."""
    model.eval()
    w = None if data.weights is None else data.weights.to(device)
    if data.per_video:   # ERI: the video-level prediction (mean over its clips) vs its label
        lg = infer_logits(model, data.fs, [c.video for c in clips], data.K, batch_size, device, True)
        h = torch.cat([lg[c.video] for c in clips])
        y = torch.stack([data.labels[c.video][0].reshape(-1) for c in clips])
        return task_loss("ERI", h, y, None, reduce=False).numpy()
    out = []
    for bc in batches(clips, batch_size):
        b = {k: v.to(device) for k, v in gather(data.fs, bc, data.K, data.labels).items()}
        with autocast(device):
            h = model(b["x"], b["pad"]).float()
        out.append(task_loss(data.task, h, b["y"], b["ymask"], w, reduce=False).float().cpu())
    return torch.cat(out).numpy()


def mine_hard_clips(inp: FoldInputs, blb: Path, out: Path, hp: TemporalHP, job: Job = Job()) -> dict:
    """Score D_init with the BLB, select D_CLB, write it (``clips`` + loss summary); returns it."""
    device = job.start()
    _, data, model = continue_from_blb(inp, hp, blb, device)
    with contextlib.closing(data):
        d_init = data.d_init()
        losses = clip_losses(model, data, d_init, int(hp.branch.batch_size), device)
    try:
        sel = select_hard_clips(losses, hp.mining.hard_fraction, job.seed)
    except ValueError as e:
        raise PipelineError(f"--params mining.hard_fraction: {e}") from e
    clips = [{"video": d_init[i].video, "start": d_init[i].start, "length": d_init[i].length,
              "loss": float(losses[i]), "source": src} for i, src in sel]
    hard = [losses[i] for i, s in sel if s == "hard"]
    doc = {"task": inp.task, "fold": inp.fold, "hard_fraction": hp.mining.hard_fraction, "n_init": len(d_init),
           "n_hard": len(hard), "mean_loss_init": float(np.mean(losses)),
           "mean_loss_hard": float(np.mean(hard)) if hard else None, "clips": clips}
    write_json(out, doc)
    log.info("mine %s/%s: %d clips in D_init, %d hard (mean loss %.4f vs %.4f overall)", inp.task, inp.fold,
             len(d_init), len(hard), np.mean(hard) if hard else float("nan"), float(np.mean(losses)))
    return doc


def main(argv: list[str]) -> int:
    p = fold_parser("mine_hard_clips", __doc__, train_outputs=False)
    p.add_argument("--blb", required=True, help="blb.pt of this task × fold")
    p.add_argument("--out", required=True, help="clb_clips.json (D_CLB)")
    a = p.parse_args(argv)
    mine_hard_clips(FoldInputs.from_args(a), Path(a.blb), Path(a.out), temporal_hp(a.params, a.task, "mining"),
                    Job.from_args(a))
    return 0
