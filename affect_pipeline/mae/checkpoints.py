"""MAE encoder checkpoints: what pretrain_mae writes, what it imports (MAE-Face, facebookresearch/mae,
timm: encoder weights under timm's ViT key names; fine-tuned global-pool ones with ``fc_norm``), and
loading a pretrained encoder into the fine-tune classifier. Foreign checkpoints are unpickled with an
allow-list of plain data types: a checkpoint that would run code is refused."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.runtime import load_checkpoint
from affect_pipeline.mae.model import (
    CHECKPOINT_FORMAT,
    ViTClassifier,
    ViTEncoder,
    model_config,
    norm_layer,
)


def load_pretrained(model: ViTClassifier, sd: dict, source) -> None:
    """A pretrain_mae encoder state into ``model.encoder`` (strict, every problem in one error) as
    MAE's fine-tuning loads it: with the global pool the pretrained ``norm`` is dropped and
    ``fc_norm`` is new, unless the state carries one (an imported fine-tuned global-pool
    checkpoint); the other pools need the pretrained ``norm``."""
    sd = dict(sd)
    fc = {k[len("fc_norm."):]: sd.pop(k) for k in list(sd) if k.startswith("fc_norm.")}
    if model.pool == "global":
        load_encoder_state(model.encoder, {k: v for k, v in sd.items() if not k.startswith("norm.")}, source)
        if fc:
            _load_fc_norm(model.fc_norm, fc, source)
        return
    if not any(k.startswith("norm.") for k in sd):
        raise PipelineError(f"{source}: the encoder has no final norm (norm.*): it comes from a fine-tuned "
                            f"global-pool checkpoint (fc_norm.*), whose features are fc_norm(mean of the patch "
                            f"tokens); set mae.features.pool: global (not {model.pool!r})")
    load_encoder_state(model.encoder, sd, source)


def _load_fc_norm(fc_norm: nn.Module, fc: dict, source) -> None:
    own = fc_norm.state_dict()
    if set(fc) != set(own) or any(tuple(fc[k].shape) != tuple(own[k].shape) for k in own):
        raise PipelineError(f"{source}: fc_norm {{{', '.join(f'{k}: {tuple(v.shape)}' for k, v in fc.items())}}} "
                            f"does not fit the configured ViT (fc_norm.weight / fc_norm.bias of "
                            f"{tuple(own['weight'].shape)})")
    fc_norm.load_state_dict({k: v.float() for k, v in fc.items()})


def encoder_checkpoint(encoder_sd: dict, cfg: dict, kind: str, **extra) -> dict:
    """The pretrain_mae output (both for pretraining and for an imported encoder)."""
    return {"format": CHECKPOINT_FORMAT, "kind": kind, "config": dict(cfg),
            "encoder": {k: v.detach().cpu() for k, v in encoder_sd.items()}, **extra}


def load_encoder_state(encoder: ViTEncoder, sd: dict, source) -> None:
    """Strict load that lists every missing / unexpected key and shape mismatch in one error."""
    own = encoder.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(sd)) if tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        if shapes:
            parts.append(f"shape mismatches [{'; '.join(shapes)}]")
        raise PipelineError(f"{source}: encoder weights do not fit the configured ViT "
                            f"(mae.model {encoder.embed_dim=}, patch {encoder.patch_size}): " + ", ".join(parts))
    encoder.load_state_dict({k: v.float() for k, v in sd.items()})


#: dropped on import: the MAE decoder and a fine-tuned head (task-specific); a fine-tuned
#: global-pool checkpoint's ``fc_norm`` is kept (the global-pool feature is its output)
_DROP_PREFIXES = ("decoder_", "decoder.", "mask_token", "head.")


def _plain_data_globals() -> list:
    """What training scripts' checkpoints carry besides tensors and that runs no code when
    unpickled: facebookresearch/mae's ``args`` (argparse.Namespace) and numpy scalars, dtypes and
    arrays, under numpy 2's module names and numpy 1's (``numpy.core``), the ones older files use."""
    import argparse

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1
        from numpy.core import multiarray

    dtypes = [getattr(np.dtypes, n) for n in np.dtypes.__all__]
    numpy1 = [(f, f"numpy.core.multiarray.{f.__name__}") for f in (multiarray.scalar, multiarray._reconstruct)]
    return [argparse.Namespace, np.dtype, np.ndarray, multiarray.scalar, multiarray._reconstruct,
            *dtypes, *numpy1]


def load_foreign_checkpoint(path) -> object:
    """``load_checkpoint`` (weights_only) that also accepts :func:`_plain_data_globals`: a training
    script's checkpoint loads; one whose pickle calls a function or builds another class is refused."""
    with torch.serialization.safe_globals(_plain_data_globals()):
        return load_checkpoint(path)


