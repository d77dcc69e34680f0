"""``make_folds``: the official split and k seeded folds over the labelled videos of one task.

- ``official``: train → validation exactly as the challenge gives them (label store splits).
- ``fold1`` … ``foldk``: train + validation videos shuffled with ``seed`` and dealt into k
  validation folds of about equal size (count of videos). ``X_left`` / ``X_right`` share one
  media file, so they form one group and always land in the same fold — otherwise the same
  face and voice would sit on both sides of a fold.
- ``test``: ids whose ``split_{task}`` is "test" in ``videos.tsv`` (they have no labels).

Output ``folds/{task}.json``: ``{"task", "k", "seed", "test": [...], "folds": {"official":
{"train", "validation"}, "fold1": {...}, ...}}``. ``--params`` carries ``{"k", "seed"}`` (the
workflow's ``folds`` and ``seed``), both required.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from affect_pipeline.common.config import settings
from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.runtime import stage_parser, write_json
from affect_pipeline.common.stores import read_labels
from affect_pipeline.data.index_dataset import read_index

SIDE_SUFFIXES = ("_left", "_right")


@dataclass(frozen=True)
class FoldParams:
    """``--params``: the workflow's ``folds`` and ``seed``, as k and seed."""
    k: int
    seed: int


def group_id(video: str) -> str:
    """The media id a video belongs to: ``X_left`` / ``X_right`` → ``X``."""
    for s in SIDE_SUFFIXES:
        if video.endswith(s):
            return video[: -len(s)]
    return video


def assign_folds(splits: dict[str, str], k: int, seed: int) -> dict[str, dict[str, list[str]]]:
    """splits: {video: "train" | "validation"} → {"official": {...}, "fold1": {...}, ...}.

    Groups are shuffled with ``seed``, then each goes to the fold with the fewest videos so far
    (ties: lowest fold), which balances folds even when pairs count double.
    """
    train = sorted(v for v, s in splits.items() if s == "train")
    val = sorted(v for v, s in splits.items() if s == "validation")
    out = {"official": {"train": train, "validation": val}}
    groups: dict[str, list[str]] = {}
    for v in sorted(train + val):
        groups.setdefault(group_id(v), []).append(v)
    if k < 2 or len(groups) < k:
        raise ValueError(f"cannot make {k} folds from {len(groups)} video groups")
    order = [sorted(groups)[i] for i in np.random.default_rng(seed).permutation(len(groups))]
    members: list[list[str]] = [[] for _ in range(k)]
    for g in order:
        members[int(np.argmin([len(m) for m in members]))].extend(groups[g])
    everyone = set(train + val)
    for i, m in enumerate(members, 1):
        out[f"fold{i}"] = {"train": sorted(everyone - set(m)), "validation": sorted(m)}
    return out


def read_test_ids(index_path, task: str) -> list[str]:
    """Ids whose ``split_{task}`` is "test" in the index (videos.tsv)."""
    index = read_index(index_path)
    col = f"split_{task}"
    if index and col not in next(iter(index.values())):
        raise PipelineError(f"{index_path}: no column {col!r}")
    return sorted(v for v, r in index.items() if r.get(col) == "test")


def make_folds(task: str, labels_path, index_path, out, k: int, seed: int) -> dict:
    """Write ``out`` (folds/{task}.json) from the label store and the index; returns the document."""
    labels = read_labels(labels_path)
    splits = {v: lab.split for v, lab in labels.items() if lab.split in ("train", "validation")}
    if not any(s == "train" for s in splits.values()):
        raise PipelineError(f"{labels_path}: no video of task {task} has split 'train'")
    test = read_test_ids(index_path, task)
    leaked = sorted(set(test) & set(splits))
    if leaked:
        raise PipelineError(f"{index_path}: videos {leaked[:5]} are 'test' in split_{task} but labelled "
                            f"train/validation in {labels_path}")
    try:
        folds = assign_folds(splits, k, seed)
    except ValueError as e:
        raise PipelineError(f"{labels_path}: {e}") from e
    doc = {"task": task, "k": k, "seed": seed, "test": test, "folds": folds}
    write_json(out, doc)
    return doc


def main(argv: list[str]) -> int:
    p = stage_parser("make_folds", __doc__.split("\n\n")[0])
    p.add_argument("--task", required=True)
    p.add_argument("--labels", required=True, help="results/index/labels/{task}.h5")
    p.add_argument("--index", required=True, help="results/index/videos.tsv")
    p.add_argument("--out", required=True, help="results/folds/{task}.json")
    a = p.parse_args(argv)
    fp = settings(FoldParams, a.params, "make_folds")
    make_folds(a.task, Path(a.labels), Path(a.index), Path(a.out), int(fp.k), int(fp.seed))
    return 0
