import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def workflow_defaults() -> dict:
    """The settings a run gets with no --configfile (workflow_config.yaml: the one source of
    defaults). Tests that call a stage directly start from a section of this and shrink it."""
    import yaml

    return yaml.safe_load((REPO / "workflow_config.yaml").read_text())


#: a cut-down demo (VA only, 2 folds, 6 short videos, tiny models) for workflow-level tests
CUT_DEMO = {
    "tasks": ["VA"],
    "folds": 2,
    "demo": {
        "frames": [50, 60], "size": 160,
        "n_videos": {"train": 3, "validation": 2, "test": 1},
        "hume": {"train": 2, "validation": 1, "test": 1, "frames": 30},
        "overrides": {
            "mae": {"pretrain": {"epochs": 1, "frames_per_video": 16},
                    "finetune": {"epochs": 1, "frames_per_video": 16}},
            "audio": {"models": ["vggish"]},
            "temporal": {"features": ["mae", "vggish"], "clip_len": 20, "stride": 10,
                         "blb": {"d_model": 32, "nhead": 2, "layers": 1, "epochs": 2, "batch_size": 4},
                         "dcl": {"epochs": 2}},
        },
    },
}


def run_snakemake(*args, cwd=None, timeout=600, check=True):
    """Run the repo's workflow with the venv's snakemake; returns CompletedProcess (text)."""
    cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), *args]
    p = subprocess.run(cmd, cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-6000:]}")
    return p


@pytest.fixture(autouse=True)
def _one_thread():
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    yield
