"""Stage ``make_paper_weights``: randomly initialised audio models at the paper's sizes.

The paper's audio features come from HuBERT-Large, wav2vec2-Base and VGGish. Their pretrained
weights are not on disk and nothing is downloaded at run time, so the paper-size workflow test
(tests/workflow/test_paper_size.py) writes random ones with the real shapes in the real formats:
``save_pretrained`` folders configured as facebook/hubert-large-ll60k (24 pre-norm layers of
1024, a layer-normed conv front end) and facebook/wav2vec2-base (12 post-norm layers of 768, a
group-normed front end), and torchvggish's full VGGish state dict (72 M parameters).
:mod:`affect_pipeline.audio.models` loads them with the code that loads the released checkpoints,
so the run measures the memory and time of the real architectures, not of their outputs' quality.
"""
from __future__ import annotations

from pathlib import Path

from affect_pipeline.demo.make_demo_audio_models import (
    audio_models_main,
    write_audio_models,
)

#: facebook/hubert-large-ll60k's architecture (its config.json, less the fine-tuning-only keys)
HUBERT_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                    feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
#: facebook/wav2vec2-base's architecture: transformers' Wav2Vec2Config defaults are that model
WAV2VEC2_BASE: dict = {}


def paper_configs() -> dict:
    """The transformers configs of the paper-size HuBERT and wav2vec2."""
    from transformers import HubertConfig, Wav2Vec2Config

    return {"hubert": HubertConfig(**HUBERT_LARGE), "wav2vec2": Wav2Vec2Config(**WAV2VEC2_BASE)}


def make_paper_weights(out_dir, seed: int) -> Path:
    """Write ``hubert/``, ``wav2vec2/`` and ``vggish.pth`` (torchvggish's full widths) under
    ``out_dir`` (all or nothing); HuBERT-Large's preprocessor returns an attention mask, as the
    released one does, wav2vec2-Base's does not."""
    return write_audio_models(out_dir, seed, paper_configs(), {}, "Randomly initialised audio models at the paper's sizes",
                              masked=("hubert",))


def main(argv: list[str]) -> int:
    return audio_models_main(argv, "make_paper_weights", "random HuBERT-Large / wav2vec2-Base / VGGish in their real formats",
                             make_paper_weights)
