"""Fine-tuning under DDP: two CPU processes over gloo (torchrun) end where one process with the same
global batch ends. Why this check and not a looser one: DistributedSampler splits one
permutation, so step k's two per-rank batches are exactly the single run's k-th batch; DDP
averages the two equal-sized batch means, which is the single run's mean. Ranks that saw the
same shard, or overlapping ones, or not all of it, move the weights elsewhere.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO
from test_mae import MAE_DEFAULTS, TINY, build_dataset, build_encoder, stores

torch.set_num_threads(1)


ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """test_mae's 8 face stores (6 train, 2 validation videos of 40 frames) and label stores."""
    return build_dataset(tmp_path_factory.mktemp("data"))


def finetune_cmd(dataset: Path, enc: Path, out: Path, batch_size: int, ddp: bool) -> list[str]:
    ft = {**MAE_DEFAULTS["finetune"], **dict(epochs=1, batch_size=batch_size, lr=5e-3, weight_decay=0.01,
                                             warmup_epochs=0, ema_decay=0.5, augment=False, frames_per_video=0,
                                             soup="none")}
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] if ddp else []
    return [sys.executable, *launch, "-m", "affect_pipeline", "finetune_mae", "--task", "AU", "--fold", "official",
            "--folds", str(dataset / "folds.json"), "--pretrained", str(enc), "--labels",
            str(dataset / "labels_AU.h5"), "--faces", *stores(dataset), "--out", str(out / "finetune.pt"),
            "--metrics", str(out / "metrics.json"), "--curve", str(out / "curve.csv"),
            # mean_norm: the encoder keeps its norm.*, which the weights comparison below walks
            "--params", json.dumps({"model": TINY, "gpus": 2 if ddp else 1, "finetune": ft,
                                    "features": {"pool": "mean_norm"}}),
            "--threads", "2" if ddp else "1", "--device", "cpu"]


def test_finetune_ddp_two_processes_equals_one_with_the_global_batch(dataset, tmp_path):
    enc = build_encoder(tmp_path / "pretrain.pt")
    runs = {}
    for name, bs, ddp in (("single", 32, False), ("ddp", 16, True)):
        r = subprocess.run(finetune_cmd(dataset, enc, tmp_path / name, bs, ddp), env=ENV, capture_output=True,
                           text=True, timeout=150)
        assert r.returncode == 0, r.stderr[-3000:]
        runs[name] = r.stderr
    assert "DDP rank 1/2" in runs["ddp"] and "7 steps" in runs["ddp"] and "7 steps" in runs["single"]
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["curve.csv", "finetune.pt", "metrics.json"]
    assert runs["ddp"].count("AU official: val ") == 1                   # rank 0 alone validated and wrote
    m = {k: json.loads((tmp_path / k / "metrics.json").read_text()) for k in runs}
    assert m["ddp"]["n_train_frames"] == m["single"]["n_train_frames"] == 6 * 36
    assert m["ddp"]["score"] == pytest.approx(m["single"]["score"], abs=1e-3)
    start = {k: v for k, v in torch.load(enc, weights_only=True)["encoder"].items()}
    w = {k: torch.load(tmp_path / k / "finetune.pt", weights_only=True)["model"] for k in runs}
    moved = torch.cat([(w["single"][f"encoder.{k}"] - v).flatten() for k, v in start.items()])
    apart = torch.cat([(w["ddp"][k] - w["single"][k]).flatten() for k in w["single"]])
    assert moved.norm() > 1e-2                                             # training moved the weights...
    assert apart.norm() < 1e-3 * moved.norm(), (apart.norm(), moved.norm())  # ...to the same place
