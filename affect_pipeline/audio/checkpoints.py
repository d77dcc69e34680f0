"""HuBERT / wav2vec2 weight files other than save_pretrained folders, read for torchaudio's model.

``torchaudio.pipelines`` bundle state dicts (``.pth``) and fairseq checkpoints are read into a
:class:`Wav2Vec2Spec` (the arguments of ``torchaudio.models.wav2vec2_model``) and a torchaudio
state dict. :mod:`affect_pipeline.audio.models` detects the kind and builds the model; the
formats are described there.
"""
from __future__ import annotations

import argparse
import ast
import inspect
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.runtime import load_checkpoint, read_json


@dataclass(frozen=True)
class Wav2Vec2Spec:
    """What builds a torchaudio Wav2Vec2Model: wav2vec2_model keywords, input normalisation, rate."""
    params: dict
    normalize: bool = False
    sample_rate: int = 16000


class _Inert:
    """Stands in for a pickled fairseq / omegaconf object (task dictionary, enum): keeps its
    arguments and state, runs nothing."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state


def load_pickle(path: Path):
    """``torch.load(weights_only=True)`` that also admits what fairseq checkpoints pickle:
    argparse.Namespace, numpy scalars/arrays, and fairseq/omegaconf classes as :class:`_Inert`."""
    import torch

    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - legacy (non-zip) files: load_checkpoint names any refusal
        found = []
    stubs = [(_Inert, g) for g in found if g.split(".")[0] in ("fairseq", "omegaconf")]
    rec = np._core.multiarray.scalar
    with torch.serialization.safe_globals([argparse.Namespace, rec, (rec, "numpy.core.multiarray.scalar")]
                                          + numpy_array_globals() + stubs):
        return load_checkpoint(path)


def _plain(v):
    """A config value with enum stubs replaced by their value."""
    if isinstance(v, _Inert):
        return v.args[0] if v.args else None
    return {k: _plain(x) for k, x in v.items()} if isinstance(v, dict) else v


_FAIRSEQ_DEFAULTS = dict(   # fairseq's Wav2Vec2Config / HubertConfig defaults (base models)
    extractor_mode="default", conv_feature_layers="[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2",
    conv_bias=False, encoder_embed_dim=768, encoder_layers=12, encoder_attention_heads=12,
    encoder_ffn_embed_dim=3072, layer_norm_first=False, conv_pos=128, conv_pos_groups=16,
    activation_fn="gelu", layer_type="transformer", pos_conv_depth=1)


def fairseq_spec(ckpt: dict, path: Path, name: str) -> Wav2Vec2Spec:
    """wav2vec2_model arguments from a fairseq checkpoint's ``cfg`` (model, task) or ``args``."""
    if ckpt.get("cfg"):
        cfg = _plain(ckpt["cfg"])
        model, task = cfg.get("model") or {}, cfg.get("task") or {}
    elif isinstance(ckpt.get("args"), argparse.Namespace):
        model = task = _plain(vars(ckpt["args"]))
    else:
        raise PipelineError(f"{path}: fairseq checkpoint without a cfg or args: its model config is unknown")
    arch = str(model.get("_name") or model.get("arch") or "")
    if "w2v_args" in model or "w2v_path" in model:
        raise PipelineError(f"{path}: a fine-tuned fairseq checkpoint ({arch}); give the pretrained one")
    if arch and not arch.startswith(name):
        raise PipelineError(f"{path}: a fairseq {arch!r} checkpoint, expected {name!r}")
    get = lambda k: model.get(k) if model.get(k) is not None else _FAIRSEQ_DEFAULTS[k]  # noqa: E731
    for k, want in (("activation_fn", "gelu"), ("layer_type", "transformer"), ("pos_conv_depth", 1)):
        if get(k) != want:
            raise PipelineError(f"{path}: fairseq {k} = {get(k)!r}; torchaudio's wav2vec2_model builds "
                                f"{want!r} only")
    try:
        convs = [tuple(c) for c in _int_list_expr(str(get("conv_feature_layers")))]
    except (ValueError, SyntaxError, TypeError) as e:
        raise PipelineError(f"{path}: unreadable conv_feature_layers {get('conv_feature_layers')!r}") from e
    params = dict(
        extractor_mode={"default": "group_norm", "layer_norm": "layer_norm"}.get(get("extractor_mode"), "?"),
        extractor_conv_layer_config=convs, extractor_conv_bias=bool(get("conv_bias")),
        encoder_embed_dim=int(get("encoder_embed_dim")), encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=int(get("conv_pos")), encoder_pos_conv_groups=int(get("conv_pos_groups")),
        encoder_num_layers=int(get("encoder_layers")), encoder_num_heads=int(get("encoder_attention_heads")),
        encoder_attention_dropout=0.0, encoder_ff_interm_features=int(get("encoder_ffn_embed_dim")),
        encoder_ff_interm_dropout=0.0, encoder_dropout=0.0, encoder_layer_norm_first=bool(get("layer_norm_first")),
        encoder_layer_drop=0.0)
    if params["extractor_mode"] == "?":
        raise PipelineError(f"{path}: fairseq extractor_mode {get('extractor_mode')!r} (default | layer_norm)")
    return Wav2Vec2Spec(params, bool(task.get("normalize", False)), int(task.get("sample_rate", 16000)))


