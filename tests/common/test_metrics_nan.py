"""A NaN (or inf) among the scored rows is an error naming the task and the column, not a CCC / PCC
of 0 or an AU counted negative; masked-out rows may hold anything."""
import numpy as np
import pytest

from affect_pipeline.common import metrics
from affect_pipeline.common.errors import PipelineError

rng = np.random.default_rng(0)
N = 50


def data(task):
    if task == "AU":
        y = (rng.random((N, 12)) < 0.4).astype(np.float32)
        return rng.random((N, 12)), y
    if task == "EXPR":
        return rng.dirichlet(np.ones(8), N), rng.integers(0, 8, (N, 1)).astype(np.float32)
    k = 2 if task == "VA" else 7
    y = rng.uniform(-1 if task == "VA" else 0, 1, (N, k))
    return y + rng.normal(0, 0.1, y.shape), y


@pytest.mark.parametrize("task, where, col, name", [
    ("VA", "predictions", 0, "valence"), ("VA", "labels", 1, "arousal"),
    ("ERI", "predictions", 4, "Empathic-Pain"), ("ERI", "labels", 0, "Adoration"),
    ("AU", "predictions", 2, "AU4"), ("AU", "labels", 11, "AU26"),
    ("EXPR", "predictions", 5, "Sadness"), ("EXPR", "labels", 0, "class"),
])
def test_nan_names_task_and_column(task, where, col, name):
    pred, y = data(task)
    assert np.isfinite(metrics.score(task, pred, y)["score"])
    a = pred.copy() if where == "predictions" else y.copy()
    a[[3, 7], col] = np.nan
    args = (a, y) if where == "predictions" else (pred, a)
    with pytest.raises(ValueError, match=rf"^{task}: NaN in {where} column '{name}' \(2 of {N} rows\)$") as e:
        metrics.score(task, *args)
    assert isinstance(e.value, PipelineError)


def test_inf_and_class_indices():
    pred, y = data("VA")
    pred[0, 1] = np.inf
    with pytest.raises(PipelineError, match=r"VA: inf in predictions column 'arousal' \(1 of 50 rows\)"):
        metrics.score("VA", pred, y)
    cls = np.full(N, np.nan)                                  # EXPR as class indices (N,)
    with pytest.raises(PipelineError, match=r"EXPR: NaN in predictions column 'class' \(50 of 50 rows\)"):
        metrics.score("EXPR", cls, data("EXPR")[1])


def test_masked_rows_may_hold_nan():
    pred, y = data("ERI")
    pred[5], y[9] = np.nan, np.nan
    mask = np.ones(N, bool)
    mask[[5, 9]] = False
    s = metrics.score("ERI", pred, y, mask)
    ref = metrics.score("ERI", pred[mask], y[mask])
    assert s["n"] == N - 2 and s["score"] == pytest.approx(ref["score"]) and np.isfinite(s["score"])
