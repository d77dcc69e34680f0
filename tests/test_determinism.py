"""Determinism on CPU: the same inputs, seed and thread count give bitwise-identical outputs.

Covered elsewhere (not repeated): train_blb -> mine_hard_clips -> train_dcl -> predict twice with
the same seed gives identical metrics, D_CLB and prediction arrays
(test_temporal.py::test_chain_is_deterministic_and_predict_covers_every_test_frame); a resumed
MAE pretraining equals an uninterrupted one (test_mae.py::test_pretrain_resume_is_identical...);
the demo generator is byte-identical per seed (test_demo.py). Here: feature extraction in two
separate processes gives byte-identical HDF5 files, and the ERI path of train_blb + predict.
GPU behaviour is documented in docs/bad_inputs.md (Determinism).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import torch
from conftest import REPO

torch.set_num_threads(1)
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1"}
VIT = dict(img_size=64, patch_size=8, embed_dim=96, depth=4, num_heads=3)   # the demo's ViT


# ---------------------------------------------------------------- real inputs, built here
def finetuned_checkpoint(path: Path, task: str = "AU", cfg: dict = VIT, seed: int = 0) -> Path:
    """A finetune_mae-format checkpoint of a randomly initialised ViT (what visual_features loads)."""
    from conftest import workflow_defaults

    from affect_pipeline.common.runtime import save_checkpoint
    from affect_pipeline.common.tasks import TASK_OUTPUTS
    from affect_pipeline.mae.model import CHECKPOINT_FORMAT, ViTClassifier, model_config

    torch.manual_seed(seed)
    cfg = model_config({**workflow_defaults()["mae"]["model"], **cfg})
    model = ViTClassifier(TASK_OUTPUTS[task], **cfg)
    save_checkpoint({"format": CHECKPOINT_FORMAT, "kind": "mae_finetune", "task": task, "fold": "official", "config": cfg,
                     "outputs": TASK_OUTPUTS[task], "pooling": "mean_patch_tokens", "model": model.state_dict(),
                     "metrics": "{}"}, path)
    return path


def face_store(path: Path, n: int, size: int = 64, seed: int = 0) -> Path:
    """n frames of the astronaut's face, shifted and noised per frame; every 10th frame has no face."""
    import cv2
    from skimage.data import astronaut

    from affect_pipeline.common.stores import write_face_store

    rng = np.random.default_rng(seed)
    face = cv2.resize(astronaut()[20:240, 140:360], (size, size), interpolation=cv2.INTER_AREA).astype(np.int16)
    found = np.arange(n) % 10 != 3
    with write_face_store(path, video_id=path.stem, size=size, backend="test", fps=25.0) as w:
        for s in range(0, n, 256):
            k = min(256, n - s)
            crops = [np.clip(np.roll(face, i % size, 1) + rng.integers(-20, 21, face.shape), 0, 255).astype(np.uint8)
                     if found[s + j] else None for j, i in enumerate(range(s, s + k))]
            w.append(crops, found[s:s + k], np.ones(k), np.zeros((k, 4)), np.zeros((k, 5, 2)), np.arange(s, s + k) / 25)
    return path


def stage_cmd(*args, threads=1):
    return [sys.executable, "-m", "affect_pipeline", *map(str, args), "--threads", str(threads), "--device", "cpu"]


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def h5_arrays(path, group: str = "/") -> dict:
    with h5py.File(path) as f:
        g = f[group]
        return {k: g[k][:] for k in g} | {f"attr:{k}": v for k, v in g.attrs.items()} | \
            {f"root:{k}": v for k, v in f.attrs.items()}


# ---------------------------------------------------------------- tests
def test_visual_features_twice_are_byte_identical(tmp_path):
    ck = finetuned_checkpoint(tmp_path / "ft.pt")
    faces = face_store(tmp_path / "v.h5", 60)
    outs = []
    for rep in ("a", "b"):
        out = tmp_path / rep / "v.h5"
        p = subprocess.run(stage_cmd("visual_features", "--model", ck, "--faces", faces, "--out", out,
                                     "--params", json.dumps({"batch_size": 16})),
                           env=ENV, capture_output=True, text=True, timeout=180)
        assert p.returncode == 0, p.stderr[-3000:]
        outs.append(out)
    a, b = h5_arrays(outs[0], "v"), h5_arrays(outs[1], "v")     # the shard's group of video v
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert a["features"][a["valid"]].std() > 0          # real, varying features, not zeros
    assert sha(outs[0]) == sha(outs[1])                  # HDF5 bytes too (no timestamps inside)


def test_audio_features_twice_are_byte_identical(tmp_path):
    import soundfile as sf
    from conftest import workflow_defaults

    from affect_pipeline.audio.audio_features import model_params
    from affect_pipeline.common.runtime import write_json
    from affect_pipeline.common.stores import FeatureShard
    from affect_pipeline.demo.make_demo_audio_models import make_demo_audio_models

    models = make_demo_audio_models(tmp_path / "models", seed=0)
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "a.wav", (0.2 * rng.standard_normal(3 * 16000)).astype(np.float32), 16000, subtype="PCM_16")
    write_json(tmp_path / "a.json", {"n_frames": 75, "fps": 25.0, "has_audio": True,
                                     "timestamps": [i / 25 for i in range(75)]})
    outs = []
    for rep in ("a", "b"):
        out = tmp_path / rep / "vggish.h5"
        p = subprocess.run(stage_cmd("audio_features", "--model", "vggish", "--weights", models / "vggish.pth",
                                     "--videos", json.dumps({"v": "a"}), "--audio", tmp_path / "a.wav",
                                     "--frames", tmp_path / "a.json", "--out", out,
                                     "--params", json.dumps(model_params(workflow_defaults()["audio"], "vggish"))),
                           env=ENV, capture_output=True, text=True, timeout=180)
        assert p.returncode == 0, p.stderr[-3000:]
        outs.append(out)
    assert sha(outs[0]) == sha(outs[1])
    with FeatureShard(outs[0]) as sh:
        assert sh.read("v").features.std() > 0


def test_eri_train_and_predict_twice_are_identical(tmp_path):
    """Per-video (ERI) models: two train_blb + predict chains with one seed -> identical arrays;
    another seed -> different weights (the seed is really used)."""
    from test_temporal import SMALL, make_folds, make_synthetic, run

    d = make_synthetic(tmp_path / "data", "ERI", n_train=6, n_val=2, n_test=2, frames=(20, 30))
    make_folds(d, "ERI")
    params = {**SMALL, "eri": {**SMALL["eri"], "epochs": 2}}
    preds = {}
    for rep, seed in (("a", 5), ("b", 5), ("c", 6)):
        o = tmp_path / rep
        args = ["--task", "ERI", "--fold", "official", "--folds", d["folds"], "--labels", d["labels"],
                "--features", *d["features"]]
        assert run("train_blb", args + ["--out", o / "blb.pt", "--metrics", o / "m.json", "--curve", o / "c.csv"],
                   params, seed) == 0
        assert run("predict", args + ["--model", o / "blb.pt", "--index", d["index"], "--out", o / "p.h5"],
                   None, seed) == 0
        with h5py.File(o / "p.h5") as f:
            preds[rep] = {f"{s}/{v}": f[s][v]["pred"][:] for s in f for v in f[s]}
    assert preds["a"].keys() == preds["b"].keys()
    assert all(np.array_equal(preds["a"][k], preds["b"][k]) for k in preds["a"])
    assert any(not np.array_equal(preds["a"][k], preds["c"][k]) for k in preds["a"])
