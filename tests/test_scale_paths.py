"""Paths a full Aff-Wild2 run takes that the demo does not.

- ``mae.pretrain.extra_image_dirs``: folders of face images (AffectNet...) pretrained on with the
  face stores' crops: which files count, decoded as RGB like the stores, held or streamed.
- ``affwild2.cropped_aligned``: a real ``snakemake`` run of the faces rule for a left/right pair on
  an Aff-Wild2-shaped tree; each store must hold its own folder's JPEGs (the video has no face).
- Fine-tuning under DDP: two CPU processes over gloo (torchrun) end where one process with the same
  global batch ends. Why this check and not a looser one: DistributedSampler splits one
  permutation, so step k's two per-rank batches are exactly the single run's k-th batch; DDP
  averages the two equal-sized batch means, which is the single run's mean. Ranks that saw the
  same shard, or overlapping ones, or not all of it, move the weights elsewhere.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from aff_tree import make_tree
from conftest import REPO, face_batch_target, face_store_of, run_snakemake
from test_mae import MAE_DEFAULTS, TINY, _face, build_dataset, build_encoder, stores

from affect_pipeline.common.config import settings
from affect_pipeline.common.runtime import PipelineError
from affect_pipeline.common.stores import FaceStore
from affect_pipeline.mae import face_reader as D
from affect_pipeline.mae import pretrain_mae as P

torch.set_num_threads(1)
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """test_mae's 8 face stores (6 train, 2 validation videos of 40 frames) and label stores."""
    return build_dataset(tmp_path_factory.mktemp("data"))


# ---------------------------------------------------------------- extra_image_dirs
def pretrain_settings(**over) -> P.PretrainSettings:
    p = {**MAE_DEFAULTS["pretrain"], **dict(epochs=1, batch_size=32, accum_steps=1, base_lr=2e-3, base_batch=64,
                                            warmup_epochs=0, frames_per_video=30)}
    return settings(P.PretrainSettings, {**p, **over}, "mae.pretrain")


def image_tree(root: Path) -> dict[str, np.ndarray]:
    """Face images as a downloaded data set has them: nested folders, upper-case suffixes, JPEG,
    grey and RGBA PNG, non-square, next to files that are not images. Returns the RGB each image
    must give at 32 px (lossless files only; JPEGs: None)."""
    face = _face()                                                        # 48 px RGB
    red = np.zeros((40, 40, 3), np.uint8)
    red[..., 0] = 220
    files = {"a/red.png": red, "a/face.png": face, "a/nested/deeper/face.JPG": None,
             "b/grey.png": face.mean(-1).astype(np.uint8), "b/wide.jpeg": None, "b/rgba.png": face}
    for rel, rgb in files.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        img = (cv2.resize(face, (100, 60)) if "wide" in rel else face) if rgb is None else rgb
        bgr = img if img.ndim == 2 else img[..., ::-1]
        if "rgba" in rel:
            bgr = np.dstack([bgr, np.full(img.shape[:2], 128, np.uint8)])
        assert cv2.imwrite(str(f), bgr)
    (root / "a" / "notes.txt").write_text("not an image\n")
    (root / "b" / "labels.csv").write_text("file,label\n")

    def at32(rgb):
        rgb = np.repeat(rgb[..., None], 3, -1) if rgb.ndim == 2 else rgb
        return cv2.resize(rgb, (32, 32), interpolation=cv2.INTER_AREA)
    return {str(root / k): None if v is None else at32(v) for k, v in files.items()}


def test_extra_image_dirs_join_the_face_crops_as_rgb(dataset, tmp_path):
    images = image_tree(tmp_path / "img")
    faces = stores(dataset)
    ds = P.pretrain_crops(faces, pretrain_settings(extra_image_dirs=[str(tmp_path / "img" / d) for d in "ab"]),
                          32, seed=0)
    assert len(ds) == 8 * 30 + len(images)                               # notes.txt / labels.csv left out
    assert ds.files[:8] == faces and sorted(ds.files[8:]) == sorted(images)
    held = ds.load_all()
    for i, f in enumerate(ds.files[8:]):
        row = int(np.flatnonzero(ds.file_id == 8 + i)[0])
        assert ds.frame[row] == -1
        streamed, _ = ds[row]                                             # what a DataLoader worker decodes
        assert torch.equal(streamed, held[row]) and held[row].shape == (32, 32, 3)
        if images[f] is not None:
            assert np.array_equal(held[row].numpy(), images[f]), f
    red = held[int(np.flatnonzero(ds.file_id == 8 + ds.files[8:].index(str(tmp_path / "img/a/red.png")))[0])]
    assert (red[..., 0] == 220).all() and (red[..., 1:] == 0).all()       # RGB, as the face stores


