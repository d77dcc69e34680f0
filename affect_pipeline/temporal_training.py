"""Temporal training stages: ``train_blb``, ``train_dcl``, ``predict`` (paper §2.3–2.4).

One loop serves both branches: AdamW, per-step cosine schedule with linear warmup, an EMA of
the trained weights (evaluated and saved), best epoch by the validation metric computed per
frame over whole validation videos (clips stitched back), per-epoch curve rows.

DCL (equations 5–6). The BLB is frozen (eval mode, no grad); the CLB has the same structure,
initialised from the BLB (``dcl.clb_init: blb``) or fresh. Each step pairs a batch x_i of
D_init with a batch x_j of D_CLB, draws one α ~ Beta(tau1, tau2) per sample and trains on

    h = α·h_BLB(x_i) + (1 − α)·h_CLB(x_j),    L = α·L(h, y_i) + (1 − α)·L(h, y_j)

with the task losses on raw logits. Masks (frame tasks) use union handling: each frame f of
pair b carries weight w_i = α_b·m_i[f] for the y_i term and w_j = (1 − α_b)·m_j[f] for the y_j
term, so an invalid label only drops its own term; AU / EXPR: Σ(w_i·l_i + w_j·l_j) / Σ(w_i + w_j).
VA / ERI are batch-level (CCC / PCC): each term is a *weighted* CCC / PCC (+ weighted MSE for
ERI) with those per-row weights, and the two terms are mixed in proportion Σw_i : Σw_j. With one
fixed α and all labels valid every variant reduces exactly to α·L(h, y_i) + (1 − α)·L(h, y_j).
Inference (``dcl.inference``): ``mean`` (default) averages BLB and CLB logits on the same clip,
``clb`` / ``blb`` use one branch.

ERI (per-video labels): the "clip" of D_init is a whole video; training crops K frames at
random; evaluation / prediction average the logits of the video's non-overlapping clips.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch

from . import TASK_OUTPUTS
from .clips import (Clip, FeatureSet, batches, eval_clips, gather, label_tensors, load_features,
                    primary_stores, store_names, stitch, train_clips, video_clips)
from .losses import EPS, activate, class_weights, task_loss
from .metrics import MAIN_METRIC, constant_baseline, score, tune_au_thresholds
from .runtime import (PipelineError, atomic_path, autocast, load_checkpoint, log, pick_device,
                      progress, read_json, save_checkpoint, setup_torch, stage_parser, write_json,
                      write_text)
from .stores import read_labels
from .temporal import DualBranch, build_model, model_config

CKPT_FORMAT = "affect_pipeline.temporal/1"


# ---------------------------------------------------------------- hyperparameters
def hparams(params: dict, task: str) -> dict:
    """Flat settings for one task: model + optimiser section (``eri`` for ERI, else ``blb``)."""
    blb = {"d_model": 512, "nhead": 8, "layers": 4, "dropout": 0.3, "lr": 1e-4, "weight_decay": 0.01,
           "batch_size": 32, "epochs": 20, "warmup_epochs": 1, "ema_decay": 0.99, **params.get("blb", {})}
    sec = {**blb, "layers": 2, "pooling": "attention", **params.get("eri", {})} if task == "ERI" else blb
    dcl = {"tau1": 2.0, "tau2": 2.0, "clb_init": "blb", "inference": "mean", "epochs": sec["epochs"],
           **params.get("dcl", {})}
    return {"clip_len": int(params.get("clip_len", 100)), "stride": int(params.get("stride", 50)),
            "model": sec, "dcl": dcl, "mining": {"hard_fraction": 0.3, **params.get("mining", {})}}


# ---------------------------------------------------------------- data of one fold
@dataclass
class FoldData:
    task: str
    fold: str
    fs: FeatureSet
    labels: dict                      # video -> (y tensor, mask tensor)
    labels_np: dict                   # video -> stores.Labels
    train: list[str]
    val: list[str]
    K: int
    stride: int
    weights: torch.Tensor | None = None

    @property
    def per_video(self) -> bool:
        return self.task == "ERI"

    def n_frames(self, videos) -> dict[str, int]:
        return {v: self.fs.n_frames(v) for v in videos}

    def d_init(self) -> list[Clip]:
        """The training clips of this fold (ERI: one entry per video)."""
        n = self.n_frames(self.train)
        return video_clips(n) if self.per_video else train_clips(n, self.K, self.stride)


def read_fold(folds_path, fold: str) -> tuple[list[str], list[str], list[str]]:
    doc = read_json(folds_path)
    if fold not in doc.get("folds", {}):
        raise PipelineError(f"{folds_path}: no fold {fold!r} (has {sorted(doc.get('folds', {}))})")
    f = doc["folds"][fold]
    if not f.get("train") or not f.get("validation"):
        raise PipelineError(f"{folds_path}: fold {fold!r} has an empty train or validation list")
    return list(f["train"]), list(f["validation"]), list(doc.get("test", []))


def load_fold(a, hp, norm=None, expect=None, with_logits=False) -> FoldData:
    """Labels + features of the fold's train and validation videos, read once."""
    train, val, _ = read_fold(a.folds, a.fold)
    labels = read_labels(a.labels, train + val)
    fs = load_features(a.features, train + val, train_videos=train, norm=norm, with_logits=with_logits,
                       expect_dims=expect)
    for v in train + val:
        n, lab = fs.n_frames(v), labels[v]
        if a.task != "ERI" and len(lab.y) != n:
            raise PipelineError(f"{a.labels}: video {v} has {len(lab.y)} label rows but its feature "
                                f"store {Path(a.features[0]) / f'{v}.h5'} has {n} frames")
        if lab.y.shape[-1] != (1 if a.task == "EXPR" else TASK_OUTPUTS[a.task]):
            raise PipelineError(f"{a.labels}: video {v}: labels have {lab.y.shape[-1]} columns, "
                                f"task {a.task} needs {TASK_OUTPUTS[a.task] if a.task != 'EXPR' else 1}")
    ytr = np.concatenate([labels[v].y for v in train])
    mtr = np.concatenate([labels[v].mask for v in train])
    w = class_weights(a.task, ytr, mtr)
    return FoldData(a.task, a.fold, fs, label_tensors(labels), labels, train, val, hp["clip_len"],
                    hp["stride"], None if w is None else torch.from_numpy(w))


