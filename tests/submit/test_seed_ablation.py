"""The multi-seed ablation: its table maths on hand-made scores, its files, and (dry run) that a seed's
work dir reruns only the seed-dependent stages, never decoding, faces, folds or MAE pretraining."""
import json
import os
import re
import shutil
import sys
import time

import numpy as np
import pytest
import yaml
from aff_tree import make_tree
from conftest import REPO, run_snakemake
from scipy.stats import binomtest

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.submit import seed_ablation as sa

sys.path.insert(0, str(REPO))          # the benchmarks package lives beside the tests, not installed
from benchmarks import ablation  # noqa: E402

FOLDS = ["official", "fold1", "fold2"]
BLB = {0: [0.5, 0.4, 0.3], 1: [0.6, 0.4, 0.2]}
GAIN = {0: [0.1, -0.05, 0.0], 1: [0.02, 0.03, 0.04]}   # DCL - BLB: 4 wins, 1 loss, 1 tie


def summary_doc(seed: int) -> dict:
    va = {f: {"finetune": 0.1 * (i + 1), "blb": BLB[seed][i], "dcl": BLB[seed][i] + GAIN[seed][i]}
          for i, f in enumerate(FOLDS)}
    eri = {f: {"finetune": None, "blb": 0.2, "dcl": 0.2 + 0.01 * seed} for f in FOLDS}
    return {"folds": FOLDS, "tasks": {"VA": {"metric": "mean CCC", "folds": va},
                                      "ERI": {"metric": "mean PCC", "folds": eri}}}


@pytest.fixture()
def table(tmp_path):
    by_seed = {}
    for s in (0, 1):
        p = tmp_path / f"seed{s}" / "summary.json"
        p.parent.mkdir()
        p.write_text(json.dumps(summary_doc(s)))
        by_seed[s] = sa.scores_from_summary(p)
    return sa.ablation_table(by_seed)


def test_mean_sd_over_folds_and_seeds_and_the_paired_difference(table):
    va = table["tasks"]["VA"]
    blb = BLB[0] + BLB[1]
    diff = GAIN[0] + GAIN[1]
    assert va["n_cells"] == 6 and va["seeds"] == [0, 1] and va["folds"] == FOLDS
    assert va["stages"]["blb"]["mean"] == pytest.approx(np.mean(blb))
    assert va["stages"]["blb"]["sd"] == pytest.approx(np.std(blb, ddof=1))
    assert va["stages"]["dcl"]["mean"] == pytest.approx(np.mean(np.add(blb, diff)))
    p = va["dcl_minus_blb"]
    assert p["mean"] == pytest.approx(np.mean(diff)) and p["sd"] == pytest.approx(np.std(diff, ddof=1))
    assert (p["wins"], p["losses"], p["ties"], p["n"]) == (4, 1, 1, 6)
    assert p["p_sign"] == pytest.approx(binomtest(4, 5, 0.5).pvalue)
    assert va["per_seed"]["1"]["blb"] == pytest.approx(0.4)
    assert "no significant difference" in va["verdict"]
    eri = table["tasks"]["ERI"]
    assert eri["stages"]["finetune"] == {"mean": None, "sd": None, "n": 0}
    # seed 0: DCL == BLB in all 3 cells (ties); seed 1: 3 wins
    assert (eri["dcl_minus_blb"]["wins"], eri["dcl_minus_blb"]["ties"]) == (3, 3)
    assert table["all"]["dcl_minus_blb"]["wins"] == 7 and table["all"]["n_cells"] == 12


def test_markdown_and_tsv_say_the_same(table):
    md = sa.markdown(table)
    va_row = next(ln for ln in md.splitlines() if ln.startswith("| VA "))
    assert "3 × 2 = 6" in va_row and "4/6" in va_row and f"{np.mean(BLB[0] + BLB[1]):.3f} ± " in va_row
    assert "| ERI | mean PCC | 3 × 2 = 6 | — | — |" in md
    assert "all tasks: no significant difference" in md and "not independent" in md
    rows = sa.tsv_rows(table)
    head, va = rows[0], dict(zip(rows[0], rows[1]))
    assert len({len(r) for r in rows}) == 1 and rows[-1][0] == "all"
    assert (va["dcl_wins"], va["dcl_losses"], va["ties"]) == ("4", "1", "1")
    assert float(va["dcl_minus_blb_mean"]) == pytest.approx(np.mean(GAIN[0] + GAIN[1]), abs=1e-6)
    assert "finetune_mean" in head


def test_a_clear_gain_is_called_a_gain():
    by_seed = {s: {"VA": {"metric": "mean CCC", "folds": {f"fold{i}": {"blb": 0.3, "dcl": 0.35 + 0.001 * i}
                                                          for i in range(5)}}} for s in range(3)}
    t = sa.ablation_table(by_seed)["tasks"]["VA"]
    assert t["dcl_minus_blb"]["wins"] == 15 and t["verdict"].startswith("DCL better than BLB")


def test_scores_read_from_a_results_folder(tmp_path):
    r = tmp_path / "results"
    for i, f in enumerate(FOLDS):
        docs = {"mae/VA/{}/finetune_metrics.json": {"stage": "finetune_mae", "score": 0.1 * i},
                "models/VA/{}/blb_metrics.json": {"stage": "blb", "score": 0.5, "baseline": 0.1 * i},
                "models/VA/{}/dcl_metrics.json": {"stage": "dcl", "score": 0.6}}
        for rel, doc in docs.items():
            path = r / rel.format(f)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"task": "VA", "fold": f, **doc}))
    (r / "models/VA/fold9").mkdir()
    (r / "models/VA/fold9/blb_metrics.json").write_text(json.dumps({"task": "VA", "fold": "fold9", "score": 9}))
    s = sa.scores_from_results(r, ["VA"], FOLDS)["VA"]
    assert s["folds"]["fold2"] == {"finetune": pytest.approx(0.2), "blb": 0.5, "dcl": 0.6}
    assert set(s["folds"]) == set(FOLDS) and s["baseline"] == pytest.approx(0.1)


