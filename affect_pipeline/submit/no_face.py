"""What a frame without a face gets: the ``no_face`` policies of the submission's ensemble
(``ensemble.no_face``) and of ``affect-predict --no-face``.

- ``empty`` (affect-predict only, its default): NaN, with ``success`` / ``face_found`` 0. The
  workflow cannot offer it: the submission needs a valid value on every row
  (``submission.validate_submission`` refuses NaN).
- ``interpolate``: per output channel, the linear interpolation in time between the nearest face
  frames before and after (edges copy the nearest one).
- ``prior``: the training labels' prior (:func:`training_prior`).
- ``audio``: the models' own outputs there, made from the audio stream (and the clip's other
  frames) with the visual input zeroed, as the temporal models were trained to see such frames.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.tasks import TASK_OUTPUTS

log = logging.getLogger("affect_pipeline.submit.ensemble")

#: the ``ensemble.no_face`` policies (the schema's enum is this list; a test holds them equal)
NO_FACE = ("interpolate", "prior", "audio")
#: ``affect-predict --no-face``: the same, and ``empty`` (its default)
PREDICT_NO_FACE = ("empty",) + NO_FACE


def interpolate_no_face(prob: np.ndarray, valid: np.ndarray, prior: np.ndarray | None = None) -> np.ndarray:
    """Fill rows without a face by linear interpolation in time between the nearest face rows.

    Rows before the first / after the last face row copy it (np.interp's edge rule); with no face
    row at all every row becomes ``prior`` (or stays as is when no prior is given).
    """
    valid = np.asarray(valid, bool)
    if valid.all():
        return prob
    if not valid.any():
        return prob.copy() if prior is None else np.broadcast_to(prior, prob.shape).copy()
    t, tv = np.arange(len(prob)), np.flatnonzero(valid)
    return np.stack([np.interp(t, tv, prob[tv, c]) for c in range(prob.shape[1])], axis=1)


def training_prior(task: str, labels, folds_file, folds) -> np.ndarray:
    """The training labels' prior in the models' output space: per ensembled fold the mean over
    its training videos' valid rows (AU presence rates, VA means; EXPR class frequencies), then
    the mean over the folds, what a model can say about a frame it cannot see."""
    from affect_pipeline.common.folds import read_fold
    from affect_pipeline.common.stores import read_labels

    for path in (labels, folds_file):
        if path is None or not Path(path).is_file():
            raise PipelineError(f"{path}: not found; the no-face policy 'prior' needs the run's training "
                                f"labels (index/labels/{task}.h5) and folds (folds/{task}.json)")
    per_fold = []
    for fold in folds:
        lab = read_labels(labels, read_fold(folds_file, fold).train)
        y = np.concatenate([l.y[np.asarray(l.mask, bool)] for l in lab.values()]).astype(np.float64)
        if task == "EXPR":
            y = np.bincount(y.reshape(-1).astype(np.int64), minlength=TASK_OUTPUTS[task])[None] / max(1, len(y))
        per_fold.append(y.mean(0))
    return np.mean(per_fold, axis=0)


def fill_no_face_rows(prob: np.ndarray, valid: np.ndarray, policy: str, prior=None) -> np.ndarray:
    """One video's outputs with its no-face rows (``~valid``) filled as ``policy`` says: ``empty``
    NaN, ``interpolate`` (:func:`interpolate_no_face`; no face row at all: ``prior``, else NaN),
    ``prior`` the given prior, ``audio`` unchanged (the models' own outputs)."""
    valid = np.asarray(valid, bool)
    if policy == "audio" or valid.all():
        return prob
    if policy == "interpolate":
        if not valid.any() and prior is None:
            return np.full(prob.shape, np.nan)
        return interpolate_no_face(prob, valid, prior)
    out = np.array(prob, np.float64)
    if policy == "prior":
        out[~valid] = prior
    elif policy == "empty":
        out[~valid] = np.nan
    else:
        raise ValueError(policy)
    return out


def fill_no_face(task: str, raw: dict, policy: str, prior=None) -> dict[str, np.ndarray]:
    """Per video the ensembled outputs with no-face frames filled as ``policy`` says (``prior``:
    the training prior, for the policy ``prior``)."""
    if task == "ERI" or policy == "audio":
        return {vid: p for vid, (p, _) in raw.items()}
    if policy == "prior":
        return {vid: fill_no_face_rows(p, v, "prior", prior) for vid, (p, v) in raw.items()}
    face_rows = [p[v] for p, v in raw.values() if v.any()]
    prior = np.concatenate(face_rows).mean(0) if face_rows else None
    out = {}
    for vid, (p, valid) in raw.items():
        if not valid.any():
            log.warning("%s: test video %s has no face frame; predicting the prior %s for all %d frames",
                        task, vid, np.round(prior, 3) if prior is not None else "(model outputs)", len(p))
        out[vid] = interpolate_no_face(p, valid, prior)
    return out
