"""The organizers' per-frame test lists (``CVPR_5th_ABAW_AU_test_set_example.txt`` & co.) on a
small Aff-Wild2 tree, shared by tests/data (layout, index) and tests/submit (ensemble, validator):
they set the test videos, their order and the submission's rows.

Trees, probes, the index and the fold predictions are real files written as the stages write them;
the index and the ensemble run through their CLIs."""
import json

import h5py
import numpy as np
from aff_tree import FRAME_LISTS, make_tree, write_frame_list, write_probe
from conftest import workflow_defaults

from affect_pipeline.__main__ import main as cli

A, B, C, D = (f"{i}-30-640x360" for i in (0, 3, 6, 9))      # make_tree(test_every=3)'s test videos
DECODED = {A: 7, B: 4, C: 6, D: 5}
LISTED = {B: 6, A: 5, C: [1, 2, 5, 6], D: 5}                  # official order B, A, C, D (not sorted)


def tree(tmp_path, tasks=("VA",), frame_list=LISTED):
    data = make_tree(tmp_path / "aff", 10, rows=5, test_every=3)
    data["tasks"] = list(tasks)
    if frame_list is not None:
        write_frame_list(tmp_path / "aff/test_lists" / FRAME_LISTS["VA"], "VA", frame_list, values=",0,0")
    return data


def probes(tmp_path):
    return [write_probe(tmp_path / "frames", f"{i}-30-640x360", DECODED.get(f"{i}-30-640x360", 5))
            for i in range(10)]


def listed_rows(tmp_path, task="VA"):
    lines = (tmp_path / "aff/test_lists" / FRAME_LISTS[task]).read_text().splitlines()[1:]
    return [ln.split(",")[0] for ln in lines]


def write_preds(path, task, fold, preds):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs.update(task=task, fold=fold, score=0.5)
        for vid, p in preds.items():
            g = f.create_group(f"test/{vid}")
            g["pred"], g["valid"] = p, np.ones(len(p), bool)
    return path


def run(tmp_path, data, task="VA", preds=None):
    """index_dataset + two folds of predictions + ensemble, all through the CLI."""
    out = tmp_path / "index"
    assert cli(["index_dataset", "--data", json.dumps(data), "--frames", *map(str, sorted((tmp_path / "frames").glob("*.json"))),
                "--out-dir", str(out)]) == 0
    paths = [write_preds(tmp_path / f"pred/fold{k}.h5", task, f"fold{k}", preds) for k in (1, 2)]
    sub_file = tmp_path / "submission" / task / "predictions.txt"
    assert cli(["ensemble", "--task", task, "--preds", *map(str, paths), "--index", str(out / "videos.tsv"),
                "--index-report", str(out / "index_report.json"), "--out", str(sub_file),
                "--params", json.dumps(workflow_defaults()["ensemble"] | {"weighting": "uniform"})]) == 0
    return sub_file, out
