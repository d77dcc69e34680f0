"""``make_folds``: the official split and k seeded folds over the labelled videos of one task.

- ``official``: train → validation exactly as the challenge gives them (label store splits).
- ``fold1`` … ``foldk``: train + validation videos shuffled with ``seed`` and dealt into k
  validation folds of about equal size (count of videos). ``X_left`` / ``X_right`` share one
  media file, so they form one group and always land in the same fold — otherwise the same
  face and voice would sit on both sides of a fold.
- ``test``: ids whose ``split_{task}`` is "test" in ``videos.tsv`` (they have no labels).
"""
from __future__ import annotations

import numpy as np

from .runtime import PipelineError, stage_parser, write_json
from .stores import read_labels

SIDE_SUFFIXES = ("_left", "_right")


def group_id(video: str) -> str:
    """The media id a video belongs to: ``X_left`` / ``X_right`` → ``X``."""
    for s in SIDE_SUFFIXES:
        if video.endswith(s):
            return video[: -len(s)]
    return video


def make_folds(splits: dict[str, str], k: int, seed: int) -> dict[str, dict[str, list[str]]]:
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


def main(argv: list[str]) -> int:
    p = stage_parser("make_folds", __doc__)
    p.add_argument("--task", required=True)
    p.add_argument("--labels", required=True, help="results/index/labels/{task}.h5")
    p.add_argument("--index", required=True, help="results/index/videos.tsv")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    from .dataset import read_index

    k = int(a.params.get("k", 5))
    seed = int(a.params.get("seed", a.seed))
    labels = read_labels(a.labels)
    splits = {v: lab.split for v, lab in labels.items() if lab.split in ("train", "validation")}
    if not any(s == "train" for s in splits.values()):
        raise PipelineError(f"{a.labels}: no video of task {a.task} has split 'train'")
    index = read_index(a.index)
    col = f"split_{a.task}"
    if index and col not in next(iter(index.values())):
        raise PipelineError(f"{a.index}: no column {col!r}")
    test = sorted(v for v, r in index.items() if r.get(col) == "test")
    leaked = sorted(set(test) & set(splits))
    if leaked:
        raise PipelineError(f"{a.index}: videos {leaked[:5]} are 'test' in {col} but labelled "
                            f"train/validation in {a.labels}")
    try:
        folds = make_folds(splits, k, seed)
    except ValueError as e:
        raise PipelineError(f"{a.labels}: {e}") from e
    write_json(a.out, {"task": a.task, "k": k, "seed": seed, "test": test, "folds": folds})
    return 0
