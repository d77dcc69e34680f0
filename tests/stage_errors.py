"""A stage run the way a rule runs it (``python -m affect_pipeline <stage>``, a fresh interpreter,
stderr captured) and the one clear error line a bad input must give: ``ERROR [stage]: <file>:
<cause>``, rc 1, no traceback. Shared by the bad-input rows of several folders (docs/bad_inputs.md).
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import torch
from conftest import REPO

ENV = {**os.environ, "AFFECT_WARM": "0", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1", "PYTHONIOENCODING": "utf-8"}


def stage(*args, cwd=None, timeout=180) -> subprocess.CompletedProcess:
    """Run one stage the way a rule does: a fresh interpreter, stderr captured."""
    cmd = [sys.executable, "-m", "affect_pipeline", *map(str, args), "--threads", "1", "--device", "cpu"]
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def assert_clean_error(p: subprocess.CompletedProcess, name: str, *needles) -> str:
    """rc 1, no traceback, exactly one ``ERROR [name]:`` line, and it names every needle."""
    err = p.stderr
    lines = [ln for ln in err.splitlines() if ln.startswith(f"ERROR [{name}]:")]
    assert p.returncode == 1, (p.returncode, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    assert len(lines) == 1, err[-3000:]
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]


class Payload:
    """Pickles to ``os.system("touch MARKER")``: what a malicious checkpoint carries."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def evil_checkpoint(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": 1, "kind": "mae_finetune", "model": {"w": torch.zeros(2)}, "x": Payload(marker)}, path)
    return path


def fold_args(d, fold="official"):
    return ["--task", "AU", "--fold", fold, "--folds", d["folds"], "--labels", d["labels"], "--features", *d["features"]]