def test_pretraining_streams_extra_images_and_runs_on_images_alone(dataset, tmp_path, caplog):
    image_tree(tmp_path / "img")
    dirs = [str(tmp_path / "img")]
    params = {"model": TINY, "checkpoint": None, "gpus": 1}
    out = tmp_path / "both" / "pretrain.pt"
    pre = {**MAE_DEFAULTS["pretrain"], **asdict(pretrain_settings(extra_image_dirs=dirs, cache_gb=0.0))}
    with caplog.at_level("INFO"):
        P.pretrain_mae(stores(dataset), out, out.with_suffix(".csv"), {**params, "pretrain": pre}, threads=2,
                       device="cpu")
    assert f"streaming {8 * 30 + 6} crops" in caplog.text                # DataLoader workers decode them
    assert torch.load(out, weights_only=True)["n_crops"] == 8 * 30 + 6
    alone = tmp_path / "alone" / "pretrain.pt"
    pre = {**pre, "cache_gb": 1.0}
    P.pretrain_mae([], alone, alone.with_suffix(".csv"), {**params, "pretrain": pre}, threads=1, device="cpu")
    ck = torch.load(alone, weights_only=True)
    assert ck["n_crops"] == 6 and np.isfinite(ck["final_loss"])


def test_extra_image_dirs_bad_entries_are_named(dataset, tmp_path):
    faces = stores(dataset)[:1]
    with pytest.raises(PipelineError, match=re.escape(f"{tmp_path / 'nope'}: mae.pretrain.extra_image_dirs entry")):
        P.pretrain_crops(faces, pretrain_settings(extra_image_dirs=[str(tmp_path / "nope")]), 32, 0)
    (tmp_path / "file.jpg").write_bytes(b"")
    with pytest.raises(PipelineError, match="entry is not a folder"):
        P.pretrain_crops(faces, pretrain_settings(extra_image_dirs=[str(tmp_path / "file.jpg")]), 32, 0)
    bad = tmp_path / "img" / "broken.jpg"
    image_tree(tmp_path / "img")
    bad.write_bytes(cv2.imencode(".jpg", _face())[1].tobytes()[:40])     # a truncated download
    ds = P.pretrain_crops(faces, pretrain_settings(extra_image_dirs=[str(tmp_path / "img")]), 32, 0)
    with pytest.raises(PipelineError, match=re.escape(f"{bad}: not a readable image")):
        ds.load_all()
    stream = D.Loader(ds, None, workers=1)                                # the same, from a worker
    with pytest.raises(PipelineError, match=re.escape(f"{bad}: not a readable image")):
        list(stream.batches(np.arange(len(ds)), 64))




def test_extra_image_dirs_follow_linked_folders(tmp_path):
    """Data sets on a shared disk are linked in: ``extra/affectnet -> /data/AffectNet``."""
    image_tree(tmp_path / "store")
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "affectnet").symlink_to(tmp_path / "store")
    assert len(D.image_files([str(tmp_path / "extra")])) == 6


