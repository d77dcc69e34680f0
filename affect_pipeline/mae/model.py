"""Masked autoencoder (MAE) for faces: ViT encoder + light ViT decoder, and the fine-tune classifier.

In the spirit of facebookresearch/mae ``models_mae.py``: timm ``Block`` / ``PatchEmbed``, fixed
2-D sin-cos position embeddings, per-sample random masking by argsort of noise, pixel L2 loss on
the masked patches only (optionally on per-patch normalised pixels).

The encoder's ``state_dict`` uses timm's ``vit_base_patch16`` key names (``patch_embed.proj.*``,
``cls_token``, ``pos_embed``, ``blocks.N.*``, ``norm.*``), so MAE-Face / timm checkpoints load
into it directly (:func:`import_mae_face`). Images enter the models normalised with
:data:`IMAGENET_MEAN` / :data:`IMAGENET_STD` (:func:`affect_pipeline.mae.face_reader.standardize`).
"""
from __future__ import annotations

from functools import partial

import numpy as np
import torch
import torch.nn as nn
from timm.models.vision_transformer import Block, PatchEmbed

from affect_pipeline.common.runtime import PipelineError, load_checkpoint

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: the ``mae.model`` keys (workflow_config.yaml holds their values: ViT-B/16 + the light decoder)
MODEL_KEYS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio",
              "decoder_embed_dim", "decoder_depth", "decoder_num_heads")
CHECKPOINT_FORMAT = "affect_pipeline.mae.model/1"


def model_config(params: dict | None) -> dict:
    """The complete ``mae.model`` section, checked: a missing or unknown key is an error. Face
    crops are RGB, so ``in_chans`` is 3 unless a checkpoint says otherwise."""
    params = dict(params or {})
    missing = [k for k in MODEL_KEYS if k not in params]
    unknown = sorted(set(params) - set(MODEL_KEYS) - {"in_chans"})
    if missing:
        raise PipelineError(f"mae.model: missing key(s) {missing} (see workflow_config.yaml)")
    if unknown:
        raise PipelineError(f"mae.model: unknown key(s) {unknown}; known: {sorted(MODEL_KEYS)}")
    cfg = {"in_chans": 3, **params}
    if cfg["img_size"] % cfg["patch_size"]:
        raise PipelineError(f"mae.model: img_size {cfg['img_size']} is not a multiple of "
                            f"patch_size {cfg['patch_size']}")
    return cfg


