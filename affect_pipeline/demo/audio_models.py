"""Stage ``make_demo_audio_models``: small randomly initialised HuBERT / wav2vec2 / VGGish.

The demo has no pretrained audio weights on disk, so it writes tiny random ones in the real
formats (``save_pretrained`` folders, a torchvggish state dict): ``audio_models`` then loads
them with exactly the code that loads the real checkpoints.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from ..audio_models import make_vggish
from ..runtime import setup_torch, stage_parser

log = logging.getLogger(__name__)

#: HuBERT / wav2vec2: the real conv strides and kernels (20 ms frames, 25 ms windows), narrow widths.
#: ``feat_extract_norm="layer"`` (as the large models) keeps the front end frame-local, so chunked
#: extraction equals a single pass away from chunk boundaries.
DEMO_HF = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               conv_dim=(32,) * 7, feat_extract_norm="layer", num_conv_pos_embeddings=16,
               num_conv_pos_embedding_groups=4, do_stable_layer_norm=False)
#: VGGish: torchvggish's topology and 128-d output with 1/8 conv widths and 256-wide FC layers
#: (~0.5 M params, ~2 MB instead of 72 M / 290 MB); the loader infers widths from the state dict.
DEMO_VGGISH = dict(widths=(8, 16, 32, 32, 64, 64), fc=(256, 256, 128))


def demo_configs() -> dict:
    """The transformers configs of the demo HuBERT and wav2vec2."""
    from transformers import HubertConfig, Wav2Vec2Config

    return {"hubert": HubertConfig(**DEMO_HF),
            "wav2vec2": Wav2Vec2Config(**DEMO_HF, codevector_dim=16, proj_codevector_dim=16)}


def make_demo_audio_models(out_dir, seed: int) -> Path:
    """Write ``hubert/``, ``wav2vec2/`` and ``vggish.pth`` under ``out_dir`` (all or nothing)."""
    import torch
    from transformers import HubertModel, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        cfgs = demo_configs()
        for name, cls in (("hubert", HubertModel), ("wav2vec2", Wav2Vec2Model)):
            torch.manual_seed(seed)
            cls(cfgs[name]).eval().save_pretrained(tmp / name)
            Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False).save_pretrained(tmp / name)
        torch.manual_seed(seed)
        torch.save(make_vggish(**DEMO_VGGISH).state_dict(), tmp / "vggish.pth")
        (tmp / "README.txt").write_text(f"Randomly initialised demo audio models (seed {seed}); not pretrained.\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def main(argv: list[str]) -> int:
    p = stage_parser("make_demo_audio_models", "small random HuBERT / wav2vec2 / VGGish for the demo")
    p.add_argument("--out-dir", required=True)
    a = p.parse_args(argv)
    setup_torch(a.threads, a.seed)
    out = make_demo_audio_models(a.out_dir, a.seed)
    log.info("demo audio models in %s: %s", out, ", ".join(sorted(x.name for x in out.iterdir())))
    return 0
