"""Metrics (eq. 7–11) against sklearn / numpy references, with masking; losses (eq. 1–4)."""
import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from affect_pipeline.common import losses, metrics

rng = np.random.default_rng(0)


def test_au_f1_matches_sklearn_with_mask():
    y = (rng.random((300, 12)) < 0.3).astype(np.float32)
    p = np.clip(y * 0.6 + rng.random((300, 12)) * 0.5, 0, 1)
    mask = rng.random(300) > 0.2
    s = metrics.score("AU", p, y, mask)
    ref = np.mean([f1_score(y[mask, j], p[mask, j] >= 0.5, zero_division=0) for j in range(12)])
    assert s["score"] == pytest.approx(ref) and s["n"] == mask.sum()
    th = metrics.tune_au_thresholds(p[mask], y[mask])
    assert metrics.score("AU", p, y, mask, au_threshold=th)["score"] >= s["score"] - 1e-12


def test_expr_macro_f1_matches_sklearn_incl_absent_class():
    y = rng.integers(0, 7, 400)            # class 7 never occurs
    pred = np.where(rng.random(400) < 0.6, y, rng.integers(0, 8, 400))
    probs = np.eye(8)[pred]
    mask = rng.random(400) > 0.1
    s = metrics.score("EXPR", probs, y[:, None].astype(np.float32), mask)
    ref = f1_score(y[mask], pred[mask], average="macro", labels=list(range(8)), zero_division=0)
    assert s["score"] == pytest.approx(ref)
    assert np.sum(s["confusion"]) == mask.sum()


def ccc_ref(x, y):
    return 2 * np.cov(x, y, bias=True)[0, 1] / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)


def test_va_ccc_and_eri_pcc_match_numpy():
    y = rng.uniform(-1, 1, (500, 2))
    p = 0.7 * y + 0.2 + rng.normal(0, 0.2, (500, 2))
    mask = rng.random(500) > 0.3
    s = metrics.score("VA", p, y, mask)
    assert s["ccc_valence"] == pytest.approx(ccc_ref(p[mask, 0], y[mask, 0]))
    assert s["score"] == pytest.approx(0.5 * (ccc_ref(p[mask, 0], y[mask, 0]) + ccc_ref(p[mask, 1], y[mask, 1])))
    e, q = rng.random((20, 7)), rng.random((20, 7))
    ref = np.mean([np.corrcoef(q[:, j], e[:, j])[0, 1] for j in range(7)])
    assert metrics.score("ERI", q, e)["score"] == pytest.approx(ref)


def test_torch_ccc_equals_numpy_and_va_loss_is_eq3():
    y = torch.tensor(rng.uniform(-0.9, 0.9, (64, 2)), dtype=torch.float32)
    logits = torch.atanh(torch.clamp(0.5 * y + 0.1, -0.99, 0.99))
    mask = torch.ones(64, dtype=torch.bool)
    p = torch.tanh(logits)
    ref = (1 - ccc_ref(p[:, 0].numpy(), y[:, 0].numpy())) + (1 - ccc_ref(p[:, 1].numpy(), y[:, 1].numpy()))
    assert float(losses.va_loss(logits, y, mask)) == pytest.approx(ref, abs=1e-5)


def test_one_ccc_and_pcc_for_numpy_and_torch_with_and_without_weights():
    """metrics.ccc / pcc are the scores and, on tensors, the losses' correlations: numpy float64
    and torch give the same numbers, unit weights the plain ones, integer weights those of the
    rows repeated (weight 0: the row dropped)."""
    x = rng.normal(size=(60, 3))
    y = 0.6 * x + rng.normal(size=(60, 3))
    np.testing.assert_allclose(metrics.ccc(x, y), [ccc_ref(x[:, j], y[:, j]) for j in range(3)], rtol=1e-7)
    np.testing.assert_allclose(metrics.pcc(x, y), [np.corrcoef(x[:, j], y[:, j])[0, 1] for j in range(3)], rtol=1e-7)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    k = rng.integers(0, 4, 60).astype(np.float64)
    for f in (metrics.ccc, metrics.pcc):
        np.testing.assert_allclose(f(tx, ty).numpy(), f(x, y), rtol=1e-12)
        np.testing.assert_allclose(f(x, y, np.ones(60)), f(x, y), rtol=1e-12)
        np.testing.assert_allclose(f(tx, ty, torch.ones(60, dtype=torch.float64)).numpy(), f(x, y), rtol=1e-12)
        np.testing.assert_allclose(f(x, y, k), f(np.repeat(x, k.astype(int), 0), np.repeat(y, k.astype(int), 0)),
                                   rtol=1e-7)
        np.testing.assert_allclose(f(tx, ty, torch.from_numpy(k)).numpy(), f(x, y, k), rtol=1e-12)
    assert metrics.ccc(np.ones(5), np.ones(5)) == 0.0 and metrics.pcc(np.ones(5), np.arange(5.0)) == 0.0


