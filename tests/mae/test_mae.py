"""MAE model, pretraining (resume, DDP), MAE-Face import, per-fold fine-tuning, soup, visual features.

Everything runs on tiny ViTs (32-px inputs from 48-px face-store crops) built and saved here, on
face stores made from skimage's astronaut photo with a learnable synthetic signal: each frame has
one of 4 "types" (red/blue tint × white bar at the top/bottom) that fix its AU, EXPR and VA labels.
Stage settings start from workflow_config.yaml (conftest.workflow_defaults) and are shrunk here.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import workflow_defaults

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.feature_shards import FeatureShard
from affect_pipeline.common.runtime import file_digest, save_checkpoint, write_json
from affect_pipeline.common.stores import (
    FaceStore,
    Labels,
    write_face_store,
    write_labels,
)
from affect_pipeline.mae import checkpoints as C
from affect_pipeline.mae import face_reader as D
from affect_pipeline.mae import finetune_mae as FT
from affect_pipeline.mae import model as M
from affect_pipeline.mae import pretrain_mae as P
from affect_pipeline.mae import visual_features as VF

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
MAE_DEFAULTS = workflow_defaults()["mae"]
TINY = {**MAE_DEFAULTS["model"], **dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3,
                                        decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)}
CROP = 48
EXPR_OF_TYPE = [0, 4, 5, 6]


# ---------------------------------------------------------------- synthetic data
def _face() -> np.ndarray:
    import cv2
    from skimage import data

    return cv2.resize(data.astronaut()[20:240, 140:360], (CROP, CROP), interpolation=cv2.INTER_AREA)


def make_crop(face, kind: int, rng) -> np.ndarray:
    """Type bit 0: red (else blue) tint; bit 1: white bar at the top (else bottom)."""
    img = face.astype(np.int16) + rng.integers(-12, 13, face.shape)
    img[..., 0 if kind & 1 else 2] += 70
    rows = slice(3, 11) if kind & 2 else slice(CROP - 11, CROP - 3)
    img[rows] = 245
    return np.clip(img, 0, 255).astype(np.uint8)


def labels_of(task, kinds, rng):
    if task == "AU":
        return np.stack([(kinds == j % 4) for j in range(12)], 1).astype(np.float32)
    if task == "EXPR":
        return np.asarray(EXPR_OF_TYPE, np.float32)[kinds][:, None]
    v = np.where(kinds & 1, 0.6, -0.6) + rng.normal(0, 0.1, len(kinds))
    a = np.where(kinds & 2, 0.5, -0.5) + rng.normal(0, 0.1, len(kinds))
    return np.stack([v, a], 1).astype(np.float32)


def write_store(path, kinds, found, rng, face):
    with write_face_store(path, video_id=Path(path).stem, size=CROP, backend="test", fps=25.0) as w:
        crops = [make_crop(face, k, rng) if f else None for k, f in zip(kinds, found)]
        n = len(kinds)
        w.append(crops, found, np.ones(n), np.zeros((n, 4)), np.zeros((n, 5, 2)), np.arange(n) / 25.0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return build_dataset(tmp_path_factory.mktemp("data"))


def build_dataset(root):
    """6 train + 2 validation videos of 40 frames; a few frames without a face or a valid label."""
    rng, face = np.random.default_rng(0), _face()
    faces_dir = root / "faces"
    labels = {t: {} for t in ("AU", "EXPR", "VA")}
    for v in range(8):
        vid, split = f"vid{v}", "train" if v < 6 else "validation"
        kinds = rng.integers(0, 4, 40)
        found = np.ones(40, bool)
        found[[5, 17]] = False
        write_store(faces_dir / f"{vid}.h5", kinds, found, rng, face)
        for task in labels:
            y, mask = labels_of(task, kinds, rng), np.ones(40, bool)
            mask[[8, 30]] = False
            y[~mask] = -5.0 if task == "VA" else -1.0
            labels[task][vid] = Labels(y, mask, split)
    for task, lab in labels.items():
        write_labels(root / f"labels_{task}.h5", task, lab)
    write_json(root / "folds.json", {"k": 4, "seed": 0, "test": [], "folds": FOLDS})
    return root


#: official = the label stores' splits; fold1 validates on two videos the stores call "train"
FOLDS = {"official": {"train": [f"vid{v}" for v in range(6)], "validation": ["vid6", "vid7"]},
         "fold1": {"train": ["vid0", "vid1", "vid2", "vid3", "vid6", "vid7"], "validation": ["vid4", "vid5"]}}


@pytest.fixture(scope="module")
def random_encoder(tmp_path_factory):
    """A pretrain_mae-format checkpoint of a randomly initialised tiny encoder."""
    return build_encoder(tmp_path_factory.mktemp("enc") / "pretrain.pt")


def build_encoder(path):
    torch.manual_seed(0)
    enc = M.ViTEncoder(**M.model_config(TINY))
    save_checkpoint(C.encoder_checkpoint(enc.state_dict(), M.model_config(TINY), "mae_pretrain"), path)
    return path


def stores(root):
    return sorted(str(p) for p in (root / "faces").glob("*.h5"))


# ---------------------------------------------------------------- model pieces
def test_patchify_roundtrip_and_layout():
    imgs = torch.randn(2, 3, 32, 32)
    x = M.patchify(imgs, 8)
    assert x.shape == (2, 16, 8 * 8 * 3)
    # patch 5 = row 1, column 1; pixels in (p, q, c) order
    ref = imgs[:, :, 8:16, 8:16].permute(0, 2, 3, 1).reshape(2, -1)
    assert torch.equal(x[:, 5], ref)
    assert torch.equal(M.unpatchify(x, 8), imgs)


def test_random_masking_keeps_25_percent_and_restores():
    x = torch.randn(4, 64, 8)
    kept, mask, ids_restore = M.random_masking(x, 0.75, torch.Generator().manual_seed(0))
    assert kept.shape == (4, 16, 8)
    assert torch.equal(mask.sum(1), torch.full((4,), 48.0))
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    for n in range(4):
        assert torch.equal(kept[n], x[n, ids_shuffle[n, :16]])
        assert torch.equal(x[n][mask[n] == 0], x[n, ids_shuffle[n, :16].sort().values])
    shuffled = torch.gather(x, 1, ids_shuffle.unsqueeze(-1).expand(-1, -1, 8))
    assert torch.equal(torch.gather(shuffled, 1, ids_restore.unsqueeze(-1).expand(-1, -1, 8)), x)


def test_loss_counts_only_masked_patches():
    pred = torch.tensor([[[1.0, 1.0], [5.0, 5.0], [0.0, 2.0]]])
    target = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    # masked patches 0 and 2: mean sq errors 1 and 2 -> 1.5; patch 1 (visible) is ignored
    assert M.masked_pixel_loss(pred, target, mask, norm_pix_loss=False).item() == pytest.approx(1.5)
    pred2 = pred.clone()
    pred2[0, 1] = 100.0
    assert M.masked_pixel_loss(pred2, target, mask, norm_pix_loss=False).item() == pytest.approx(1.5)
    t = torch.tensor([[[1.0, 3.0], [0.0, 0.0], [2.0, 6.0]]])
    tn = (t.numpy() - t.numpy().mean(-1, keepdims=True)) / np.sqrt(t.numpy().var(-1, ddof=1, keepdims=True) + 1e-6)
    ref = np.mean([np.mean((pred[0, i].numpy() - tn[0, i]) ** 2) for i in (0, 2)])
    assert M.masked_pixel_loss(pred, t, mask, norm_pix_loss=True).item() == pytest.approx(ref, rel=1e-5)


def test_mae_forward_shapes():
    m = M.MaskedAutoencoderViT(**TINY)
    loss, pred, mask = m(torch.randn(2, 3, 32, 32), 0.75)
    assert pred.shape == (2, 16, 192) and mask.shape == (2, 16) and loss.ndim == 0
    assert m.encoder.pos_embed.requires_grad is False


# ---------------------------------------------------------------- pretraining
PRE = dict(model=TINY, checkpoint=None, gpus=1,
           pretrain={**MAE_DEFAULTS["pretrain"], **dict(epochs=4, batch_size=32, accum_steps=2, base_lr=2e-3,
                                                        base_batch=64, warmup_epochs=1, mask_ratio=0.75,
                                                        frames_per_video=30)})


def _enc(path):
    return torch.load(path, weights_only=True)["encoder"]


def test_pretrain_resume_is_identical_and_loss_falls(dataset, tmp_path):
    faces = stores(dataset)
    full, resumed = tmp_path / "full" / "pretrain.pt", tmp_path / "res" / "pretrain.pt"
    P.pretrain_mae(faces, full, full.with_suffix(".csv"), PRE, threads=1, device="cpu")
    assert P.pretrain_mae(faces, resumed, resumed.with_suffix(".csv"), PRE, 1, "cpu", stop_after=2) is None
    assert P.resume_path(resumed).exists() and not resumed.exists()
    state = torch.load(P.resume_path(resumed), weights_only=True)
    assert state["epoch"] == 2
    P.pretrain_mae(faces, resumed, resumed.with_suffix(".csv"), PRE, 1, "cpu")
    assert not P.resume_path(resumed).exists()
    a, b = _enc(full), _enc(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows_full = full.with_suffix(".csv").read_text().splitlines()
    assert rows_full == resumed.with_suffix(".csv").read_text().splitlines()
    losses = [float(r.split(",")[2]) for r in rows_full[1:]]
    assert len(losses) == 4 and losses[-1] < 0.9 * losses[0], losses
    ck = torch.load(full, weights_only=True)
    assert ck["kind"] == "mae_pretrain" and ck["n_crops"] == 8 * 30 and "decoder" in ck
    # different settings: the stale resume file is ignored, not continued
    P.pretrain_mae(faces, resumed, resumed.with_suffix(".csv"), PRE, 1, "cpu", stop_after=1)
    other = json.loads(json.dumps(PRE))
    other["pretrain"]["epochs"] = 1
    P.pretrain_mae(faces, resumed, resumed.with_suffix(".csv"), other, 1, "cpu")
    assert len(resumed.with_suffix(".csv").read_text().splitlines()) == 2


def test_pretrain_ddp_gloo_two_processes(dataset, tmp_path):
    out = tmp_path / "ddp" / "pretrain.pt"
    params = json.loads(json.dumps(PRE))
    params["pretrain"].update(epochs=1, accum_steps=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "affect_pipeline", "pretrain_mae", "--faces", *stores(dataset), "--out", str(out),
           "--curve", str(tmp_path / "ddp" / "curve.csv"), "--params", json.dumps(params),
           "--threads", "2", "--device", "cpu"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "DDP rank 1/2" in r.stderr and "effective batch 64 (=32 x 1 x 2)" in r.stderr
    assert out.exists() and not P.resume_path(out).exists()
    assert len((tmp_path / "ddp" / "curve.csv").read_text().splitlines()) == 2
    assert set(_enc(out)) == set(M.ViTEncoder(**M.model_config(TINY)).state_dict())


# ---------------------------------------------------------------- MAE-Face import
class NotAWeight:
    pass


def test_import_mae_face_vit_base(tmp_path):
    import timm

    vit = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    sd = dict(vit.state_dict())
    sd.update({"mask_token": torch.zeros(1, 1, 512), "decoder_embed.weight": torch.zeros(512, 768),
               "decoder_pred.bias": torch.zeros(768)})
    src = tmp_path / "mae_face_pretrain_vit_base.pth"
    torch.save({"model": sd, "epoch": 799}, src)
    ck = C.import_mae_face(src, MAE_DEFAULTS["model"])  # the default config is ViT-B/16
    assert ck["kind"] == "mae_import" and ck["config"]["embed_dim"] == 768 and ck["config"]["depth"] == 12
    enc = M.ViTEncoder(**ck["config"]).eval()
    C.load_encoder_state(enc, ck["encoder"], src)
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        ours, _, _ = enc(x)
        ref = vit.forward_features(x)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_pretrain_stage_imports_checkpoint(tmp_path):
    """mae.checkpoint set: pretrain_mae converts instead of training (same output format)."""
    torch.manual_seed(1)
    sd = M.ViTEncoder(**M.model_config(TINY)).state_dict()
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "src.pth")
    out = tmp_path / "pretrain.pt"
    params = {**PRE, "checkpoint": str(tmp_path / "src.pth")}
    assert P.main(["--out", str(out), "--curve", str(tmp_path / "c.csv"), "--device", "cpu",
                   "--params", json.dumps(params)]) == 0
    cfg, enc_sd = C.read_encoder_checkpoint(out)
    assert cfg == M.model_config(TINY) and all(torch.equal(enc_sd[k], sd[k]) for k in sd)
    assert (tmp_path / "c.csv").read_text() == "epoch,step,loss,lr\n"


def test_import_lists_missing_unexpected_and_shape_errors(tmp_path):
    cfg = M.model_config(TINY)
    sd = dict(M.ViTEncoder(**cfg).state_dict())
    del sd["blocks.1.mlp.fc2.bias"]
    sd["cls_token"] = torch.zeros(1, 1, 64)
    sd["blocks.7.extra.weight"] = torch.zeros(3)
    src = tmp_path / "bad.pth"
    torch.save({"model": sd}, src)
    with pytest.raises(PipelineError) as e:
        C.import_mae_face(src, TINY)
    msg = str(e.value)
    assert str(src) in msg and "blocks.1.mlp.fc2.bias" in msg and "blocks.7.extra.weight" in msg
    assert "cls_token: checkpoint (1, 1, 64) vs model (1, 1, 48)" in msg


def test_import_refuses_pickled_objects(tmp_path):
    src = tmp_path / "evil.pth"
    torch.save({"model": M.ViTEncoder(**M.model_config(TINY)).state_dict(), "extra": NotAWeight()}, src)
    with pytest.raises(PipelineError, match="refused"):
        C.import_mae_face(src, TINY)


# ---------------------------------------------------------------- fine-tuning
FT_PARAMS = dict(model=TINY, gpus=1, features={"pool": MAE_DEFAULTS["features"]["pool"]},   # as the rule passes it
                 finetune={**MAE_DEFAULTS["finetune"], **dict(epochs=8, batch_size=32, lr=5e-3, weight_decay=0.01,
                                                              warmup_epochs=1, ema_decay=0.9, augment=True,
                                                              frames_per_video=0, soup="none")})


def finetune_args(task, dataset, enc, d, fold="official", faces=None, **over):
    params = json.loads(json.dumps(FT_PARAMS))
    params["finetune"].update(over)
    faces = stores(dataset) if faces is None else faces
    return ["--task", task, "--fold", fold, "--folds", str(dataset / "folds.json"), "--pretrained", str(enc),
            "--labels", str(dataset / f"labels_{task}.h5"), "--faces", *faces, "--out", str(d / "ft.pt"),
            "--metrics", str(d / "m.json"), "--curve", str(d / "c.csv"), "--params", json.dumps(params),
            "--device", "cpu"]


def _finetune(task, dataset, enc, tmp_path, fold="official", **over):
    d = tmp_path / task / fold
    assert FT.main(finetune_args(task, dataset, enc, d, fold, **over)) == 0
    return d, json.loads((d / "m.json").read_text())


@pytest.mark.parametrize("task", ["AU", "EXPR", "VA"])
def test_finetune_beats_constant_baseline(task, dataset, random_encoder, tmp_path):
    d, m = _finetune(task, dataset, random_encoder, tmp_path)
    print(f"{task}: {m['metric']} {m['score']:.3f} vs constant baseline {m['baseline']:.3f}")
    assert m["score"] > m["baseline"] + 0.2, m
    assert m["n_train_frames"] == 6 * 36 and m["n_val_frames"] == 2 * 36  # label AND face
    assert 1 <= m["best_epoch"] <= 8 and m["stage"] == "finetune_mae"
    rows = (d / "c.csv").read_text().splitlines()
    assert rows[0] == "epoch,train_loss,val_loss,val_score,lr" and len(rows) == 9
    assert float(rows[m["best_epoch"]].split(",")[3]) == pytest.approx(m["score"], abs=1e-5)
    ck = torch.load(d / "ft.pt", weights_only=True)
    assert ck["kind"] == "mae_finetune" and ck["task"] == task and ck["fold"] == "official"


def test_finetune_fold_trains_on_its_train_videos_only(dataset, random_encoder, tmp_path):
    """fold1: no validation video's labels are trained on, whatever split the label store says."""
    d, m = _finetune("EXPR", dataset, random_encoder, tmp_path, fold="fold1", epochs=2)
    val = FOLDS["fold1"]["validation"]
    assert m["fold"] == "fold1" and m["validation_videos"] == sorted(val)
    assert not set(m["train_videos"]) & set(val)
    assert m["train_videos"] == sorted(FOLDS["fold1"]["train"])          # vid6/vid7 are "validation" in the store
    assert m["n_train_frames"] == 6 * 36 and m["n_val_frames"] == 2 * 36
    ck = torch.load(d / "ft.pt", weights_only=True)
    assert ck["kind"] == "mae_finetune" and (ck["task"], ck["fold"]) == ("EXPR", "fold1")
    assert json.loads(ck["metrics"])["train_videos"] == m["train_videos"]
    # the constant baseline comes from the fold's train videos: vid4/vid5 out, vid6/vid7 in
    labels = FT.read_labels(dataset / "labels_EXPR.h5")
    found = np.ones(40, bool)
    found[[5, 17]] = False
    y_tr = np.concatenate([labels[v].y[labels[v].mask] for v in FOLDS["fold1"]["train"]])
    y_val = np.concatenate([labels[v].y[labels[v].mask & found] for v in val])
    assert m["baseline"] == pytest.approx(FT.constant_baseline("EXPR", y_tr, y_val))


