"""benchmarks/gpu_check.sh: its CPU smoke mode runs every check through the same code as on a GPU,
and without CUDA the real mode stops with the reason instead of measuring the CPU."""
import os
import subprocess
import sys

import pytest
from conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
ENV = {**os.environ, "PYTHON": sys.executable}


def test_cpu_smoke_runs_every_check_into_a_table(tmp_path):
    out = tmp_path / "gpu.md"
    p = subprocess.run([str(SCRIPT), "--cpu-smoke", "--out", str(out)], capture_output=True, text=True,
                       timeout=240, env=ENV, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    table = out.read_text()
    assert table in p.stdout and "| stage | value | unit | model-only reference | ratio | note |" in table
    for stage in ("crop_faces", "crop_faces batched 160x90", "visual_features tiny ViT", "MAE pretrain step", "MAE finetune step",
                  "audio_features hubert", "audio_features wav2vec2", "audio_features vggish", "BLB step", "DCL step"):
        line = next(ln for ln in table.splitlines() if ln.startswith(f"| {stage}"))
        assert float(line.split("|")[2]) > 0, line                       # every check measured something
    assert "FAILED" not in table and "| end to end >= 0.9 of model-only |" in table


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA device is present")
def test_without_cuda_it_says_so():
    p = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=120, env=ENV)
    assert p.returncode != 0 and "no CUDA device: torch" in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr


def test_a_python_without_torch_is_named(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    p = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=60, env={**ENV, "PYTHON": str(fake)})
    assert p.returncode == 2 and f"{fake} cannot import torch" in p.stderr
