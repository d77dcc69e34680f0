"""make_folds: official split, seeded k folds, _left/_right pairs kept together, test ids."""
from __future__ import annotations

import json

import pytest

from affect_pipeline.folds import group_id, make_folds

SPLITS = {**{f"v{i}": "train" for i in range(9)}, **{f"w{i}": "validation" for i in range(4)},
          "A_left": "train", "A_right": "train", "B_left": "validation", "B_right": "validation",
          "C_left": "train", "C_right": "validation"}


def test_group_id():
    assert group_id("X_left") == group_id("X_right") == group_id("X") == "X"
    assert group_id("left_X") == "left_X"


def test_folds_partition_and_keep_pairs_together():
    f = make_folds(SPLITS, 5, seed=0)
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
    assert make_folds(SPLITS, 5, 0) == make_folds(SPLITS, 5, 0)
    assert make_folds(SPLITS, 5, 0) != make_folds(SPLITS, 5, 1)
    with pytest.raises(ValueError):
        make_folds({"a": "train", "b": "validation"}, 5, 0)


def test_make_folds_stage(tmp_path, capsys):
    from test_temporal import make_synthetic, run
    d = make_synthetic(tmp_path, "VA", n_train=6, n_val=3, n_test=2)
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
