"""``finetune_mae``: one MAE encoder + linear head per task × fold (paper eq. 1–3).

Trained on the fold's train videos only, the epoch (or the model soup over the per-epoch EMA
weights, Wortsman et al. 2022) chosen on the fold's validation videos; class weights and the
constant baseline come from the fold's train videos too. So no fold's encoder has seen its
validation videos' labels, and the fold rows of the paper's tables stay honest.
With ``soup`` != none the per-epoch EMA weights are kept on the host (ViT-B: ~0.35 GB each).
Under torchrun only rank 0 validates and writes files.

The recipe is MAE's ViT-B fine-tuning (``main_finetune.py``): the head learns on the per-frame
feature ``visual_features`` stores (``mae.features.pool``, recorded in the checkpoint), stochastic
depth ``drop_path`` in the encoder blocks and layer-wise lr decay ``layer_decay`` (model.py).
"""
from __future__ import annotations

import copy
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from affect_pipeline.common.config import need, settings
from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.folds import read_fold
from affect_pipeline.common.losses import activate, class_weights, task_loss
from affect_pipeline.common.metrics import MAIN_METRIC, constant_baseline, score
from affect_pipeline.common.runtime import (
    autocast,
    save_checkpoint,
    setup_torch,
    stage_parser,
    write_json,
    write_text,
)
from affect_pipeline.common.stores import face_store_paths, read_labels
from affect_pipeline.common.tasks import TASK_OUTPUTS
from affect_pipeline.common.training import (
    Schedule,
    curve_csv,
    finish_distributed,
    fit,
    init_distributed,
    shard,
    unwrap,
    wrap_ddp,
)
from affect_pipeline.mae.checkpoints import load_pretrained, read_encoder_checkpoint
from affect_pipeline.mae.face_reader import (
    FrameSet,
    Loader,
    augment,
    epoch_order,
    labelled_frames,
    make_loader,
    standardize,
    to_unit,
)
from affect_pipeline.mae.model import CHECKPOINT_FORMAT, POOLS, ViTClassifier, seed_drop_path

log = logging.getLogger(__name__)
SOUPS = ("none", "uniform", "greedy")


@dataclass(frozen=True)
class FinetuneSettings:
    """``mae.finetune`` of workflow_config.yaml."""
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_epochs: int
    ema_decay: float
    clip_grad: float             # max gradient norm; 0: no clipping
    augment: bool
    frames_per_video: int        # 0 = every valid frame each epoch
    val_frames_per_video: int    # 0 = every validation frame
    soup: str                    # none | uniform | greedy
    cache_gb: float
    au_pos_weight: bool          # AU loss: + per-AU neg/pos positive weights (not in eq. 1)
    per_fold: bool               # read by the rules (which encoder feeds a fold); not here
    drop_path: float             # stochastic depth of the last encoder block (0 at the first)
    layer_decay: float           # lr of block i = lr x layer_decay ** (depth - i); 1 = no decay


@dataclass(frozen=True)
class FinetuneInputs:
    task: str                    # AU | EXPR | VA
    fold: str                    # official | fold1 ... foldk
    folds: Path                  # results/folds/{task}.json
    pretrained: Path             # results/mae/pretrain.pt
    labels: Path                 # results/index/labels/{task}.h5
    faces: list[str]             # face stores of the fold's train + validation videos


@dataclass(frozen=True)
class FinetuneOutputs:
    model: Path
    metrics: Path
    curve: Path


@dataclass
class FoldFrames:
    """One fold's frames and what its train videos say about the classes."""
    train_videos: list[str]
    val_videos: list[str]
    train: FrameSet
    val: FrameSet
    weights: torch.Tensor | None   # class weights (losses.class_weights) of the train videos
    baseline: float                # constant predictor fitted on the train videos, scored on val


@dataclass
class Choice:
    """The weights that are kept: the best epoch, or the soup of several."""
    state: dict
    final: dict                    # validation metrics of ``state``
    best_epoch: int                # 1-based
    best_single_score: float
    soup: dict = field(default_factory=dict)


def fold_frames(inp: FinetuneInputs, img_size: int, p: FinetuneSettings, seed: int) -> FoldFrames:
    train_ids, val_ids, _ = read_fold(inp.folds, inp.fold)
    faces = face_store_paths(inp.faces)
    tr_labels = read_labels(inp.labels, train_ids)
    train = labelled_frames(inp.task, tr_labels, faces, img_size)
    val = labelled_frames(inp.task, read_labels(inp.labels, val_ids), faces, img_size, p.val_frames_per_video, seed)
    y = np.concatenate([lab.y for lab in tr_labels.values()])
    m = np.concatenate([lab.mask for lab in tr_labels.values()])
    cw = class_weights(inp.task, y, m, p.au_pos_weight)
    return FoldFrames(train_ids, val_ids, train, val, None if cw is None else torch.from_numpy(cw),
                      constant_baseline(inp.task, y[m], val.y))


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


