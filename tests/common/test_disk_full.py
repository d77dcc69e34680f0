"""A full disk (ENOSPC) or quota (EDQUOT) during a write is one line, ``ERROR [stage]: no space left
on device writing PATH`` (PATH: the output the user asked for, never a temporary name), rc 1; a
resumable ``{out}.partial`` is kept and resumed once there is room, and nothing half-written is
left under a final name. The stages run on a small tmpfs (mounted here; skipped where mounting is
not permitted) filled to just below what their output needs.

Before: a feature shard's HDF5 flush hit ENOSPC and the job died of SIGSEGV (rc 139) with no
message; extract_frames ended with a raw ``soundfile.LibsndfileError: System error``.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import h5py
import numpy as np
import pytest
from stage_errors import ENV, assert_clean_error, stage
from stage_inputs import face_store, finetuned_checkpoint

NO_SPACE = "no space left on device writing"


class SmallDisk(type(Path())):
    """A folder on a small tmpfs; :meth:`fill` leaves about ``free`` bytes on it."""

    def fill(self, free: int) -> Path:
        st = os.statvfs(self)
        filler = self / f"filler-{uuid.uuid4().hex[:6]}"
        filler.write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - free))
        return filler


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of 2 MiB at ``tmp_path/disk`` (unmounted after the test)."""
    disk = SmallDisk(tmp_path / "disk")
    disk.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(disk)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root / CAP_SYS_ADMIN): {p.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if not p.name.startswith("filler"))


# ---------------------------------------------------------------- a wav that does not fit
def test_extract_frames_on_a_full_disk_names_the_wav(small_disk, tmp_path):
    from affect_pipeline.data.video_writer import Soundtrack, write_video

    rng = np.random.default_rng(0)
    video = write_video(tmp_path / "talk.mp4", [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(100)],
                        25, audio=Soundtrack(rng.uniform(-0.5, 0.5, 16000 * 4)))
    out, wav = small_disk / "frames" / "talk.json", small_disk / "audio" / "talk.wav"
    (small_disk / "frames").mkdir()
    (small_disk / "audio").mkdir()
    small_disk.fill(64 << 10)                                  # the 4 s wav needs 128 KB
    p = stage("extract_frames", "--video", video, "--out", out, "--audio-out", wav, "--sample-rate", 16000)
    line = assert_clean_error(p, "extract_frames", f"{NO_SPACE} {wav}")
    assert line.endswith(f"{NO_SPACE} {wav}"), line
    assert leftovers(small_disk) == ["audio", "frames"]        # neither output, no temporary