def import_mae_face(path, cfg: dict) -> dict:
    """Convert MAE-Face's ``mae_face_pretrain_vit_base.pth`` (or any timm-keyed ViT) to our format.

    The file is a dict whose ``model`` (or ``state_dict``, or the dict itself) holds timm
    ``vit_base_patch16`` keys; ``module.`` / ``encoder.`` prefixes are stripped, decoder / head keys
    dropped. A fine-tuned global-pool checkpoint (MAE's ``models_vit(global_pool=True)``, timm's
    ``global_pool="avg", fc_norm=True``: ``fc_norm.*`` and no ``norm.*``) imports too: its
    ``fc_norm`` travels in the encoder state and the global pool uses it (:func:`load_pretrained`);
    the other pools, which need ``norm``, refuse it. Loaded with ``weights_only=True`` (plus the
    plain data of training checkpoints such as facebookresearch/mae's ``{"model", "optimizer",
    "epoch", "scaler", "args"}``), so a checkpoint with pickled code is refused. Returns the encoder
    checkpoint dict (see :func:`encoder_checkpoint`; ``layout``: "timm" or "global_pool").
    """
    cfg = model_config(cfg)
    obj = load_foreign_checkpoint(path)
    sd = obj
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "encoder"):
            if isinstance(obj.get(key), dict):
                sd = obj[key]
                break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise PipelineError(f"{path}: expected a state dict of tensors (or a dict with 'model'), "
                            f"got {type(sd).__name__}")
    clean = {}
    for k, v in sd.items():
        for pre in ("module.", "encoder."):
            k = k[len(pre):] if k.startswith(pre) else k
        if not k.startswith(_DROP_PREFIXES):
            clean[k] = v
    fc = {k: clean.pop(k) for k in list(clean) if k.startswith("fc_norm.")}
    enc = ViTEncoder(**cfg)
    if fc and not any(k.startswith("norm.") for k in clean):   # the fine-tuned global-pool layout
        enc.norm = nn.Identity()
    load_encoder_state(enc, clean, path)
    if fc:
        _load_fc_norm(norm_layer(cfg["embed_dim"]), {k[len("fc_norm."):]: v for k, v in fc.items()}, path)
    state = {**enc.state_dict(), **{k: v.float() for k, v in fc.items()}}
    layout = "global_pool" if fc and isinstance(enc.norm, nn.Identity) else "timm"
    return encoder_checkpoint(state, cfg, "mae_import", source=str(path), layout=layout)


def read_encoder_checkpoint(path) -> tuple[dict, dict]:
    """(config, encoder state dict) of a pretrain_mae output; a foreign file is an error."""
    obj = load_checkpoint(path)
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT or "encoder" not in obj:
        raise PipelineError(f"{path}: not a pretrain_mae checkpoint (format {CHECKPOINT_FORMAT}); "
                            f"to use MAE-Face weights set mae.checkpoint and rerun pretrain_mae")
    return model_config(obj["config"]), obj["encoder"]
