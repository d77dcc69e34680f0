"""The MAE's crop reader (mae/face_reader.py): with cache_gb too small for the crops, DataLoader
workers decode them from the stores, and every batch, down to the trained weights, is what the
in-memory path gives; extra image folders (mae.pretrain.extra_image_dirs) are walked as a shared
disk has them: linked folders followed, hidden files skipped, a folder without images refused.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from test_mae import PRE
from test_pretrain_mae import image_tree, small_store

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.stores import Labels
from affect_pipeline.mae import face_reader as D
from affect_pipeline.mae import pretrain_mae as P


# ---------------------------------------------------------------- the streamed crop loader
@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("faces")
    return {f"vid{v}": str(small_store(root / f"vid{v}.h5", n=30, seed=v)) for v in range(2)}


def test_streamed_crop_loader_yields_what_the_cache_holds(faces):
    """cache_gb too small for the crops: DataLoader workers decode them from the stores, and every
    batch (crops, dataset rows, hence labels) is the one the in-memory path gives."""
    rng = np.random.default_rng(0)
    labels = {v: Labels(rng.normal(size=(30, 2)).astype(np.float32), rng.random(30) > 0.2, "train") for v in faces}
    fs = D.labelled_frames("VA", labels, faces, 32)
    cached, t_cached = D.make_loader(fs.ds, cache_gb=1.0, threads=2)
    streamed, t_streamed = D.make_loader(fs.ds, cache_gb=1e-6, threads=2)
    assert cached.cache is not None and streamed.cache is None and streamed.workers == 1
    assert (t_cached, t_streamed) == (2, 2)          # streamed, the model keeps every thread
    order = rng.permutation(len(fs.y))
    n = 0
    for (a, ia), (b, ib) in zip(cached.batches(order, 7), streamed.batches(order, 7), strict=True):
        assert torch.equal(ia, ib) and torch.equal(a, b) and np.array_equal(fs.y[ia.numpy()], fs.y[ib.numpy()])
        n += len(ia)
    assert n == len(fs.y) > 40


def test_pretraining_on_streamed_crops_equals_cached(faces, tmp_path):
    """The trainer through both paths (1 thread each: a different thread count changes float sums)."""
    params = json.loads(json.dumps(PRE))
    params["pretrain"].update(epochs=1, batch_size=16, accum_steps=1, frames_per_video=0)
    encs = []
    for name, gb in (("cached", 1.0), ("streamed", 1e-6)):
        params["pretrain"]["cache_gb"] = gb
        out = tmp_path / name / "pretrain.pt"
        P.pretrain_mae(list(faces.values()), out, out.with_suffix(".csv"), params, threads=1, device="cpu")
        encs.append(torch.load(out, weights_only=True)["encoder"])
    assert all(torch.equal(encs[0][k], encs[1][k]) for k in encs[0])


# ---------------------------------------------------------------- extra image folders
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