# ---------------------------------------------------------------- a feature shard that does not fit
def test_visual_features_on_a_full_disk_keeps_the_partial_and_resumes(small_disk, tmp_path):
    """v0 fits, v1 (2000 frames, ~480 KB) does not: v0 stays in ``{out}.partial``; with room again
    the rerun resumes it and computes only v1."""
    ck = finetuned_checkpoint(tmp_path / "ft.pt")
    faces = [face_store(tmp_path / "faces" / f"{v}.h5", n, seed=i) for i, (v, n) in enumerate({"v0": 90, "v1": 2000}.items())]
    args = ["--model", ck, "--faces", *faces, "--params", json.dumps({"batch_size": 64})]
    out = small_disk / "mae_AU" / "official.h5"
    partial = Path(f"{out}.partial")
    out.parent.mkdir()
    filler = small_disk.fill(420 << 10)
    p = stage("visual_features", *args, "--out", out, timeout=300)
    assert p.returncode != -11 and p.returncode != 139, "the job died of SIGSEGV (HDF5 flush on a full disk)"
    line = assert_clean_error(p, "visual_features", f"{NO_SPACE} {out}")
    assert line.endswith(f"{NO_SPACE} {out}"), line
    assert not out.exists() and partial.exists()
    with h5py.File(partial, "r") as f:                         # the finished video is kept, readable
        assert set(f) == {"v0"} and f["v0"].attrs["complete"]
    assert not [n for n in leftovers(small_disk) if n.startswith(".affect-tmp.")]

    filler.unlink()                                            # room again: the rerun resumes
    p = stage("visual_features", *args, "--out", out, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"{partial}: resuming, 1 videos already done" in p.stderr
    assert "video v0: " not in p.stderr and "video v1: " in p.stderr
    assert not partial.exists()
    with h5py.File(out, "r") as f:
        assert set(f) == {"v0", "v1"} and f["v1"]["features"].shape[0] == 2000


# ---------------------------------------------------------------- a face store / a checkpoint that does not fit
WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from affect_pipeline.common.runtime import run_stage, save_checkpoint
    from affect_pipeline.common.stores import write_face_store

    def face_store(argv):
        rng = np.random.default_rng(0)
        with write_face_store(argv[0], video_id="v", size=64, backend="test", fps=25.0) as w:
            for s in range(0, 2000, 100):       # noise: JPEG cannot shrink it, ~10 KB a frame
                w.append([rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(100)], np.ones(100, bool),
                         np.ones(100), np.zeros((100, 4)), np.zeros((100, 5, 2)), np.arange(s, s + 100) / 25)

    def checkpoint(argv):
        import torch
        save_checkpoint({"w": torch.randn(1 << 20)}, argv[0])

    sys.exit(run_stage(sys.argv[1], globals()[sys.argv[1]], sys.argv[2:]))
""")


@pytest.mark.parametrize("writer", ["face_store", "checkpoint"])
def test_a_store_or_checkpoint_that_does_not_fit_is_one_line(writer, small_disk):
    out = small_disk / "out" / ("v.h5" if writer == "face_store" else "model.pt")
    out.parent.mkdir()
    p = subprocess.run([sys.executable, "-c", WRITER, writer, str(out)], env=ENV, capture_output=True, text=True,
                       timeout=180)
    assert p.returncode not in (-11, 139), "SIGSEGV"
    line = assert_clean_error(p, writer, f"{NO_SPACE} {out}")
    assert line.endswith(f"{NO_SPACE} {out}"), line
    assert leftovers(small_disk) == ["out"]


# ---------------------------------------------------------------- EDQUOT: the same line
QUOTA = textwrap.dedent("""
    import errno, os, sys
    from affect_pipeline.common.files import atomic_path
    from affect_pipeline.common.runtime import run_stage

    def inside(argv):                     # a quota hit while writing an output's temporary
        with atomic_path(argv[0]) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(b"x")
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), str(tmp))

    def outside(argv):                    # ... and one in a write of no atomic_path
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), argv[0])

    sys.exit(run_stage("quota", globals()[sys.argv[1]], sys.argv[2:]))
""")


@pytest.mark.parametrize("where", ["inside", "outside"])
def test_quota_exceeded_is_the_same_line(where, tmp_path):
    out = tmp_path / "res ü" / "labels.h5"
    p = subprocess.run([sys.executable, "-c", QUOTA, where, str(out)], env=ENV, capture_output=True, text=True,
                       timeout=60)
    line = assert_clean_error(p, "quota", f"{NO_SPACE} {out}")
    assert line == f"ERROR [quota]: {NO_SPACE} {out}"
    assert not out.exists() and not [q for q in tmp_path.rglob("*") if q.name.startswith(".affect-tmp.")]


def test_disk_full_is_recognised_through_the_errors_that_wrap_it():
    from affect_pipeline.common.files import DiskFull, is_disk_full

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/x/.affect-tmp.a.pt.12@h-1")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    except RuntimeError as e:
        assert is_disk_full(e)
        assert str(DiskFull.of(e)) == f"{NO_SPACE} /x/a.pt"            # the published name, not the temporary
    assert not is_disk_full(OSError(errno.EIO, "I/O error"))
    assert not is_disk_full(RuntimeError("file write failed"))
