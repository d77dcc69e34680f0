"""``ensemble``: the folds' test predictions -> one validated submission file + ``ensemble.h5``.

Policy (the ``ensemble`` section of workflow_config.yaml, every key required):
- ``weighting``: ``uniform`` averages the folds' activated outputs; ``metric`` weights fold f by
  max(score_f, 0) from its validation metrics JSON (uniform if every score is <= 0 / missing).
- ``no_face`` (:data:`NO_FACE`; frames where no fold found a face; the submission needs a valid
  value on every row, and ``validate_submission`` refuses NaN, so there is no ``empty`` here:
  ``affect-predict --no-face`` has it, and makes it its default):
  ``interpolate``: per output channel, the linear interpolation in time between the nearest face
  frames before and after (edges copy the nearest one); a test video without any face frame gets
  the mean ensembled output over every face frame of the task's test videos (a warning names it).
  ``prior``: the training labels' prior (:func:`training_prior`: AU presence rates, EXPR class
  frequencies, VA means of each ensembled fold's training videos, averaged over the folds).
  ``audio``: the models' own outputs there, made from the audio stream (and the clip's other
  frames) with the visual input zeroed, as the temporal models were trained to.
- ``au_threshold``: a number, or ``tuned`` = the mean over folds of the per-AU thresholds that
  train_dcl tuned on each fold's validation videos (key :data:`TUNED_KEY` of dcl_metrics.json);
  a fold whose metrics lack them is an error, never a silent 0.5.
Decoding: AU ``prob >= threshold``, EXPR argmax, VA clipped to [-1, 1], ERI to [0, 1]. Rows follow
the official list (index_report.json's ``test_order``); where it is the organizers' frame list, its
rows exactly (``submission.rows_for_list``: listed frames only, the last prediction repeated past
the decoded end, logged). ``ensemble.h5`` holds per video ``prob`` (after filling, per decoded
frame), ``raw`` (before), ``valid`` and ``label`` (as written: per row); the dataset
:data:`ORDER` (variable-length UTF-8 strings) the order of the videos (an attribute cannot hold
thousands of ids: HDF5 caps an object header at 64 KiB), attrs ``frame_list`` and ``padded_rows``
where a frame list set the rows. :func:`video_order` reads it, and the ``videos`` attribute of
files written before. Test videos whose media file did not decode (``decode_failed`` of
index_report.json) have no rows: the log names them.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.files import atomic_path
from affect_pipeline.common.runtime import read_json, stage_parser
from affect_pipeline.common.tasks import AU_NAMES, TASK_OUTPUTS, TASKS
from affect_pipeline.submit.no_face import (  # noqa: F401 - NO_FACE, interpolate_no_face: this stage's API
    NO_FACE,
    fill_no_face,
    interpolate_no_face,
    training_prior,
)
from affect_pipeline.submit.submission import (
    MAX_SHOWN,
    format_submission,
    listed_frames,
    rows_for_list,
    test_videos,
    validate_submission,
)

log = logging.getLogger(__name__)

#: the key under which train_dcl / train_blb write the per-AU thresholds tuned on validation
TUNED_KEY = "au_thresholds_tuned"
WEIGHTINGS = ("uniform", "metric")
#: the root dataset of ensemble.h5 that holds the videos' order (the other root names are video ids)
ORDER = "videos"


# ======================================================================== settings and inputs
@dataclass(frozen=True)
class EnsembleSettings:
    weighting: str
    au_threshold: float | str
    no_face: str

    @classmethod
    def from_params(cls, params: dict) -> "EnsembleSettings":
        """The ``ensemble`` config section; a missing key or bad value names itself."""
        from affect_pipeline.common.config import need

        s = cls(*(need(params, k, "ensemble --params") for k in ("weighting", "au_threshold", "no_face")))
        if s.weighting not in WEIGHTINGS:
            raise PipelineError(f"ensemble.weighting: {s.weighting!r} is not uniform | metric")
        if s.no_face not in NO_FACE:
            raise PipelineError(f"ensemble.no_face: {s.no_face!r} is not {' | '.join(NO_FACE)}")
        return s


@dataclass(frozen=True)
class EnsembleInputs:
    preds: tuple                 # predictions/{task}/{fold}.h5 of the ensembled folds
    metrics: tuple               # their dcl_metrics.json (any order; matched by fold)
    index: Path                  # index/videos.tsv
    index_report: Path | None = None   # index/index_report.json: test_order = the row order
    labels: Path | None = None   # index/labels/{task}.h5 and folds/{task}.json: the training prior
    folds: Path | None = None    # (``no_face: prior`` only)


@dataclass
class FoldPreds:
    path: Path
    fold: str
    score: float
    test: dict = field(default_factory=dict)   # video -> (pred (n, C) f4, valid (n,) bool)


# ======================================================================== fold predictions
def _check_video(path, vid: str, n: int, task: str, pred: np.ndarray, valid: np.ndarray) -> None:
    c = TASK_OUTPUTS[task]
    want = (1, c) if task == "ERI" else (n, c)
    if pred.shape != want:
        raise PipelineError(f"{path}: test/{vid}/pred has shape {pred.shape}, expected {want} "
                            f"({'one row' if task == 'ERI' else f'{n} frames'} x {c} outputs)")
    if task != "ERI" and len(valid) != n:
        raise PipelineError(f"{path}: test/{vid}/valid has {len(valid)} rows, expected {n}")
    if not np.isfinite(pred).all():
        raise PipelineError(f"{path}: test/{vid}/pred holds NaN/inf values")


def read_fold_predictions(path, task: str, videos: dict[str, int]) -> FoldPreds:
    """One fold's predictions store, checked against the test list and frame counts."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: predictions store not found")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise PipelineError(f"{path}: unreadable predictions store (truncated or corrupt HDF5: {e})") from e
    with f:
        t = f.attrs.get("task")
        if t is not None and str(t) != task:
            raise PipelineError(f"{path}: predictions of task {t!r}, expected {task}")
        fp = FoldPreds(path, str(f.attrs.get("fold", path.stem)), float(f.attrs.get("score", math.nan)))
        if "test" not in f:
            raise PipelineError(f"{path}: no group 'test' (predictions store lacks the test videos)")
        missing = [v for v in videos if v not in f["test"]]
        if missing:
            raise PipelineError(f"{path}: no predictions for {len(missing)} test video(s): {missing[:MAX_SHOWN]}")
        for vid, n in videos.items():
            g = f["test"][vid]
            pred = np.asarray(g["pred"][:], np.float32)
            valid = np.asarray(g["valid"][:], bool).reshape(-1) if "valid" in g else np.ones(len(pred), bool)
            _check_video(path, vid, n, task, pred, valid)
            fp.test[vid] = (pred, valid)
    return fp


