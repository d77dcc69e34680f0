"""``kill -9`` midway, then rerun: a stage started as a rule starts it, SIGKILLed once it is where
the test means to kill it (each kill is checked to land there: inside the write, not before it),
so a writer that is not crash-safe fails. Shared by the crash tests of tests/mae and tests/temporal.

- No half-written file under an output's name (only a hidden ``.affect-tmp.name.PID@host`` may be left).
- The rerun ends equal to an uninterrupted run.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO

ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def start(log: Path, *args) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "affect_pipeline", *map(str, args), "--threads", "1", "--device", "cpu"]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=open(log, "w"))


def kill_when(proc: subprocess.Popen, ready, timeout=180, grace=0.0, before_kill=None) -> None:
    """SIGKILL ``proc`` once ``ready()`` holds (+ ``grace`` s); fail if it finished first, or if
    ``before_kill()`` (the check that it is where the test means to kill it) does not hold."""
    t0 = time.time()
    while not ready():
        assert proc.poll() is None, "the job ended before it could be killed: make it bigger"
        assert time.time() - t0 < timeout, "the job never reached the kill point"
        time.sleep(0.05)
    time.sleep(grace)
    assert proc.poll() is None, "the job ended before it could be killed: make it bigger"
    assert before_kill is None or before_kill(), "the job is not at the kill point"
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def assert_unfinished(log: Path) -> None:
    assert " finished in " not in log.read_text(), "the job had finished its work before the kill"


def only_tmp_left(folder: Path, name: str) -> list[str]:
    """Names in ``folder`` that belong to output ``name``: must be none or a hidden tmp sibling."""
    left = sorted(p.name for p in folder.iterdir() if name in p.name) if folder.exists() else []
    assert name not in left, f"a half-written {name} is under the output name"
    assert all(n.startswith(f".affect-tmp.{name}.") for n in left), left
    return left


def rerun(*args):
    cmd = [sys.executable, "-m", "affect_pipeline", *map(str, args), "--threads", "1", "--device", "cpu"]
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return p
