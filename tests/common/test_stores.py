"""Face stores and feature shards under the accidents of long runs (common/stores.py): an HDF5 file
another process holds open is reported as locked, never "corrupt, delete it", and the held
``.partial`` of a job still running elsewhere is not deleted; a ``.partial`` shard truncated or with
damaged metadata starts afresh. Everything is real: a second process holds the HDF5 lock, files are
truncated or overwritten on disk.
"""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from stage_inputs import face_store

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.feature_shards import FeatureShardWriter
from affect_pipeline.common.stores import FaceStore


def hold_open(path: Path, mode: str = "a") -> subprocess.Popen:
    """A second process with ``path`` open through h5py (which locks it) until its stdin closes."""
    code = f"import h5py, sys; f = h5py.File({str(path)!r}, {mode!r}); print('open', flush=True); sys.stdin.read()"
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "open"
    return p


def release(p: subprocess.Popen) -> None:
    p.stdin.close()
    p.wait(timeout=30)


# ---------------------------------------------------------------- HDF5 locks
def test_a_locked_face_store_is_reported_as_locked_not_corrupt(tmp_path):
    store = face_store(tmp_path / "vid0.h5", 12)
    holder = hold_open(store, "a")
    try:
        with pytest.raises(PipelineError) as e:
            FaceStore(store)
    finally:
        release(holder)
    msg = str(e.value)
    assert str(store) in msg and "locked by another process" in msg and "HDF5_USE_FILE_LOCKING=FALSE" in msg
    assert "corrupt" not in msg and "delete" not in msg
    with FaceStore(store) as fs:                                      # the lock gone, it reads
        assert fs.n_frames == 12


def _partial_shard(out: Path, n_videos: int = 3) -> Path:
    w = FeatureShardWriter(out, extractor="t", fingerprint="fp")
    for v in range(n_videos):
        w.write(f"v{v}", np.random.default_rng(v).random((20, 8)), np.ones(20, bool), fps=25.0)
    w.abort()
    return Path(f"{out}.partial")


def test_a_partial_shard_another_job_holds_is_not_deleted(tmp_path):
    """A job left running elsewhere still writes the .partial: the rerun stops, naming the lock,
    instead of deleting the file under it and starting afresh."""
    partial = _partial_shard(tmp_path / "shard.h5")
    holder = hold_open(partial, "a")
    try:
        with pytest.raises(PipelineError, match="locked by another process"):
            FeatureShardWriter(tmp_path / "shard.h5", extractor="t", fingerprint="fp")
        assert partial.exists()
    finally:
        release(holder)
    w = FeatureShardWriter(tmp_path / "shard.h5", extractor="t", fingerprint="fp")
    assert all(w.done(f"v{v}") for v in range(3))
    w.abort()


# ---------------------------------------------------------------- damaged partial shards
def test_a_truncated_partial_shard_starts_afresh(tmp_path, caplog):
    partial = _partial_shard(tmp_path / "shard.h5")
    with open(partial, "r+b") as fh:
        fh.truncate(partial.stat().st_size // 2)
    w = FeatureShardWriter(tmp_path / "shard.h5", extractor="t", fingerprint="fp")
    assert not any(w.done(f"v{v}") for v in range(3)) and str(partial) in caplog.text
    w.write("v0", np.zeros((4, 8)), np.ones(4, bool), fps=25.0)
    w.close(["v0"])
    assert (tmp_path / "shard.h5").exists() and not partial.exists()


def test_a_partial_shard_with_damaged_metadata_starts_afresh(tmp_path, caplog):
    """HDF5 opens it, but its root group's symbol table is overwritten (a disk or copy error):
    the rerun warns, naming the file, and starts afresh instead of failing every retry."""
    partial = _partial_shard(tmp_path / "shard.h5")
    raw = bytearray(partial.read_bytes())
    at = raw.index(b"SNOD")                                           # the root group's first node
    raw[at + 8:at + 128] = bytes(range(120))
    partial.write_bytes(bytes(raw))
    caplog.set_level(logging.WARNING)
    w = FeatureShardWriter(tmp_path / "shard.h5", extractor="t", fingerprint="fp")
    assert "unreadable partial shard" in caplog.text and str(partial) in caplog.text
    assert not any(w.done(f"v{v}") for v in range(3))
    w.write("v0", np.zeros((4, 8)), np.ones(4, bool), fps=25.0)
    w.close(["v0"])
    with h5py.File(tmp_path / "shard.h5") as f:
        assert list(f) == ["v0"]