def match_metrics(folds: list[FoldPreds], metric_paths) -> list[tuple[str, dict]]:
    """(file, metrics) of each fold, matched by the JSON's ``fold`` (or its folder's name)."""
    by_fold: dict[str, tuple[str, dict]] = {}
    for p in metric_paths:
        m = read_json(p)
        if not isinstance(m, dict):
            raise PipelineError(f"{p}: metrics JSON is not an object")
        fold = str(m.get("fold", Path(p).parent.name))
        if fold in by_fold:
            raise PipelineError(f"{p}: a second metrics file for fold {fold} (first: {by_fold[fold][0]})")
        by_fold[fold] = (str(p), m)
    if not by_fold:
        return [("", {}) for _ in folds]
    missing = [fp.fold for fp in folds if fp.fold not in by_fold]
    if missing:
        raise PipelineError(f"metrics {sorted(s for s, _ in by_fold.values())} hold no fold {missing} "
                            f"of the prediction stores {[str(fp.path) for fp in folds]}")
    return [by_fold[fp.fold] for fp in folds]


def fold_weights(weighting: str, metrics: list[dict], folds: list[FoldPreds]) -> np.ndarray:
    """Normalised fold weights: uniform, or proportional to the (positive part of the) validation score."""
    n = len(folds)
    if weighting == "uniform":
        return np.full(n, 1.0 / n)
    if weighting != "metric":
        raise PipelineError(f"ensemble.weighting: {weighting!r} is not uniform | metric")
    s = np.array([m.get("score", fp.score) if m else fp.score for m, fp in zip(metrics, folds)], np.float64)
    s = np.where(np.isfinite(s), np.maximum(s, 0.0), 0.0)
    if s.sum() <= 0:
        log.warning("ensemble.weighting=metric but no fold has a positive validation score %s; using uniform", s)
        return np.full(n, 1.0 / n)
    return s / s.sum()


