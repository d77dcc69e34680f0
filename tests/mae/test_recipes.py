"""MAE's fine-tuning recipe, each piece against the reference computation on the same weights:

- ``mae.features.pool``: ``global`` = MAE's ``models_vit`` global pool, fc_norm(mean of the last
  block's patch tokens) with the pretrained norm dropped, equals timm's VisionTransformer with
  ``global_pool="avg", fc_norm=True`` (the same layout: ``fc_norm.*`` + ``head.*``, no ``norm.*``)
  loaded with the same weights, and the formula written out on our blocks; ``mean_norm`` and
  ``cls`` equal timm's final-norm tokens averaged / its ``global_pool="token"``. A fine-tuned
  global-pool checkpoint imports; the head learns on what visual_features stores.
- ``mae.finetune.layer_decay``: our AdamW groups equal MAE's ``util/lr_decay.param_groups_lrd``
  (transcribed below) parameter by parameter, and a hand computation.
- ``mae.finetune.drop_path``: timm's per-block rates, identity in eval mode, timm's per-sample
  statistics in train mode, and masks that split over DDP ranks like the batch.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_mae import FT_PARAMS, MAE_DEFAULTS, TINY, dataset, finetune_args, random_encoder  # noqa: F401 (fixtures)

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.feature_shards import FeatureShard
from affect_pipeline.common.runtime import save_checkpoint
from affect_pipeline.common.stores import FaceStore
from affect_pipeline.mae import checkpoints as C
from affect_pipeline.mae import finetune_mae as FT
from affect_pipeline.mae import model as M
from affect_pipeline.mae import visual_features as VF

torch.set_num_threads(1)
CFG = M.model_config(TINY)          # 32 px, patch 8, 48-d, 2 blocks, 3 heads
F32 = dict(atol=1e-5, rtol=1e-5)    # float32: the same ops in another order


def timm_vit(pool: str, seed: int = 0, **kw):
    """timm's VisionTransformer shaped like CFG with every weight random (norm gains too)."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    vit = VisionTransformer(img_size=CFG["img_size"], patch_size=CFG["patch_size"], embed_dim=CFG["embed_dim"],
                            depth=CFG["depth"], num_heads=CFG["num_heads"], mlp_ratio=CFG["mlp_ratio"],
                            qkv_bias=True, class_token=True, num_classes=2, global_pool=pool, **kw)
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return vit.eval()


def images(n=3, seed=1):
    return torch.randn(n, 3, CFG["img_size"], CFG["img_size"], generator=torch.Generator().manual_seed(seed))


def imported(vit, tmp_path, name="src.pth"):
    """``vit``'s state dict through import_mae_face, as pretrain_mae imports mae.checkpoint."""
    src = tmp_path / name
    torch.save({"model": vit.state_dict(), "epoch": 99}, src)
    return C.import_mae_face(src, TINY), src


def classifier(pool: str, encoder_state: dict, source="test", drop_path=0.0):
    model = M.ViTClassifier(2, pool=pool, drop_path=drop_path, **CFG)
    C.load_pretrained(model, encoder_state, source)
    return model.eval()


# ---------------------------------------------------------------- pooling
def test_global_pool_is_maes_global_pool_and_the_layout_imports(tmp_path):
    """A fine-tuned global-pool checkpoint (fc_norm + head, no norm) imports; our global-pool
    feature of its weights equals timm's pre-logits (models_vit's ``outcome``)."""
    vit = timm_vit("avg", fc_norm=True)
    sd = vit.state_dict()
    assert "fc_norm.weight" in sd and "head.weight" in sd and not any(k.startswith("norm.") for k in sd)
    ck, src = imported(vit, tmp_path)
    assert ck["layout"] == "global_pool" and "fc_norm.weight" in ck["encoder"] and "norm.weight" not in ck["encoder"]
    ours = classifier("global", ck["encoder"], src)
    x = images()
    with torch.inference_mode():
        ref = vit.forward_head(vit.forward_features(x), pre_logits=True)
        f, _ = ours(x)
        # the formula of models_vit.forward_features(global_pool=True), on our modules
        t = ours.encoder.patch_embed(x) + ours.encoder.pos_embed[:, 1:]
        t = torch.cat([(ours.encoder.cls_token + ours.encoder.pos_embed[:, :1]).expand(len(x), -1, -1), t], 1)
        for blk in ours.encoder.blocks:
            t = blk(t)
        formula = ours.fc_norm(t[:, 1:, :].mean(dim=1))
    torch.testing.assert_close(f, ref, **F32)
    torch.testing.assert_close(f, formula, **F32)
    assert torch.equal(ours.fc_norm.weight, sd["fc_norm.weight"])          # the imported fc_norm, not a fresh one
    # the other pools need the pretrained norm this layout does not have
    for pool in ("mean_norm", "cls"):
        with pytest.raises(PipelineError, match=r"no final norm.*fc_norm.*mae.features.pool: global"):
            classifier(pool, ck["encoder"], src)