def _int_list_expr(text: str):
    """Evaluate fairseq's conv_feature_layers (lists/tuples of ints, + and *) without eval()."""
    def ev(n):
        if isinstance(n, ast.Constant) and type(n.value) is int:
            return n.value
        if isinstance(n, (ast.List, ast.Tuple)):
            return (list if isinstance(n, ast.List) else tuple)(ev(e) for e in n.elts)
        if isinstance(n, ast.BinOp) and isinstance(n.op, (ast.Add, ast.Mult)):
            a, b = ev(n.left), ev(n.right)
            return a + b if isinstance(n.op, ast.Add) else a * b
        raise ValueError(f"unsupported expression {ast.dump(n)[:60]}")
    return ev(ast.parse(text, mode="eval").body)


def fairseq_state_dict(model_sd: dict, path: Path) -> dict:
    """fairseq keys -> torchaudio keys with torchaudio's own fairseq mapping (import_fairseq_model's,
    which needs a live fairseq model); pre-training heads (label embeddings, projections) dropped."""
    from torchaudio.models.wav2vec2.utils.import_fairseq import _convert_state_dict

    try:
        sd = _convert_state_dict(model_sd)
    except ValueError as e:
        raise PipelineError(f"{path}: not a fairseq wav2vec2 / HuBERT model: {e}") from e
    return {k: v for k, v in sd.items() if k != "label_embs_concat" and not k.startswith("aux.")}


_DROPOUTS = ("encoder_projection_dropout", "encoder_attention_dropout", "encoder_ff_interm_dropout",
             "encoder_dropout", "encoder_layer_drop", "aux_num_out")


def sidecar_spec(path: Path) -> Wav2Vec2Spec:
    """The sidecar JSON: wav2vec2_model keywords (dropouts may be left out: inference ignores them),
    plus optional normalize_waveform and sample_rate."""
    from torchaudio.models import wav2vec2_model

    cfg = read_json(path)
    if not isinstance(cfg, dict):
        raise PipelineError(f"{path}: expected a JSON object of torchaudio wav2vec2_model arguments")
    cfg = {**{k: 0.0 for k in _DROPOUTS[:-1]}, **cfg}
    normalize, sr = bool(cfg.pop("normalize_waveform", False)), int(cfg.pop("sample_rate", 16000))
    known = set(inspect.signature(wav2vec2_model).parameters) - {"aux_num_out"}
    unknown, lacking = sorted(set(cfg) - known), sorted(known - set(cfg))
    if unknown or lacking:
        raise PipelineError(f"{path}: torchaudio wav2vec2_model arguments "
                            + (f"unknown: {unknown} " if unknown else "") + (f"missing: {lacking}" if lacking else ""))
    return Wav2Vec2Spec(cfg, normalize, sr)


def _shapes(sd: dict) -> dict:
    """Parameter shapes by name, weight-norm keys spelled weight_g / weight_v (the bundle files'
    spelling; current torch builds ``parametrizations.weight.original0/1``), so a state dict in
    either spelling compares equal to a freshly built model's."""
    ren = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}
    out = {}
    for k, v in sd.items():
        for a, b in ren.items():
            k = k.replace(a, b)
        out[k] = tuple(v.shape)
    return out


def bundle_spec(sd: dict, path: Path, name: str) -> Wav2Vec2Spec:
    """The spec of the one torchaudio.pipelines bundle of this model family whose shapes ``sd`` has."""
    import torch
    import torchaudio.pipelines as tp
    from torchaudio.models import wav2vec2_model
    from torchaudio.pipelines._wav2vec2.impl import Wav2Vec2Bundle

    want, prefix = _shapes(sd), name.upper() + "_"
    dim = want.get("encoder.feature_projection.projection.weight", (None,))[0]
    n_layers = len({k.split(".")[3] for k in want if k.startswith("encoder.transformer.layers.")})
    fits = {}
    for bname, b in sorted(vars(tp).items()):
        p = getattr(b, "_params", {})
        if not (isinstance(b, Wav2Vec2Bundle) and bname.startswith(prefix) and b._model_type == "Wav2Vec2"
                and p.get("encoder_embed_dim") == dim and p.get("encoder_num_layers") == n_layers):
            continue
        with torch.device("meta"):
            shapes = _shapes(wav2vec2_model(**{**p, "aux_num_out": None}).state_dict())
        if shapes == want:
            spec = Wav2Vec2Spec({k: v for k, v in p.items() if k != "aux_num_out"}, b._normalize_waveform,
                                int(b._sample_rate))
            fits.setdefault(repr(({k: v for k, v in p.items() if k not in _DROPOUTS}, spec.normalize)),
                            (spec, []))[1].append(bname)
    if len(fits) == 1:
        return next(iter(fits.values()))[0]
    why = (f"fits bundles that differ ({'; '.join(', '.join(n) for _, n in fits.values())})" if fits else
           f"has the shapes of no torchaudio.pipelines {prefix}* bundle")
    raise PipelineError(f"{path}: this torchaudio Wav2Vec2Model state dict {why}: write "
                        f"{path.with_suffix('.json')} with its torchaudio.models.wav2vec2_model arguments "
                        f"(a bundle's _params, e.g. torchaudio.pipelines.HUBERT_BASE._params)")


def numpy_array_globals() -> list:
    """The globals a pickled plain numpy array needs (numpy 1 and 2 module names)."""
    rec = np._core.multiarray._reconstruct
    dtypes = [type(np.dtype(t)) for t in (np.float32, np.float64, np.float16, np.int64)]
    return ([rec, (rec, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype]
            + dtypes + [(t, f"numpy.dtypes.{t.__name__}") for t in dtypes])
