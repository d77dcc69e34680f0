"""MAE model, pretraining (resume, DDP), MAE-Face import, fine-tuning, soup, visual features.

Everything runs on tiny ViTs (32-px inputs from 48-px face-store crops) built and saved here, on
face stores made from skimage's astronaut photo with a learnable synthetic signal: each frame has
one of 4 "types" (red/blue tint × white bar at the top/bottom) that fix its AU, EXPR and VA labels.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from affect_pipeline import mae as M
from affect_pipeline import mae_training as T
from affect_pipeline.runtime import PipelineError, save_checkpoint
from affect_pipeline.stores import Labels, read_features, write_face_store, write_labels

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
TINY = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, decoder_embed_dim=32,
            decoder_depth=1, decoder_num_heads=2)
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
    return root


@pytest.fixture(scope="module")
def random_encoder(tmp_path_factory):
    """A pretrain_mae-format checkpoint of a randomly initialised tiny encoder."""
    return build_encoder(tmp_path_factory.mktemp("enc") / "pretrain.pt")


def build_encoder(path):
    torch.manual_seed(0)
    enc = M.ViTEncoder(**M.model_config(TINY))
    save_checkpoint(M.encoder_checkpoint(enc.state_dict(), M.model_config(TINY), "mae_pretrain"), path)
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
PRE = dict(model=TINY, pretrain=dict(epochs=4, batch_size=32, accum_steps=2, base_lr=2e-3, base_batch=64,
                                     warmup_epochs=1, mask_ratio=0.75, frames_per_video=30))


def _enc(path):
    return torch.load(path, weights_only=True)["encoder"]


def test_pretrain_resume_is_identical_and_loss_falls(dataset, tmp_path):
    faces = stores(dataset)
    full, resumed = tmp_path / "full" / "pretrain.pt", tmp_path / "res" / "pretrain.pt"
    T.pretrain(faces, full, full.with_suffix(".csv"), PRE, threads=1, device="cpu")
    assert T.pretrain(faces, resumed, resumed.with_suffix(".csv"), PRE, 1, "cpu", stop_after=2) is None
    assert T.resume_path(resumed).exists() and not resumed.exists()
    state = torch.load(T.resume_path(resumed), weights_only=True)
    assert state["epoch"] == 2
    T.pretrain(faces, resumed, resumed.with_suffix(".csv"), PRE, 1, "cpu")
    assert not T.resume_path(resumed).exists()
    a, b = _enc(full), _enc(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows_full = full.with_suffix(".csv").read_text().splitlines()
    assert rows_full == resumed.with_suffix(".csv").read_text().splitlines()
    losses = [float(r.split(",")[2]) for r in rows_full[1:]]
    assert len(losses) == 4 and losses[-1] < 0.9 * losses[0], losses
    ck = torch.load(full, weights_only=True)
    assert ck["kind"] == "mae_pretrain" and ck["n_crops"] == 8 * 30 and "decoder" in ck
    # different settings: the stale resume file is ignored, not continued
    T.pretrain(faces, resumed, resumed.with_suffix(".csv"), PRE, 1, "cpu", stop_after=1)
    other = json.loads(json.dumps(PRE))
    other["pretrain"]["epochs"] = 1
    T.pretrain(faces, resumed, resumed.with_suffix(".csv"), other, 1, "cpu")
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
    assert out.exists() and not T.resume_path(out).exists()
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
    ck = M.import_mae_face(src)  # the default config is ViT-B/16
    assert ck["kind"] == "mae_import" and ck["config"]["embed_dim"] == 768 and ck["config"]["depth"] == 12
    enc = M.ViTEncoder(**ck["config"]).eval()
    M.load_encoder_state(enc, ck["encoder"], src)
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
    assert T.pretrain_main(["--out", str(out), "--curve", str(tmp_path / "c.csv"), "--device", "cpu",
                            "--params", json.dumps({"checkpoint": str(tmp_path / "src.pth"), "model": TINY})]) == 0
    cfg, enc_sd = M.read_encoder_checkpoint(out)
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
        M.import_mae_face(src, TINY)
    msg = str(e.value)
    assert str(src) in msg and "blocks.1.mlp.fc2.bias" in msg and "blocks.7.extra.weight" in msg
    assert "cls_token: checkpoint (1, 1, 64) vs model (1, 1, 48)" in msg


def test_import_refuses_pickled_objects(tmp_path):
    src = tmp_path / "evil.pth"
    torch.save({"model": M.ViTEncoder(**M.model_config(TINY)).state_dict(), "extra": NotAWeight()}, src)
    with pytest.raises(PipelineError, match="refused"):
        M.import_mae_face(src, TINY)


# ---------------------------------------------------------------- fine-tuning
FT = dict(model=TINY, finetune=dict(epochs=8, batch_size=32, lr=5e-3, weight_decay=0.01, warmup_epochs=1,
                                    ema_decay=0.9, augment=True, frames_per_video=0, soup="none"))


def _finetune(task, dataset, enc, tmp_path, **over):
    params = json.loads(json.dumps(FT))
    params["finetune"].update(over)
    d = tmp_path / task
    rc = T.finetune_main(["--task", task, "--pretrained", str(enc), "--labels", str(dataset / f"labels_{task}.h5"),
                          "--faces-dir", str(dataset / "faces"), "--out", str(d / "ft.pt"), "--metrics",
                          str(d / "m.json"), "--curve", str(d / "c.csv"), "--params", json.dumps(params),
                          "--device", "cpu"])
    assert rc == 0
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


def test_model_soup_recipes():
    states = [{"w": torch.tensor([0.0])}, {"w": torch.tensor([4.0])}, {"w": torch.tensor([1.0])}]
    evaluate = lambda sd: -abs(float(sd["w"]) - 1.5)  # noqa: E731  best at w = 1.5
    scores = [evaluate(s) for s in states]  # -1.5, -2.5, -0.5
    sd, s, members = T.model_soup("uniform", states, scores, evaluate)
    assert float(sd["w"]) == pytest.approx(5 / 3) and members == [0, 1, 2]
    # greedy: start from w=1 (best); +w=0 -> 0.5 (score -1, worse); +w=4 -> 2.5 (-1, worse)
    sd, s, members = T.model_soup("greedy", states, scores, evaluate)
    assert members == [2] and s == pytest.approx(-0.5)
    states[1]["w"] = torch.tensor([2.0])  # now adding it gives w = 1.5: better, kept
    sd, s, members = T.model_soup("greedy", states, [evaluate(x) for x in states], evaluate)
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
def test_visual_features(dataset, random_encoder, tmp_path):
    d, _ = _finetune("VA", dataset, random_encoder, tmp_path, epochs=1)
    faces = dataset / "faces" / "vid6.h5"
    out = tmp_path / "mae_VA" / "vid6.h5"
    assert T.features_main(["--task", "VA", "--model", str(d / "ft.pt"), "--faces", str(faces), "--out", str(out),
                            "--params", json.dumps({"features": {"batch_size": 7}}), "--device", "cpu"]) == 0
    f = read_features(out, extra=("logits",))
    with h5py.File(faces) as h:
        found = h["found"][:]
    assert f.features.shape == (40, 48) and f.extra["logits"].shape == (40, 2)
    assert np.array_equal(f.valid, found) and not f.valid[[5, 17]].any()
    assert np.all(f.features[~found] == 0) and np.all(f.extra["logits"][~found] == 0)
    from affect_pipeline.runtime import file_digest

    assert f.attrs["checkpoint_digest"] == file_digest(d / "ft.pt") and f.attrs["extractor"] == "mae_VA"
    model = T.load_finetuned(d / "ft.pt")
    w, b = model.head.weight.detach().numpy(), model.head.bias.detach().numpy()
    np.testing.assert_allclose(f.extra["logits"][found], f.features[found] @ w.T + b, atol=2e-2)
    from affect_pipeline.stores import FaceStore

    with FaceStore(faces) as fs:
        feats, logits = T.embed_crops(model, fs.read_crops(np.flatnonzero(found)), 16)
    np.testing.assert_allclose(f.extra["logits"][found], logits, atol=1e-5)
    np.testing.assert_allclose(f.features[found], feats, atol=1e-2, rtol=1e-3)  # stored as float16


def test_features_reject_wrong_checkpoint(dataset, random_encoder, tmp_path):
    with pytest.raises(PipelineError, match="not a finetune_mae checkpoint"):
        T.extract_features("AU", random_encoder, dataset / "faces" / "vid0.h5", tmp_path / "x.h5", {}, 1, "cpu")