def test_mean_norm_and_cls_pools_match_timm(tmp_path):
    """A pretrained (timm / MAE-Face) layout: mean_norm = mean(norm(patch tokens)) as before,
    cls = norm(CLS) as timm's token pool; global drops the norm and starts a fresh fc_norm (MAE)."""
    vit = timm_vit("token")
    ck, src = imported(vit, tmp_path)
    assert ck["layout"] == "timm" and "norm.weight" in ck["encoder"] and "fc_norm.weight" not in ck["encoder"]
    x = images()
    with torch.inference_mode():
        tokens = vit.forward_features(x)                            # after the final norm
        cls_ref = vit.forward_head(tokens, pre_logits=True)
        got = {pool: classifier(pool, ck["encoder"], src)(x)[0] for pool in M.POOLS}
        blocks = vit.blocks(vit._pos_embed(vit.patch_embed(x)))
    torch.testing.assert_close(got["mean_norm"], tokens[:, 1:].mean(1), **F32)
    torch.testing.assert_close(got["cls"], cls_ref, **F32)
    fresh = torch.nn.LayerNorm(CFG["embed_dim"], eps=1e-6)
    torch.testing.assert_close(got["global"], fresh(blocks[:, 1:].mean(1)), **F32)
    model = classifier("global", ck["encoder"], src)
    assert not any(k.startswith("encoder.norm.") for k in model.state_dict())   # MAE: del self.norm
    assert torch.equal(model.fc_norm.weight, torch.ones(CFG["embed_dim"]))


def test_global_pool_differs_from_the_old_pooling():
    """What the default changes, on one set of random weights: the before -> after distance."""
    torch.manual_seed(0)
    enc = M.ViTEncoder(**CFG).state_dict()
    x = images(8)
    with torch.inference_mode():
        old, new = (classifier(pool, enc)(x)[0] for pool in ("mean_norm", "global"))
    diff = (old - new).abs().max().item()
    cos = torch.nn.functional.cosine_similarity(old, new, dim=1).min().item()
    print(f"mean_norm -> global on the same weights: max |diff| {diff:.3f}, min cosine {cos:.4f}")
    assert diff > 1e-2


def test_fc_norm_of_the_wrong_width_is_named(tmp_path):
    vit = timm_vit("avg", fc_norm=True)
    sd = dict(vit.state_dict())
    sd["fc_norm.weight"] = torch.ones(7)
    src = tmp_path / "bad.pth"
    torch.save({"model": sd}, src)
    with pytest.raises(PipelineError, match=r"bad\.pth: fc_norm .*weight: \(7,\)"):
        C.import_mae_face(src, TINY)


# ---------------------------------------------------------------- fine-tune -> features
def finetune_pool(dataset, enc, root, pool: str, epochs: int = 1):
    """finetune_mae (VA, official fold) as the rule runs it with ``mae.features.pool: pool``."""
    d = root / pool
    args = finetune_args("VA", dataset, enc, d, epochs=epochs)
    i = args.index("--params") + 1
    args[i] = json.dumps({**json.loads(args[i]), "features": {"pool": pool}})
    assert FT.main(args) == 0
    return d / "ft.pt"


def test_finetune_pool_reaches_the_features(dataset, random_encoder, tmp_path):
    """finetune_mae with each pool: the checkpoint records it, visual_features pools the same way
    (logits = head(features)) and refuses a config whose pool differs from the checkpoint's."""
    faces = [dataset / "faces" / "vid6.h5"]
    for pool in ("global", "cls"):
        path = finetune_pool(dataset, random_encoder, tmp_path, pool)
        ck = torch.load(path, weights_only=True)
        assert ck["pool"] == pool and ("fc_norm.weight" in ck["model"]) == (pool == "global")
        assert ("encoder.norm.weight" in ck["model"]) == (pool != "global")
        out = tmp_path / pool / "shard.h5"
        VF.visual_features(path, faces, out, {"batch_size": 8, "pool": pool}, 1, "cpu")
        model = VF.load_finetuned(path)
        assert model.pool == pool
        with FeatureShard(out) as shard, FaceStore(faces[0]) as fs:
            f = shard.read("vid6", extra=("logits",))
            assert shard.attrs["pooling"] == pool
            feats, logits = VF.embed_crops(model, fs.read_crops(np.flatnonzero(f.valid)), 16)
        np.testing.assert_allclose(f.features[f.valid], feats, atol=1e-2, rtol=1e-3)    # float16 in the shard
        np.testing.assert_allclose(f.extra["logits"][f.valid], logits, atol=1e-5)
        w, b = model.head.weight.detach().numpy(), model.head.bias.detach().numpy()
        np.testing.assert_allclose(logits, feats @ w.T + b, atol=1e-5)
    with pytest.raises(PipelineError, match=r"fine-tuned with mae.features.pool 'cls'.*says 'global'"):
        VF.visual_features(tmp_path / "cls" / "ft.pt", faces, tmp_path / "x.h5", {"batch_size": 8, "pool": "global"},
                           1, "cpu")


