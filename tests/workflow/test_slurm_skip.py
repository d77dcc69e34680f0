"""Slurm tests without Slurm: tests/workflow/test_slurm.py skips, saying why, where no Slurm can run
its jobs (no client, no controller, a Slurm that refuses the tests' requests) instead of failing."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


def _fake_client(folder: Path, name: str, out: str, rc: int) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(f"#!/bin/sh\necho '{out}' >&2\nexit {rc}\n")
    (folder / name).chmod(0o755)


def test_slurm_tests_skip_with_a_reason_where_slurm_cannot_run_them(tmp_path, monkeypatch):
    """The skip logic of tests/workflow/test_slurm.py, against PATHs without Slurm, and with a Slurm whose
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
        pytest.skip("a usable Slurm runs here: tests/workflow/test_slurm.py runs its tests")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-m", "slurm", "-p", "no:cacheprovider",
                        str(REPO / "tests" / "workflow" / "test_slurm.py")], capture_output=True, text=True, timeout=120,
                       cwd=REPO, env={**os.environ, "AFFECT_REQUIRE_SLURM": "0"})
    assert r.returncode == 0, r.stdout[-3000:]
    assert "2 skipped" in r.stdout and "SKIPPED" in r.stdout and "Slurm" in r.stdout, r.stdout[-3000:]


def _slurm_reason():
    import test_slurm

    return test_slurm._REASON