# ---------------------------------------------------------------- schedule, EMA
def cosine_lambda(total_steps: int, warmup_steps: int):
    """LR factor per step: linear warmup, then cosine to 0."""
    def f(step):
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return f


class EMA:
    """Exponential moving average of a model's weights (decay ramps up over the first steps)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.n = decay, 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module):
        self.n += 1
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        for e, p in zip(self.model.state_dict().values(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                e.mul_(d).add_(p.detach(), alpha=1 - d)
            else:
                e.copy_(p)


# ---------------------------------------------------------------- inference
@torch.inference_mode()
def infer_logits(model, fs: FeatureSet, videos, K: int, batch_size: int, device, per_video: bool):
    """Raw logits per video: (n, C) stitched from non-overlapping clips, or (1, C) (ERI: mean)."""
    model.eval()
    n = {v: fs.n_frames(v) for v in videos}
    clips = eval_clips(n, K)
    outs = []
    for bc in batches(clips, batch_size):
        b = gather(fs, bc, K)
        with autocast(device):
            outs.append(model(b["x"].to(device), b["pad"].to(device)).float().cpu())
    out = torch.cat(outs) if outs else torch.zeros(0, K, 1)
    if not per_video:
        return stitch(clips, out, n)
    idx: dict[str, list[int]] = {}
    for i, c in enumerate(clips):
        idx.setdefault(c.video, []).append(i)
    return {v: out[idx[v]].mean(0, keepdim=True) for v in n}


def evaluate(model, data: FoldData, batch_size: int, device) -> dict:
    """Validation loss + metrics per frame over whole validation videos."""
    logits = infer_logits(model, data.fs, data.val, data.K, batch_size, device, data.per_video)
    h = torch.cat([logits[v] for v in data.val])
    y = torch.cat([data.labels[v][0] for v in data.val])
    m = torch.cat([data.labels[v][1].reshape(-1)[: len(logits[v])] for v in data.val])
    if data.per_video:
        loss = task_loss("ERI", h[m], y[m], m[m])
    else:
        loss = task_loss(data.task, h, y, m, data.weights)
    pred = activate(data.task, h).numpy()
    res = score(data.task, pred, y.numpy(), m.numpy())
    res["val_loss"] = float(loss)
    if data.task == "AU" and m.any():
        res["au_thresholds_tuned"] = tune_au_thresholds(pred[m.numpy()], y.numpy()[m.numpy()]).tolist()
    return res


# ---------------------------------------------------------------- DCL pieces (pure)
def interpolate_logits(h_blb, h_clb, alpha):
    """Equation 5: h = α·h_BLB + (1 − α)·h_CLB, one α per sample (broadcast over frames/classes)."""
    a = alpha.to(h_blb).reshape((-1,) + (1,) * (h_blb.dim() - 1))
    return a * h_blb + (1 - a) * h_clb


def _wccc(x, y, w):
    W = w.sum()
    mx, my = (w * x).sum() / W, (w * y).sum() / W
    vx, vy = (w * (x - mx) ** 2).sum() / W, (w * (y - my) ** 2).sum() / W
    cov = (w * (x - mx) * (y - my)).sum() / W
    return 2 * cov / (vx + vy + (mx - my) ** 2 + EPS)


def _wpcc(x, y, w):
    """Weighted Pearson per column of (N, C); weights normalised to mean 1 over used rows."""
    w = (w / w[w > 0].mean()).unsqueeze(-1)
    W = w.sum()
    xc, yc = x - (w * x).sum(0) / W, y - (w * y).sum(0) / W
    return (w * xc * yc).sum(0) / ((w * xc**2).sum(0).sqrt() * (w * yc**2).sum(0).sqrt() + EPS)


def weighted_loss(task: str, h, y, w, class_w=None):
    """The task loss with per-row weights ``w`` (frames (B, K) or videos (B,)); returns (value, Σw).

    AU / EXPR: Σ w·l / Σ w of per-frame losses. VA: (1 − wCCC) summed over valence / arousal.
    ERI: (1 − mean wPCC) + weighted MSE. Uniform weights give exactly ``losses.task_loss``.
    """
    W = w.sum()
    if task in ("AU", "EXPR"):
        C = h.shape[-1]
        ones = torch.ones(h.shape[:-1], dtype=torch.bool, device=h.device).reshape(-1, 1)
        yy = y.reshape(-1, 1, y.shape[-1])
        per = task_loss(task, h.reshape(-1, 1, C), yy, ones, class_w, reduce=False)   # (B*K,)
        return (per * w.reshape(-1)).sum() / W.clamp_min(EPS), W
    if task == "VA":
        p, t, ww = torch.tanh(h).reshape(-1, 2), y.reshape(-1, 2).to(h), w.reshape(-1).to(h)
        if (ww > 0).sum() < 2:
            return h.sum() * 0.0, W
        return (1 - _wccc(p[:, 0], t[:, 0], ww)) + (1 - _wccc(p[:, 1], t[:, 1], ww)), W
    if task == "ERI":
        p, t, ww = torch.sigmoid(h), y.to(h), w.to(h)
        mse = ((p - t) ** 2).mean(-1)
        wmse = (ww * mse).sum() / W.clamp_min(EPS)
        if (ww > 0).sum() < 2:
            return wmse, W
        return (1 - _wpcc(p, t, ww).mean()) + wmse, W
    raise ValueError(task)


def dcl_loss(task: str, h, y_i, m_i, y_j, m_j, alpha, class_w=None):
    """Equation 6 with union mask handling (see module docstring)."""
    a = alpha.to(h).reshape((-1,) + (1,) * (m_i.dim() - 1))
    w_i, w_j = a * m_i.to(h), (1 - a) * m_j.to(h)
    if task in ("AU", "EXPR"):
        li, Wi = weighted_loss(task, h, y_i, w_i, class_w)
        lj, Wj = weighted_loss(task, h, y_j, w_j, class_w)
        return (li * Wi + lj * Wj) / (Wi + Wj).clamp_min(EPS)
    li, Wi = weighted_loss(task, h, y_i, w_i)
    lj, Wj = weighted_loss(task, h, y_j, w_j)
    return (Wi * li + Wj * lj) / (Wi + Wj).clamp_min(EPS)


def dcl_step(task, blb, clb, bi, bj, alpha, class_w, device):
    """Loss of one DCL step on a D_init batch ``bi`` and a D_CLB batch ``bj`` (trimmed to len(alpha))."""
    B = len(alpha)
    bi, bj = ({k: v[:B] for k, v in b.items()} for b in (bi, bj))
    with torch.no_grad(), autocast(device):
        h_b = blb(bi["x"], bi["pad"]).float()
    with autocast(device):
        h_c = clb(bj["x"], bj["pad"]).float()
    h = interpolate_logits(h_b, h_c, alpha)
    return dcl_loss(task, h, bi["y"], bi["ymask"], bj["y"], bj["ymask"], alpha, class_w)


# ---------------------------------------------------------------- the loop
@dataclass
class FitResult:
    best: dict = field(default_factory=dict)       # metrics of the best epoch
    best_state: dict | None = None
    best_epoch: int = 0
    curve: list = field(default_factory=list)


def fit(model, step_fn, epoch_batches, evaluate_fn, *, epochs, lr, weight_decay, warmup_epochs,
        ema_decay, steps_per_epoch, desc) -> FitResult:
    """Train ``model`` (its trainable parameters) with ``step_fn(batch) -> loss``; keep the best EMA."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    total = max(1, epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lambda(total, int(warmup_epochs * steps_per_epoch)))
    ema, res = EMA(model, ema_decay), FitResult()
    for epoch in range(1, epochs + 1):
        model.train()
        tot, nb, t0 = 0.0, 0, time.time()
        for batch in progress(epoch_batches(epoch), total=steps_per_epoch, desc=f"{desc} epoch {epoch}",
                              unit="step", leave=False):
            loss = step_fn(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            ema.update(model)
            tot, nb = tot + float(loss.detach()), nb + 1
        ev = evaluate_fn(ema.model)
        lr_now = opt.param_groups[0]["lr"]
        row = {"epoch": epoch, "train_loss": tot / max(1, nb), "val_loss": ev["val_loss"],
               "val_score": ev["score"], "lr": lr_now}
        res.curve.append(row)
        log.info("%s epoch %d/%d: train_loss %.4f val_loss %.4f val_score %.4f lr %.2e (%.1f s)", desc,
                 epoch, epochs, row["train_loss"], row["val_loss"], row["val_score"], lr_now, time.time() - t0)
        if res.best_state is None or (not math.isnan(ev["score"]) and ev["score"] > res.best.get("score", -math.inf)):
            res.best, res.best_epoch = ev, epoch
            res.best_state = {k: v.detach().cpu().clone() for k, v in ema.model.state_dict().items()}
    return res


def write_curve(path, rows) -> None:
    lines = ["epoch,train_loss,val_loss,val_score,lr"]
    lines += [f"{r['epoch']},{r['train_loss']:.6g},{r['val_loss']:.6g},{r['val_score']:.6g},{r['lr']:.6g}"
              for r in rows]
    write_text(path, "\n".join(lines) + "\n")


def frame_batches(data: FoldData, clips, batch_size, gen, device):
    """Epoch iterator of device batches over ``clips`` (shuffled with ``gen``)."""
    for bc in batches(clips, batch_size, gen):
        b = gather(data.fs, bc, data.K, data.labels, data.per_video, generator=gen)
        yield {k: v.to(device, non_blocking=True) for k, v in b.items()}


def clip_loss(task, model, b, weights, device):
    """Task loss of a batch (eq. 1–3 on flattened clips; ERI on the pooled outputs)."""
    with autocast(device):
        h = model(b["x"], b["pad"]).float()
    if task == "ERI":
        m = b["ymask"]
        return task_loss("ERI", h[m], b["y"][m], m[m])
    return task_loss(task, h, b["y"], b["ymask"], None if weights is None else weights.to(device))


# ---------------------------------------------------------------- checkpoints
def checkpoint_meta(data: FoldData, a, hp) -> dict:
    return {"format": CKPT_FORMAT, "task": a.task, "fold": a.fold, "clip_len": data.K,
            "feature_names": list(data.fs.names), "feature_dims": list(data.fs.dims),
            "norm_mean": torch.from_numpy(data.fs.mean), "norm_std": torch.from_numpy(data.fs.std),
            "class_weights": data.weights, "params": {k: hp[k] for k in ("model", "dcl", "mining")}}


def read_temporal_checkpoint(path, features=None) -> dict:
    """Load a BLB / DCL checkpoint; with ``features`` (dirs), check they are what it was trained on."""
    ck = load_checkpoint(path)
    if not isinstance(ck, dict) or ck.get("format") != CKPT_FORMAT:
        raise PipelineError(f"{path}: not a temporal-model checkpoint (format {ck.get('format') if isinstance(ck, dict) else type(ck)})")
    if features is not None:
        names = store_names(features)
        if names != list(ck["feature_names"]):
            raise PipelineError(f"{path}: trained on feature stores {list(ck['feature_names'])} but "
                                f"--features gives {names}")
    return ck


def model_from_checkpoint(ck: dict, path, device) -> torch.nn.Module:
    """The inference model: the BLB, or BLB + CLB combined per ``dcl.inference``."""
    try:
        blb = build_model(ck["config"])
        blb.load_state_dict(ck["blb_state"])
        if ck["stage"] == "dcl":
            clb = build_model(ck["config"])
            clb.load_state_dict(ck["clb_state"])
            model = DualBranch(blb, clb, ck.get("inference", "mean"))
        else:
            model = blb
    except (KeyError, RuntimeError, ValueError) as e:
        raise PipelineError(f"{path}: checkpoint does not match the model it describes: {e}") from e
    return model.to(device).eval()


def norm_of(ck) -> tuple[np.ndarray, np.ndarray]:
    return ck["norm_mean"].numpy(), ck["norm_std"].numpy()


def metrics_doc(stage, data: FoldData, res: FitResult, baseline, extra) -> dict:
    b = res.best
    doc = {"task": data.task, "fold": data.fold, "stage": stage, "score": b.get("score"),
           "metric": MAIN_METRIC[data.task], "baseline": baseline, **extra,
           "per_class": b.get("per_class"), "best_epoch": res.best_epoch, "val_loss": b.get("val_loss"),
           "n_train_videos": len(data.train), "n_val_videos": len(data.val), "n_val": b.get("n")}
    for k in ("confusion", "ccc_valence", "ccc_arousal", "au_thresholds_tuned"):
        if k in b:
            doc[k] = b[k]
    return doc


def baseline_score(data: FoldData) -> float:
    def cat(vs):
        y = np.concatenate([data.labels_np[v].y for v in vs])
        m = np.concatenate([data.labels_np[v].mask for v in vs]).astype(bool)
        return y[m]
    return float(constant_baseline(data.task, cat(data.train), cat(data.val)))


def framewise_score(data: FoldData) -> float | None:
    """Score of the fine-tuned MAE head (logits stored in the mae_{task} store) on the same frames.

    None for ERI: its visual stream is another task's head (temporal.eri_visual_task), whose
    logits say nothing about the 7 reaction intensities."""
    if data.task == "ERI" or not all(v in data.fs.logits for v in data.val):
        return None
    preds, ys, ms = [], [], []
    for v in data.val:
        lg = torch.from_numpy(data.fs.logits[v]).float()
        if data.per_video:
            lg = lg[data.fs.valid[v]].mean(0, keepdim=True) if data.fs.valid[v].any() else lg.mean(0, keepdim=True)
        preds.append(activate(data.task, lg).numpy())
        ys.append(data.labels_np[v].y)
        ms.append(data.labels_np[v].mask)
    try:
        return float(score(data.task, np.concatenate(preds), np.concatenate(ys), np.concatenate(ms))["score"])
    except (ValueError, IndexError):
        return None


# ---------------------------------------------------------------- stages
def common_args(stage: str, doc: str, outputs=True):
    p = stage_parser(stage, doc)
    p.add_argument("--task", required=True, choices=list(TASK_OUTPUTS))
    p.add_argument("--fold", required=True)
    p.add_argument("--folds", required=True, help="results/folds/{task}.json")
    p.add_argument("--labels", required=True, help="results/index/labels/{task}.h5")
    p.add_argument("--features", required=True, nargs="+", help="feature-store folders, in order")
    if outputs:
        p.add_argument("--out", required=True)
        p.add_argument("--metrics", required=True)
        p.add_argument("--curve", required=True)
    return p


def _setup(a):
    setup_torch(a.threads, a.seed)
    return pick_device(a.device)


def train_blb_main(argv: list[str]) -> int:
    """Train the Basic Learning Branch of one task × fold."""
    a = common_args("train_blb", train_blb_main.__doc__).parse_args(argv)
    device = _setup(a)
    hp = hparams(a.params, a.task)
    data = load_fold(a, hp, with_logits=True)
    cfg = model_config(a.task, data.fs.dim, hp["model"], data.K)
    model = build_model(cfg).to(device)
    res, n_clips = train_branch(model, data, hp, device, a.seed, desc=f"blb {a.task}/{a.fold}")
    extra = {"framewise_score": framewise_score(data), "n_clips": n_clips}
    doc = metrics_doc("blb", data, res, baseline_score(data), extra)
    save_checkpoint({**checkpoint_meta(data, a, hp), "stage": "blb", "config": cfg,
                     "blb_state": res.best_state, "score": doc["score"], "best_epoch": res.best_epoch}, a.out)
    write_json(a.metrics, doc)
    write_curve(a.curve, res.curve)
    log.info("blb %s/%s: %s %.4f (baseline %.4f, frame-wise MAE %s) at epoch %d", a.task, a.fold,
             doc["metric"], doc["score"], doc["baseline"], extra["framewise_score"], res.best_epoch)
    return 0


def train_branch(model, data: FoldData, hp, device, seed, desc):
    """BLB training on D_init (also usable for any single-branch model)."""
    m = hp["model"]
    clips = data.d_init()
    gen = torch.Generator().manual_seed(seed)
    bs = int(m["batch_size"])
    steps = math.ceil(len(clips) / bs)
    w = data.weights

    res = fit(model, lambda b: clip_loss(data.task, model, b, w, device),
              lambda e: frame_batches(data, clips, bs, gen, device),
              lambda mdl: evaluate(mdl, data, bs, device),
              epochs=int(m["epochs"]), lr=float(m["lr"]), weight_decay=float(m["weight_decay"]),
              warmup_epochs=float(m["warmup_epochs"]), ema_decay=float(m["ema_decay"]),
              steps_per_epoch=steps, desc=desc)
    return res, len(clips)


def read_clb_clips(path, data: FoldData) -> list[Clip]:
    doc = read_json(path)
    try:
        clips = [Clip(str(c["video"]), int(c["start"]), int(c["length"])) for c in doc["clips"]]
    except (KeyError, TypeError, ValueError) as e:
        raise PipelineError(f"{path}: malformed D_CLB file ({e})") from e
    for c in clips:
        if c.video not in data.fs.x or c.start + c.length > data.fs.n_frames(c.video) or c.length < 1:
            raise PipelineError(f"{path}: clip {c} is not inside a training video of fold {data.fold}")
    if not clips:
        raise PipelineError(f"{path}: D_CLB is empty")
    return clips


def train_dcl_main(argv: list[str]) -> int:
    """Dual-branch Collaboration Learning: frozen BLB + trained CLB on D_init × D_CLB pairs."""
    p = common_args("train_dcl", train_dcl_main.__doc__)
    p.add_argument("--blb", required=True)
    p.add_argument("--clb-clips", required=True)
    a = p.parse_args(argv)
    device = _setup(a)
    hp = hparams(a.params, a.task)
    ck = read_temporal_checkpoint(a.blb, a.features)
    data = load_fold(a, hp, norm=norm_of(ck), expect=ck["feature_dims"])
    blb = model_from_checkpoint(ck, a.blb, device).requires_grad_(False)
    clb = build_model(ck["config"]).to(device)
    init = hp["dcl"]["clb_init"]
    if init == "blb":
        clb.load_state_dict(blb.state_dict())
    elif init != "fresh":
        raise PipelineError(f"--params: dcl.clb_init must be 'blb' or 'fresh', not {init!r}")
    d_clb = read_clb_clips(a.clb_clips, data)
    res, n = train_dcl(blb, clb, data, d_clb, hp, device, a.seed, desc=f"dcl {a.task}/{a.fold}")
    doc = metrics_doc("dcl", data, res, baseline_score(data),
                      {"blb_score": ck.get("score"), "inference": hp["dcl"]["inference"], "n_clips": n,
                       "n_clb_clips": len(d_clb)})
    save_checkpoint({**checkpoint_meta(data, a, hp), "stage": "dcl", "config": ck["config"],
                     "blb_state": {k: v.cpu() for k, v in blb.state_dict().items()},
                     "clb_state": res.best_state, "inference": hp["dcl"]["inference"],
                     "score": doc["score"], "best_epoch": res.best_epoch}, a.out)
    write_json(a.metrics, doc)
    write_curve(a.curve, res.curve)
    log.info("dcl %s/%s: %s %.4f (BLB %.4f, baseline %.4f) at epoch %d", a.task, a.fold, doc["metric"],
             doc["score"], ck.get("score") or float("nan"), doc["baseline"], res.best_epoch)
    return 0


def train_dcl(blb, clb, data: FoldData, d_clb: list[Clip], hp, device, seed, desc):
    """The DCL loop: returns the best EMA CLB (evaluated together with the frozen BLB)."""
    m, dc = hp["model"], hp["dcl"]
    blb.eval()
    d_init = data.d_init()
    gen_i, gen_j = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    rng = np.random.default_rng(seed + 2)
    bs = int(m["batch_size"])
    steps = math.ceil(min(len(d_init), len(d_clb)) / bs)
    w = None if data.weights is None else data.weights.to(device)

    def epoch_batches(epoch):
        return zip(frame_batches(data, d_init, bs, gen_i, device), frame_batches(data, d_clb, bs, gen_j, device))

    def step(pair):
        B = min(len(pair[0]["x"]), len(pair[1]["x"]))
        alpha = torch.from_numpy(rng.beta(float(dc["tau1"]), float(dc["tau2"]), size=B)).float().to(device)
        return dcl_step(data.task, blb, clb, *pair, alpha, w, device)

    inference = dc["inference"]
    DualBranch(blb, clb, inference)   # validates the option early

    res = fit(clb, step, epoch_batches, lambda mdl: evaluate(DualBranch(blb, mdl, inference), data, bs, device),
              epochs=int(dc["epochs"]), lr=float(dc.get("lr", m["lr"])),
              weight_decay=float(dc.get("weight_decay", m["weight_decay"])),
              warmup_epochs=float(dc.get("warmup_epochs", m["warmup_epochs"])),
              ema_decay=float(dc.get("ema_decay", m["ema_decay"])), steps_per_epoch=steps, desc=desc)
    return res, len(d_init)


# ---------------------------------------------------------------- prediction
class TemporalPredictor(torch.nn.Module):
    """A trained temporal model plus what it needs at inference: normalisation, clip length."""

    def __init__(self, net, ck: dict):
        super().__init__()
        self.net, self.task, self.clip_len = net, ck["task"], int(ck["clip_len"])
        self.feature_names, self.feature_dims = list(ck["feature_names"]), list(ck["feature_dims"])
        self.register_buffer("mean", ck["norm_mean"].float())
        self.register_buffer("std", ck["norm_std"].float())
        self.meta = {k: ck.get(k) for k in ("stage", "fold", "score", "best_epoch", "inference")}

    def forward(self, x, real=None):
        return self.net(x, real)


def load_temporal(path, device="cpu", features=None) -> TemporalPredictor:
    """A BLB or DCL checkpoint as an eval-mode predictor (checks ``features`` dirs if given)."""
    device = torch.device(device)
    ck = read_temporal_checkpoint(path, features)
    return TemporalPredictor(model_from_checkpoint(ck, path, device), ck).to(device).eval()


def predict_video(model: TemporalPredictor, features, valid=None, batch_size: int = 32) -> np.ndarray:
    """Activated predictions of one video: features (n, D) raw concatenated store rows → (n, C)
    (ERI: (1, 7)). ``valid`` (n,) marks face frames (zeroes the visual stores' rows otherwise)
    or (n, S) per store, as training did."""
    x = np.asarray(features, np.float32)
    if x.ndim != 2 or x.shape[1] != sum(model.feature_dims):
        raise PipelineError(f"features of shape {x.shape} but the model expects (n, {sum(model.feature_dims)}) "
                            f"= stores {model.feature_names} {model.feature_dims}")
    x = (x - model.mean.cpu().numpy()) / model.std.cpu().numpy()
    if valid is not None:
        v = np.asarray(valid, bool)
        cols = np.repeat(np.arange(len(model.feature_dims)), model.feature_dims)
        if v.ndim == 1:
            prim = np.isin(cols, primary_stores(model.feature_names))
            x[np.ix_(~v, prim)] = 0.0
        else:
            x[~v[:, cols]] = 0.0
    fs = FeatureSet({"_": torch.from_numpy(x)}, {"_": np.ones(len(x), bool)}, model.feature_names,
                    model.feature_dims, model.mean.cpu().numpy(), model.std.cpu().numpy())
    device = next(model.parameters()).device
    lg = infer_logits(model, fs, ["_"], model.clip_len, batch_size, device, model.task == "ERI")["_"]
    return activate(model.task, lg).numpy()


def predict_main(argv: list[str]) -> int:
    """Predictions of one fold's model for its validation and the test videos."""
    p = common_args("predict", predict_main.__doc__, outputs=False)
    p.add_argument("--model", required=True, help="dcl.pt (or blb.pt)")
    p.add_argument("--index", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=32)
    a = p.parse_args(argv)
    device = _setup(a)
    from .dataset import read_index

    model = load_temporal(a.model, device, a.features)
    _, val, test = read_fold(a.folds, a.fold)
    index = read_index(a.index)
    missing = [v for v in test if v not in index]
    if missing:
        raise PipelineError(f"{a.index}: test videos {missing[:5]} of {a.folds} are not in the index")
    fs = load_features(a.features, val + test, norm=(model.mean.cpu().numpy(), model.std.cpu().numpy()),
                       expect_dims=model.feature_dims)
    for v in test:
        if fs.n_frames(v) != index[v]["n_frames"]:
            raise PipelineError(f"{Path(a.features[0]) / f'{v}.h5'}: {fs.n_frames(v)} frames but "
                                f"{a.index} says video {v} has {index[v]['n_frames']}")
    per_video = model.task == "ERI"
    with atomic_path(a.out) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update({"task": model.task, "fold": a.fold, "score": float(model.meta["score"] or float("nan")),
                        "stage": str(model.meta["stage"]), "model": str(a.model)})
        for split, vids in (("validation", val), ("test", test)):
            g = f.create_group(split)
            logits = infer_logits(model, fs, vids, model.clip_len, a.batch_size, device, per_video)
            for v in vids:
                gv = g.create_group(v)
                gv.create_dataset("pred", data=activate(model.task, logits[v]).numpy().astype(np.float32))
                valid = fs.valid[v] if not per_video else np.array([fs.valid[v].any()])
                gv.create_dataset("valid", data=valid)
    log.info("predict %s/%s: %d validation + %d test videos → %s", model.task, a.fold, len(val), len(test), a.out)
    return 0
