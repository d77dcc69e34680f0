"""benchmarks/cost.py on a placeholder Aff-Wild2 + Hume-Reaction tree: its jobs are the workflow's
dry run for the same config (with pretraining, and with an imported encoder), and its work units
are the tree's: frames from a frames JSON where extract_frames wrote one, else annotation rows,
else the mean of the known videos (Aff-Wild2) or the published mean (Hume, none known)."""
import subprocess
import sys

import pytest
import yaml
from aff_tree import make_hume_tree, make_tree, placeholder_audio_weights, write_probe
from conftest import REPO

from affect_pipeline.common import results
from affect_pipeline.data.layout import media_batch

sys.path.insert(0, str(REPO))          # the benchmarks package lives beside the tests, not installed
from benchmarks import cost  # noqa: E402

ROWS, PROBED = 4, 1004     # annotation rows per video; frames of the one probed media file


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("cost")
    data = make_tree(root / "aff", 10, rows=ROWS)        # videos 0 and 5 are test videos: no annotations
    data.update(make_hume_tree(root / "hume", {"Train": 3, "Val": 2, "Test": 1}))
    data["audio"] = placeholder_audio_weights(root / "weights")
    cfg = root / "data.yaml"
    cfg.write_text(yaml.safe_dump(data), encoding="utf-8")
    run = root / "run"
    n = yaml.safe_load((REPO / "workflow_config.yaml").read_text())["resources"]["media_batches"]
    write_probe(run / results.frames_batch(media_batch("1-30-640x360", "affwild2", n)), "1-30-640x360", PROBED)
    return cfg, run


def dry_run_counts(cfg, run, *more) -> dict:
    p = subprocess.run([cost.SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(run), "-n",
                        "submission", "--quiet", "rules", "--configfile", str(cfg), *map(str, more)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [ln.split() for ln in p.stdout.splitlines() + p.stderr.splitlines()]
    return {r[0]: int(r[1]) for r in rows if len(r) == 2 and r[1].isdigit()}


def cost_table(cfg, run, *flags) -> dict:
    p = subprocess.run([sys.executable, "-m", "benchmarks.cost", "--configfile", str(cfg), "--directory", str(run),
                        *flags], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert p.returncode == 0, p.stderr[-2000:]
    cells = [[c.strip() for c in ln.split("|")[1:-1]] for ln in p.stdout.splitlines() if ln.startswith("| ")]
    return {c[0]: c for c in cells[1:]}


def units(cell: str) -> int:
    return int(cell.split()[0].replace(",", ""))


def test_jobs_are_the_dry_runs_and_units_the_trees(tree, tmp_path):
    cfg, run = tree
    got, want = cost_table(cfg, run), dry_run_counts(cfg, run)
    for stage in ("crop_faces", "pretrain_mae", "finetune_mae", "train_blb", "train_dcl"):
        assert int(got[stage][1]) == want[stage], (stage, got[stage], want)
    assert int(got["visual_features"][1]) == want["visual_features"] + want["visual_features_eri"]
    assert int(got["**total**"][1]) == want["total"]
    # Aff-Wild2: media 1 probed, 7 more annotated (ROWS rows), test videos 0 and 5 at the mean of those 8
    aff_mean = round((PROBED + 7 * ROWS) / 8)
    aff = PROBED + 7 * ROWS + 2 * aff_mean
    hume = 6 * cost.PUBLISHED_MEAN["hume"][0]
    assert units(got["crop_faces"][2]) == aff + hume
    assert units(got["audio_features hubert"][2]) == round((aff + hume) / 30.0)
    train = [2, 3, 4, 6, 7, 8]                       # make_tree: i % 4 == 1 validation, i % 5 == 0 test
    assert units(got["pretrain_mae"][2]) == 800 * len(train) * ROWS
    frame_tasks, encoders = 3, 6                     # AU, EXPR, VA; official + 5 folds
    assert units(got["visual_features"][2]) == frame_tasks * encoders * aff + hume
    assert got["**total**"][-1].startswith("8 video(s) of assumed length")   # Aff-Wild2's 2 test videos, Hume's 6

    imported = cost.imported_encoder(tmp_path)
    got = cost_table(cfg, run, "--no-pretrain")
    assert units(got["pretrain_mae"][2]) == 0 and "imported" in got["pretrain_mae"][-1]
    assert int(got["**total**"][1]) == dry_run_counts(cfg, run, imported)["total"]