def test_finetune_needs_the_pool():
    params = json.loads(json.dumps(FT_PARAMS))
    del params["features"]
    with pytest.raises(PipelineError, match=r"mae: missing key 'features.pool'"):
        FT.feature_pool(params)
    with pytest.raises(PipelineError, match=r"'avg' is not one of global \| mean_norm \| cls"):
        FT.feature_pool({**params, "features": {"pool": "avg"}})


def test_legacy_checkpoint_pools_as_before(tmp_path):
    """A finetune_mae checkpoint written before the pool setting ("pooling": "mean_patch_tokens")."""
    torch.manual_seed(0)
    model = M.ViTClassifier(2, **CFG)
    path = tmp_path / "old.pt"
    save_checkpoint({"format": M.CHECKPOINT_FORMAT, "kind": "mae_finetune", "task": "VA", "fold": "official",
                     "config": CFG, "outputs": 2, "pooling": "mean_patch_tokens", "model": model.state_dict()}, path)
    loaded = VF.load_finetuned(path)
    x = images()
    with torch.inference_mode():
        tokens, _, _ = model.encoder(x)
        torch.testing.assert_close(loaded(x)[0], tokens[:, 1:].mean(1))
    assert loaded.pool == "mean_norm"


# ---------------------------------------------------------------- layer-wise lr decay
def mae_param_groups_lrd(model, weight_decay=0.05, no_weight_decay_list=(), layer_decay=0.75):
    """facebookresearch/mae util/lr_decay.py, param_groups_lrd + get_layer_id_for_vit (transcribed)."""
    param_groups = {}
    num_layers = len(model.blocks) + 1
    layer_scales = list(layer_decay ** (num_layers - i) for i in range(num_layers + 1))

    def get_layer_id_for_vit(name, num_layers):
        if name in ["cls_token", "pos_embed"]:
            return 0
        elif name.startswith("patch_embed"):
            return 0
        elif name.startswith("blocks"):
            return int(name.split(".")[1]) + 1
        else:
            return num_layers

    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim == 1 or n in no_weight_decay_list:
            g_decay, this_decay = "no_decay", 0.0
        else:
            g_decay, this_decay = "decay", weight_decay
        layer_id = get_layer_id_for_vit(n, num_layers)
        group_name = "layer_%d_%s" % (layer_id, g_decay)
        if group_name not in param_groups:
            param_groups[group_name] = {"lr_scale": layer_scales[layer_id], "weight_decay": this_decay, "names": []}
        param_groups[group_name]["names"].append(n)
    return list(param_groups.values())


def by_name(groups, key="param_names", strip=""):
    return {n[len(strip):] if n.startswith(strip) else n: (pytest.approx(g["lr_scale"]), g["weight_decay"])
            for g in groups for n in g[key]}


@pytest.mark.parametrize("pool", M.POOLS)
def test_layer_decay_groups_match_maes_param_groups_lrd(pool):
    """Ours vs MAE's on models_vit's layout (timm's VisionTransformer, global pool or not), name by
    name (``encoder.`` stripped; our pos_embed is the fixed sin-cos one: not trained)."""
    model = M.ViTClassifier(2, pool=pool, **CFG)
    vit = timm_vit("avg", fc_norm=True) if pool == "global" else timm_vit("token")
    ours = by_name(M.layer_decay_groups(model, 0.05, 0.65), strip="encoder.")
    ref = by_name(mae_param_groups_lrd(vit, 0.05, {"pos_embed", "cls_token", "dist_token"}, 0.65), "names")
    del ref["pos_embed"]
    assert ours == ref


