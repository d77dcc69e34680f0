"""train_blb as a rule runs it (no resume file by design: minutes, not days): killed inside the write
of its checkpoint (a FIFO planted at the temporary's name holds torch.save half-way) or of its
metrics, it leaves nothing under an unfinished output's name, and the rerun ends equal to an
uninterrupted run; a feature shard copied half-way is one clear error; the per-video (ERI) path,
train_blb + predict, gives identical arrays for one seed and other weights for another.
(The frame tasks' chain train_blb -> mine_hard_clips -> train_dcl -> predict is checked for
determinism in test_temporal.py::test_chain_is_deterministic_and_predict_covers_every_test_frame.)
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from kill_jobs import assert_unfinished, kill_when, only_tmp_left, rerun, start
from stage_errors import assert_clean_error, fold_args, stage
from test_temporal import SMALL

torch.set_num_threads(1)


# ---------------------------------------------------------------- killed while writing
def plant_fifo(out: Path, pid: int) -> Path:
    """A FIFO under the temporary name process ``pid`` will write ``out`` through
    (runtime.temp_sibling: ``.affect-tmp.{name}.{pid}@{host}``): its write then blocks there, between the
    temporary's creation and the rename, for as long as the test wants, with no hook in the code."""
    from affect_pipeline.common.files import temp_sibling

    head, mine, tail = temp_sibling(out).name.rpartition(f".{os.getpid()}@")
    assert mine, temp_sibling(out)
    fifo = out.with_name(f"{head}.{pid}@{tail}")
    out.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(fifo)
    return fifo


def writing_to(pid: int, path: Path) -> bool:
    """Process ``pid`` holds ``path`` open (for its write)."""
    links = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            links.append(os.readlink(fd))
    return os.path.realpath(path) in links


def blocked_opening_fifo(pid: int) -> bool:
    """Process ``pid`` sleeps in the kernel's FIFO open, waiting for a reader."""
    wchan = Path(f"/proc/{pid}/wchan").read_text()
    if wchan == "0":
        pytest.skip("this kernel hides /proc/PID/wchan: cannot tell where the job waits")
    return wchan in ("wait_for_partner", "fifo_open")


BLB_OUTS = ("blb.pt", "blb_metrics.json", "blb_curve.csv")


@pytest.fixture(scope="module")
def blb_job(tmp_path_factory):
    """A train_blb job's arguments and an uninterrupted run's outputs."""
    from test_temporal import SMALL, make_folds, make_synthetic

    root = tmp_path_factory.mktemp("blb")
    d = make_synthetic(root / "data", "VA", n_train=8, n_val=2, n_test=1, frames=(60, 80))
    make_folds(d, "VA")
    params = {**SMALL, "blb": {**SMALL["blb"], "epochs": 12}}
    base = ["train_blb", "--task", "VA", "--fold", "official", "--folds", d["folds"], "--labels", d["labels"],
            "--features", *d["features"], "--params", json.dumps(params), "--seed", "1"]
    rerun(*base, *blb_outs(root / "ref"))
    return base, root / "ref"


def blb_outs(o: Path) -> list:
    return [a for flag, name in zip(("--out", "--metrics", "--curve"), BLB_OUTS) for a in (flag, o / name)]


def test_train_blb_killed_while_writing_its_checkpoint(blb_job, tmp_path):
    """SIGKILL with torch.save's zip half-way into the checkpoint's temporary (the FIFO holds it):
    nothing under an output's name; the rerun ends equal to an uninterrupted run."""
    base, ref = blb_job
    assert (ref / "blb.pt").stat().st_size > 8 * 4096, "the checkpoint must outgrow the pipe to block"
    o, log = tmp_path / "m", tmp_path / "killed.log"
    proc = start(log, *base, *blb_outs(o))
    fifo = plant_fifo(o / "blb.pt", proc.pid)
    rd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)      # the writer's open succeeds, its writes block
    fcntl.fcntl(rd, fcntl.F_SETPIPE_SZ, 4096)             # once 4 KiB wait unread
    head = b""

    def mid_write() -> bool:                              # the zip's first bytes have arrived
        nonlocal head
        with contextlib.suppress(BlockingIOError):
            head += os.read(rd, 4 - len(head))
        return len(head) == 4
    try:
        kill_when(proc, mid_write, timeout=240, before_kill=lambda: writing_to(proc.pid, fifo))
    finally:
        os.close(rd)
    assert head == b"PK\x03\x04", head                             # torch.save's zip had begun
    assert_unfinished(log)
    for name in BLB_OUTS:
        only_tmp_left(o, name)
    _rerun_equals(base, o, ref, fifo)


