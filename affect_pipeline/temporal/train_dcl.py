"""``train_dcl``: Dual-branch Collaboration Learning of one task × fold (paper §2.4, eq. 5–6).

The BLB is frozen (eval mode, no grad); the CLB has its structure, initialised from the BLB
(``dcl.clb_init: blb``) or fresh. Each step pairs a batch x_i of D_init with a batch x_j of
D_CLB, draws one α ~ Beta(tau1, tau2) per pair and trains the CLB on

    h = α·h_BLB(x_i) + (1 − α)·h_CLB(x_j),    L = α·L(h, y_i) + (1 − α)·L(h, y_j)

(``model.dcl_loss``: raw logits, union mask handling). Training runs through
``training.fit`` with the BLB's optimiser settings and ``dcl.epochs``; each epoch is judged
with both branches on the same validation clips, combined as ``dcl.inference`` says
(``mean``, ``blb_weighted`` = 0.8·BLB + 0.2·CLB, ``blb``, ``clb``).

    python -m affect_pipeline train_dcl --task T --fold F --folds folds/T.json
        --labels index/labels/T.h5 --features SHARD... --blb blb.pt --clb-clips clb_clips.json
        --out dcl.pt --metrics dcl_metrics.json --curve dcl_curve.csv --params TEMPORAL_JSON
        [--threads N --device D --seed S]
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import torch

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.runtime import autocast, log, read_json
from affect_pipeline.temporal.checkpoint import (
    TrainOutputs,
    continue_from_blb,
    save_trained,
)
from affect_pipeline.temporal.clips import Clip
from affect_pipeline.temporal.evaluation import evaluate, fit_scored, metrics_doc
from affect_pipeline.temporal.fold_data import FoldData
from affect_pipeline.temporal.model import (
    DualBranch,
    build_model,
    dcl_loss,
    interpolate_logits,
)
from affect_pipeline.temporal.settings import (
    INFERENCE,
    FoldInputs,
    Job,
    TemporalHP,
    fold_parser,
    temporal_hp,
)


def read_clb_clips(path, data: FoldData) -> list[Clip]:
    """D_CLB from ``mine_hard_clips``; every clip must lie inside a training video of the fold."""
    doc = read_json(path)
    try:
        clips = [Clip(str(c["video"]), int(c["start"]), int(c["length"])) for c in doc["clips"]]
    except (KeyError, TypeError, ValueError) as e:
        raise PipelineError(f"{path}: malformed D_CLB file ({e})") from e
    train = set(data.train)
    for c in clips:
        if c.video not in train or c.start + c.length > data.fs.n_frames(c.video) or c.length < 1:
            raise PipelineError(f"{path}: clip {c} is not inside a training video of fold {data.fold}")
    if not clips:
        raise PipelineError(f"{path}: D_CLB is empty")
    return clips


def dcl_step(task: str, blb, clb, bi: dict, bj: dict, alpha, class_w, device):
    """Loss of one DCL step on a D_init batch ``bi`` and a D_CLB batch ``bj`` (trimmed to len(alpha))."""
    B = len(alpha)
    bi, bj = ({k: v[:B] for k, v in b.items()} for b in (bi, bj))
    with torch.no_grad(), autocast(device):
        h_b = blb(bi["x"], bi["pad"]).float()
    with autocast(device):
        h_c = clb(bj["x"], bj["pad"]).float()
    h = interpolate_logits(h_b, h_c, alpha)
    return dcl_loss(task, h, bi["y"], bi["ymask"], bj["y"], bj["ymask"], alpha, class_w)


def fit_dcl(blb, clb, data: FoldData, d_clb: list[Clip], hp: TemporalHP, device, seed: int):
    """Train the CLB against the frozen BLB; returns (FitResult, best epoch's metrics, |D_init|)."""
    dc, bs = hp.dcl, int(hp.branch.batch_size)
    blb.eval()
    d_init = data.d_init()
    gen_i, gen_j = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    rng = np.random.default_rng(seed + 2)
    w = None if data.weights is None else data.weights.to(device)

    def epoch_batches(epoch):
        return zip(data.batches(d_init, bs, gen_i, device), data.batches(d_clb, bs, gen_j, device))

    def step(pair):
        B = min(len(pair[0]["x"]), len(pair[1]["x"]))
        alpha = torch.from_numpy(rng.beta(float(dc.tau1), float(dc.tau2), size=B)).float().to(device)
        return dcl_step(data.task, blb, clb, *pair, alpha, w, device)

    res, best = fit_scored(clb, step, epoch_batches,
                           lambda m: evaluate(DualBranch(blb, m, dc.inference), data, bs, device),
                           hp.branch.schedule(dc.epochs), math.ceil(min(len(d_init), len(d_clb)) / bs),
                           f"dcl {data.task}/{data.fold}")
    return res, best, len(d_init)


def inference_scores(blb, clb, res, data: FoldData, hp: TemporalHP, device) -> dict:
    """The best epoch's validation score under every ``dcl.inference`` combination (the best epoch
    itself is chosen under the configured one): what the choice of its default rests on."""
    clb.load_state_dict(res.best_state)
    return {m: evaluate(DualBranch(blb, clb, m), data, int(hp.branch.batch_size), device)["score"] for m in INFERENCE}


def train_dcl(inp: FoldInputs, blb_path: Path, clb_clips: Path, out: TrainOutputs, hp: TemporalHP,
              job: Job = Job()) -> dict:
    """Train the CLB, then write dcl.pt (both branches), the metrics and the curve; returns the metrics."""
    device = job.start()
    ck, data, blb = continue_from_blb(inp, hp, blb_path, device)
    with contextlib.closing(data):
        blb.requires_grad_(False)
        clb = build_model(ck["config"]).to(device)
        if hp.dcl.clb_init == "blb":
            clb.load_state_dict(blb.state_dict())
        d_clb = read_clb_clips(clb_clips, data)
        res, best, n = fit_dcl(blb, clb, data, d_clb, hp, device, job.seed)
        doc = metrics_doc("dcl", data, best, res.best_epoch, {
            "blb_score": ck.get("score"), "inference": hp.dcl.inference, "n_clips": n, "n_clb_clips": len(d_clb),
            "inference_scores": inference_scores(blb, clb, res, data, hp, device)})
        save_trained(out, data, hp, res, doc, stage="dcl", config=ck["config"], inference=hp.dcl.inference,
                     blb_state={k: v.cpu() for k, v in blb.state_dict().items()}, clb_state=res.best_state)
    log.info("dcl %s/%s: %s %.4f (BLB %.4f, baseline %.4f) at epoch %d", inp.task, inp.fold, doc["metric"],
             doc["score"], ck.get("score") or float("nan"), doc["baseline"], res.best_epoch)
    return doc


def main(argv: list[str]) -> int:
    p = fold_parser("train_dcl", __doc__)
    p.add_argument("--blb", required=True, help="blb.pt of this task × fold")
    p.add_argument("--clb-clips", required=True, help="clb_clips.json (D_CLB) from mine_hard_clips")
    a = p.parse_args(argv)
    train_dcl(FoldInputs.from_args(a), Path(a.blb), Path(a.clb_clips), TrainOutputs.from_args(a),
              temporal_hp(a.params, a.task, "dcl"), Job.from_args(a))
    return 0