def resolve_au_threshold(setting, metrics: list[tuple[str, dict]]) -> np.ndarray:
    """Per-AU thresholds: a number for all, or ``tuned`` = mean of the folds' :data:`TUNED_KEY`."""
    if isinstance(setting, str) and setting.strip().lower() == "tuned":
        tuned, bad = [], []
        for src, m in metrics:
            t = np.asarray(m.get(TUNED_KEY) if m else None, np.float64)
            if t.shape == (len(AU_NAMES),) and np.isfinite(t).all():
                tuned.append(t)
            else:
                bad.append(src or "(no metrics file given)")
        if bad or not tuned:
            raise PipelineError(f"ensemble.au_threshold is 'tuned' but {bad or 'no metrics file'} "
                                f"hold(s) no {len(AU_NAMES)} finite {TUNED_KEY!r} (written by train_dcl "
                                f"for AU); give a number instead, or rerun train_dcl")
        return np.mean(tuned, axis=0)
    try:
        th = float(setting)
    except (TypeError, ValueError):
        raise PipelineError(f"ensemble.au_threshold: {setting!r} is neither a number nor 'tuned'") from None
    if not 0.0 < th < 1.0:
        raise PipelineError(f"ensemble.au_threshold: {th} is outside (0, 1)")
    return np.full(len(AU_NAMES), th)


# ======================================================================== averaging, filling, decoding
def average_folds(folds: list[FoldPreds], weights: np.ndarray, vid: str, task: str):
    """Weighted mean over the folds that saw a face on each frame -> (prob (n, C), valid (n,))."""
    preds = np.stack([fp.test[vid][0] for fp in folds]).astype(np.float64)          # (F, n, C)
    if task == "ERI":
        return np.tensordot(weights, preds, axes=1), np.ones(1, bool)
    valid = np.stack([fp.test[vid][1] for fp in folds])                              # (F, n)
    w = weights[:, None] * valid                                                     # (F, n)
    any_valid = w.sum(0) > 0
    w = np.where(any_valid[None], w, weights[:, None])   # no face anywhere: plain weighted mean
    w = w / w.sum(0, keepdims=True)
    return np.einsum("fn,fnc->nc", w, preds), any_valid


def decode(task: str, prob: np.ndarray, au_threshold: np.ndarray | None = None) -> np.ndarray:
    """Ensembled outputs -> submitted values (AU 0/1, EXPR class index, VA / ERI clipped)."""
    if task == "AU":
        return (prob >= au_threshold[None]).astype(np.int64)
    if task == "EXPR":
        return prob.argmax(1).astype(np.int64)[:, None]
    if task == "VA":
        return np.clip(prob, -1.0, 1.0)
    if task == "ERI":
        return np.clip(prob, 0.0, 1.0)
    raise ValueError(task)


# ======================================================================== the stage
def write_ensemble_h5(path, task: str, raw: dict, prob: dict, values: dict, attrs: dict) -> None:
    import h5py

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update({**attrs, "task": task})
        f.create_dataset(ORDER, data=list(raw), dtype=h5py.string_dtype("utf-8"))
        for vid in raw:
            g = f.create_group(vid)
            g.create_dataset("prob", data=prob[vid].astype(np.float32))
            g.create_dataset("raw", data=raw[vid][0].astype(np.float32))
            g.create_dataset("valid", data=raw[vid][1])
            g.create_dataset("label", data=values[vid])


def video_order(f) -> list[str]:
    """The videos of an open ensemble.h5 in submission order: the :data:`ORDER` dataset, the
    ``videos`` attribute of files written before it, else the groups' (sorted) names."""
    import h5py

    if isinstance(f.get(ORDER), h5py.Dataset):
        return list(f[ORDER].asstr()[:])
    if "videos" in f.attrs:
        return [str(v) for v in f.attrs["videos"]]
    return [k for k in f.keys() if isinstance(f[k], h5py.Group)]


def _left_out(task: str, report_path) -> None:
    """Name the task's test videos that are not in the submission because they did not decode."""
    if report_path is None or not Path(report_path).exists():
        return
    failed = [d for d in read_json(report_path).get("decode_failed") or [] if d.get("video")]
    ids = [d["video"] for d in failed if (d.get("splits") or {}).get(task) == "test"]
    if ids:
        log.warning("%s: %d video(s) are not in the submission: their media files did not decode (index_report."
                    "json decode_failed): %s", task, len(ids), ", ".join(ids[:MAX_SHOWN]))