def test_outputs_and_the_report_figure(tmp_path, table):
    paths = sa.write_outputs(table, tmp_path / "metrics" / "ablation_seeds", tmp_path / "report" / "a.png")
    assert [p.name for p in paths] == ["ablation_seeds.json", "ablation_seeds.tsv", "ablation_seeds.md", "a.png"]
    assert json.loads(paths[0].read_text())["tasks"]["VA"]["dcl_minus_blb"]["wins"] == 4
    png = tmp_path / "redrawn.png"
    assert sa.main(["--table", str(paths[0]), "--png", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(PipelineError, match="bad.json: not a seed-ablation table"):
        sa.main(["--table", str(tmp_path / "bad.json"), "--png", str(png)])


def test_targets_and_data_paths():
    cfg = {"folds": 2, "mae": {"finetune": {"per_fold": False}}, "demo": {"root": "resources/demo"},
           "affwild2": {"videos": "resources/demo/affwild2/videos", "annotations": "/abs/ann"},
           "hume": {"root": None}, "audio": {"models": ["vggish"], "vggish": {"weights": "w/vggish.pth"}}}
    t = ablation.metric_targets(cfg, ["VA", "ERI"])
    assert [x for x in t if "finetune" in x] == ["results/mae/VA/official/finetune_metrics.json"]
    assert len(t) == 1 + 2 * 3 * 2
    assert ablation.data_paths(cfg) == ["resources/demo", "w/vggish.pth"]
    cfg["hume"]["root"] = "../hume"
    with pytest.raises(PipelineError, match=r"\.\./hume.*absolute"):
        ablation.data_paths(cfg)


# ---------------------------------------------------------------- a seed's work dir (dry runs)
UPSTREAM_ORDER = ("extract_frames", "index_dataset", "crop_faces", "make_folds", "audio_features", "pretrain_mae")


def fake_finished_upstream(run, cfg_path):
    """A base run whose upstream rules are done: their outputs exist, each rank newer than the last."""
    p = run_snakemake("submission", "--summary", "--directory", str(run), "--configfile", str(cfg_path))
    rows = [ln.split("\t") for ln in p.stdout.splitlines() if "\t" in ln][1:]
    t0 = time.time() - 1000
    for f in (run / "data").rglob("*"):              # the inputs predate the run
        os.utime(f, (t0 - 100, t0 - 100))
    for rank in (("extract_frames",), ("index_dataset", "crop_faces"), UPSTREAM_ORDER[3:]):
        for out, _, rule, *_ in rows:
            if rule in rank:
                f = run / out
                f.parent.mkdir(parents=True, exist_ok=True)
                files = [f]
                if rule in ("crop_faces", "extract_frames"):   # a batch directory + Snakemake's stamp
                    f.mkdir()
                    files = [f / "video.h5", f / ".snakemake_timestamp"]
                for g in files:
                    g.write_bytes(b"")
                for g in (*files, f):
                    os.utime(g, (t0, t0))
        t0 += 100
    return {r[0] for r in rows if r[2] in UPSTREAM_ORDER}


def test_a_seed_reruns_only_the_seed_dependent_stages(tmp_path):
    run = tmp_path / "run"
    data = make_tree(run / "data" / "aff", 8)           # relative data paths: linked into the seed dir
    data = json.loads(json.dumps(data).replace(str(run) + "/", ""))
    (run / "data" / "vggish.pth").write_bytes(b"")
    data.update(tasks=["VA"], folds=2, audio={"models": ["vggish"], "vggish": {"weights": "data/vggish.pth"}},
                temporal={"features": ["mae", "vggish"]})
    cfg_path = tmp_path / "data.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    made = fake_finished_upstream(run, cfg_path)
    assert "results/mae/pretrain.pt" in made and "results/folds/VA.json" in made
    cfg = ablation.load_config([cfg_path])
    targets = ablation.metric_targets(cfg, ["VA"])
    work = ablation.prepare_seed_dir(run, run / "ablation" / "seed1", cfg)
    assert os.stat(work / "results/mae/pretrain.pt").st_ino == os.stat(run / "results/mae/pretrain.pt").st_ino
    plan = ablation.planned_jobs(ablation.snakemake_cmd(work, [cfg_path], targets, 1, 1))
    # per fold (official, fold1, fold2) but the features: one job for all of VA's fold encoders
    assert plan == {"finetune_mae": 3, "visual_features": 1, "train_blb": 3, "mine_hard_clips": 3, "train_dcl": 3}, plan
    ablation.check_plan(plan, work)
    # a missing upstream output in the seed dir would be recomputed: the guard refuses it
    shutil.rmtree(next((work / "results/faces").glob("affwild2_*")))
    plan = ablation.planned_jobs(ablation.snakemake_cmd(work, [cfg_path], targets, 1, 1))
    # (the MAE pretraining reads the face batches, so it would be redone as well)
    with pytest.raises(PipelineError, match=re.escape("would also run {'crop_faces': 1, 'pretrain_mae': 1}")):
        ablation.check_plan(plan, work)
