"""Stage ``make_demo_audio_models``: small randomly initialised HuBERT / wav2vec2 / VGGish.

The demo has no pretrained audio weights on disk, so it writes tiny random ones in the real
formats (``save_pretrained`` folders, a torchvggish state dict): :mod:`affect_pipeline.audio.models` loads
them with exactly the code that loads the real checkpoints. ``export_torchaudio`` and
``export_fairseq`` write such a folder's weights in the other two forms the stage accepts (a
torchaudio bundle state dict + sidecar, a fairseq-shaped checkpoint), for the equivalence tests.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from affect_pipeline.audio.models import make_vggish
from affect_pipeline.common.files import atomic_dir
from affect_pipeline.common.runtime import setup_torch, stage_parser, write_json

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


def write_audio_models(out_dir, seed: int, configs: dict, vggish: dict, note: str, masked=()) -> Path:
    """Write ``hubert/``, ``wav2vec2/`` (save_pretrained folders of random models with these
    transformers ``configs``; the names in ``masked`` with a preprocessor that returns an
    attention mask, as the released large models') and ``vggish.pth`` (``make_vggish(**vggish)``)
    under ``out_dir`` (all or nothing), and a README.txt saying ``note``."""
    import torch
    from transformers import HubertModel, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    with atomic_dir(out_dir) as tmp:
        for name, cls in (("hubert", HubertModel), ("wav2vec2", Wav2Vec2Model)):
            torch.manual_seed(seed)
            model = cls(configs[name]).eval()
            model.save_pretrained(tmp / name)
            del model                      # one model in memory at a time
            Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=name in masked).save_pretrained(tmp / name)
        torch.manual_seed(seed)
        torch.save(make_vggish(**vggish).state_dict(), tmp / "vggish.pth")
        (tmp / "README.txt").write_text(f"{note} (seed {seed}); not pretrained.\n", encoding="utf-8")
    return Path(out_dir)


def make_demo_audio_models(out_dir, seed: int) -> Path:
    """Write ``hubert/``, ``wav2vec2/`` and ``vggish.pth`` under ``out_dir`` (all or nothing)."""
    return write_audio_models(out_dir, seed, demo_configs(), DEMO_VGGISH, "Randomly initialised demo audio models")


# ---------------------------------------------------------------- the same weights in torchaudio's formats
def _imported(folder):
    """(torchaudio Wav2Vec2Model, its wav2vec2_model arguments, do_normalize) of a save_pretrained folder."""
    from torchaudio.models.wav2vec2.utils import import_huggingface_model
    from torchaudio.models.wav2vec2.utils.import_huggingface import (
        _get_config,  # what the importer builds
    )
    from transformers import AutoModel

    from affect_pipeline.common.runtime import read_json

    hf = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    pre = Path(folder) / "preprocessor_config.json"
    normalize = bool(read_json(pre).get("do_normalize", True)) if pre.exists() else True
    return import_huggingface_model(hf).eval(), _get_config(hf.config), normalize


def _old_weight_norm_keys(sd: dict) -> dict:
    """Weight-norm parameters as torch.nn.utils.weight_norm named them (weight_g / weight_v): the
    spelling of the released torchaudio bundle files and of fairseq checkpoints."""
    ren = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}
    out = {}
    for k, v in sd.items():
        for a, b in ren.items():
            k = k.replace(a, b)
        out[k] = v
    return out


def export_torchaudio(folder, path) -> Path:
    """A save_pretrained HuBERT / wav2vec2 folder as a torchaudio bundle file: ``path`` holds the
    Wav2Vec2Model state dict (torchaudio's import_huggingface_model), ``path``.json its sidecar."""
    import torch

    net, params, normalize = _imported(folder)
    path = Path(path)
    torch.save(_old_weight_norm_keys(net.state_dict()), path)
    write_json(path.with_suffix(".json"), {**params, "normalize_waveform": normalize, "sample_rate": 16000})
    return path


_TO_FAIRSEQ = [   # torchaudio -> fairseq parameter names (the inverse of torchaudio's fairseq importer)
    (r"feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
    (r"encoder\.feature_projection\.projection\.", "post_extract_proj."),
    (r"encoder\.feature_projection\.layer_norm\.", "layer_norm."),
    (r"encoder\.transformer\.pos_conv_embed\.conv\.", "encoder.pos_conv.0."),
    (r"encoder\.transformer\.layer_norm\.", "encoder.layer_norm."),
    (r"encoder\.transformer\.layers\.(\d+)\.attention\.", r"encoder.layers.\1.self_attn."),
    (r"encoder\.transformer\.layers\.(\d+)\.layer_norm\.", r"encoder.layers.\1.self_attn_layer_norm."),
    (r"encoder\.transformer\.layers\.(\d+)\.feed_forward\.intermediate_dense\.", r"encoder.layers.\1.fc1."),
    (r"encoder\.transformer\.layers\.(\d+)\.feed_forward\.output_dense\.", r"encoder.layers.\1.fc2."),
    (r"encoder\.transformer\.layers\.(\d+)\.final_layer_norm\.", r"encoder.layers.\1.final_layer_norm."),
]


def _fairseq_key(key: str, group_norm: bool) -> str:
    m = re.match(r"feature_extractor\.conv_layers\.(\d+)\.layer_norm\.(.*)", key)
    if m:   # GroupNorm is module 2 of conv layer 0; a LayerNorm sits inside module 2 (TransposeLast sandwich)
        return f"feature_extractor.conv_layers.{m[1]}.2.{'' if group_norm else '1.'}{m[2]}"
    for pat, rep in _TO_FAIRSEQ:
        if re.match(pat, key):
            return re.sub(pat, rep, key)
    raise KeyError(key)


def _run_length(convs) -> str:
    """fairseq's conv_feature_layers spelling: "[(512, 10, 5)] + [(512, 3, 2)] * 4 + ..."."""
    runs = []
    for c in map(tuple, convs):
        if runs and runs[-1][0] == c:
            runs[-1][1] += 1
        else:
            runs.append([c, 1])
    return " + ".join(f"[{c}]" + (f" * {n}" if n > 1 else "") for c, n in runs)


def export_fairseq(folder, path, name: str, use_args: bool = False, extra: dict | None = None) -> Path:
    """The folder's weights as fairseq saves a pre-trained ``name`` (hubert | wav2vec2) checkpoint:
    fairseq parameter names plus the pre-training heads, the model/task config as ``cfg`` (or as an
    argparse ``args`` Namespace, older fairseq), training state; ``extra`` adds top-level entries."""
    import argparse

    import torch

    net, p, normalize = _imported(folder)
    group = p["extractor_mode"] == "group_norm"
    sd = {_fairseq_key(k, group): v for k, v in _old_weight_norm_keys(net.state_dict()).items()}
    dim, final = p["encoder_embed_dim"], 16
    g = torch.Generator().manual_seed(1)
    heads = {"mask_emb": (dim,), "final_proj.weight": (final, dim), "final_proj.bias": (final,)}
    heads.update({"label_embs_concat": (8, final)} if name == "hubert" else
                 {"quantizer.vars": (1, 8, final), "project_q.weight": (final, final), "project_q.bias": (final,)})
    sd.update({k: torch.randn(s, generator=g) for k, s in heads.items()})
    model = dict(_name=name, extractor_mode="default" if group else "layer_norm",
                 conv_feature_layers=_run_length(p["extractor_conv_layer_config"]), conv_bias=p["extractor_conv_bias"],
                 encoder_embed_dim=dim, encoder_layers=p["encoder_num_layers"],
                 encoder_attention_heads=p["encoder_num_heads"], encoder_ffn_embed_dim=p["encoder_ff_interm_features"],
                 layer_norm_first=p["encoder_layer_norm_first"], conv_pos=p["encoder_pos_conv_kernel"],
                 conv_pos_groups=p["encoder_pos_conv_groups"], activation_fn="gelu", layer_type="transformer",
                 dropout=0.1, attention_dropout=0.1, activation_dropout=0.0, encoder_layerdrop=0.05,
                 dropout_input=0.1, final_dim=final, feature_grad_mult=0.1, mask_prob=0.65, mask_length=10)
    task = dict(_name=f"{'hubert' if name == 'hubert' else 'audio'}_pretraining", data="/data/manifests",
                sample_rate=16000, normalize=normalize, max_sample_size=250000, enable_padding=False)
    ckpt = {"args": None, "cfg": {"_name": None, "common": {"fp16": True, "seed": 1}, "model": model, "task": task},
            "model": sd, "criterion": None, "last_optimizer_state": None,
            "optimizer_history": [{"criterion_name": f"{name}_criterion", "optimizer_name": "FairseqAdam",
                                   "lr_scheduler_state": {"best": 3.1}, "num_updates": 400000}],
            "extra_state": {"epoch": 10, "previous_best": np.float64(3.1)}, **(extra or {})}
    if use_args:
        ckpt["cfg"], ckpt["args"] = None, argparse.Namespace(arch=name, **{**model, **task, "_name": None})
    torch.save(ckpt, path)
    return Path(path)


def audio_models_main(argv: list[str], stage: str, doc: str, write) -> int:
    """The command line of a stage that writes audio models: ``write(out_dir, seed)``."""
    p = stage_parser(stage, doc)
    p.add_argument("--out-dir", required=True)
    a = p.parse_args(argv)
    setup_torch(a.threads, a.seed)
    out = write(a.out_dir, a.seed)
    log.info("%s: %s in %s", stage, ", ".join(sorted(x.name for x in out.iterdir())), out)
    return 0


def main(argv: list[str]) -> int:
    return audio_models_main(argv, "make_demo_audio_models", "small random HuBERT / wav2vec2 / VGGish for the demo",
                             make_demo_audio_models)
