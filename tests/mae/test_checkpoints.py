"""mae/checkpoints.py's import of a foreign checkpoint (``import_mae_face``): a ViT as
facebookresearch/mae's training script saves it (argparse.Namespace, numpy values, also the
numpy-1 pickle) is accepted; one that carries code is refused and its payload never runs."""
from __future__ import annotations

import argparse
import io
import os

import numpy as np
import pytest
import torch
from test_mae import TINY, NotAWeight

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.mae import checkpoints as C
from affect_pipeline.mae import model as M


def _mae_training_checkpoint(path, cfg, **extra_args):
    """A checkpoint as facebookresearch/mae's main_pretrain.py saves one (misc.save_model): the
    full MAE's state dict (timm encoder keys + decoder_* / mask_token), optimizer, scaler, args."""
    torch.manual_seed(3)
    mae = M.MaskedAutoencoderViT(**cfg)
    enc = {k.removeprefix("encoder."): v for k, v in mae.state_dict().items() if k.startswith("encoder.")}
    dec = {f"decoder_{k.removeprefix('decoder.')}": v for k, v in mae.state_dict().items() if k.startswith("decoder.")}
    opt = torch.optim.AdamW(mae.parameters(), lr=1e-3, betas=(0.9, 0.95))
    mae(torch.rand(2, 3, 32, 32), 0.75)[0].backward()
    opt.step()
    args = argparse.Namespace(batch_size=64, epochs=800, accum_iter=1, model="mae_vit_base_patch16", input_size=224,
                              mask_ratio=0.75, norm_pix_loss=True, weight_decay=0.05, lr=None, blr=1.5e-4,
                              min_lr=0.0, warmup_epochs=40, data_path="/datasets01/imagenet_full_size/061417/",
                              output_dir="./output_dir", device="cuda", seed=0, resume="", start_epoch=0,
                              num_workers=10, pin_mem=True, world_size=8, local_rank=-1, dist_url="env://",
                              distributed=True, rank=0, gpu=0, dist_backend="nccl", **extra_args)
    torch.save({"model": {**enc, **dec, "mask_token": torch.zeros(1, 1, cfg["decoder_embed_dim"])},
                "optimizer": opt.state_dict(), "epoch": 3, "args": args,
                "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                           "growth_interval": 2000, "_growth_tracker": 0}}, path)
    return enc


def test_import_accepts_a_facebookresearch_mae_training_checkpoint(tmp_path):
    cfg = M.model_config(TINY)
    src = tmp_path / "checkpoint-3.pth"
    enc = _mae_training_checkpoint(src, cfg, lr_scale=np.float64(1.0), np_seed=np.int64(7),
                                   mean=np.array([0.485, 0.456, 0.406]), crop=np.arange(4, dtype=np.int32),
                                   dtype=np.dtype("float32"), names=np.array(["a", 1], dtype=object))
    ck = C.import_mae_face(src, TINY)
    assert ck["kind"] == "mae_import" and set(ck["encoder"]) == set(enc)
    assert all(torch.equal(ck["encoder"][k], enc[k]) for k in enc)
    # the same, pickled the way numpy 1 names its functions (numpy.core.multiarray), older torch format
    buf = io.BytesIO()
    torch.save(torch.load(src, weights_only=False), buf, _use_new_zipfile_serialization=False)
    old = tmp_path / "checkpoint-numpy1.pth"
    old.write_bytes(buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert b"numpy.core.multiarray\n_reconstruct" in old.read_bytes()
    assert all(torch.equal(C.import_mae_face(old, TINY)["encoder"][k], enc[k]) for k in enc)


class RunsCode:
    """Unpickling this runs a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("payload", ["os.system", "custom class in args"])
def test_import_refuses_checkpoints_that_run_code(payload, tmp_path):
    cfg = M.model_config(TINY)
    src, marker = tmp_path / "checkpoint.pth", tmp_path / "pwned"
    bad = RunsCode(marker) if payload == "os.system" else NotAWeight()
    _mae_training_checkpoint(src, cfg, hook=bad)
    with pytest.raises(PipelineError) as e:
        C.import_mae_face(src, TINY)
    msg = str(e.value)
    assert str(src) in msg and "refused to load" in msg and "weights_only" in msg
    assert ("system" if payload == "os.system" else "NotAWeight") in msg
    assert not marker.exists()
