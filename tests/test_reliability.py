"""Reliability under the accidents of long runs: HDF5 locks, damaged resume files, temporaries of
killed jobs, hung tests, machines without Slurm, crops too many to cache.

Everything is real: a second process holds the HDF5 lock, files are truncated or overwritten on
disk, temporaries belong to processes that ran and died, pytest runs hung tests in a subprocess.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import REPO
from test_mae import PRE, TINY, NotAWeight, _face, write_store

from affect_pipeline.common.runtime import (
    PipelineError,
    atomic_dir,
    atomic_path,
    remove_stale_temps,
    temp_sibling,
)
from affect_pipeline.common.stores import FaceStore, FeatureShardWriter, Labels
from affect_pipeline.mae import face_reader as D
from affect_pipeline.mae import model as M
from affect_pipeline.common.digests import ImportGraph, code_digest
from affect_pipeline.mae import pretrain_mae as P


def hold_open(path: Path, mode: str = "a") -> subprocess.Popen:
    """A second process with ``path`` open through h5py (which locks it) until its stdin closes."""
    code = f"import h5py, sys; f = h5py.File({str(path)!r}, {mode!r}); print('open', flush=True); sys.stdin.read()"
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "open"
    return p


def release(p: subprocess.Popen) -> None:
    p.stdin.close()
    p.wait(timeout=30)


def small_store(path: Path, n: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    found = np.ones(n, bool)
    found[3] = False
    write_store(path, rng.integers(0, 4, n), found, rng, _face())
    return path


# ---------------------------------------------------------------- MAE pretraining: resume only the same run
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


# ---------------------------------------------------------------- training scripts' checkpoints
def _mae_training_checkpoint(path, cfg, **extra_args):
    """A checkpoint as facebookresearch/mae's main_pretrain.py saves one (misc.save_model): the
    full MAE's state dict (timm encoder keys + decoder_* / mask_token), optimizer, scaler, args."""
    torch.manual_seed(3)
    mae = M.MaskedAutoencoderViT(**cfg)
    enc = {k.removeprefix("encoder."): v for k, v in mae.state_dict().items() if k.startswith("encoder.")}
    dec = {f"decoder_{k.removeprefix('decoder.')}": v for k, v in mae.state_dict().items() if k.startswith("decoder.")}
    opt = torch.optim.AdamW(mae.parameters(), lr=1e-3, betas=(0.9, 0.95))
    mae(torch.rand(2, 3, 32, 32), 0.75)[0].backward()
    opt.step()
    args = argparse.Namespace(batch_size=64, epochs=800, accum_iter=1, model="mae_vit_base_patch16", input_size=224,
                              mask_ratio=0.75, norm_pix_loss=True, weight_decay=0.05, lr=None, blr=1.5e-4,
                              min_lr=0.0, warmup_epochs=40, data_path="/datasets01/imagenet_full_size/061417/",
                              output_dir="./output_dir", device="cuda", seed=0, resume="", start_epoch=0,
                              num_workers=10, pin_mem=True, world_size=8, local_rank=-1, dist_url="env://",
                              distributed=True, rank=0, gpu=0, dist_backend="nccl", **extra_args)
    torch.save({"model": {**enc, **dec, "mask_token": torch.zeros(1, 1, cfg["decoder_embed_dim"])},
                "optimizer": opt.state_dict(), "epoch": 3, "args": args,
                "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                           "growth_interval": 2000, "_growth_tracker": 0}}, path)
    return enc


def test_import_accepts_a_facebookresearch_mae_training_checkpoint(tmp_path):
    cfg = M.model_config(TINY)
    src = tmp_path / "checkpoint-3.pth"
    enc = _mae_training_checkpoint(src, cfg, lr_scale=np.float64(1.0), np_seed=np.int64(7),
                                   mean=np.array([0.485, 0.456, 0.406]), crop=np.arange(4, dtype=np.int32),
                                   dtype=np.dtype("float32"), names=np.array(["a", 1], dtype=object))
    ck = M.import_mae_face(src, TINY)
    assert ck["kind"] == "mae_import" and set(ck["encoder"]) == set(enc)
    assert all(torch.equal(ck["encoder"][k], enc[k]) for k in enc)
    # the same, pickled the way numpy 1 names its functions (numpy.core.multiarray), older torch format
    buf = io.BytesIO()
    torch.save(torch.load(src, weights_only=False), buf, _use_new_zipfile_serialization=False)
    old = tmp_path / "checkpoint-numpy1.pth"
    old.write_bytes(buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert b"numpy.core.multiarray\n_reconstruct" in old.read_bytes()
    assert all(torch.equal(M.import_mae_face(old, TINY)["encoder"][k], enc[k]) for k in enc)


class RunsCode:
    """Unpickling this runs a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("payload", ["os.system", "custom class in args"])
def test_import_refuses_checkpoints_that_run_code(payload, tmp_path):
    cfg = M.model_config(TINY)
    src, marker = tmp_path / "checkpoint.pth", tmp_path / "pwned"
    bad = RunsCode(marker) if payload == "os.system" else NotAWeight()
    _mae_training_checkpoint(src, cfg, hook=bad)
    with pytest.raises(PipelineError) as e:
        M.import_mae_face(src, TINY)
    msg = str(e.value)
    assert str(src) in msg and "refused to load" in msg and "weights_only" in msg
    assert ("system" if payload == "os.system" else "NotAWeight") in msg
    assert not marker.exists()


# ---------------------------------------------------------------- HDF5 locks
def test_a_locked_face_store_is_reported_as_locked_not_corrupt(tmp_path):
    store = small_store(tmp_path / "vid0.h5")
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


# ---------------------------------------------------------------- temporaries of killed jobs
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_temporaries_of_killed_writers_are_removed_by_the_next_writer(tmp_path, caplog):
    out = tmp_path / "faces" / "vid0.h5"
    out.parent.mkdir()
    tag = temp_sibling(out).name.split("@", 1)[1]
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    old = time.time() - 48 * 3600
    try:
        files = {
            "dead here": out.with_name(f".vid0.h5.tmp{_dead_pid()}@{tag}"),
            "dead here, other output": out.with_name(f".vid1.h5.tmp{_dead_pid()}@{tag}"),
            "alive here": out.with_name(f".vid0.h5.tmp{sleeper.pid}@{tag}"),
            "other host, fresh": out.with_name(".vid0.h5.tmp4242@node17-4026531836"),
            "other host, 48 h old": out.with_name(".vid0.h5.tmp4243@node17-4026531836"),
            "older code, fresh": out.with_name(".vid0.h5.tmp4244"),
            "older code, 48 h old": out.with_name(".vid0.h5.tmp4245"),
            "not a temporary": out.with_name("vid0.h5.tmp_notes"),
        }
        for f in files.values():
            f.write_bytes(b"x" * 1000)
        for k in ("other host, 48 h old", "older code, 48 h old"):
            os.utime(files[k], (old, old))
        caplog.set_level(logging.WARNING)
        small_store(out)
        left = {k for k, f in files.items() if f.exists()}
    finally:
        sleeper.kill()
        sleeper.wait()
    assert left == {"alive here", "other host, fresh", "older code, fresh", "not a temporary"}, left
    assert "removed 4 temporary file(s)" in caplog.text and str(files["dead here"]) in caplog.text
    assert FaceStore(out).n_frames == 12
    # the sleeper is dead now: its temporary goes with the next write there
    assert remove_stale_temps(out.parent) == [files["alive here"]]


def test_atomic_dir_is_all_or_nothing_and_a_dead_writers_folder_goes(tmp_path):
    out = tmp_path / "batch"
    with atomic_dir(out) as t:
        (t / "a.h5").write_bytes(b"1")
    with pytest.raises(RuntimeError), atomic_dir(out) as t:    # a failing rewrite keeps the old folder
        (t / "b.h5").write_bytes(b"2")
        raise RuntimeError("detector crashed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch"] and [p.name for p in out.iterdir()] == ["a.h5"]
    dead = tmp_path / f".batch.tmp{_dead_pid()}@{temp_sibling(out).name.split('@')[1]}"   # a kill -9 mid-way
    (dead / "c.h5").parent.mkdir()
    (dead / "c.h5").write_bytes(b"3")
    with atomic_dir(out) as t:
        (t / "c.h5").write_bytes(b"3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch"] and [p.name for p in out.iterdir()] == ["c.h5"]


def test_temporary_names_name_their_writer(tmp_path):
    tmp = temp_sibling(tmp_path / "a.json")
    assert tmp.name.startswith(f".a.json.tmp{os.getpid()}@") and tmp.parent == tmp_path
    with atomic_path(tmp_path / "a.json") as t:
        t.write_text("{}")
        assert t == tmp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


# ---------------------------------------------------------------- pytest-timeout
def test_pytest_timeout_is_configured(pytestconfig):
    assert pytestconfig.pluginmanager.hasplugin("timeout")
    assert float(pytestconfig.getini("timeout")) >= 1200 and pytestconfig.getini("timeout_method") == "thread"


def test_a_hung_test_is_stopped(tmp_path):
    """Under the project's pytest settings a test that hangs ends with a timeout, not never."""
    (tmp_path / "test_hang.py").write_text(
        "import time, pytest\n\n@pytest.mark.timeout(2)\ndef test_hangs():\n    time.sleep(120)\n")
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "pytest", "-c", str(REPO / "pyproject.toml"), "-p", "no:cacheprovider",
                        str(tmp_path / "test_hang.py")], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode != 0 and time.time() - t0 < 30
    assert "Timeout" in r.stdout + r.stderr, r.stdout[-2000:]


# ---------------------------------------------------------------- Slurm tests without Slurm
def _fake_client(folder: Path, name: str, out: str, rc: int) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(f"#!/bin/sh\necho '{out}' >&2\nexit {rc}\n")
    (folder / name).chmod(0o755)


def test_slurm_tests_skip_with_a_reason_where_slurm_cannot_run_them(tmp_path, monkeypatch):
    """The skip logic of tests/test_slurm.py, against PATHs without Slurm, and with a Slurm whose
    controller answers but refuses the tests' jobs (a login node of a cluster, no fake GPUs).
    The sinfo/sbatch stand-ins are shell scripts: the only Slurm here is the one CI starts."""
    import test_slurm

    bare = tmp_path / "bare"
    bare.mkdir()
    monkeypatch.setenv("PATH", str(bare))
    assert "no Slurm client" in test_slurm._slurm_state()
    fake = tmp_path / "fake"
    _fake_client(fake, "sinfo", "idle", 0)
    _fake_client(fake, "sbatch", "sbatch: error: Batch job submission failed: Requested node configuration "
                                 "is not available", 1)
    monkeypatch.setenv("PATH", f"{fake}:/usr/bin:/bin")
    reason = test_slurm._slurm_state()
    assert reason and "would not run the tests' jobs" in reason and "Requested node configuration" in reason
    _fake_client(fake, "sinfo", "slurm_load_partitions: Unable to contact slurm controller", 1)
    assert "sinfo failed" in test_slurm._slurm_state()
    _fake_client(fake, "sinfo", "idle", 0)
    _fake_client(fake, "sbatch", "sbatch: Job 7 to start at 2030-01-01T00:00:00 using 2 processors", 0)
    assert test_slurm._slurm_state() is None                          # a usable Slurm: the tests run


def test_the_slurm_tests_report_their_skip_reason():
    """`pytest -m slurm` where no Slurm runs: skipped with the reason, not failed."""
    if _slurm_reason() is None:
        pytest.skip("a usable Slurm runs here: tests/test_slurm.py runs its tests")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-m", "slurm", "-p", "no:cacheprovider",
                        str(REPO / "tests" / "test_slurm.py")], capture_output=True, text=True, timeout=120,
                       cwd=REPO, env={**os.environ, "AFFECT_REQUIRE_SLURM": "0"})
    assert r.returncode == 0, r.stdout[-3000:]
    assert "2 skipped" in r.stdout and "SKIPPED" in r.stdout and "Slurm" in r.stdout, r.stdout[-3000:]


def _slurm_reason():
    import test_slurm

    return test_slurm._REASON


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
    assert (t_cached, t_streamed) == (2, 1)
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
