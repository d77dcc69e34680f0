"""visual_features as a rule runs it (a fresh interpreter): two runs give byte-identical shards
(CPU, one seed and thread count); killed while it streams videos into ``{out}.partial`` (one
video's group flushed, the next being computed), an older ``out`` is untouched and the rerun keeps
the flushed video, computes only the rest and ends equal to an uninterrupted run; a face store or
checkpoint copied half-way is one clear error. GPU behaviour: docs/bad_inputs.md (Determinism).
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import REPO
from kill_jobs import kill_when, rerun, start
from stage_errors import assert_clean_error, stage
from stage_inputs import face_store, finetuned_checkpoint, h5_arrays, sha, stage_cmd

from affect_pipeline.common.stores import write_face_store
from affect_pipeline.mae import visual_features as VF

torch.set_num_threads(1)


ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1"}


# ---------------------------------------------------------------- determinism
def test_visual_features_twice_are_byte_identical(tmp_path):
    ck = finetuned_checkpoint(tmp_path / "ft.pt")
    faces = face_store(tmp_path / "v.h5", 60)
    outs = []
    for rep in ("a", "b"):
        out = tmp_path / rep / "v.h5"
        p = subprocess.run(stage_cmd("visual_features", "--model", ck, "--faces", faces, "--out", out,
                                     "--params", json.dumps({"batch_size": 16})),
                           env=ENV, capture_output=True, text=True, timeout=180)
        assert p.returncode == 0, p.stderr[-3000:]
        outs.append(out)
    a, b = h5_arrays(outs[0], "v"), h5_arrays(outs[1], "v")     # the shard's group of video v
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert a["features"][a["valid"]].std() > 0          # real, varying features, not zeros
    assert sha(outs[0]) == sha(outs[1])                  # HDF5 bytes too (no timestamps inside)


# ---------------------------------------------------------------- batches across videos
def faceless_store(path: Path, n: int) -> Path:
    """A store of ``n`` frames, none with a face (its group is all zeros, never run through the model)."""
    with write_face_store(path, video_id=path.stem, size=64, backend="test", fps=25.0) as w:
        w.append([None] * n, np.zeros(n, bool), np.zeros(n), np.zeros((n, 4)), np.zeros((n, 5, 2)), np.arange(n) / 25)
    return path


def test_many_short_videos_share_batches_and_match_one_video_a_job(tmp_path, monkeypatch):
    """A job over many 1-3 frame clips (Hume-Reaction's shape), a faceless one and two that span
    batches runs one forward per ``batch_size`` found frames across videos and one progress bar,
    and writes each video's group as a job of that video alone does: same valid rows and attrs,
    features equal up to float16 rounding (the shard's dtype) and logits to float32 tolerance (a
    matmul's sums depend on the batch's row count)."""
    ck = finetuned_checkpoint(tmp_path / "ft.pt")
    sizes = [1, 2, 3, 2, 1, 3, 0, 3, 21, 2, 1, 3, 2, 30, 1]
    faces = [faceless_store(tmp_path / "faces" / f"c{i:02d}.h5", 4) if n == 0 else
             face_store(tmp_path / "faces" / f"c{i:02d}.h5", n, seed=i) for i, n in enumerate(sizes)]
    params = {"batch_size": 8}
    forwards, bars = [], []
    embed, progress = VF.embed_crops, VF.progress
    monkeypatch.setattr(VF, "embed_crops", lambda model, crops, *a: forwards.append(len(crops)) or embed(model, crops, *a))
    monkeypatch.setattr(VF, "progress", lambda **kw: bars.append(progress(**kw)) or bars[-1])
    VF.visual_features(ck, faces, tmp_path / "job.h5", params, 1, "cpu")
    found = sum(int((np.arange(n) % 10 != 3).sum()) for n in sizes)   # face_store: frame 3 of 10 has no face
    assert forwards == [8] * (found // 8) + [found % 8][:found % 8]
    assert len(bars) == 1 and bars[0].n == bars[0].total == len(faces)

    job = _shard(tmp_path / "job.h5")
    for f in faces:
        alone = _shard(VF.visual_features(ck, [f], tmp_path / "alone" / f.name, params, 1, "cpu")[0])[f.stem]
        got = job[f.stem]
        assert {k: v for k, v in got.items() if k.startswith("attr:")} == {k: v for k, v in alone.items()
                                                                           if k.startswith("attr:")}
        assert np.array_equal(got["valid"], alone["valid"]) and got["features"].dtype == np.float16
        np.testing.assert_allclose(got["features"], alone["features"], rtol=2**-10, atol=2**-24)
        np.testing.assert_allclose(got["logits"], alone["logits"], rtol=1e-5, atol=1e-6)
    assert not job["c06"]["features"].any() and job["c13"]["features"][job["c13"]["valid"]].std() > 0


# ---------------------------------------------------------------- killed while streaming
VF_VIDEOS = {"v0": 90, "v1": 900, "v2": 60}   # v1 is long: the job is killed while it computes it


def _vf_inputs(root: Path) -> list:
    ck = finetuned_checkpoint(root / "ft.pt")
    faces = [face_store(root / "faces" / f"{v}.h5", n, seed=i) for i, (v, n) in enumerate(VF_VIDEOS.items())]
    return ["--model", ck, "--faces", *faces, "--params", json.dumps({"batch_size": 32})]


def _shard(path: Path) -> dict:
    with h5py.File(path) as f:
        groups = sorted(f)
    return {g: h5_arrays(path, g) for g in groups}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a.values(), b.values()))


def test_visual_features_killed_while_streaming_the_shard_then_resumed(tmp_path):
    """Killed with v0's group flushed into ``{out}.partial`` and v1 being computed: the old shard
    under ``out`` is untouched, v0 is kept and not recomputed, and the result equals a clean run."""
    inputs = _vf_inputs(tmp_path)
    ref = tmp_path / "ref" / "shard.h5"
    rerun("visual_features", *inputs, "--out", ref)
    out, log = tmp_path / "mae_AU" / "shard.h5", tmp_path / "killed.log"
    partial = Path(f"{out}.partial")
    out.parent.mkdir()
    out.write_bytes(b"an older shard, to be replaced only by a complete one\n")
    old = out.read_bytes()
    proc = start(log, "visual_features", *inputs, "--out", out)
    kill_when(proc, lambda: "video v0: " in log.read_text())     # v0's group flushed; v1 (810 faces) under way
    text = log.read_text()
    assert "video v1: " not in text and " finished in " not in text, "killed too late: v1 was written"
    assert out.read_bytes() == old                                   # the old output, untouched
    # the killed writer's lock file stays; nobody holds its lock, so the rerun takes it over
    assert {p.name for p in out.parent.iterdir()} == {out.name, partial.name, f"{partial.name}.lock"}
    with h5py.File(partial) as f:                                    # what was flushed survived the kill
        assert set(f) == {"v0"} and f["v0"].attrs["complete"]
    kept, ref_v0 = _shard(partial)["v0"], _shard(ref)["v0"]
    assert all(np.array_equal(kept[k], ref_v0[k]) for k in ("features", "valid", "logits"))

    p = rerun("visual_features", *inputs, "--out", out)
    assert f"{partial}: resuming, 1 videos already done" in p.stderr
    assert f"3 videos, 1 already in {partial}, 2 to compute" in p.stderr
    assert "video v0: " not in p.stderr and "video v1: " in p.stderr and "video v2: " in p.stderr
    assert not partial.exists() and {p.name for p in out.parent.iterdir()} == {out.name}
    assert _same(_shard(out), _shard(ref))
    with h5py.File(out) as f, h5py.File(ref) as g:
        assert dict(f.attrs) == dict(g.attrs)


# ---------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("broken", ["faces", "model"])
def test_truncated_face_store_or_checkpoint_visual_features(broken, tmp_path):
    """A store or checkpoint copied half-way (a full disk, an interrupted rsync)."""
    paths = {"model": finetuned_checkpoint(tmp_path / "finetune_AU.pt"), "faces": face_store(tmp_path / "v 1.h5", 40)}
    data = paths[broken].read_bytes()
    paths[broken].write_bytes(data[: len(data) // 2])
    out = tmp_path / "mae_AU" / "v 1.h5"
    p = stage("visual_features", "--model", paths["model"], "--faces", paths["faces"], "--out", out,
              "--params", json.dumps({"batch_size": 8}))
    assert_clean_error(p, "visual_features", paths[broken], "truncated or corrupt")
    assert not out.exists()
