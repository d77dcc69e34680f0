"""make_folds: official split, seeded k folds, _left/_right pairs kept together, test ids."""
from __future__ import annotations

import json

import numpy as np
import pytest

from affect_pipeline.__main__ import main as cli
from affect_pipeline.common.stores import Labels, write_labels
from affect_pipeline.temporal.make_folds import assign_folds, group_id

SPLITS = {**{f"v{i}": "train" for i in range(9)}, **{f"w{i}": "validation" for i in range(4)},
          "A_left": "train", "A_right": "train", "B_left": "validation", "B_right": "validation",
          "C_left": "train", "C_right": "validation"}


def test_group_id():
    assert group_id("X_left") == group_id("X_right") == group_id("X") == "X"
    assert group_id("left_X") == "left_X"


def test_folds_partition_and_keep_pairs_together():
    f = assign_folds(SPLITS, 5, seed=0)
    assert f["official"] == {"train": sorted(v for v, s in SPLITS.items() if s == "train"),
                             "validation": sorted(v for v, s in SPLITS.items() if s == "validation")}
    vals = [v for k in range(1, 6) for v in f[f"fold{k}"]["validation"]]
    assert sorted(vals) == sorted(SPLITS)                       # every video in exactly one fold
    sizes = [len(f[f"fold{k}"]["validation"]) for k in range(1, 6)]
    assert max(sizes) - min(sizes) <= 2
    for k in range(1, 6):
        tr, va = set(f[f"fold{k}"]["train"]), set(f[f"fold{k}"]["validation"])
        assert not tr & va and tr | va == set(SPLITS)
        for x in "ABC":
            assert ({f"{x}_left", f"{x}_right"} <= va) or not ({f"{x}_left", f"{x}_right"} & va)


def test_folds_are_seeded():
    assert assign_folds(SPLITS, 5, 0) == assign_folds(SPLITS, 5, 0)
    assert assign_folds(SPLITS, 5, 0) != assign_folds(SPLITS, 5, 1)
    with pytest.raises(ValueError):
        assign_folds({"a": "train", "b": "validation"}, 5, 0)


def make_labelled(root, task, n_train, n_val, n_test, n=30):
    """A label store and a videos.tsv: a _left/_right pair + tr*, va* (labelled) and te* (test)."""
    vids = [("pair_left", "train"), ("pair_right", "train")] + [(f"tr{i}", "train") for i in range(n_train - 2)]
    vids += [(f"va{i}", "validation") for i in range(n_val)] + [(f"te{i}", "test") for i in range(n_test)]
    rng = np.random.default_rng(0)
    labels = {v: Labels(rng.uniform(-1, 1, (n, 2)).astype(np.float32), np.ones(n, bool), s)
              for v, s in vids if s != "test"}
    write_labels(root / "labels" / f"{task}.h5", task, labels)
    cols = ["video_id", "path", "media", "side", "fps", "n_frames", "width", "height", "duration", "has_audio",
            *(f"split_{t}" for t in ("AU", "EXPR", "VA", "ERI"))]
    rows = ["\t".join([v, f"/v/{v}.mp4", v.split("_")[0], "", "25.0", str(n), "64", "64", str(n / 25), "true",
                       *(s if t == task else "" for t in ("AU", "EXPR", "VA", "ERI"))]) for v, s in vids]
    (root / "videos.tsv").write_text("\n".join(["\t".join(cols), *rows]) + "\n")
    return {"labels": root / "labels" / f"{task}.h5", "index": root / "videos.tsv",
            "folds": root / "folds" / f"{task}.json"}


def run(stage, args, params):
    return cli([stage, *map(str, args), "--params", json.dumps(params)])


def test_make_folds_stage(tmp_path, capsys):
    d = make_labelled(tmp_path, "VA", n_train=6, n_val=3, n_test=2)
    assert run("make_folds", ["--task", "VA", "--labels", d["labels"], "--index", d["index"], "--out", d["folds"]],
               {"k": 3, "seed": 0}) == 0
    doc = json.loads(d["folds"].read_text())
    assert doc["task"] == "VA" and doc["k"] == 3 and doc["test"] == ["te0", "te1"]
    assert set(doc["folds"]) == {"official", "fold1", "fold2", "fold3"}
    assert doc["folds"]["official"]["validation"] == ["va0", "va1", "va2"]
    capsys.readouterr()
    assert run("make_folds", ["--task", "VA", "--labels", d["labels"], "--index", d["index"],
                              "--out", tmp_path / "x.json"], {"k": 50, "seed": 0}) == 1
    err = capsys.readouterr().err
    assert str(d["labels"]) in err and "50 folds" in err
    assert run("make_folds", ["--task", "VA", "--labels", d["labels"], "--index", d["index"],
                              "--out", tmp_path / "y.json"], {"k": 3}) == 1
    assert "missing key(s) ['seed']" in capsys.readouterr().err   # no default seed in the package
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "y.json").exists()
    rows = [r.split("\t") for r in d["index"].read_text().splitlines()]
    col = rows[0].index("split_VA")
    for r in rows[1:]:
        if r[0] == "va0":
            r[col] = "test"                                       # labelled, yet a test video
    d["index"].write_text("\n".join("\t".join(r) for r in rows) + "\n")
    assert run("make_folds", ["--task", "VA", "--labels", d["labels"], "--index", d["index"],
                              "--out", tmp_path / "z.json"], {"k": 3, "seed": 0}) == 1
    err = capsys.readouterr().err
    assert "va0" in err and str(d["index"]) in err and str(d["labels"]) in err