def ensemble(task: str, inputs: EnsembleInputs, settings: EnsembleSettings, out, h5_out=None) -> dict:
    """Average the folds, fill no-face frames, decode, validate and write the submission + ensemble.h5."""
    out = Path(out)
    h5_out = Path(h5_out) if h5_out else out.with_name("ensemble.h5")
    if not inputs.preds:
        raise PipelineError("ensemble: no --preds given")
    videos = test_videos(inputs.index, task, inputs.index_report)
    if ORDER in videos:
        raise PipelineError(f"{inputs.index}: a test video is named {ORDER!r}, the name ensemble.h5 keeps for "
                            f"the videos' order; rename it")
    _left_out(task, inputs.index_report)
    folds = [read_fold_predictions(p, task, videos) for p in inputs.preds]
    metrics = match_metrics(folds, inputs.metrics)
    weights = fold_weights(settings.weighting, [m for _, m in metrics], folds)
    th = resolve_au_threshold(settings.au_threshold, metrics) if task == "AU" else None
    log.info("%s: %d folds %s, weights %s", task, len(folds), [fp.fold for fp in folds], np.round(weights, 4))

    raw = {vid: average_folds(folds, weights, vid, task) for vid in videos}
    prior = None
    if settings.no_face == "prior" and task != "ERI":
        prior = training_prior(task, inputs.labels, inputs.folds, [fp.fold for fp in folds])
        log.info("%s: no-face frames get the training prior %s", task, np.round(prior, 3))
    prob = fill_no_face(task, raw, settings.no_face, prior)
    values = {vid: decode(task, p, th) for vid, p in prob.items()}
    attrs = dict(folds=[fp.fold for fp in folds], weights=weights, weighting=settings.weighting,
                 no_face=settings.no_face, **({"au_threshold": th} if th is not None else {}))
    frames = listed_frames(inputs.index_report, task, videos) if task != "ERI" else None
    values, padded = _follow_frame_list(task, values, frames, attrs)
    with atomic_path(out) as tmp:
        tmp.write_text(format_submission(task, values, frames), encoding="utf-8")
        validate_submission(task, tmp, videos, name=f"{out} (before renaming into place)",
                            ordered=inputs.index_report is not None, frames=frames)
        write_ensemble_h5(h5_out, task, raw, prob, values, attrs)
    n_rows = sum(1 if task == "ERI" else len(v) for v in values.values())
    no_face = int(sum((~v).sum() for _, v in raw.values())) if task != "ERI" else 0
    log.info("%s: wrote %s (%d videos, %d rows, %d no-face frames) and %s", task, out, len(videos), n_rows,
             no_face, h5_out)
    return {"videos": len(videos), "rows": n_rows, "no_face_frames": no_face, "weights": weights.tolist(),
            "au_threshold": None if th is None else th.tolist(), "padded_rows": sum(padded.values()),
            "frame_list": frames.file if frames else None}


def _follow_frame_list(task: str, values: dict, frames, attrs: dict) -> tuple[dict, dict[str, int]]:
    """The rows the organizers' frame list names (``frames``; None: every decoded frame)."""
    if frames is None:
        return values, {}
    decoded = {vid: len(v) for vid, v in values.items()}
    values, padded = rows_for_list(values, frames)
    for vid, k in padded.items():
        log.warning("%s: test video %s: the organizers' list has %d rows (last %05d) but the video decodes %d "
                    "frames: its last prediction is repeated for the %d listed frame(s) past the end (%s)", task,
                    vid, len(frames[vid]), frames[vid][-1], decoded[vid], k, frames.file)
    attrs.update(frame_list=frames.file, padded_rows=sum(padded.values()))
    return values, padded


def main(argv: list[str]) -> int:
    p = stage_parser("ensemble", "Fold ensemble -> official submission file (validated) + ensemble.h5")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--preds", nargs="+", required=True, help="predictions/{task}/{fold}.h5 of the ensembled folds")
    p.add_argument("--metrics", nargs="*", default=[], help="the folds' dcl_metrics.json")
    p.add_argument("--index", required=True, help="results/index/videos.tsv")
    p.add_argument("--index-report", required=True,
                   help="results/index/index_report.json: its test_order is the official row order")
    p.add_argument("--out", required=True, help="submission/{task}/predictions.txt")
    p.add_argument("--h5", default=None, help="ensembled outputs (default: ensemble.h5 beside --out)")
    p.add_argument("--labels", default=None, help="results/index/labels/{task}.h5 (no_face: prior)")
    p.add_argument("--folds", default=None, help="results/folds/{task}.json (no_face: prior)")
    a = p.parse_args(argv)
    inputs = EnsembleInputs(tuple(a.preds), tuple(a.metrics), Path(a.index), Path(a.index_report),
                            a.labels and Path(a.labels), a.folds and Path(a.folds))
    ensemble(a.task, inputs, EnsembleSettings.from_params(a.params), a.out, a.h5)
    return 0