def test_finetune_names_missing_face_store_and_missing_key(dataset, random_encoder, tmp_path):
    faces = [f for f in stores(dataset) if Path(f).stem != "vid4"]
    with pytest.raises(PipelineError, match=r"no face store for video 'vid4' among --faces"):
        FT.main(finetune_args("VA", dataset, random_encoder, tmp_path / "a", "fold1", faces=faces))
    params = json.loads(json.dumps(FT_PARAMS))
    del params["finetune"]["ema_decay"]
    args = finetune_args("VA", dataset, random_encoder, tmp_path / "b")
    args[args.index("--params") + 1] = json.dumps(params)
    with pytest.raises(PipelineError, match=r"mae.finetune: missing key\(s\) \['ema_decay'\]"):
        FT.main(args)
    with pytest.raises(PipelineError, match=r"no fold 'fold9'"):
        FT.main(finetune_args("VA", dataset, random_encoder, tmp_path / "c", "fold9"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_model_soup_recipes():
    states = [{"w": torch.tensor([0.0])}, {"w": torch.tensor([4.0])}, {"w": torch.tensor([1.0])}]
    evaluate = lambda sd: -abs(float(sd["w"]) - 1.5)  # noqa: E731  best at w = 1.5
    scores = [evaluate(s) for s in states]  # -1.5, -2.5, -0.5
    sd, s, members = FT.model_soup("uniform", states, scores, evaluate)
    assert float(sd["w"]) == pytest.approx(5 / 3) and members == [0, 1, 2]
    # greedy: start from w=1 (best); +w=0 -> 0.5 (score -1, worse); +w=4 -> 2.5 (-1, worse)
    sd, s, members = FT.model_soup("greedy", states, scores, evaluate)
    assert members == [2] and s == pytest.approx(-0.5)
    states[1]["w"] = torch.tensor([2.0])  # now adding it gives w = 1.5: better, kept
    sd, s, members = FT.model_soup("greedy", states, [evaluate(x) for x in states], evaluate)
    assert members == [1, 2] and float(sd["w"]) == pytest.approx(1.5)


@pytest.mark.parametrize("recipe", ["uniform", "greedy"])
def test_finetune_soup_end_to_end(recipe, dataset, random_encoder, tmp_path):
    d, m = _finetune("EXPR", dataset, random_encoder, tmp_path, epochs=3, soup=recipe)
    assert m["soup"]["recipe"] == recipe and m["score"] == pytest.approx(m["soup"]["score"])
    if recipe == "greedy":
        assert m["score"] >= m["best_single_score"] and m["best_epoch"] in m["soup"]["members"]
    else:
        assert m["soup"]["members"] == [1, 2, 3]


# ---------------------------------------------------------------- features
@pytest.fixture(scope="module")
def va_encoder(dataset, random_encoder, tmp_path_factory):
    """A VA encoder fine-tuned for one epoch (official fold)."""
    d, _ = _finetune("VA", dataset, random_encoder, tmp_path_factory.mktemp("va"), epochs=1)
    return d / "ft.pt"


def features_args(model, faces, out, batch_size=7):
    return ["--model", str(model), "--faces", *map(str, faces), "--out", str(out),
            "--params", json.dumps({"batch_size": batch_size}), "--device", "cpu"]


def test_visual_features(dataset, va_encoder, tmp_path):
    faces = [dataset / "faces" / f"vid{v}.h5" for v in (5, 6, 7)]
    out = tmp_path / "features" / "mae" / "VA" / "official.h5"
    assert VF.main(features_args(va_encoder, faces, out)) == 0
    assert out.exists() and not Path(f"{out}.partial").exists()
    model = VF.load_finetuned(va_encoder)
    w, b = model.head.weight.detach().numpy(), model.head.bias.detach().numpy()
    with FeatureShard(out) as shard:
        assert shard.name == "mae_VA" and sorted(shard.videos()) == ["vid5", "vid6", "vid7"]
        assert shard.attrs["task"] == "VA" and shard.attrs["fold"] == "official" and shard.dim() == 48
        assert shard.attrs["checkpoint_digest"] == file_digest(va_encoder)
        for path in faces:
            video = path.stem
            f = shard.read(video, extra=("logits",))
            with h5py.File(path) as h:
                found = h["found"][:]
            assert shard.n_frames(video) == 40 and shard.has(video, "logits")
            assert f.features.shape == (40, 48) and f.extra["logits"].shape == (40, 2)
            assert np.array_equal(f.valid, found) and not f.valid[[5, 17]].any()
            assert np.all(f.features[~found] == 0) and np.all(f.extra["logits"][~found] == 0)
            assert f.attrs["checkpoint_digest"] == file_digest(va_encoder) and f.attrs["extractor"] == "mae_VA"
            np.testing.assert_allclose(f.extra["logits"][found], f.features[found] @ w.T + b, atol=2e-2)
            with FaceStore(path) as fs:
                feats, logits = VF.embed_crops(model, fs.read_crops(np.flatnonzero(found)), 16)
            np.testing.assert_allclose(f.extra["logits"][found], logits, atol=1e-5)
            np.testing.assert_allclose(f.features[found], feats, atol=1e-2, rtol=1e-3)  # stored as float16


def test_visual_features_resume_after_a_bad_face_store(dataset, va_encoder, tmp_path, caplog):
    """The last video's store is corrupt: the job fails naming it, the finished videos stay in the
    partial shard, and the rerun (store fixed) computes only the missing video."""
    caplog.set_level(logging.INFO, logger="affect_pipeline")
    faces = [tmp_path / "faces" / f"vid{v}.h5" for v in (0, 1, 2)]
    faces[0].parent.mkdir()
    for f in faces:
        shutil.copy(dataset / "faces" / f.name, f)
    good = faces[2].read_bytes()
    faces[2].write_bytes(good[: len(good) // 2])                      # an interrupted copy
    out = tmp_path / "shard.h5"
    partial = Path(f"{out}.partial")
    with pytest.raises(PipelineError) as e:
        VF.main(features_args(va_encoder, faces, out))
    assert "'vid2'" in str(e.value) and str(faces[2]) in str(e.value) and "truncated or corrupt" in str(e.value)
    assert not out.exists() and partial.exists()                      # the shard appears only after success
    with h5py.File(partial) as h:
        assert sorted(h) == ["vid0", "vid1"] and all(h[v].attrs["complete"] for v in h)
        kept = {v: h[v]["features"][:] for v in h}
    caplog.clear()
    faces[2].write_bytes(good)
    assert VF.main(features_args(va_encoder, faces, out)) == 0
    log = caplog.text
    assert "3 videos, 2 already in" in log and "video vid2: 40 frames, 38 with a face" in log
    assert "video vid0:" not in log and "video vid1:" not in log     # not recomputed
    assert out.exists() and not partial.exists()
    with FeatureShard(out) as shard:
        assert sorted(shard.videos()) == ["vid0", "vid1", "vid2"] and shard.n_frames("vid2") == 40
        for v, feats in kept.items():
            assert np.array_equal(shard.read(v).features, feats.astype(np.float32))
    # a face store that changed since its group was written is recomputed, not reused
    shutil.copy(dataset / "faces" / "vid3.h5", faces[1])
    out.rename(partial)
    caplog.clear()
    assert VF.main(features_args(va_encoder, faces, out)) == 0
    assert "3 videos, 2 already in" in caplog.text and "video vid1:" in caplog.text


def test_fold_encoders_share_one_decode(dataset, va_encoder, tmp_path, caplog):
    """Two encoders in one job write the shards two one-encoder jobs write; a shard already
    complete in its partial file is kept, and only the encoder lacking the videos runs them."""
    caplog.set_level(logging.INFO, logger="affect_pipeline")
    other = tmp_path / "other.pt"                          # a second encoder: another head
    ck = torch.load(va_encoder, weights_only=True)
    ck["fold"] = "fold1"
    ck["model"]["head.weight"] = -2 * ck["model"]["head.weight"]
    torch.save(ck, other)
    faces = [dataset / "faces" / f"vid{v}.h5" for v in (5, 6, 7)]
    single = [tmp_path / "a1.h5", tmp_path / "b1.h5"]
    for model, out in zip((va_encoder, other), single):
        assert VF.main(features_args(model, faces, out)) == 0
    both = [tmp_path / "a2.h5", tmp_path / "b2.h5"]
    shutil.copy(single[0], f"{both[0]}.partial")          # encoder a's shard already done
    caplog.clear()
    assert VF.main(["--model", str(va_encoder), str(other), "--faces", *map(str, faces), "--out", *map(str, both),
                    "--params", json.dumps({"batch_size": 7}), "--device", "cpu"]) == 0
    assert f"{both[0]}: 3 videos, 3 already in" in caplog.text and f"{both[1]}: 3 videos, 0 already in" in caplog.text
    assert caplog.text.count("(1 encoders)") == 3                   # each video decoded once, for b
    for one, two in zip(single, both):
        with FeatureShard(one) as x, FeatureShard(two) as y:
            assert x.attrs["fold"] == y.attrs["fold"] and sorted(x.videos()) == sorted(y.videos())
            for v in x.videos():
                fx, fy = x.read(v, extra=("logits",)), y.read(v, extra=("logits",))
                assert np.array_equal(fx.features, fy.features) and np.array_equal(fx.extra["logits"], fy.extra["logits"])
    with FeatureShard(both[1]) as b, FeatureShard(both[0]) as a:
        assert b.attrs["fold"] == "fold1" and not np.array_equal(a.read("vid5", extra=("logits",)).extra["logits"],
                                                                 b.read("vid5", extra=("logits",)).extra["logits"])
    with pytest.raises(PipelineError, match="2 --model for 1 --out"):
        VF.visual_features([va_encoder, other], faces, tmp_path / "x.h5", {"batch_size": 8}, 1, "cpu")


def test_features_reject_wrong_checkpoint_and_missing_key(dataset, random_encoder, va_encoder, tmp_path):
    faces = [dataset / "faces" / "vid0.h5"]
    with pytest.raises(PipelineError, match="not a finetune_mae checkpoint"):
        VF.visual_features(random_encoder, faces, tmp_path / "x.h5", {"batch_size": 8}, 1, "cpu")
    with pytest.raises(PipelineError, match=r"mae.features: missing key\(s\) \['batch_size'\]"):
        VF.visual_features(va_encoder, faces, tmp_path / "x.h5", {}, 1, "cpu")
    assert not (tmp_path / "x.h5").exists()


# ---------------------------------------------------------------- face data
def test_labelled_frames_and_loader(dataset):
    labels = FT.read_labels(dataset / "labels_VA.h5", ["vid0", "vid1"])
    faces = {Path(f).stem: f for f in stores(dataset)}
    fs = D.labelled_frames("VA", labels, faces, 32)
    assert len(fs.y) == 2 * 36 and fs.videos == ["vid0", "vid1"] and fs.ds[0][0].shape == (32, 32, 3)
    with FaceStore(faces["vid0"]) as store:
        assert np.array_equal(fs.y[:36], labels["vid0"].y[labels["vid0"].mask & store.found])
    sub = D.labelled_frames("VA", labels, faces, 32, per_video=10, seed=3)
    assert len(sub.y) == 20
    loader, _ = D.make_loader(fs.ds, cache_gb=1.0, threads=1)
    streamed = D.Loader(fs.ds, None, 0)
    order = np.arange(len(fs.y))[::-1].copy()
    for (a, ia), (b, ib) in zip(loader.batches(order, 16), streamed.batches(order, 16)):
        assert torch.equal(a, b) and torch.equal(ia, ib)
