"""One fold of the folds document (``results/folds/{task}.json``, written by ``make_folds``).

Read by the MAE fine-tuning and by every temporal stage, so it lives below both. A fold whose
train and validation lists share a video is refused: its validation score would be a training
score.
"""
from __future__ import annotations

from typing import NamedTuple

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.runtime import read_json


class FoldSplit(NamedTuple):
    train: list[str]
    val: list[str]
    test: list[str]           # the task's test videos (no labels), the same for every fold


def read_fold(folds_path, fold: str) -> FoldSplit:
    """The fold's train / validation videos (sorted) and the task's test videos."""
    doc = read_json(folds_path)
    folds = doc.get("folds", {}) if isinstance(doc, dict) else {}
    if not isinstance(folds.get(fold), dict):
        raise PipelineError(f"{folds_path}: no fold {fold!r} (has {sorted(folds)})")
    train, val = sorted(folds[fold].get("train", [])), sorted(folds[fold].get("validation", []))
    if not train or not val:
        raise PipelineError(f"{folds_path}: fold {fold!r} has an empty train or validation list")
    leak = sorted(set(train) & set(val))
    if leak:
        raise PipelineError(f"{folds_path}: fold {fold!r} lists {leak[:5]} in both train and validation")
    return FoldSplit(train, val, list(doc.get("test", [])))
