"""common/runtime.py under the accidents of long runs: atomic writes are all or nothing, and the
temporaries of killed writers (``.affect-tmp.X.h5.PID@host``) are removed by the next writer in the
folder while a live writer's are kept, and names the package does not write are never touched (temporaries belong to processes that really ran and died); a
checkpoint that carries pickled code is refused by every stage that loads weights
(``load_checkpoint``, torch.load weights_only=True), and its payload never runs.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from sibling_tests import sibling
from stage_errors import assert_clean_error, evil_checkpoint, fold_args, stage
from stage_inputs import face_store

from affect_pipeline.common.files import atomic_dir, atomic_path, remove_stale_temps, temp_sibling
from affect_pipeline.common.runtime import write_json
from affect_pipeline.common.stores import FaceStore

sibling("temporal")
from test_temporal import SMALL  # noqa: E402  (tests/temporal/test_temporal.py)


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
            "dead here": out.with_name(f".affect-tmp.vid0.h5.{_dead_pid()}@{tag}"),
            "dead here, other output": out.with_name(f".affect-tmp.vid1.h5.{_dead_pid()}@{tag}"),
            "alive here": out.with_name(f".affect-tmp.vid0.h5.{sleeper.pid}@{tag}"),
            "other host, fresh": out.with_name(".affect-tmp.vid0.h5.4242@node17-4026531836"),
            "other host, 48 h old": out.with_name(".affect-tmp.vid0.h5.4243@node17-4026531836"),
            "not ours, fresh": out.with_name(".vid0.h5.tmp4244"),
            "not ours, 48 h old": out.with_name(".vid0.h5.tmp4245@node17-4026531836"),
            "not a temporary": out.with_name("vid0.h5.tmp_notes"),
        }
        for f in files.values():
            f.write_bytes(b"x" * 1000)
        for k in ("other host, 48 h old", "not ours, 48 h old"):
            os.utime(files[k], (old, old))
        caplog.set_level(logging.WARNING)
        face_store(out, 12)
        left = {k for k, f in files.items() if f.exists()}
    finally:
        sleeper.kill()
        sleeper.wait()
    assert left == {"alive here", "other host, fresh", "not ours, fresh", "not ours, 48 h old", "not a temporary"}, left
    assert "removed 3 temporary file(s)" in caplog.text and str(files["dead here"]) in caplog.text
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
    dead = tmp_path / f".affect-tmp.batch.{_dead_pid()}@{temp_sibling(out).name.split('@')[1]}"   # a kill -9 mid-way
    (dead / "c.h5").parent.mkdir()
    (dead / "c.h5").write_bytes(b"3")
    with atomic_dir(out) as t:
        (t / "c.h5").write_bytes(b"3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch"] and [p.name for p in out.iterdir()] == ["c.h5"]


def test_temporary_names_name_their_writer(tmp_path):
    tmp = temp_sibling(tmp_path / "a.json")
    assert tmp.name.startswith(f".affect-tmp.a.json.{os.getpid()}@") and tmp.parent == tmp_path
    with atomic_path(tmp_path / "a.json") as t:
        t.write_text("{}")
        assert t == tmp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


# ---------------------------------------------------------------- checkpoints that carry code
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Feature stores + labels + folds (test_temporal's generator) for the temporal stages."""
    from test_temporal import make_folds, make_synthetic

    d = make_synthetic(tmp_path_factory.mktemp("syn"), "AU", n_train=4, n_val=2, n_test=1, frames=(20, 30))
    make_folds(d, "AU")
    return d


def test_pickled_code_checkpoint_payload_is_live(tmp_path):
    """The attack is real: an unsafe torch.load of this file runs the payload."""
    marker = tmp_path / "PWNED"
    ck = evil_checkpoint(tmp_path / "evil.pt", marker)
    torch.load(ck, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("name", ["visual_features", "train_dcl", "predict"])
def test_pickled_code_checkpoint_is_refused(name, synthetic, tmp_path):
    marker = tmp_path / "PWNED"
    ck = evil_checkpoint(tmp_path / "my model.pt", marker)
    out = tmp_path / "out"
    if name == "visual_features":
        from affect_pipeline.common.stores import write_face_store

        faces = tmp_path / "v.h5"
        with write_face_store(faces, video_id="v", size=32, backend="test", fps=25.0) as w:
            w.append([np.zeros((32, 32, 3), np.uint8)] * 3, np.ones(3, bool), np.ones(3), np.zeros((3, 4)),
                     np.zeros((3, 5, 2)), np.arange(3) / 25)
        args = ["--model", ck, "--faces", faces, "--out", out / "v.h5", "--params", json.dumps({"batch_size": 8})]
    elif name == "train_dcl":
        clb = tmp_path / "clb.json"
        write_json(clb, {"clips": [{"video": "tr0", "start": 0, "length": 8}]})
        args = fold_args(synthetic) + ["--blb", ck, "--clb-clips", clb, "--out", out / "dcl.pt",
                                       "--metrics", out / "m.json", "--curve", out / "c.csv",
                                       "--params", json.dumps(SMALL)]
    else:
        args = fold_args(synthetic) + ["--model", ck, "--index", synthetic["index"], "--out", out / "p.h5"]
    line = assert_clean_error(stage(name, *args), name, ck, "refused")
    assert "weights_only" in line
    assert not marker.exists(), "the checkpoint's code ran"
    assert not out.exists()
