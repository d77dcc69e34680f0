"""Challenge metrics (equations 7–11), in numpy, with invalid rows masked out.

- AU: mean F1 over the 12 AUs (threshold 0.5, or per-AU thresholds tuned on validation)
- EXPR: macro F1 over the 8 classes
- VA: mean of the CCC of valence and of arousal
- ERI: mean Pearson correlation over the 7 intensities
:func:`score` returns ``{"score": main metric, ...per-class details}`` for any task.

:func:`ccc` and :func:`pcc` are the one implementation of both correlations: the losses
(``losses.py``, eq. 3 and the ERI loss) are 1 − these same functions on torch tensors. They are
written with the operations numpy arrays and torch tensors share (``mean``, ``sum``, ``**``,
``reshape``), so one formula serves both: scoring stays numpy float64 and torch-free (the
submission and report stages never import torch), the losses keep autograd.
"""
from __future__ import annotations

import numpy as np

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.tasks import TASK_COLUMNS

MAIN_METRIC = {"AU": "mean F1", "EXPR": "macro F1", "VA": "mean CCC", "ERI": "mean PCC"}
EPS = 1e-8    # keeps a correlation of constant inputs at 0 instead of 0 / 0


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


def ccc(x, y, w=None):
    """Concordance correlation coefficient (eq. 4) over the first axis, one per column.

    ``x``, ``y``: numpy arrays or torch tensors of the same shape; ``w`` (optional, same kind):
    one non-negative weight per row (a row of weight 0 does not count). Unit weights give the
    plain CCC; integer weights the CCC of the rows repeated that often.
    """
    w = _row_weights(w, x)
    mx, my = _mean(x, w), _mean(y, w)
    vx, vy = _mean((x - mx) ** 2, w), _mean((y - my) ** 2, w)
    cov = _mean((x - mx) * (y - my), w)
    return 2 * cov / (vx + vy + (mx - my) ** 2 + EPS)


def pcc(x, y, w=None):
    """Pearson correlation coefficient (eq. 11) over the first axis, one per column; ``w`` as in
    :func:`ccc` (scaled to mean 1 over the counted rows, so EPS weighs as without weights)."""
    w = _row_weights(w, x)
    if w is not None:
        w = w / w[w > 0].mean()
    xc, yc = x - _mean(x, w), y - _mean(y, w)
    return _sum(xc * yc, w) / (_sum(xc**2, w) ** 0.5 * _sum(yc**2, w) ** 0.5 + EPS)


def _row_weights(w, x):
    """Row weights shaped to broadcast over ``x``'s columns (None stays None: unweighted)."""
    return None if w is None else w.reshape((-1,) + (1,) * (x.ndim - 1))


def _sum(a, w):
    return a.sum(0) if w is None else (w * a).sum(0)


def _mean(a, w):
    return a.mean(0) if w is None else (w * a).sum(0) / w.sum(0)


def score(task: str, pred: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None,
          au_threshold=0.5) -> dict:
    """Main metric + details. ``pred``: AU probabilities (N,12), EXPR probabilities (N,8) or
    class indices (N,), VA values (N,2), ERI intensities (N,7). ``y`` as stored in the label
    store. Rows with mask False are dropped. A NaN (or inf) left in either is an error naming the
    task and the column: a CCC / PCC would silently be 0 and a NaN AU probability a negative."""
    pred, y = np.asarray(pred), np.asarray(y)
    if mask is not None:
        m = np.asarray(mask, bool).reshape(-1)
        pred, y = pred[m], y[m]
    check_finite(task, pred, "predictions")
    check_finite(task, y, "labels")
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
        cv, ca = (float(c) for c in ccc(pred.astype(np.float64), y.astype(np.float64)))
        return {"score": 0.5 * (cv + ca), "ccc_valence": cv, "ccc_arousal": ca, "n": n}
    if task == "ERI":
        per = [float(c) for c in pcc(pred.astype(np.float64), y.astype(np.float64))]
        return {"score": float(np.mean(per)), "per_class": per, "n": n}
    raise ValueError(f"unknown task {task!r}")


class NonFiniteError(PipelineError, ValueError):
    """A NaN / inf among the rows a metric scores."""


def check_finite(task: str, a: np.ndarray, what: str) -> None:
    """Raise :class:`NonFiniteError` "VA: NaN in predictions column 'valence' (3 of 500 rows)" for
    the first column of ``a`` (N, C) or (N,) that holds a NaN or an inf."""
    a = np.asarray(a)
    if a.dtype.kind not in "fc" or np.isfinite(a).all():
        return
    cols = a.reshape(len(a), -1)
    bad = ~np.isfinite(cols)
    j = int(np.flatnonzero(bad.any(0))[0])
    names = TASK_COLUMNS.get(task, ())
    col = names[j] if cols.shape[1] == len(names) else ("class" if cols.shape[1] == 1 and task == "EXPR" else str(j))
    kind = "NaN" if np.isnan(cols[:, j]).any() else "inf"
    raise NonFiniteError(f"{task}: {kind} in {what} column {col!r} ({int(bad[:, j].sum())} of {len(cols)} rows)")


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