def test_train_blb_killed_while_opening_its_metrics(blb_job, tmp_path):
    """SIGKILL after the checkpoint is published, with the metrics' temporary created but not
    written: the checkpoint is complete (atomic), no metrics or curve; the rerun redoes all three."""
    base, ref = blb_job
    o, log = tmp_path / "m", tmp_path / "killed.log"
    proc = start(log, *base, *blb_outs(o))
    fifo = plant_fifo(o / "blb_metrics.json", proc.pid)
    kill_when(proc, lambda: (o / "blb.pt").exists() and blocked_opening_fifo(proc.pid), timeout=240)
    assert_unfinished(log)
    a, b = torch.load(ref / "blb.pt", weights_only=True), torch.load(o / "blb.pt", weights_only=True)
    assert all(torch.equal(a["blb_state"][k], b["blb_state"][k]) for k in a["blb_state"])
    for name in BLB_OUTS[1:]:
        only_tmp_left(o, name)
    _rerun_equals(base, o, ref, fifo)


def _rerun_equals(base: list, o: Path, ref: Path, fifo: Path) -> None:
    assert fifo.exists()                                             # the kill came before the rename
    fifo.unlink()
    rerun(*base, *blb_outs(o))
    assert sorted(p.name for p in o.iterdir()) == sorted(BLB_OUTS)
    assert (o / "blb_metrics.json").read_text() == (ref / "blb_metrics.json").read_text()
    assert (o / "blb_curve.csv").read_text() == (ref / "blb_curve.csv").read_text()
    a, b = torch.load(ref / "blb.pt", weights_only=True), torch.load(o / "blb.pt", weights_only=True)
    assert all(torch.equal(a["blb_state"][k], b["blb_state"][k]) for k in a["blb_state"])


# ---------------------------------------------------------------- bad inputs
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Feature stores + labels + folds (test_temporal's generator) for the temporal stages."""
    from test_temporal import make_folds, make_synthetic

    d = make_synthetic(tmp_path_factory.mktemp("syn"), "AU", n_train=4, n_val=2, n_test=1, frames=(20, 30))
    make_folds(d, "AU")
    return d


def test_truncated_feature_shard_train_blb(synthetic, tmp_path):
    """A feature shard copied half-way (a full disk, an interrupted rsync): one clean error naming
    the shard, and no model, metrics or curve written."""
    d = dict(synthetic)
    feats = [tmp_path / "features" / Path(f).name for f in d["features"]]
    for src, dst in zip(d["features"], feats):          # private copies: the fixture stays intact
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(Path(src).read_bytes())
    bad = feats[1]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    d["features"] = [str(f) for f in feats]
    m = tmp_path / "blb"
    p = stage("train_blb", *fold_args(d), "--out", m / "blb.pt", "--metrics", m / "blb_metrics.json",
              "--curve", m / "blb_curve.csv", "--params", json.dumps(SMALL))
    assert_clean_error(p, "train_blb", bad, "truncated or corrupt")
    assert not m.exists() or not any(m.iterdir())


# ---------------------------------------------------------------- determinism
def test_eri_train_and_predict_twice_are_identical(tmp_path):
    """Per-video (ERI) models: two train_blb + predict chains with one seed -> identical arrays;
    another seed -> different weights (the seed is really used)."""
    from test_temporal import SMALL, make_folds, make_synthetic, run

    d = make_synthetic(tmp_path / "data", "ERI", n_train=6, n_val=2, n_test=2, frames=(20, 30))
    make_folds(d, "ERI")
    params = {**SMALL, "eri": {**SMALL["eri"], "epochs": 2}}
    preds = {}
    for rep, seed in (("a", 5), ("b", 5), ("c", 6)):
        o = tmp_path / rep
        args = ["--task", "ERI", "--fold", "official", "--folds", d["folds"], "--labels", d["labels"],
                "--features", *d["features"]]
        assert run("train_blb", args + ["--out", o / "blb.pt", "--metrics", o / "m.json", "--curve", o / "c.csv"],
                   params, seed) == 0
        assert run("predict", args + ["--model", o / "blb.pt", "--index", d["index"], "--out", o / "p.h5"],
                   None, seed) == 0
        with h5py.File(o / "p.h5") as f:
            preds[rep] = {f"{s}/{v}": f[s][v]["pred"][:] for s in f for v in f[s]}
    assert preds["a"].keys() == preds["b"].keys()
    assert all(np.array_equal(preds["a"][k], preds["b"][k]) for k in preds["a"])
    assert any(not np.array_equal(preds["a"][k], preds["c"][k]) for k in preds["a"])