def evaluate(task: str, model, val: FrameSet, loader: Loader, batch_size: int, weights) -> dict:
    """Validation metrics (``score`` first) + ``loss`` of ``model`` on the fold's validation frames."""
    dev = next(model.parameters()).device
    _, z = predict_logits(model, loader, len(val.y), batch_size, dev)
    zt, yt = torch.from_numpy(z), torch.from_numpy(val.y)
    loss = float(task_loss(task, zt, yt, torch.ones(len(yt), dtype=torch.bool), weights))
    return {**score(task, activate(task, zt).numpy(), val.y), "loss": loss}


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


def classifier(task: str, cfg: dict, encoder_state: dict, source, pool: str,
               p: FinetuneSettings) -> ViTClassifier:
    """The pretrained encoder + (global pool: a new fc_norm) + a fresh near-zero linear head, with
    the fine-tune's stochastic depth and layer-wise lr decay."""
    model = ViTClassifier(TASK_OUTPUTS[task], pool=pool, drop_path=p.drop_path, layer_decay=p.layer_decay, **cfg)
    load_pretrained(model, encoder_state, source)
    return model


def feature_pool(params: dict) -> str:
    """``mae.features.pool`` from the fine-tune's --params: the head learns on that feature."""
    pool = need(params, "features.pool", "mae")
    if pool not in POOLS:
        raise PipelineError(f"mae.features.pool: {pool!r} is not one of {' | '.join(POOLS)}")
    return pool