def test_extra_image_dirs_skip_hidden_files(tmp_path):
    """macOS copies carry ``._name.jpg`` resource forks: not images, they must not stop training."""
    image_tree(tmp_path / "img")
    (tmp_path / "img" / "a" / "._face.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    assert len(D.image_files([str(tmp_path / "img")])) == 6


def test_extra_image_dirs_without_images_are_refused(tmp_path):
    """A folder that holds no image (the archive not yet unpacked) is a mistake, not 0 images."""
    (tmp_path / "affectnet").mkdir()
    (tmp_path / "affectnet" / "train_set.tar").write_bytes(b"")
    with pytest.raises(PipelineError, match=re.escape(f"{tmp_path / 'affectnet'}: ") + ".*holds no images"):
        D.image_files([str(tmp_path / "affectnet")])


# ---------------------------------------------------------------- cropped_aligned through the workflow
def official_tree(root: Path) -> tuple[Path, str, dict]:
    """An Aff-Wild2 tree whose first video is a real 8-frame clip with no face (grey noise) and
    a left/right pair; ``cropped_aligned/{id}/{i:05d}.jpg`` crops per side, frame 5 without one.
    Returns (config file, media stem, id -> {frame: the JPEG's RGB})."""
    from affect_pipeline.data.video import write_video

    data = make_tree(root, 2, rows=8, pair_every=2, test_every=0)
    media = "0-30-640x360"
    rng = np.random.default_rng(0)
    noise = [cv2.GaussianBlur(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), (9, 9), 3) for _ in range(8)]
    write_video(root / "videos" / f"{media}.mp4", noise, 25, "libx264")
    face, crops = cv2.resize(_face(), (112, 112)), {}
    for side, channel in (("left", 0), ("right", 2)):
        vid, folder = f"{media}_{side}", root / "cropped_aligned" / f"{media}_{side}"
        folder.mkdir(parents=True)
        crops[vid] = {}
        for i in range(8):
            if i == 4:
                continue
            img = face.copy()
            img[..., channel] = np.clip(img[..., channel].astype(int) + 40 + 20 * i, 0, 255)  # one per frame
            img[: 6 + 4 * i, :8] = 255
            cv2.imwrite(str(folder / f"{i + 1:05d}.jpg"), img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
            crops[vid][i] = cv2.cvtColor(cv2.imread(str(folder / f"{i + 1:05d}.jpg")), cv2.COLOR_BGR2RGB)
    data["affwild2"]["cropped_aligned"] = str(root / "cropped_aligned")
    cfg = {**data, "tasks": ["AU", "EXPR", "VA"], "temporal": {"features": ["mae"]},
           "faces": {"size": 64, "batch_size": 4}}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    return root / "config.yaml", media, crops


def test_cropped_aligned_faces_rule_reads_the_official_jpegs(tmp_path):
    cfg, media, crops = official_tree(tmp_path / "aff")
    work = tmp_path / "work"
    targets = sorted({face_batch_target(v) for v in crops})
    assert len(targets) == 2                  # (each side in a batch of its own; the other video elsewhere)
    p = run_snakemake("--cores", "1", "--configfile", str(cfg), "--directory", str(work), *targets, timeout=300)
    log = p.stdout + p.stderr
    for vid, jpegs in crops.items():
        assert f'"cropped_dir": "{tmp_path / "aff" / "cropped_aligned" / vid}"' in log      # the rule passed it
        with FaceStore(face_store_of(work / "results", vid)) as fs:
            assert fs.attrs["backend"] == "cropped_aligned"
            assert fs.attrs["source"] == str(tmp_path / "aff" / "cropped_aligned" / vid)
            assert fs.found.tolist() == [i in jpegs for i in range(8)]   # frame 5 has no crop: no face
            got = fs.read_crops(np.arange(8)).astype(float)
        assert not got[4].any()
        want = {i: cv2.resize(c, (64, 64), interpolation=cv2.INTER_AREA).astype(float) for i, c in jpegs.items()}
        for i, w in want.items():                     # each frame holds its own JPEG, not another's
            err = {j: np.abs(got[i] - v).mean() for j, v in want.items()}
            assert min(err, key=err.get) == i and err[i] < 4, (vid, i, err)
    left, right = (face_store_of(work / "results", f"{media}_{s}") for s in ("left", "right"))
    with FaceStore(left) as a, FaceStore(right) as b:                 # each side read its own folder
        assert a.read_crops([0])[0, 30:, :, 0].mean() > b.read_crops([0])[0, 30:, :, 0].mean()


# ---------------------------------------------------------------- fine-tuning under DDP
def finetune_cmd(dataset: Path, enc: Path, out: Path, batch_size: int, ddp: bool) -> list[str]:
    ft = {**MAE_DEFAULTS["finetune"], **dict(epochs=1, batch_size=batch_size, lr=5e-3, weight_decay=0.01,
                                             warmup_epochs=0, ema_decay=0.5, augment=False, frames_per_video=0,
                                             soup="none")}
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] if ddp else []
    return [sys.executable, *launch, "-m", "affect_pipeline", "finetune_mae", "--task", "AU", "--fold", "official",
            "--folds", str(dataset / "folds.json"), "--pretrained", str(enc), "--labels",
            str(dataset / "labels_AU.h5"), "--faces", *stores(dataset), "--out", str(out / "finetune.pt"),
            "--metrics", str(out / "metrics.json"), "--curve", str(out / "curve.csv"),
            "--params", json.dumps({"model": TINY, "gpus": 2 if ddp else 1, "finetune": ft}),
            "--threads", "2" if ddp else "1", "--device", "cpu"]


def test_finetune_ddp_two_processes_equals_one_with_the_global_batch(dataset, tmp_path):
    enc = build_encoder(tmp_path / "pretrain.pt")
    runs = {}
    for name, bs, ddp in (("single", 32, False), ("ddp", 16, True)):
        r = subprocess.run(finetune_cmd(dataset, enc, tmp_path / name, bs, ddp), env=ENV, capture_output=True,
                           text=True, timeout=150)
        assert r.returncode == 0, r.stderr[-3000:]
        runs[name] = r.stderr
    assert "DDP rank 1/2" in runs["ddp"] and "7 steps" in runs["ddp"] and "7 steps" in runs["single"]
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["curve.csv", "finetune.pt", "metrics.json"]
    assert runs["ddp"].count("AU official: val ") == 1                   # rank 0 alone validated and wrote
    m = {k: json.loads((tmp_path / k / "metrics.json").read_text()) for k in runs}
    assert m["ddp"]["n_train_frames"] == m["single"]["n_train_frames"] == 6 * 36
    assert m["ddp"]["score"] == pytest.approx(m["single"]["score"], abs=1e-3)
    start = {k: v for k, v in torch.load(enc, weights_only=True)["encoder"].items()}
    w = {k: torch.load(tmp_path / k / "finetune.pt", weights_only=True)["model"] for k in runs}
    moved = torch.cat([(w["single"][f"encoder.{k}"] - v).flatten() for k, v in start.items()])
    apart = torch.cat([(w["ddp"][k] - w["single"][k]).flatten() for k in w["single"]])
    assert moved.norm() > 1e-2                                             # training moved the weights...
    assert apart.norm() < 1e-3 * moved.norm(), (apart.norm(), moved.norm())  # ...to the same place