def test_layer_decay_groups_by_hand():
    """Depth 2, layer decay 0.5: embeddings 0.5^3, block 0 0.5^2, block 1 0.5, fc_norm + head 1;
    weight decay on the matrices only."""
    model = M.ViTClassifier(2, pool="global", **CFG)
    groups = M.layer_decay_groups(model, 0.1, 0.5)
    scale = {n: g["lr_scale"] for g in groups for n in g["param_names"]}
    wd = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
    assert scale["encoder.cls_token"] == scale["encoder.patch_embed.proj.weight"] == 0.125
    assert scale["encoder.blocks.0.attn.qkv.weight"] == scale["encoder.blocks.0.norm1.bias"] == 0.25
    assert scale["encoder.blocks.1.mlp.fc2.weight"] == 0.5
    assert scale["fc_norm.weight"] == scale["head.weight"] == scale["head.bias"] == 1.0
    assert wd["head.weight"] == wd["encoder.blocks.1.mlp.fc2.weight"] == wd["encoder.patch_embed.proj.weight"] == 0.1
    assert wd["encoder.cls_token"] == wd["head.bias"] == wd["fc_norm.weight"] == wd["encoder.blocks.0.norm1.bias"] == 0
    assert "encoder.pos_embed" not in scale                                 # fixed sin-cos
    assert sorted(scale) == sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert groups[0]["lr_scale"] == 1.0                                     # the curve logs the base lr
    # the schedule applies the scales (timm's scheduler: lr = value x lr_scale)
    from affect_pipeline.common.training import warmup_cosine

    opt = torch.optim.AdamW(groups, lr=1e-3)
    sched = warmup_cosine(opt, 10, 0)
    sched.step_update(0)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3 * g["lr_scale"] for g in opt.param_groups])


# ---------------------------------------------------------------- stochastic depth
def test_drop_path_rates_are_timms():
    from timm.layers import calculate_drop_path_rates

    assert M.drop_path_rates(0.1, 12) == pytest.approx(calculate_drop_path_rates(0.1, 12))
    vit = timm_vit("avg", fc_norm=True, drop_path_rate=0.3)
    enc = M.ViTEncoder(**CFG)
    enc.set_drop_path(0.3)
    for ours, theirs in zip(enc.blocks, vit.blocks):
        p_ref = getattr(theirs.drop_path1, "drop_prob", 0.0)
        p_ours = getattr(ours.drop_path1, "p", 0.0)
        assert p_ours == pytest.approx(p_ref)
    assert [round(getattr(b.drop_path2, "p", 0.0), 6) for b in enc.blocks] == [0.0, 0.3]


def test_drop_path_only_while_training():
    torch.manual_seed(0)
    enc = M.ViTEncoder(**CFG).state_dict()
    plain, dropped = classifier("global", enc), classifier("global", enc, drop_path=0.5)
    x = images(16)
    with torch.inference_mode():
        torch.testing.assert_close(plain(x)[0], dropped(x)[0], rtol=0, atol=0)   # eval: no drop path
    dropped.train()
    with torch.no_grad():
        assert not torch.allclose(plain(x)[0], dropped(x)[0])


def test_batch_drop_path_statistics_and_ddp_split():
    """timm's DropPath per sample: dropped with p, kept rows scaled by 1/(1-p); seeded, the masks
    of world=2 ranks are rows rank::2 of the world=1 masks (the DistributedSampler split)."""
    dp = M.BatchDropPath(0.3).train()
    x = torch.ones(20000, 2, 3)
    y = dp(x)
    kept = y[:, 0, 0] > 0
    assert abs(1 - kept.float().mean().item() - 0.3) < 0.02
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.7)) and torch.all(y[~kept] == 0)
    single = M.BatchDropPath(0.3, index=4).train()
    ranks = [M.BatchDropPath(0.3, index=4).train() for _ in range(2)]
    M.seed_drop_path(single, 7)
    for r, m in enumerate(ranks):
        M.seed_drop_path(m, 7, world=2, rank=r)
    for _ in range(3):                                              # successive steps stay aligned
        full = single(torch.ones(32, 1))[:, 0]
        parts = [m(torch.ones(16, 1))[:, 0] for m in ranks]
        assert torch.equal(full[0::2], parts[0]) and torch.equal(full[1::2], parts[1])
        assert 0 < (full == 0).sum() < 32


def test_finetune_settings_default_to_the_mae_recipe():
    ft = MAE_DEFAULTS["finetune"]
    assert (ft["drop_path"], ft["layer_decay"]) == (0.1, 0.65) and MAE_DEFAULTS["features"]["pool"] == "global"