def finetune_mae(inp: FinetuneInputs, out: FinetuneOutputs, params: dict, threads: int = 1,
                 device: str = "auto", seed: int = 0) -> dict | None:
    """Fine-tune encoder + head for one task × fold; returns the metrics (None on other ranks)."""
    if inp.task not in ("AU", "EXPR", "VA"):
        raise PipelineError(f"finetune_mae: task must be AU, EXPR or VA, not {inp.task!r}")
    p = settings(FinetuneSettings, params.get("finetune"), "mae.finetune")
    if p.soup not in SOUPS:
        raise PipelineError(f"mae.finetune.soup: unknown recipe {p.soup!r} ({' | '.join(SOUPS)})")
    if not (0 <= p.drop_path < 1 and 0 < p.layer_decay <= 1):
        raise PipelineError(f"mae.finetune: drop_path {p.drop_path} must be in [0, 1), layer_decay "
                            f"{p.layer_decay} in (0, 1]")
    pool = feature_pool(params)
    d = init_distributed(device)
    setup_torch(max(1, threads // d.world), seed)
    cfg, enc_sd = read_encoder_checkpoint(inp.pretrained)
    data = fold_frames(inp, cfg["img_size"], p, seed)
    tloader, t_threads = make_loader(data.train.ds, p.cache_gb, max(1, threads // d.world))
    vloader = make_loader(data.val.ds, p.cache_gb, max(1, threads // d.world))[0] if d.main else None
    torch.set_num_threads(t_threads)

    torch.manual_seed(seed)
    model = classifier(inp.task, cfg, enc_sd, inp.pretrained, pool, p)
    seed_drop_path(model, seed, d.world, d.rank)     # the same masks for a global batch, DDP or not
    ddp = wrap_ddp(model.to(d.device), d)
    n_local = len(shard(len(epoch_order(data.train, p.frames_per_video, seed, 0)), d, seed, 0))
    steps_per_epoch = math.ceil(n_local / p.batch_size)
    log.info("%s %s fine-tuning: %d train videos / %d frames, %d validation videos / %d frames, "
             "%d epochs x %d steps, constant baseline %.4f; pool %s, drop path %g, layer decay %g", inp.task,
             inp.fold, len(data.train_videos), len(data.train.y), len(data.val_videos), len(data.val.y), p.epochs,
             steps_per_epoch, data.baseline, pool, p.drop_path, p.layer_decay)

    w_dev = None if data.weights is None else data.weights.to(d.device)

    def batches(epoch: int):
        rows = epoch_order(data.train, p.frames_per_video, seed, epoch)
        order = rows[shard(len(rows), d, seed, epoch)]
        gen = torch.Generator(device=d.device).manual_seed(seed * 1_000_003 + epoch * 1009 + d.rank)
        for imgs, idx in tloader.batches(order, p.batch_size):
            x = to_unit(imgs, d.device)
            yield standardize(augment(x, gen) if p.augment else x), torch.from_numpy(data.train.y[idx.numpy()])

    def step(batch) -> torch.Tensor:
        x, y = batch
        with autocast(d.device):
            _, z = ddp(x)
        y = y.to(d.device)
        return task_loss(inp.task, z.float(), y, torch.ones(len(y), dtype=torch.bool, device=d.device), w_dev)

    def validate(m) -> dict:
        return evaluate(inp.task, m, data.val, vloader, p.batch_size, data.weights)

    states, evals = [], []

    def judge(m) -> dict:  # each epoch's EMA weights: scored, and kept for the soup
        evals.append(validate(m))
        if p.soup != "none":
            states.append({k: v.detach().cpu().clone() for k, v in m.state_dict().items()})
        return evals[-1]

    sched = Schedule(p.epochs, p.lr, p.weight_decay, p.warmup_epochs, p.ema_decay, p.clip_grad)
    res = fit(ddp, step, batches, judge, sched, steps_per_epoch, d, desc=f"{inp.task} {inp.fold} finetune")
    metrics = None
    if d.main:
        choice = choose(p.soup, res, evals, states, lambda sd: validate(with_state(unwrap(ddp), sd)))
        metrics = write_outputs(inp, out, cfg, data, choice, res.curve, pool)
    finish_distributed(d)
    return metrics


def with_state(model, state: dict):
    """A copy of ``model`` holding ``state``, in eval mode (``model`` itself is left as it is)."""
    probe = copy.deepcopy(model)
    probe.load_state_dict(state)
    return probe.eval()


def choose(recipe: str, res, evals: list[dict], states: list[dict], evaluate_state) -> Choice:
    """The best epoch's EMA weights, or the soup of the per-epoch ones."""
    best = Choice(res.best_state, evals[res.best_epoch - 1], res.best_epoch, res.best_score,
                  {"recipe": "none", "score": res.best_score, "members": [res.best_epoch]})
    if recipe == "none" or not states:
        return best
    scores = [r["val_score"] for r in res.curve]
    sd, s, members = model_soup(recipe, states, scores, lambda st: evaluate_state(st)["score"])
    best.state, best.final = sd, evaluate_state(sd)
    best.soup = {"recipe": recipe, "score": s, "members": [m + 1 for m in members]}
    return best


def write_outputs(inp: FinetuneInputs, out: FinetuneOutputs, cfg: dict, data: FoldFrames, c: Choice,
                  curve: list[dict], pool: str) -> dict:
    """--out (kind mae_finetune, with task and fold), --metrics, --curve."""
    task, final = inp.task, c.final
    metrics = {"task": task, "fold": inp.fold, "stage": "finetune_mae", "score": final["score"],
               "metric": MAIN_METRIC[task], "baseline": data.baseline, "per_class": final.get("per_class"),
               "best_epoch": c.best_epoch, "best_single_score": c.best_single_score, "soup": c.soup,
               "n_train_frames": int(len(data.train.y)), "n_val_frames": int(len(data.val.y)),
               "epochs": len(curve), "pretrained": str(inp.pretrained),
               "train_videos": sorted(data.train_videos), "validation_videos": sorted(data.val_videos),
               "eval_frames": "frames with a valid label and a detected face"}
    for k in ("confusion", "ccc_valence", "ccc_arousal"):
        if k in final:
            metrics[k] = final[k]
    save_checkpoint({"format": CHECKPOINT_FORMAT, "kind": "mae_finetune", "task": task, "fold": inp.fold,
                     "config": cfg, "outputs": TASK_OUTPUTS[task], "pool": pool,
                     "model": c.state, "metrics": json.dumps(metrics)}, out.model)
    write_json(out.metrics, metrics)
    write_text(out.curve, curve_csv(curve))
    log.info("%s %s: val %s %.4f (constant baseline %.4f), best epoch %d, soup %s", task, inp.fold,
             MAIN_METRIC[task], final["score"], data.baseline, c.best_epoch, c.soup)
    return metrics


def main(argv: list[str]) -> int:
    ap = stage_parser("finetune_mae", "fine-tune the MAE encoder + a linear head on one task x fold")
    ap.add_argument("--task", required=True, choices=["AU", "EXPR", "VA"])
    ap.add_argument("--fold", required=True, help="official | fold1 ... foldk")
    ap.add_argument("--folds", required=True, help="results/folds/{task}.json")
    ap.add_argument("--pretrained", required=True, help="results/mae/pretrain.pt")
    ap.add_argument("--labels", required=True, help="results/index/labels/{task}.h5")
    ap.add_argument("--faces", nargs="+", required=True, help="face stores of the fold's videos")
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--curve", required=True)
    a = ap.parse_args(argv)
    inp = FinetuneInputs(a.task, a.fold, Path(a.folds), Path(a.pretrained), Path(a.labels), list(a.faces))
    finetune_mae(inp, FinetuneOutputs(Path(a.out), Path(a.metrics), Path(a.curve)), a.params,
                 a.threads, a.device, a.seed)
    return 0
