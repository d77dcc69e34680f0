"""MAE throughput: the visual_features stage vs. the bare model, and training step rates.

``python benchmarks/bench_mae.py [--model tiny|base] [--frames N] [--batch B] [--threads T] [--device D]``

Rows (``run(...) -> list[dict]``):
- ``features_stage``: frames/s of :func:`visual_features.visual_features` on real face stores
  (JPEG decode + resize + forward + HDF5 shard write), against ``model_forward``: the same model on
  random tensors of the same batch size in the same run; ``ratio`` = stage / forward (1.0 means
  decoding and I/O cost nothing).
- ``pretrain_step`` / ``finetune_step``: optimizer steps/s (forward + backward + AdamW; fine-tune
  includes the GPU/CPU augmentation).
- on CUDA also ``vit_base_bf16``: ViT-B/16 224-px inference frames/s under bf16 autocast.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from affect_pipeline.common.losses import task_loss  # noqa: E402
from affect_pipeline.common.runtime import autocast, save_checkpoint  # noqa: E402
from affect_pipeline.common.stores import write_face_store  # noqa: E402
from affect_pipeline.common.training import param_groups  # noqa: E402
from affect_pipeline.mae import face_reader as D  # noqa: E402
from affect_pipeline.mae import model as M  # noqa: E402
from affect_pipeline.mae import visual_features as VF  # noqa: E402

_BASE = yaml.safe_load((REPO / "workflow_config.yaml").read_text(encoding="utf-8"))["mae"]["model"]   # ViT-B/16
CONFIGS = {
    "tiny": {**_BASE, **dict(img_size=64, patch_size=8, embed_dim=96, depth=4, num_heads=3, decoder_embed_dim=64,
                             decoder_depth=2, decoder_num_heads=2)},  # the demo override
    "base": dict(_BASE),
}


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timeit(fn, dev, repeat: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    _sync(dev)
    return (time.perf_counter() - t0) / repeat


def _face_store(path, n: int, size: int):
    import cv2
    from skimage import data

    face = cv2.resize(data.astronaut()[20:240, 140:360], (size, size), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(0)
    with write_face_store(path, video_id="bench", size=size, backend="bench", fps=25.0) as w:
        for s in range(0, n, 256):
            b = min(256, n - s)
            crops = [np.clip(face.astype(np.int16) + rng.integers(-10, 11, face.shape), 0, 255).astype(np.uint8)
                     for _ in range(b)]
            w.append(crops, np.ones(b, bool), np.ones(b), np.zeros((b, 4)), np.zeros((b, 5, 2)),
                     np.arange(s, s + b) / 25.0)


def run(model: str = "tiny", frames: int = 512, batch: int = 64, threads: int = 1, device: str = "auto",
        crop_size: int | None = None, steps: int = 5) -> list[dict]:
    torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    cfg = M.model_config(CONFIGS[model])
    crop_size = crop_size or (112 if model == "tiny" else 224)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        clf = M.ViTClassifier(12, **cfg)
        ckpt = tmp / "ft.pt"
        save_checkpoint({"format": M.CHECKPOINT_FORMAT, "kind": "mae_finetune", "task": "AU", "fold": "official",
                         "config": cfg,
                         "outputs": 12, "pooling": "mean_patch_tokens", "model": clf.state_dict()}, ckpt)
        _face_store(tmp / "bench.h5", frames, crop_size)
        params = {"batch_size": batch}
        VF.visual_features(ckpt, [tmp / "bench.h5"], tmp / "warm.h5", params, threads, str(dev))  # warm-up
        t0 = time.perf_counter()
        VF.visual_features(ckpt, [tmp / "bench.h5"], tmp / "out.h5", params, threads, str(dev))
        _sync(dev)
        stage_fps = frames / (time.perf_counter() - t0)

        model_ = VF.load_finetuned(ckpt, dev)
        x = torch.randn(batch, 3, cfg["img_size"], cfg["img_size"], device=dev)

        @torch.inference_mode()
        def fwd():
            with autocast(dev):
                model_(x)
        fwd_fps = batch / _timeit(fwd, dev, max(1, frames // batch))
        rows.append(dict(name="features_stage", model=model, device=str(dev), batch=batch, frames=frames,
                         frames_per_s=round(stage_fps, 1)))
        rows.append(dict(name="model_forward", model=model, device=str(dev), batch=batch, frames=frames,
                         frames_per_s=round(fwd_fps, 1), ratio=round(stage_fps / fwd_fps, 3)))

        mae = M.MaskedAutoencoderViT(**cfg).to(dev)
        opt = torch.optim.AdamW(param_groups(mae, 0.05), lr=1e-4)
        imgs = torch.randn(batch, 3, cfg["img_size"], cfg["img_size"], device=dev)

        def pre_step():
            with autocast(dev):
                loss, _, _ = mae(imgs, 0.75)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        dt = _timeit(pre_step, dev, steps)
        rows.append(dict(name="pretrain_step", model=model, device=str(dev), batch=batch,
                         steps_per_s=round(1 / dt, 2), frames_per_s=round(batch / dt, 1)))

        clf = clf.to(dev).train()
        opt = torch.optim.AdamW(param_groups(clf, 0.05), lr=1e-4)
        u8 = torch.randint(0, 256, (batch, cfg["img_size"], cfg["img_size"], 3), dtype=torch.uint8)
        y = (torch.rand(batch, 12, device=dev) > 0.7).float()
        mask = torch.ones(batch, dtype=torch.bool, device=dev)

        def ft_step():
            xx = D.standardize(D.augment(D.to_unit(u8, dev)))
            with autocast(dev):
                _, z = clf(xx)
            task_loss("AU", z.float(), y, mask).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        dt = _timeit(ft_step, dev, steps)
        rows.append(dict(name="finetune_step", model=model, device=str(dev), batch=batch,
                         steps_per_s=round(1 / dt, 2), frames_per_s=round(batch / dt, 1)))

    if dev.type == "cuda":
        vit = M.ViTClassifier(12, **M.model_config(_BASE)).to(dev).eval()
        xb = torch.randn(256, 3, 224, 224, device=dev)

        @torch.inference_mode()
        def vb():
            with autocast(dev):
                vit(xb)
        rows.append(dict(name="vit_base_bf16", model="base", device=str(dev), batch=256,
                         frames_per_s=round(256 / _timeit(vb, dev, 10), 1)))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", choices=sorted(CONFIGS))
    ap.add_argument("--frames", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args(argv)
    rows = run(a.model, a.frames, a.batch, a.threads, a.device, steps=a.steps)
    keys = ["name", "model", "device", "batch", "frames_per_s", "steps_per_s", "ratio"]
    print(" | ".join(f"{k:>14}" for k in keys))
    for r in rows:
        print(" | ".join(f"{str(r.get(k, '')):>14}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
