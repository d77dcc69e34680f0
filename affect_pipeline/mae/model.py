"""Masked autoencoder (MAE) for faces: ViT encoder + light ViT decoder, and the fine-tune classifier.

In the spirit of facebookresearch/mae ``models_mae.py``: timm ``Block`` / ``PatchEmbed``, fixed
2-D sin-cos position embeddings, per-sample random masking by argsort of noise, pixel L2 loss on
the masked patches only (optionally on per-patch normalised pixels).

The encoder's ``state_dict`` uses timm's ``vit_base_patch16`` key names (``patch_embed.proj.*``,
``cls_token``, ``pos_embed``, ``blocks.N.*``, ``norm.*``), so MAE-Face / timm checkpoints load
into it directly (:mod:`affect_pipeline.mae.checkpoints`), and so do fine-tuned global-pool ones (``fc_norm.*``
instead of ``norm.*``, MAE's ``models_vit`` layout).

Fine-tuning follows MAE's ``main_finetune`` recipe: a per-frame feature pooled as
``mae.features.pool`` (:data:`POOLS`; MAE's global pool by default), stochastic depth
(``drop_path``, rising linearly over the blocks as timm's) and layer-wise lr decay
(:func:`layer_decay_groups`). Images enter the models normalised with :data:`IMAGENET_MEAN` /
:data:`IMAGENET_STD` (:func:`affect_pipeline.mae.face_reader.standardize`).
"""
from __future__ import annotations

from functools import partial

import numpy as np
import torch
import torch.nn as nn
from timm.models.vision_transformer import Block, PatchEmbed

from affect_pipeline.common.errors import PipelineError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: the ``mae.model`` keys (workflow_config.yaml holds their values: ViT-B/16 + the light decoder)
MODEL_KEYS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio",
              "decoder_embed_dim", "decoder_depth", "decoder_num_heads")
CHECKPOINT_FORMAT = "affect_pipeline.mae.model/1"
#: ``mae.features.pool``, the per-frame feature (= the fine-tune head's input) of a frame's tokens:
#: global: MAE's ``models_vit`` global pool, ``fc_norm(mean of the last block's patch tokens)`` (the
#:   pretrained ``norm`` is dropped, ``fc_norm`` is new: fresh, or an imported fine-tuned one's);
#: mean_norm: ``mean(norm(patch tokens))``; cls: ``norm(CLS token)`` (``models_vit`` without global pool)
POOLS = ("global", "mean_norm", "cls")


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
norm_layer = partial(nn.LayerNorm, eps=1e-6)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class BatchDropPath(nn.Module):
    """Stochastic depth as timm's ``DropPath`` (a sample's residual branch is dropped with probability
    ``p``, kept ones are scaled by 1/(1-p); identity in eval mode), with masks that do not depend on
    how a batch is split over DDP ranks: each call draws the masks of the *global* batch (world x
    local rows) from a generator seeded by (seed, module, call), and a rank keeps rows rank::world,
    its rows of the DistributedSampler split. So torchrun over N processes takes the steps one
    process takes with the global batch (tests/mae/test_finetune_mae.py). Before :func:`seed_drop_path`
    the masks come from torch's global generator, as timm's do."""

    def __init__(self, p: float, index: int = 0):
        super().__init__()
        self.p, self.index = float(p), index
        self.seed: int | None = None
        self.world, self.rank, self.calls = 1, 0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        n = x.shape[0]
        if self.seed is None:
            u = torch.rand(n, device=x.device)
        else:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.index) * 1_000_033 + self.calls)
            u = torch.rand(n * self.world, generator=g)[self.rank::self.world].to(x.device)
        self.calls += 1
        mask = (u < keep).to(x.dtype) / keep
        return x * mask.view((n,) + (1,) * (x.ndim - 1))

    def extra_repr(self) -> str:
        return f"p={self.p:.3f}"


def drop_path_rates(drop_path: float, depth: int) -> list[float]:
    """The stochastic depth decay rule of MAE's ``models_vit`` / timm: 0 at the first block rising
    linearly to ``drop_path`` at the last."""
    return [float(x) for x in torch.linspace(0, drop_path, depth)]


def seed_drop_path(model: nn.Module, seed: int, world: int = 1, rank: int = 0) -> None:
    """Make ``model``'s stochastic depth masks reproducible and split like the batch under DDP."""
    for m in model.modules():
        if isinstance(m, BatchDropPath):
            m.seed, m.world, m.rank, m.calls = int(seed), int(world), int(rank), 0


