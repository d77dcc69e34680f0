"""Hard-clip mining: the pure selection on a hand-computed case, and the stage on a trained BLB."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_temporal import SMALL, fold_args, make_folds, make_synthetic, run, train_blb

from affect_pipeline.temporal.mine_hard_clips import select_hard_clips

torch.set_num_threads(1)


def test_selection_hand_computed():
    losses = [0.1, 0.9, 0.5, 0.9, 0.2, 0.7, 0.3, 0.0, 0.4, 0.6]
    sel = select_hard_clips(losses, 0.3, seed=7)
    # round(0.3 * 10) = 3 hardest, loss descending, ties by index: 1 (0.9), 3 (0.9), 5 (0.7)
    assert sel[:3] == [(1, "hard"), (3, "hard"), (5, "hard")]
    assert len(sel) == len(losses)                        # |D_CLB| = |D_init|
    rand = [i for i, s in sel if s == "random"]
    assert rand == np.random.default_rng(7).integers(0, 10, size=7).tolist()
    assert select_hard_clips(losses, 0.3, seed=7) == sel  # pure / seeded


def test_selection_edges():
    assert select_hard_clips([3.0, 1.0, 2.0], 1.0, 0) == [(0, "hard"), (2, "hard"), (1, "hard")]
    assert all(s == "random" for _, s in select_hard_clips([3.0, 1.0, 2.0], 0.0, 0))
    assert select_hard_clips([], 0.5, 0) == []
    assert [i for i, _ in select_hard_clips([1.0, 2.0, 3.0, 4.0], 0.5, 0)][:2] == [3, 2]
    with pytest.raises(ValueError):
        select_hard_clips([1.0], 1.5, 0)


@pytest.mark.parametrize("task", ["EXPR", "ERI"])
def test_mining_stage_recomputes_clip_losses(tmp_path, task):
    from affect_pipeline.common.losses import task_loss
    from affect_pipeline.common.runtime import load_checkpoint
    from affect_pipeline.common.stores import read_labels
    from affect_pipeline.temporal.checkpoint import load_temporal
    from affect_pipeline.temporal.clips import Clip, gather
    from affect_pipeline.temporal.fold_data import load_features

    eri = task == "ERI"
    d = make_synthetic(tmp_path, task, n_train=8, n_val=2, n_test=0)
    make_folds(d, task)
    params = {**SMALL, "blb": {**SMALL["blb"], "epochs": 1}, "eri": {**SMALL["eri"], "epochs": 1}}
    train_blb(d, task, tmp_path / "m", params)
    out = tmp_path / "m" / "clb.json"
    assert run("mine_hard_clips", fold_args(d, task) + ["--blb", tmp_path / "m" / "blb.pt", "--out", out], params) == 0
    doc = json.loads(out.read_text())
    clips = doc["clips"]
    train = json.loads(d["folds"].read_text())["folds"]["official"]["train"]
    n_init = len(train) if eri else doc["n_init"]
    assert doc["n_init"] == n_init and len(clips) == n_init
    hard = [c for c in clips if c["source"] == "hard"]
    assert len(hard) == round(0.3 * n_init)
    key = lambda c: (c["video"], c["start"])
    rest = [c["loss"] for c in clips if c["source"] == "random" and key(c) not in set(map(key, hard))]
    assert min(c["loss"] for c in hard) >= max(rest) - 1e-9      # random draws may repeat hard clips
    assert all(c["video"] in train for c in clips)
    if eri:
        assert all(c["start"] == 0 and c["length"] == d["n"][c["video"]] for c in clips)
    # independent recomputation of the hardest clip's loss from the checkpoint
    ck = load_checkpoint(tmp_path / "m" / "blb.pt")
    model = load_temporal(tmp_path / "m" / "blb.pt")
    c = hard[0]
    fs = load_features(d["features"], [c["video"]], norm=(ck["norm_mean"].numpy(), ck["norm_std"].numpy()))
    lab = read_labels(d["labels"], [c["video"]])[c["video"]]
    K = SMALL["clip_len"]
    with torch.no_grad():
        if eri:
            n = d["n"][c["video"]]
            outs = [model(*[t for t in (lambda b: (b["x"], b["pad"]))(gather(fs, [Clip(c["video"], s, min(K, n - s))], K))])
                    for s in range(0, n, K)]
            p = torch.sigmoid(torch.cat(outs).mean(0))
            ref = float(((p - torch.from_numpy(lab.y[0])) ** 2).mean())
        else:
            b = gather(fs, [Clip(c["video"], c["start"], c["length"])], K,
                       {c["video"]: (torch.from_numpy(lab.y), torch.from_numpy(lab.mask))})
            ref = float(task_loss(task, model(b["x"], b["pad"]), b["y"], b["ymask"], ck["class_weights"],
                                  reduce=False)[0])
    assert abs(c["loss"] - ref) < 1e-5
