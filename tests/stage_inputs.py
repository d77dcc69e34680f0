"""Real stage inputs, built here: a finetune_mae-format checkpoint (what visual_features loads),
a face store of the astronaut's face, and readers that compare outputs byte for byte. Shared by
the tests of several folders (mae, audio, affect_predict).
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import h5py
import numpy as np
import torch

VIT = dict(img_size=64, patch_size=8, embed_dim=96, depth=4, num_heads=3)   # the demo's ViT


def astronaut_face(size: int) -> np.ndarray:
    """The astronaut's face (skimage), ``size`` px square RGB: the face of every synthetic store."""
    import cv2
    from skimage.data import astronaut

    return cv2.resize(astronaut()[20:240, 140:360], (size, size), interpolation=cv2.INTER_AREA)


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
    from affect_pipeline.common.stores import write_face_store

    rng = np.random.default_rng(seed)
    face = astronaut_face(size).astype(np.int16)
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