@pytest.mark.parametrize("task", ["AU", "EXPR", "VA", "ERI"])
def test_row_weights_of_0_and_1_are_the_loss_over_the_rows_marked_1(task):
    """task_loss takes a bool mask or float row weights (DCL): 0/1 weights give the masked loss,
    the loss of the kept rows alone; its gradient flows through the shared CCC / PCC."""
    from affect_pipeline.common.tasks import TASK_OUTPUTS

    g = torch.Generator().manual_seed(1)
    n, c = 40, TASK_OUTPUTS[task]
    logits = torch.randn(n, c, generator=g, requires_grad=True)
    y = {"AU": lambda: (torch.rand(n, c, generator=g) > 0.5).float(),
         "EXPR": lambda: torch.randint(0, 8, (n, 1), generator=g).float(),
         "VA": lambda: torch.rand(n, c, generator=g) * 2 - 1,
         "ERI": lambda: torch.rand(n, c, generator=g)}[task]()
    mask = torch.rand(n, generator=g) > 0.3
    got = losses.task_loss(task, logits, y, mask.float())
    with torch.no_grad():
        masked = losses.task_loss(task, logits, y, mask)
        kept = losses.task_loss(task, logits[mask], y[mask], torch.ones(int(mask.sum()), dtype=torch.bool))
    assert float(got.detach()) == pytest.approx(float(masked), abs=1e-6)
    assert float(got.detach()) == pytest.approx(float(kept), abs=1e-5)
    got.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[~mask] == 0).all()


def test_au_class_weights_and_weighted_bce_by_hand():
    y = np.zeros((10, 12), np.float32)
    y[:5, 0] = 1          # AU1 fires in half the frames, AU2 in one frame, others never
    y[0, 1] = 1
    paper = losses.class_weights("AU", y, np.ones(10, bool), au_pos_weight=False)
    assert paper.shape == (12,)                             # eq. 1: W_au only
    w = losses.class_weights("AU", y, np.ones(10, bool), au_pos_weight=True)
    assert w.shape == (2, 12) and np.allclose(w[0], paper)
    assert w[0, 1] / w[0, 0] == pytest.approx(5.0)          # 1/count: rarer AU weighs more
    assert w[0].mean() == pytest.approx(1.0)
    assert w[1, 0] == pytest.approx(1.0) and w[1, 1] == pytest.approx(9.0)   # neg/pos
    logits = torch.zeros(10, 12)
    got = float(losses.au_loss(logits, torch.from_numpy(y), torch.ones(10, dtype=torch.bool), torch.from_numpy(w)))
    ln2 = np.log(2)
    per = np.where(y > 0, w[1] * ln2, ln2) * w[0]          # BCE at p=0.5 is ln 2, positives scaled
    assert got == pytest.approx(per.mean(-1).mean(), rel=1e-5)
    got_paper = float(losses.au_loss(logits, torch.from_numpy(y), torch.ones(10, dtype=torch.bool),
                                     torch.from_numpy(paper)))
    assert got_paper == pytest.approx((ln2 * paper).mean(), rel=1e-5)


def test_expr_weights_inverse_counts_and_masked_rows_ignored():
    y = np.array([0, 0, 0, 1, 5, 5], np.float32)[:, None]
    mask = np.array([1, 1, 1, 1, 1, 0], bool)               # the second 5 is invalid
    w = losses.class_weights("EXPR", y, mask, au_pos_weight=False)
    assert w[1] / w[0] == pytest.approx(3.0) and w[5] == pytest.approx(w[1])
    logits = torch.randn(6, 8)
    full = losses.expr_loss(logits, torch.from_numpy(y), torch.from_numpy(mask), torch.from_numpy(w))
    kept = losses.expr_loss(logits[:5], torch.from_numpy(y[:5]), torch.ones(5, dtype=torch.bool), torch.from_numpy(w))
    assert float(full) == pytest.approx(float(kept))


def test_per_clip_losses_shape():
    logits, y = torch.randn(3, 10, 2), torch.rand(3, 10, 2) * 2 - 1
    m = torch.ones(3, 10, dtype=torch.bool)
    assert losses.task_loss("VA", logits, y, m, reduce=False).shape == (3,)
    assert losses.task_loss("AU", torch.randn(3, 10, 12), (torch.rand(3, 10, 12) > 0.5).float(), m, reduce=False).shape == (3,)
