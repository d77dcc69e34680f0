"""Two writers of one ``{out}.partial`` shard cannot both proceed, even with HDF5's own file
locking off (``HDF5_USE_FILE_LOCKING=FALSE``, the advice for shared file systems): the writer
holds a POSIX lock (``fcntl.lockf``) on ``{out}.partial.lock``; a second writer fails at once
with one line naming the first (pid, host, since when) and the file; the lock goes with the
holder's process, however it ends (SIGKILL included). Real processes, real files.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.feature_shards import FeatureShardWriter

NO_HDF5_LOCK = {**os.environ, "HDF5_USE_FILE_LOCKING": "FALSE"}

#: a writer in its own process: opens the shard, writes v0 (and v1 unless told to stop),
#: says so, then waits for stdin to close (or is killed) before it aborts
WRITER = """
import sys, numpy as np
from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.feature_shards import FeatureShardWriter
out, hold = sys.argv[1], sys.argv[2] == "hold"
try:
    w = FeatureShardWriter(out, extractor="t", fingerprint="fp")
except PipelineError as e:
    print("REFUSED", e, flush=True)
    sys.exit(3)
print("DONE-BEFORE", int(w.done("v0")), flush=True)
w.write("v0", np.ones((10, 4)), np.ones(10, bool), fps=25.0)
print("OPEN", flush=True)
if hold:
    sys.stdin.read()
w.abort()
"""


def writer(out: Path, hold: bool) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(out), "hold" if hold else "go"], env=NO_HDF5_LOCK,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen) -> tuple[int, str]:
    out, err = p.communicate(timeout=60)
    return p.returncode, out + err


def test_a_second_writer_fails_naming_the_first_and_proceeds_once_it_is_killed(tmp_path):
    out = tmp_path / "shard.h5"
    first = writer(out, hold=True)
    try:
        assert first.stdout.readline().split() == ["DONE-BEFORE", "0"]
        assert first.stdout.readline().strip() == "OPEN"
        rc, text = finish(writer(out, hold=False))
        assert rc == 3, text
        line = text.strip()
        assert "\n" not in line and line.startswith("REFUSED")
        assert f"{out}.partial" in line and f"pid {first.pid}" in line and socket.gethostname() in line
        assert "since 20" in line
        first.send_signal(signal.SIGKILL)              # a job killed on its node: no cleanup runs
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert Path(f"{out}.partial.lock").exists()        # left behind by the kill, but not held
    rc, text = finish(writer(out, hold=False))
    assert rc == 0 and text.startswith("DONE-BEFORE 1"), text   # resumed what the killed job finished
    assert not Path(f"{out}.partial.lock").exists()    # abort releases (and removes) it


def test_the_lock_file_names_its_holder_and_goes_on_close(tmp_path):
    out = tmp_path / "shard.h5"
    w = FeatureShardWriter(out, extractor="t", fingerprint="fp")
    lock = Path(f"{out}.partial.lock")
    held = json.loads(lock.read_text())
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname() and held["since"]
    w.write("v0", np.zeros((3, 2)), np.ones(3, bool), fps=25.0)
    w.close(["v0"])
    assert out.exists() and not lock.exists() and not Path(f"{out}.partial").exists()


def test_two_writers_in_one_process_are_refused_too(tmp_path):
    """POSIX locks belong to a process, so the lock alone would let a second writer of the same
    process through (and closing its handle would drop the first's lock): it is refused."""
    out = tmp_path / "shard.h5"
    w = FeatureShardWriter(out, extractor="t", fingerprint="fp")
    try:
        with pytest.raises(PipelineError, match=rf"pid {os.getpid()}"):
            FeatureShardWriter(out, extractor="t", fingerprint="fp")
        w.write("v0", np.zeros((3, 2)), np.ones(3, bool), fps=25.0)   # the first keeps its lock
        rc, text = finish(writer(out, hold=False))
        assert rc == 3 and "REFUSED" in text, text
    finally:
        w.abort()
    w2 = FeatureShardWriter(out, extractor="t", fingerprint="fp")
    assert w2.done("v0")
    w2.abort()


def test_a_lock_file_that_is_a_symlink_is_not_followed(tmp_path):
    """A planted ``{out}.partial.lock`` symlink: refused, and its target is not written."""
    out = tmp_path / "shard.h5"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    Path(f"{out}.partial.lock").symlink_to(victim)
    with pytest.raises(PipelineError, match="symlink"):
        FeatureShardWriter(out, extractor="t", fingerprint="fp")
    assert victim.read_text() == "keep me\n" and not Path(f"{out}.partial").exists()


def test_a_file_system_without_posix_locks_warns_and_goes_on(tmp_path, monkeypatch, caplog):
    """ENOLCK (an NFSv3 mount without its lock daemon): the writer says it runs unlocked and
    works, rather than making the file system unusable."""
    import errno
    import fcntl
    import logging

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "lockf", no_locks)
    caplog.set_level(logging.WARNING)
    out = tmp_path / "shard.h5"
    w = FeatureShardWriter(out, extractor="t", fingerprint="fp")
    assert "no POSIX locks" in caplog.text and f"{out}.partial" in caplog.text
    w.write("v0", np.zeros((3, 2)), np.ones(3, bool), fps=25.0)
    w.close(["v0"])
    assert out.exists()