# ---------------------------------------------------------------- position embeddings
def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, grid_size: int, cls_token: bool = True) -> np.ndarray:
    """(1 + grid², dim) fixed embedding: half the channels encode the row, half the column (MAE)."""
    gh, gw = np.meshgrid(np.arange(grid_size, dtype=np.float64), np.arange(grid_size, dtype=np.float64))
    emb = np.concatenate([sincos_1d(dim // 2, gh), sincos_1d(dim // 2, gw)], axis=1)
    return np.concatenate([np.zeros((1, dim)), emb], axis=0) if cls_token else emb


# ---------------------------------------------------------------- patches and masking
def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """(N, 3, H, W) -> (N, L, p*p*3), patches in row-major order, pixels (p, q, c) within a patch."""
    n, c, h, w = imgs.shape
    gh, gw = h // p, w // p
    x = imgs.reshape(n, c, gh, p, gw, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(n, gh * gw, p * p * c)


def unpatchify(x: torch.Tensor, p: int, c: int = 3) -> torch.Tensor:
    """Inverse of :func:`patchify` for a square image."""
    n, L, _ = x.shape
    g = int(round(L ** 0.5))
    x = x.reshape(n, g, g, p, p, c)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(n, c, g * p, g * p)


def random_masking(x: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None):
    """Keep a random ``1 - mask_ratio`` of the tokens of each sample (argsort of uniform noise).

    Returns kept tokens (N, L_keep, D), the binary mask (N, L) with 1 = removed, and
    ``ids_restore`` that puts a shuffled sequence back into the original order.
    """
    n, L, d = x.shape
    len_keep = int(L * (1 - mask_ratio))
    noise = torch.rand(n, L, device=x.device, generator=generator)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
    mask = torch.ones(n, L, device=x.device)
    mask[:, :len_keep] = 0
    return kept, torch.gather(mask, 1, ids_restore), ids_restore


def masked_pixel_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                      norm_pix_loss: bool = True) -> torch.Tensor:
    """Mean squared error per patch, averaged over the removed patches only (MAE eq.)."""
    if norm_pix_loss:  # per-patch normalised targets: sharper reconstructions, better features
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    loss = (pred.float() - target.float()).pow(2).mean(-1)
    return (loss * mask).sum() / mask.sum().clamp_min(1.0)


# ---------------------------------------------------------------- models
_norm = partial(nn.LayerNorm, eps=1e-6)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class ViTEncoder(nn.Module):
    """ViT encoder with timm's key names; ``mask_ratio > 0`` runs it on a random subset of patches."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                 mlp_ratio=4.0, **_decoder_keys):
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        n = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, embed_dim), requires_grad=False)  # fixed sin-cos
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=_norm)
                                     for _ in range(depth)])
        self.norm = _norm(embed_dim)
        self.embed_dim, self.patch_size = embed_dim, patch_size
        self.pos_embed.data.copy_(torch.from_numpy(sincos_2d(embed_dim, int(n ** 0.5))).float().unsqueeze(0))
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # like nn.Linear, as in MAE
        nn.init.normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor, mask_ratio: float = 0.0, generator=None):
        """Tokens after the final norm: (N, 1 + L_keep, D) with the CLS token first, mask, ids_restore."""
        x = self.patch_embed(x) + self.pos_embed[:, 1:, :]
        mask = ids_restore = None
        if mask_ratio > 0:
            x, mask, ids_restore = random_masking(x, mask_ratio, generator)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore


class MAEDecoder(nn.Module):
    """Light ViT decoder: mask tokens fill the removed positions, predicts each patch's pixels."""

    def __init__(self, num_patches: int, patch_size: int, in_chans: int, embed_dim: int,
                 decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4.0):
        super().__init__()
        self.embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList([Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True,
                                           norm_layer=_norm) for _ in range(decoder_depth)])
        self.norm = _norm(decoder_embed_dim)
        self.pred = nn.Linear(decoder_embed_dim, patch_size ** 2 * in_chans)
        pos = sincos_2d(decoder_embed_dim, int(num_patches ** 0.5))
        self.pos_embed.data.copy_(torch.from_numpy(pos).float().unsqueeze(0))
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        n, L = ids_restore.shape
        mask_tokens = self.mask_token.expand(n, L + 1 - x.shape[1], -1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)  # no cls token
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # unshuffle
        x = torch.cat([x[:, :1, :], x_], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.pred(self.norm(x))[:, 1:, :]


class MaskedAutoencoderViT(nn.Module):
    """Encoder + decoder; ``forward`` returns (loss, pred (N, L, p*p*3), mask (N, L))."""

    def __init__(self, norm_pix_loss: bool = True, **cfg):
        super().__init__()
        cfg = model_config(cfg)
        self.config = cfg
        self.encoder = ViTEncoder(**cfg)
        self.decoder = MAEDecoder(self.encoder.patch_embed.num_patches, cfg["patch_size"], cfg["in_chans"],
                                  cfg["embed_dim"], cfg["decoder_embed_dim"], cfg["decoder_depth"],
                                  cfg["decoder_num_heads"], cfg["mlp_ratio"])
        self.norm_pix_loss = norm_pix_loss

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, generator=None):
        latent, mask, ids_restore = self.encoder(imgs, mask_ratio, generator)
        pred = self.decoder(latent, ids_restore)
        target = patchify(imgs, self.config["patch_size"])
        return masked_pixel_loss(pred, target, mask, self.norm_pix_loss), pred, mask


class ViTClassifier(nn.Module):
    """Fine-tune model: encoder (no masking) -> mean of the patch tokens -> linear head.

    The pooled vector is the per-frame visual feature (MAE's global-pool recipe, which fine-tunes
    better than the CLS token); ``head(features) == logits``.
    """

    def __init__(self, outputs: int, **cfg):
        super().__init__()
        cfg = model_config(cfg)
        self.config, self.outputs = cfg, outputs
        self.encoder = ViTEncoder(**cfg)
        self.head = nn.Linear(cfg["embed_dim"], outputs)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)  # MAE: near-zero head, the encoder leads
        nn.init.zeros_(self.head.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        tokens, _, _ = self.encoder(x)
        return tokens[:, 1:, :].mean(1)

    def forward(self, x: torch.Tensor):
        """(features (N, D), logits (N, outputs))."""
        f = self.forward_features(x)
        return f, self.head(f)


# ---------------------------------------------------------------- encoder checkpoints
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


_DROP_PREFIXES = ("decoder_", "decoder.", "mask_token", "head.", "fc_norm.")


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
    dropped. Loaded with ``weights_only=True`` (plus the plain data of training checkpoints such as
    facebookresearch/mae's ``{"model", "optimizer", "epoch", "scaler", "args"}``), so a checkpoint
    with pickled code is refused. Returns the encoder checkpoint dict (see :func:`encoder_checkpoint`).
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
    enc = ViTEncoder(**cfg)
    load_encoder_state(enc, clean, path)
    return encoder_checkpoint(enc.state_dict(), cfg, "mae_import", source=str(path))


def read_encoder_checkpoint(path) -> tuple[dict, dict]:
    """(config, encoder state dict) of a pretrain_mae output; a foreign file is an error."""
    obj = load_checkpoint(path)
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT or "encoder" not in obj:
        raise PipelineError(f"{path}: not a pretrain_mae checkpoint (format {CHECKPOINT_FORMAT}); "
                            f"to use MAE-Face weights set mae.checkpoint and rerun pretrain_mae")
    return model_config(obj["config"]), obj["encoder"]
