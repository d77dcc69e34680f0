"""Challenge metrics (equations 7–11), in numpy, with invalid rows masked out.

- AU: mean F1 over the 12 AUs (threshold 0.5, or per-AU thresholds tuned on validation)
- EXPR: macro F1 over the 8 classes
- VA: mean of the CCC of valence and of arousal
- ERI: mean Pearson correlation over the 7 intensities
:func:`score` returns ``{"score": main metric, ...per-class details}`` for any task.
"""
from __future__ import annotations

import numpy as np

MAIN_METRIC = {"AU": "mean F1", "EXPR": "macro F1", "VA": "mean CCC", "ERI": "mean PCC"}


def f1_binary(pred: np.ndarray, true: np.ndarray) -> float:
    """F1 of the positive class; 0 when there are no positives in either (sklearn's zero_division=0)."""
    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    tp = np.sum(pred & true)
    denom = 2 * tp + np.sum(pred & ~true) + np.sum(~pred & true)
    return float(2 * tp / denom) if denom else 0.0


def au_f1(probs: np.ndarray, y: np.ndarray, threshold=0.5) -> tuple[float, list[float]]:
    th = np.broadcast_to(np.asarray(threshold, np.float64), (probs.shape[1],))
    per = [f1_binary(probs[:, j] >= th[j], y[:, j] > 0.5) for j in range(probs.shape[1])]
    return float(np.mean(per)), per


def tune_au_thresholds(probs: np.ndarray, y: np.ndarray, grid=np.linspace(0.05, 0.95, 19)) -> np.ndarray:
    """Per-AU threshold that maximises that AU's F1 on the given (validation) frames."""
    return np.array([grid[int(np.argmax([f1_binary(probs[:, j] >= t, y[:, j] > 0.5) for t in grid]))]
                     for j in range(probs.shape[1])])


def expr_f1(pred_class: np.ndarray, y: np.ndarray, n_classes: int = 8) -> tuple[float, list[float]]:
    pred_class, y = np.asarray(pred_class).reshape(-1), np.asarray(y).reshape(-1).astype(int)
    per = [f1_binary(pred_class == c, y == c) for c in range(n_classes)]
    return float(np.mean(per)), per


def confusion(pred_class: np.ndarray, y: np.ndarray, n_classes: int = 8) -> np.ndarray:
    m = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(m, (np.asarray(y).reshape(-1).astype(int), np.asarray(pred_class).reshape(-1).astype(int)), 1)
    return m


def ccc(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    mx, my = x.mean(), y.mean()
    cov = np.mean((x - mx) * (y - my))
    denom = x.var() + y.var() + (mx - my) ** 2
    return float(2 * cov / denom) if denom > 0 else 0.0


def pcc(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    xc, yc = x - x.mean(), y - y.mean()
    denom = np.sqrt((xc**2).sum() * (yc**2).sum())
    return float((xc * yc).sum() / denom) if denom > 0 else 0.0


def score(task: str, pred: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None,
          au_threshold=0.5) -> dict:
    """Main metric + details. ``pred``: AU probabilities (N,12), EXPR probabilities (N,8) or
    class indices (N,), VA values (N,2), ERI intensities (N,7). ``y`` as stored in the label
    store. Rows with mask False are dropped."""
    pred, y = np.asarray(pred), np.asarray(y)
    if mask is not None:
        m = np.asarray(mask, bool).reshape(-1)
        pred, y = pred[m], y[m]
    n = int(len(y))
    if n == 0:
        return {"score": float("nan"), "n": 0}
    if task == "AU":
        s, per = au_f1(pred, y, au_threshold)
        return {"score": s, "per_class": per, "n": n}
    if task == "EXPR":
        cls = pred.argmax(-1) if pred.ndim == 2 and pred.shape[1] > 1 else pred.reshape(-1)
        s, per = expr_f1(cls, y)
        return {"score": s, "per_class": per, "n": n, "confusion": confusion(cls, y).tolist()}
    if task == "VA":
        cv, ca = ccc(pred[:, 0], y[:, 0]), ccc(pred[:, 1], y[:, 1])
        return {"score": 0.5 * (cv + ca), "ccc_valence": cv, "ccc_arousal": ca, "n": n}
    if task == "ERI":
        per = [pcc(pred[:, j], y[:, j]) for j in range(y.shape[1])]
        return {"score": float(np.mean(per)), "per_class": per, "n": n}
    raise ValueError(f"unknown task {task!r}")


def constant_baseline(task: str, y_train: np.ndarray, y_eval: np.ndarray) -> float:
    """Score of the best constant predictor fitted on training labels (a floor for 'learned')."""
    if task == "AU":
        rate = y_train.mean(0)
        # predicting "always on" for an AU gives its best constant F1 (0 F1 for "always off")
        return score("AU", np.tile((rate > 0).astype(float), (len(y_eval), 1)), y_eval)["score"]
    if task == "EXPR":
        major = np.bincount(y_train.reshape(-1).astype(int), minlength=8).argmax()
        return score("EXPR", np.full(len(y_eval), major), y_eval)["score"]
    if task in ("VA", "ERI"):
        return score(task, np.tile(y_train.mean(0), (len(y_eval), 1)), y_eval)["score"]
    raise ValueError(task)
