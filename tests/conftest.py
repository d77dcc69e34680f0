import os
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


#: a cut-down demo (VA only, 3 folds, per-fold encoders, 6 short videos, tiny models) for
#: workflow-level tests:
#: an overlay for ``--configfile demo_config.yaml cut.yaml`` (see :func:`cut_demo_configs`)
CUT_DEMO = {
    "tasks": ["VA"],
    "folds": 3,
    "demo": {
        "frames": [50, 60], "size": 160,
        "n_videos": {"train": 3, "validation": 2, "test": 1},
        "hume": {"train": 2, "validation": 1, "test": 1, "frames": 30},
    },
    "mae": {"pretrain": {"epochs": 1, "frames_per_video": 16},
            "finetune": {"epochs": 1, "frames_per_video": 16, "per_fold": True}},
    "audio": {"models": ["vggish"]},
    "temporal": {"features": ["mae", "vggish"], "clip_len": 20, "stride": 10,
                 "blb": {"d_model": 32, "nhead": 2, "layers": 1, "epochs": 2, "batch_size": 4},
                 "dcl": {"epochs": 2}},
}


def face_store_of(results, video: str) -> Path:
    """Where crop_faces put a video's face store: ``{results}/faces/{batch}/{video}.h5``."""
    import glob

    hits = list(Path(results, "faces").glob(f"*/{glob.escape(video)}.h5"))
    assert len(hits) == 1, (video, hits)
    return hits[0]


def decoded_file(results, media: str, ext: str = ".json") -> Path:
    """Where extract_frames put a media file's frames JSON (``.json``) or wav (``.wav``):
    ``{results}/frames/{batch}/{media}.json``, ``{results}/audio/{batch}/{media}.wav``."""
    import glob

    hits = list(Path(results, "frames" if ext == ".json" else "audio").glob(f"*/{glob.escape(media)}{ext}"))
    assert len(hits) == 1, (media, hits)
    return hits[0]


def batch_of(video: str, config: dict | None = None, dataset: str = "affwild2") -> str:
    """The extract_frames / crop_faces batch of ``video`` (its media file's: ``X_left`` / ``X_right``
    are ``X``'s) under ``config``'s batch count."""
    import re

    from affect_pipeline.data.layout import media_batch

    n = ((config or {}).get("resources") or {}).get("media_batches") or workflow_defaults()["resources"]["media_batches"]
    return media_batch(re.sub(r"_(left|right)$", "", video), dataset, n)


def face_batch_target(video: str, config: dict | None = None, dataset: str = "affwild2") -> str:
    """The crop_faces output (batch directory) holding ``video``, under ``config``'s batch count."""
    return f"results/faces/{batch_of(video, config, dataset)}"


def cut_demo_configs(tmp_path, extra: dict | None = None) -> list[str]:
    """``--configfile`` arguments for the cut-down demo: demo_config.yaml, then CUT_DEMO (+ extra)."""
    import yaml
    from snakemake.utils import update_config

    cfg = yaml.safe_load(yaml.safe_dump(CUT_DEMO))
    update_config(cfg, extra or {})
    path = Path(tmp_path) / "cut_demo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return [str(REPO / "demo_config.yaml"), str(path)]


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


#: the VA test list of the demo tree (make_demo writes it; the wild variants are added to it)
VA_TEST_LIST = "resources/demo/affwild2/test_lists/Valence_Arousal_Estimation_Challenge_test_set_release.txt"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """The cut-down demo (CUT_DEMO) run to `submission` once; shared by the tests that need a
    finished run (affect-predict, per-fold encoders, a 3-fold report, the wild encodings).

    The demo tree is made first (rule make_demo), then the wild encodings of tests/wild_media.py
    (rotation, edit list, VFR, HEVC, 10-bit, MJPEG, odd size, 5.1 / 44.1 kHz / late / no audio)
    join it as VA test videos, so the one run carries them through faces, features and the
    temporal models to the submission rows. ``work / "wild_ids.txt"`` lists them."""
    import time

    from wild_media import add_wild_variants

    work = Path(os.environ.get("AFFECT_PREDICT_RUN") or tmp_path_factory.mktemp("predict_run"))
    work.mkdir(parents=True, exist_ok=True)
    run, configs = work / "run", cut_demo_configs(work)
    t0 = time.time()
    run_snakemake("resources/demo/manifest.json", "--cores", "2", "--directory", str(run), "--configfile", *configs)
    if not (work / "wild_ids.txt").exists():
        ids = add_wild_variants(run / "resources/demo/affwild2/videos")
        with open(run / VA_TEST_LIST, "a", encoding="utf-8") as f:
            f.write("".join(f"{v}\n" for v in ids))
        (work / "wild_ids.txt").write_text("".join(f"{v}\n" for v in ids))
    run_snakemake("submission", "--cores", "2", "--directory", str(run), "--configfile", *configs, timeout=1500)
    print(f"\ncut-down workflow (VA, 3 folds, wild test videos) to submission: {time.time() - t0:.0f} s")
    return work