class ViTEncoder(nn.Module):
    """ViT encoder with timm's key names; ``mask_ratio > 0`` runs it on a random subset of patches."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                 mlp_ratio=4.0, **decoder_keys):
        super().__init__()
        if unknown := sorted(k for k in decoder_keys if not k.startswith("decoder_")):
            raise TypeError(f"ViTEncoder: unexpected argument(s) {unknown}")
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        n = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, embed_dim), requires_grad=False)  # fixed sin-cos
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
                                     for _ in range(depth)])
        self.norm = norm_layer(embed_dim)
        self.embed_dim, self.patch_size = embed_dim, patch_size
        self.pos_embed.data.copy_(torch.from_numpy(sincos_2d(embed_dim, int(n ** 0.5))).float().unsqueeze(0))
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # like nn.Linear, as in MAE
        nn.init.normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    def set_drop_path(self, drop_path: float) -> None:
        """Stochastic depth for fine-tuning: timm's per-block rates rising to ``drop_path`` at the
        last block (0 at the first), with masks independent of how a batch is split (DDP)."""
        for i, (blk, p) in enumerate(zip(self.blocks, drop_path_rates(drop_path, len(self.blocks)))):
            if p > 0:
                blk.drop_path1, blk.drop_path2 = BatchDropPath(p, 2 * i), BatchDropPath(p, 2 * i + 1)

    def forward(self, x: torch.Tensor, mask_ratio: float = 0.0, generator=None):
        """Tokens after the final norm: (N, 1 + L_keep, D) with the CLS token first, mask, ids_restore."""
        x, mask, ids_restore = self.tokens(x, mask_ratio, generator)
        return self.norm(x), mask, ids_restore

    def tokens(self, x: torch.Tensor, mask_ratio: float = 0.0, generator=None):
        """The last block's output, before the final norm (CLS token first), mask, ids_restore."""
        x = self.patch_embed(x) + self.pos_embed[:, 1:, :]
        mask = ids_restore = None
        if mask_ratio > 0:
            x, mask, ids_restore = random_masking(x, mask_ratio, generator)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return x, mask, ids_restore


class MAEDecoder(nn.Module):
    """Light ViT decoder: mask tokens fill the removed positions, predicts each patch's pixels."""

    def __init__(self, num_patches: int, patch_size: int, in_chans: int, embed_dim: int,
                 decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4.0):
        super().__init__()
        self.embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList([Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True,
                                           norm_layer=norm_layer) for _ in range(decoder_depth)])
        self.norm = norm_layer(decoder_embed_dim)
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
    """Fine-tune model: encoder (no masking) -> pooled per-frame feature (``pool``) -> linear head.

    The pooled vector is the per-frame visual feature that ``visual_features`` stores, so
    ``head(features) == logits``. ``pool``: one of :data:`POOLS`; "global" holds MAE's ``models_vit``
    layout: ``fc_norm`` instead of the encoder's ``norm`` (no ``encoder.norm.*`` keys). The default
    "mean_norm" is the layout of checkpoints written before the pool was a setting.
    ``drop_path``: stochastic depth of the encoder blocks while training; ``layer_decay``: the
    lr decay per block of :meth:`param_groups` (1: none).
    """

    def __init__(self, outputs: int, pool: str = "mean_norm", drop_path: float = 0.0,
                 layer_decay: float = 1.0, **cfg):
        super().__init__()
        if pool not in POOLS:
            raise PipelineError(f"mae.features.pool: {pool!r} is not one of {' | '.join(POOLS)}")
        cfg = model_config(cfg)
        self.config, self.outputs, self.pool = cfg, outputs, pool
        self.encoder = ViTEncoder(**cfg)
        self.encoder.set_drop_path(drop_path)
        self.layer_decay = layer_decay
        if pool == "global":   # models_vit(global_pool=True): del self.norm; self.fc_norm = norm_layer(D)
            self.encoder.norm = nn.Identity()
            self.fc_norm = norm_layer(cfg["embed_dim"])
        self.head = nn.Linear(cfg["embed_dim"], outputs)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)  # MAE: near-zero head, the encoder leads
        nn.init.zeros_(self.head.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        tokens, _, _ = self.encoder.tokens(x)
        if self.pool == "global":
            return self.fc_norm(tokens[:, 1:, :].mean(1))
        if self.pool == "cls":
            return self.encoder.norm(tokens[:, 0, :])
        return self.encoder.norm(tokens)[:, 1:, :].mean(1)

    def forward(self, x: torch.Tensor):
        """(features (N, D), logits (N, outputs))."""
        f = self.forward_features(x)
        return f, self.head(f)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups with layer-wise lr decay (``common.training.fit`` uses a model's own)."""
        return layer_decay_groups(self, weight_decay, self.layer_decay)


def layer_decay_groups(model: ViTClassifier, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW parameter groups of MAE's ``util/lr_decay.param_groups_lrd``: layer id 0 for the
    embeddings (cls_token, pos_embed, patch_embed), i + 1 for block i, depth + 1 for the rest
    (fc_norm / norm, head); lr scale ``layer_decay ** (depth + 1 - layer id)``; no weight decay on
    1-d parameters (biases, norms) and the tokens / position embeddings. The scheduler multiplies
    each group's lr by its ``lr_scale`` (timm's schedulers do, as MAE's lr_sched). Groups are
    ordered by falling scale, so group 0 runs at the base lr (what the curve logs)."""
    depth = len(model.encoder.blocks)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = _layer_id(name, depth)
        flat = p.ndim == 1 or name.endswith(("cls_token", "pos_embed"))
        g = groups.setdefault((layer, flat), {"params": [], "param_names": [], "layer_id": layer,
                                              "lr_scale": layer_decay ** (depth + 1 - layer),
                                              "weight_decay": 0.0 if flat else weight_decay})
        g["params"].append(p)
        g["param_names"].append(name)
    return [groups[k] for k in sorted(groups, key=lambda k: (-k[0], k[1]))]


def _layer_id(name: str, depth: int) -> int:
    name = name[len("encoder."):] if name.startswith("encoder.") else name
    if name.startswith(("cls_token", "pos_embed", "patch_embed")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1
