"""pretrain_mae: a resume file serves only the same run (same crops, settings, code, world size and
seed; a damaged one starts afresh); killed midway, the rerun resumes from ``{out}.resume.pt`` and
ends equal to an uninterrupted run; ``mae.pretrain.extra_image_dirs`` (folders of face images,
AffectNet..., a full Aff-Wild2 run's path the demo does not take) are pretrained on with the face
stores' crops: which files count, decoded as RGB like the stores, held or streamed.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from kill_jobs import assert_unfinished, kill_when, rerun, start
from test_mae import MAE_DEFAULTS, PRE, TINY, _face, build_dataset, stores, write_store

from affect_pipeline.common.config import settings
from affect_pipeline.common.digests import ImportGraph, code_digest
from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.stores import FaceStore
from affect_pipeline.mae import face_reader as D
from affect_pipeline.mae import model as M
from affect_pipeline.mae import pretrain_mae as P

torch.set_num_threads(1)


def small_store(path: Path, n: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    found = np.ones(n, bool)
    found[3] = False
    write_store(path, rng.integers(0, 4, n), found, rng, _face())
    return path


# ---------------------------------------------------------------- resume only the same run
def _small_pretrain(tmp_path):
    """Two face stores of 30 frames (to be rewritten) and 2-epoch settings."""
    (tmp_path / "faces").mkdir()
    faces = [str(small_store(tmp_path / "faces" / f"vid{v}.h5", n=30, seed=v)) for v in (0, 1)]
    params = json.loads(json.dumps(PRE))
    params["pretrain"].update(epochs=2, batch_size=16, accum_steps=1, frames_per_video=0)
    return faces, params


def _pretrain(faces, out, params, **kw):
    P.pretrain_mae(faces, out, out.with_suffix(".csv"), params, threads=1, device="cpu", **kw)
    return None if kw.get("stop_after") else torch.load(out, weights_only=True)["encoder"]


def test_pretrain_does_not_resume_when_a_store_changed(tmp_path, caplog):
    """Same store names, frame counts and found faces, other crops: the resume file is stale, and
    the result is that of a fresh run on the new crops."""
    faces, params = _small_pretrain(tmp_path)
    out = tmp_path / "run" / "pretrain.pt"
    _pretrain(faces, out, params, stop_after=1)
    with FaceStore(faces[0]) as fs:
        found, n = fs.found.copy(), fs.n_frames
    rng = np.random.default_rng(99)
    write_store(faces[0], rng.integers(0, 4, n), found, rng, _face()[::-1].copy())   # upside-down faces
    caplog.set_level(logging.INFO, logger="affect_pipeline")
    resumed = _pretrain(faces, out, params)
    assert "resuming from" not in caplog.text
    assert f"{P.resume_path(out)} was made with other inputs; starting afresh" in caplog.text
    fresh = _pretrain(faces, tmp_path / "fresh" / "pretrain.pt", params)
    assert all(torch.equal(resumed[k], fresh[k]) for k in fresh)


def test_pretrain_fingerprint_covers_settings_code_world_and_seed(tmp_path):
    faces, params = _small_pretrain(tmp_path)
    p = P.settings(P.PretrainSettings, params["pretrain"], "mae.pretrain")
    ds, cfg = P.pretrain_crops(faces, p, 32, 0), M.model_config(TINY)
    fp = P.fingerprint(ds, cfg, p, 1, 0)
    assert set(fp) == {"inputs", "settings", "code", "run"} and fp == P.fingerprint(ds, cfg, p, 1, 0)
    other = P.PretrainSettings(**{**P.asdict(p), "mask_ratio": 0.5})
    assert P.fingerprint(ds, cfg, other, 1, 0)["settings"] != fp["settings"]
    assert P.fingerprint(ds, {**cfg, "depth": 3}, p, 1, 0)["settings"] != fp["settings"]
    assert P.fingerprint(ds, cfg, p, 2, 0)["run"] != fp["run"] != P.fingerprint(ds, cfg, p, 1, 1)["run"]
    assert fp["code"] == code_digest("affect_pipeline.mae.pretrain_mae")
    assert {"affect_pipeline.mae.model", "affect_pipeline.mae.face_reader", "affect_pipeline.common.training"} <= set(
        ImportGraph().closure("affect_pipeline.mae.pretrain_mae"))


def test_pretrain_truncated_resume_file_starts_afresh(tmp_path, caplog):
    """A kill while the resume file was copied (or a full disk) truncated it: the rerun warns,
    naming it, and starts afresh instead of failing every retry until someone deletes it."""
    faces, params = _small_pretrain(tmp_path)
    out = tmp_path / "run" / "pretrain.pt"
    _pretrain(faces, out, params, stop_after=1)
    rp = P.resume_path(out)
    rp.write_bytes(rp.read_bytes()[: rp.stat().st_size // 2])
    caplog.set_level(logging.INFO, logger="affect_pipeline")
    resumed = _pretrain(faces, out, params)
    assert f"{rp}: unusable resume file" in caplog.text and "starting afresh" in caplog.text
    assert not rp.exists()
    fresh = _pretrain(faces, tmp_path / "fresh" / "pretrain.pt", params)
    assert all(torch.equal(resumed[k], fresh[k]) for k in fresh)


# ---------------------------------------------------------------- killed midway
def _pre() -> dict:
    from conftest import workflow_defaults

    mae = workflow_defaults()["mae"]
    return dict(model={**mae["model"], **dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3,
                                              decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)},
                checkpoint=None, gpus=1,
                pretrain={**mae["pretrain"], **dict(epochs=6, batch_size=32, accum_steps=2, base_lr=2e-3,
                                                    base_batch=64, warmup_epochs=1, mask_ratio=0.75,
                                                    frames_per_video=30)})


KILL_PRE = _pre()


def test_pretrain_mae_killed_resumes_and_equals_an_uninterrupted_run(tmp_path):
    from test_mae import build_dataset, stores

    from affect_pipeline.mae import pretrain_mae as T

    faces = stores(build_dataset(tmp_path / "data"))
    full = tmp_path / "full" / "pretrain.pt"
    T.pretrain_mae(faces, full, full.with_suffix(".csv"), KILL_PRE, threads=1, device="cpu")

    out, log = tmp_path / "mae" / "pretrain.pt", tmp_path / "killed.log"
    args = ["pretrain_mae", "--faces", *faces, "--out", out, "--curve", out.with_suffix(".csv"),
            "--params", json.dumps(KILL_PRE)]
    resume = T.resume_path(out)
    kill_when(start(log, *args), resume.exists)                           # after epoch 1 is saved
    assert_unfinished(log)
    assert not out.exists() and not out.with_suffix(".csv").exists()
    assert all(p.name.startswith(".") or p == resume for p in out.parent.iterdir())
    epoch = torch.load(resume, weights_only=True)["epoch"]                # complete, loadable
    assert 1 <= epoch < 6

    p = rerun(*args)
    assert f"resuming from {resume} after epoch " in p.stderr
    assert not resume.exists()                                            # removed once done
    a, b = torch.load(full, weights_only=True), torch.load(out, weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a["encoder"][k], b["encoder"][k]) for k in a["encoder"])
    assert all(torch.equal(a["decoder"][k], b["decoder"][k]) for k in a["decoder"])
    assert full.with_suffix(".csv").read_text() == out.with_suffix(".csv").read_text()


# ---------------------------------------------------------------- extra_image_dirs
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """test_mae's 8 face stores (6 train, 2 validation videos of 40 frames) and label stores."""
    return build_dataset(tmp_path_factory.mktemp("data"))


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
