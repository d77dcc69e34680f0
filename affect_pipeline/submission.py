"""Fold ensemble -> official ABAW submission files, their validator, and the metrics summary.

Stages: ``ensemble`` (:func:`ensemble_main`), ``validate_submission`` (:func:`validate_main`),
``summarize`` (:func:`summarize_main`).

Official file format (per task one ``predictions.txt``). Source: DESIGN.md "Submission" plus
the ABAW5 (CVPR 2023) submission writers of public challenge entries (GitHub code found with
the search tool: EXPR writers emit the header
``image_location,Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other`` and then
``{video}/{i:05d}.jpg,{argmax}`` — *one* class index per row under the 8-name header; VA
writers emit ``image_location,valence,arousal``; AU writers
``image_location,AU1,AU2,...,AU26`` with 12 values 0/1; frames numbered from 1 over each test
video's full frame range, videos taken from the ``*_test_set_release.txt`` lists)::

    AU    image_location,AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26
          demo_012/00001.jpg,0,1,0,0,0,0,1,0,0,0,1,0
    EXPR  image_location,Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other
          demo_012/00001.jpg,4
    VA    image_location,valence,arousal
          demo_012/00001.jpg,0.251300,-0.104000
    ERI   File_ID,Adoration,Amusement,Anxiety,Disgust,Empathic-Pain,Fear,Surprise
          00013,0.120000,0.410000,...        (Hume-Reaction: one row per test video; CSV
                                             content, kept under the uniform name predictions.txt)

Ensemble policy (``ensemble`` params):
- ``weighting``: ``uniform`` averages the folds' activated outputs; ``metric`` weights fold f by
  max(score_f, 0) from its validation metrics JSON (uniform if every score is <= 0 / missing).
- ``no_face: interpolate``: frames where no fold found a face get, per output channel, the
  linear interpolation in time (frame index) between the nearest face frames before and after;
  frames before the first / after the last face frame copy the nearest one. A test video
  without any face frame gets the prior: the mean ensembled output over every face frame of
  the task's test videos (a warning names the video). ``no_face: model`` keeps the model's
  own outputs (audio-only evidence) on those frames.
- decoding: AU ``prob >= threshold`` (``au_threshold``: a number, or ``tuned`` = the mean over
  folds of the per-AU ``au_thresholds`` stored in the metrics JSONs, 0.5 with a warning when
  absent); EXPR argmax; VA clipped to [-1, 1]; ERI clipped to [0, 1].
The ensembled per-frame outputs also go to ``ensemble.h5`` beside the file (group per video:
``prob`` (n, C) after interpolation, ``raw`` before, ``valid``, ``label`` as written).
Test videos follow ``videos.tsv`` row order (the index lists ids sorted).
"""
from __future__ import annotations

import csv
import logging
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import AU_NAMES, ERI_NAMES, EXPR_NAMES, TASK_OUTPUTS, TASKS, VA_NAMES
from .runtime import PipelineError, atomic_path, read_json, stage_parser, write_json, write_text

log = logging.getLogger(__name__)

HEADERS = {
    "AU": ("image_location",) + AU_NAMES,
    "EXPR": ("image_location",) + EXPR_NAMES,
    "VA": ("image_location",) + VA_NAMES,
    "ERI": ("File_ID",) + ERI_NAMES,
}
#: values per data row (EXPR: one class index under the 8-name header)
ROW_VALUES = {"AU": 12, "EXPR": 1, "VA": 2, "ERI": 7}
ENSEMBLE_FOLDS = tuple(f"fold{i}" for i in range(1, 6))
STAGES = ("finetune", "blb", "dcl")
METHOD_NAMES = {"finetune": "MAE finetune", "blb": "BLB", "dcl": "DCL"}
MAX_SHOWN = 5   # problems listed per kind in a validation error
FRAME_NAME = re.compile(r"^(?P<video>.+)/(?P<frame>\d{5,})\.jpg$")


# ======================================================================== index
def test_videos(index_path, task: str) -> dict[str, int]:
    """Test video ids of ``task`` -> frame count, in videos.tsv order."""
    from .dataset import read_index

    rows = read_index(index_path)
    col = f"split_{task}"
    if rows and col not in next(iter(rows.values())):
        raise PipelineError(f"{index_path}: no column {col!r} (an index written for other tasks?)")
    vids = {v: int(r["n_frames"]) for v, r in rows.items() if r.get(col) == "test"}
    if not vids:
        raise PipelineError(f"{index_path}: no test videos for task {task} ({col} == 'test' nowhere); "
                            f"is the test list (affwild2.test_lists / hume Split=Test) configured?")
    return vids


# ======================================================================== fold predictions
@dataclass
class FoldPreds:
    path: Path
    fold: str
    score: float
    test: dict = field(default_factory=dict)   # video -> (pred (n, C) f4, valid (n,) bool)


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
        c = TASK_OUTPUTS[task]
        for vid, n in videos.items():
            g = f["test"][vid]
            pred = np.asarray(g["pred"][:], np.float32)
            valid = np.asarray(g["valid"][:], bool).reshape(-1) if "valid" in g else np.ones(len(pred), bool)
            want = (1, c) if task == "ERI" else (n, c)
            if pred.shape != want:
                raise PipelineError(f"{path}: test/{vid}/pred has shape {pred.shape}, expected {want} "
                                    f"({'one row' if task == 'ERI' else f'{n} frames'} x {c} outputs)")
            if task != "ERI" and len(valid) != n:
                raise PipelineError(f"{path}: test/{vid}/valid has {len(valid)} rows, expected {n}")
            if not np.isfinite(pred).all():
                raise PipelineError(f"{path}: test/{vid}/pred holds NaN/inf values")
            fp.test[vid] = (pred, valid)
    return fp


def match_metrics(folds: list[FoldPreds], metric_paths) -> list[dict]:
    """The validation metrics JSON of each fold: by its ``fold`` key (or folder name), else by order."""
    loaded = []
    for p in metric_paths:
        m = read_json(p)
        if not isinstance(m, dict):
            raise PipelineError(f"{p}: metrics JSON is not an object")
        loaded.append((str(m.get("fold", Path(p).parent.name)), m, p))
    by_fold = {name: m for name, m, _ in loaded}
    if all(fp.fold in by_fold for fp in folds):
        return [by_fold[fp.fold] for fp in folds]
    if len(loaded) == len(folds):
        log.warning("metrics JSONs do not name the prediction folds %s; pairing them by order",
                    [fp.fold for fp in folds])
        return [m for _, m, _ in loaded]
    if not loaded:
        return [{} for _ in folds]
    raise PipelineError(f"metrics {[str(p) for _, _, p in loaded]} do not match prediction folds "
                        f"{[fp.fold for fp in folds]}")


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


def resolve_au_threshold(setting, metrics: list[dict]) -> np.ndarray:
    """Per-AU thresholds: a number for all, or ``tuned`` = mean of the folds' ``au_thresholds``."""
    if isinstance(setting, str) and setting.strip().lower() == "tuned":
        tuned = [np.asarray(m["au_thresholds"], np.float64) for m in metrics
                 if m and m.get("au_thresholds") is not None]
        tuned = [t for t in tuned if t.shape == (len(AU_NAMES),) and np.isfinite(t).all()]
        if not tuned:
            log.warning("ensemble.au_threshold=tuned but no metrics JSON holds 12 'au_thresholds'; using 0.5")
            return np.full(len(AU_NAMES), 0.5)
        if len(tuned) < len(metrics):
            log.warning("au_thresholds found for %d of %d folds; averaging those", len(tuned), len(metrics))
        return np.mean(tuned, axis=0)
    try:
        th = float(setting)
    except (TypeError, ValueError):
        raise PipelineError(f"ensemble.au_threshold: {setting!r} is neither a number nor 'tuned'") from None
    if not 0.0 < th < 1.0:
        raise PipelineError(f"ensemble.au_threshold: {th} is outside (0, 1)")
    return np.full(len(AU_NAMES), th)


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


# ======================================================================== file format
def _value_strings(task: str, vals: np.ndarray) -> list[list[str]]:
    """Rows of formatted values, converted in one numpy call (millions of frames on Aff-Wild2)."""
    a = np.asarray(vals).reshape(len(vals), -1)
    if task in ("AU", "EXPR"):
        return a.astype(np.int64).astype(str).tolist()
    return np.char.mod("%.6f", a.astype(np.float64)).tolist()


def format_submission(task: str, values: dict[str, np.ndarray]) -> str:
    """The official text: header, then one row per frame (per video for ERI), videos in order."""
    lines = [",".join(HEADERS[task])]
    for vid, vals in values.items():
        rows = _value_strings(task, np.asarray(vals).reshape(1, -1) if task == "ERI" else vals)
        if task == "ERI":
            lines.append(f"{vid},{','.join(rows[0])}")
        else:
            lines.extend(f"{vid}/{i:05d}.jpg,{','.join(r)}" for i, r in enumerate(rows, start=1))
    return "\n".join(lines) + "\n"


def read_submission(task: str, path) -> dict[str, np.ndarray]:
    """Parse a (valid) submission -> video -> values (AU (n,12) int, EXPR (n,) int, VA (n,2), ERI (7,))."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: submission file not found")
    rows: dict[str, list] = defaultdict(list)
    with open(path, encoding="utf-8") as fh:
        next(fh, None)
        for ln in fh:
            if not ln.strip():
                continue
            key, _, rest = ln.rstrip("\r\n").partition(",")
            vid = key if task == "ERI" else key.rsplit("/", 1)[0]
            rows[vid].append([float(x) for x in rest.split(",")])
    out = {}
    for vid, r in rows.items():
        a = np.asarray(r, np.float64)
        out[vid] = (a.astype(np.int64) if task == "AU" else a[:, 0].astype(np.int64) if task == "EXPR"
                    else a if task == "VA" else a[0])
    return out


# ======================================================================== validator
class _Problems:
    """Problems grouped by kind: a count and the first few examples of each."""

    def __init__(self):
        self.count: dict[str, int] = defaultdict(int)
        self.examples: dict[str, list[str]] = defaultdict(list)

    def add(self, kind: str, example: str):
        self.count[kind] += 1
        if len(self.examples[kind]) < MAX_SHOWN:
            self.examples[kind].append(example)

    def __bool__(self):
        return bool(self.count)

    def report(self, path) -> str:
        total = sum(self.count.values())
        parts = [f"{k} ({n}x): {'; '.join(self.examples[k])}" + (" ..." if n > MAX_SHOWN else "")
                 for k, n in self.count.items()]
        return f"{path}: {total} problem(s) in the submission file:\n  " + "\n  ".join(parts)


def _check_values(task: str, vals: list[str]) -> str | None:
    """None if one row's values are well-formed for ``task``, else what is wrong."""
    if len(vals) != ROW_VALUES[task]:
        return f"{len(vals)} value(s), expected {ROW_VALUES[task]}"
    if task == "AU":
        return None if all(v in ("0", "1") for v in vals) else f"AU values must be 0 or 1: {','.join(vals)}"
    if task == "EXPR":
        return None if vals[0] in {str(c) for c in range(8)} else f"class index must be 0..7: {vals[0]!r}"
    try:
        x = [float(v) for v in vals]
    except ValueError:
        return f"not numbers: {','.join(vals)}"
    if not all(math.isfinite(v) for v in x):
        return f"non-finite value: {','.join(vals)}"
    if task == "VA" and not all(-1.0 <= v <= 1.0 for v in x):
        return f"VA outside [-1, 1]: {','.join(vals)}"
    return None


def check_submission(task: str, path, videos: dict[str, int]) -> _Problems:
    """Every problem of a submission file against the test ids and their frame counts."""
    path, probs = Path(path), _Problems()
    if task not in TASKS:
        raise PipelineError(f"unknown task {task!r}; known: {TASKS}")
    if not path.exists():
        raise PipelineError(f"{path}: submission file not found")
    seen: dict[str, int] = {}          # video -> frames seen so far (ERI: rows)
    unknown: set[str] = set()
    with open(path, encoding="utf-8", newline="") as fh:
        header = fh.readline().rstrip("\r\n")
        if header != ",".join(HEADERS[task]):
            probs.add("wrong header", f"got {header[:120]!r}, expected {','.join(HEADERS[task])!r}")
        for lineno, ln in enumerate(fh, start=2):
            ln = ln.rstrip("\r\n")
            if not ln.strip():
                probs.add("empty line", f"line {lineno}")
                continue
            key, *vals = ln.split(",")
            if task == "ERI":
                vid = key
            else:
                m = FRAME_NAME.match(key)
                if not m:
                    probs.add("bad image_location", f"line {lineno}: {key!r} is not video/NNNNN.jpg")
                    continue
                vid, frame = m["video"], int(m["frame"])
            if vid not in videos:
                if vid not in unknown:
                    probs.add("unknown video (not in the test list)", f"line {lineno}: {vid!r}")
                unknown.add(vid)
                continue
            k = seen.get(vid, 0) + 1
            seen[vid] = k
            if task == "ERI":
                if k > 1:
                    probs.add("duplicate File_ID", f"line {lineno}: {vid}")
            else:
                if frame != k:
                    probs.add("frames not consecutive", f"line {lineno}: {key} where frame {k:05d} was due")
                if k > videos[vid]:
                    probs.add("more rows than frames", f"line {lineno}: {key} (video has {videos[vid]} frames)")
            bad = _check_values(task, vals)
            if bad:
                probs.add("bad values", f"line {lineno}: {bad}")
    for vid, n in videos.items():
        got = seen.get(vid, 0)
        want = 1 if task == "ERI" else n
        if got == 0:
            probs.add("missing video", vid)
        elif got < want:
            probs.add("missing frames", f"{vid}: {got} rows for {want} frames")
    return probs


def validate_submission(task: str, path, videos: dict[str, int], name=None) -> None:
    """Raise a PipelineError listing what is wrong (first few per kind + counts), if anything."""
    probs = check_submission(task, path, videos)
    if probs:
        raise PipelineError(probs.report(name or path))


# ======================================================================== ensemble stage
def ensemble(task: str, pred_paths, metric_paths, index_path, out, params: dict, h5_out=None) -> dict:
    """Average the folds, fill no-face frames, decode, validate and write the submission + ensemble.h5."""
    import h5py

    out = Path(out)
    h5_out = Path(h5_out) if h5_out else out.with_name("ensemble.h5")
    videos = test_videos(index_path, task)
    folds = [read_fold_predictions(p, task, videos) for p in pred_paths]
    if not folds:
        raise PipelineError("ensemble: no --preds given")
    metrics = match_metrics(folds, metric_paths or [])
    weights = fold_weights(params.get("weighting", "uniform"), metrics, folds)
    policy = params.get("no_face", "interpolate")
    if policy not in ("interpolate", "model"):
        raise PipelineError(f"ensemble.no_face: {policy!r} is not interpolate | model")
    th = resolve_au_threshold(params.get("au_threshold", 0.5), metrics) if task == "AU" else None
    log.info("%s: %d folds %s, weights %s", task, len(folds), [fp.fold for fp in folds], np.round(weights, 4))

    raw = {vid: average_folds(folds, weights, vid, task) for vid in videos}
    face_rows = [p[v] for p, v in raw.values() if v.any()]
    prior = np.concatenate(face_rows).mean(0) if face_rows else None
    prob, values = {}, {}
    for vid, (p, valid) in raw.items():
        if task != "ERI" and policy == "interpolate":
            if not valid.any():
                log.warning("%s: test video %s has no face frame; predicting the prior %s for all %d frames",
                            task, vid, np.round(prior, 3) if prior is not None else "(model outputs)", len(p))
            p = interpolate_no_face(p, valid, prior)
        prob[vid] = p
        values[vid] = decode(task, p, th)

    with atomic_path(out) as tmp:
        tmp.write_text(format_submission(task, values))
        validate_submission(task, tmp, videos, name=f"{out} (before renaming into place)")
        with atomic_path(h5_out) as htmp, h5py.File(htmp, "w") as f:
            f.attrs.update(dict(task=task, folds=[fp.fold for fp in folds], weights=weights,
                                weighting=params.get("weighting", "uniform"), no_face=policy))
            if th is not None:
                f.attrs["au_threshold"] = th
            for vid in videos:
                g = f.create_group(vid)
                g.create_dataset("prob", data=prob[vid].astype(np.float32))
                g.create_dataset("raw", data=raw[vid][0].astype(np.float32))
                g.create_dataset("valid", data=raw[vid][1])
                g.create_dataset("label", data=values[vid])
    n_rows = sum(1 if task == "ERI" else len(v) for v in values.values())
    no_face = int(sum((~v).sum() for _, v in raw.values())) if task != "ERI" else 0
    log.info("%s: wrote %s (%d videos, %d rows, %d no-face frames filled) and %s",
             task, out, len(videos), n_rows, no_face, h5_out)
    return {"videos": len(videos), "rows": n_rows, "no_face_frames": no_face, "weights": weights.tolist(),
            "au_threshold": None if th is None else th.tolist()}


def ensemble_main(argv: list[str]) -> int:
    p = stage_parser("ensemble", "Fold ensemble -> official submission file (validated) + ensemble.h5")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--preds", nargs="+", required=True, help="predictions/{task}/{fold}.h5 of the ensembled folds")
    p.add_argument("--metrics", nargs="*", default=[], help="the folds' validation metrics JSONs (dcl_metrics.json)")
    p.add_argument("--index", required=True, help="results/index/videos.tsv")
    p.add_argument("--out", required=True, help="submission/{task}/predictions.txt")
    p.add_argument("--h5", default=None, help="ensembled outputs (default: ensemble.h5 beside --out)")
    a = p.parse_args(argv)
    ensemble(a.task, a.preds, a.metrics, a.index, a.out, a.params, a.h5)
    return 0


def validate_main(argv: list[str]) -> int:
    p = stage_parser("validate_submission", "Check a submission file against the test list and frame counts")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--file", required=True)
    p.add_argument("--index", required=True, help="results/index/videos.tsv")
    a = p.parse_args(argv)
    videos = test_videos(a.index, a.task)
    validate_submission(a.task, a.file, videos)
    print(f"{a.file}: valid {a.task} submission ({len(videos)} test videos, "
          f"{sum(videos.values()) if a.task != 'ERI' else len(videos)} rows)")
    return 0


# ======================================================================== summary / ablation
def _score(m: dict | None, key: str = "score") -> float | None:
    v = (m or {}).get(key)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _read_optional(path: Path) -> dict | None:
    return read_json(path) if path.exists() else None


def collect_scores(results, tasks, folds) -> dict:
    """Validation scores of every stage, task and fold found under ``results``.

    Returns ``{task: {"metric", "folds": {fold: {stage: score}}, "extra": {fold: {name: value}},
    "mean": {stage: mean over fold1-5}}}``. MAE finetune per fold is the BLB metrics'
    ``framewise_score`` (the fine-tuned frame head on that fold's validation frames); for the
    official fold ``finetune_{task}_metrics.json`` fills in when BLB lacks it.
    """
    from .metrics import MAIN_METRIC

    results, out = Path(results), {}
    for task in tasks:
        ft = _read_optional(results / "mae" / f"finetune_{task}_metrics.json")
        t = {"metric": MAIN_METRIC.get(task, "score"), "folds": {}, "extra": {}, "mean": {}}
        for fold in folds:
            d = results / "models" / task / fold
            blb, dcl = _read_optional(d / "blb_metrics.json"), _read_optional(d / "dcl_metrics.json")
            s = {"finetune": _score(blb, "framewise_score"), "blb": _score(blb), "dcl": _score(dcl)}
            if s["finetune"] is None and fold == "official":
                s["finetune"] = _score(ft)
            if task == "VA":     # the paper reports valence and arousal CCC separately (Tables 3, 4)
                t["extra"][fold] = {f"{st}_{k}": _score(m, f"ccc_{k}") for st, m in (("blb", blb), ("dcl", dcl))
                                    for k in ("valence", "arousal")}
            t["folds"][fold] = s
        for st in STAGES:
            vals = [t["folds"][f][st] for f in ENSEMBLE_FOLDS if f in t["folds"] and t["folds"][f][st] is not None]
            t["mean"][st] = float(np.mean(vals)) if vals else None
        if all(v is None for f in t["folds"].values() for v in f.values()):
            log.warning("summarize: no metrics found for task %s under %s", task, results)
        out[task] = t
    return out


def ablation_rows(scores: dict, folds) -> list[list[str]]:
    """Rows of the paper-style table: task, method, metric, each fold, mean(fold1-5)."""
    def cell(v):
        return "" if v is None else f"{v:.4f}"

    header = ["task", "method", "metric", *folds, "mean(fold1-5)"]
    rows = [header]
    for task, t in scores.items():
        for st in STAGES:
            vals = [t["folds"][f][st] for f in folds]
            if all(v is None for v in vals):
                continue
            rows.append([task, METHOD_NAMES[st], t["metric"], *map(cell, vals), cell(t["mean"][st])])
        for key in (f"{st}_{k}" for k in ("valence", "arousal") for st in ("blb", "dcl")):
            vals = [t["extra"].get(f, {}).get(key) for f in folds]
            if any(v is not None for v in vals):
                fv = [t["extra"].get(f, {}).get(key) for f in ENSEMBLE_FOLDS]
                fv = [v for v in fv if v is not None]
                st, k = key.split("_")
                rows.append([task, METHOD_NAMES[st], f"CCC {k}", *map(cell, vals),
                             cell(float(np.mean(fv)) if fv else None)])
    return rows


# ---------------------------------------------------------------- test metrics (demo truth)
def read_truth(test_labels, task: str, videos) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Held-back test truth: ``{AU,EXPR,VA}/{video}.txt`` (annotation format) or ``ERI.csv``."""
    from .dataset import parse_annotation

    root, out = Path(test_labels), {}
    if task == "ERI":
        path = root / "ERI.csv"
        if not path.exists():
            raise PipelineError(f"{path}: ERI test labels not found")
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in ("File_ID",) + ERI_NAMES if c not in (reader.fieldnames or [])]
            if missing:
                raise PipelineError(f"{path}: lacks column(s) {missing}")
            for i, r in enumerate(reader, start=2):
                try:
                    out[r["File_ID"].strip().strip("[]")] = (
                        np.array([[float(r[c]) for c in ERI_NAMES]]), np.ones(1, bool))
                except ValueError as e:
                    raise PipelineError(f"{path} line {i}: intensities are not numbers") from e
        return out
    for vid in videos:
        path = root / task / f"{vid}.txt"
        if path.exists():
            out[vid] = parse_annotation(path, task)
    return out


def chance_level(task: str, y: np.ndarray) -> float:
    """Expected score of label-blind random guessing (fair coin per AU, uniform class, or any
    uncorrelated VA/ERI predictor -> 0). For a class of prevalence p guessed with rate q the
    expected precision is p and recall q, so F1 = 2pq / (p + q)."""
    if task == "AU":
        p = (y > 0.5).mean(0)
        return float(np.mean(np.where(p > 0, 2 * p * 0.5 / (p + 0.5), 0.0)))
    if task == "EXPR":
        p = np.bincount(y.reshape(-1).astype(int), minlength=8) / len(y)
        return float(np.mean(np.where(p > 0, 2 * p / 8 / (p + 1 / 8), 0.0)))
    return 0.0


def _train_labels(results: Path, task: str) -> np.ndarray | None:
    path = results / "index" / "labels" / f"{task}.h5"
    if not path.exists():
        return None
    from .stores import read_labels

    ys = [l.y[l.mask] for l in read_labels(path).values() if l.split == "train" and l.mask.any()]
    return np.concatenate(ys) if ys else None


def test_metrics(results, task: str, test_labels) -> dict | None:
    """Score the submission file against the held-back truth, with a constant baseline and chance."""
    from .metrics import MAIN_METRIC, constant_baseline, score

    results = Path(results)
    sub = results / "submission" / task / "predictions.txt"
    if not sub.exists():
        log.warning("summarize: %s not found; no test metrics for %s", sub, task)
        return None
    pred = read_submission(task, sub)
    truth = read_truth(test_labels, task, pred)
    common = [v for v in pred if v in truth]
    if not common:
        log.warning("summarize: no test truth under %s for the videos of %s", test_labels, sub)
        return None
    P, Y, M = [], [], []
    for vid in common:
        p, (y, m) = pred[vid], truth[vid]
        p = p.reshape(1, -1) if task == "ERI" else p
        if task != "ERI" and len(y) != len(p):
            log.warning("%s: truth has %d rows, submission %d; scoring the first %d", vid, len(y), len(p),
                        min(len(y), len(p)))
            k = min(len(y), len(p))
            p, y, m = p[:k], y[:k], m[:k]
        P.append(p), Y.append(y), M.append(m)
    P, Y, M = np.concatenate(P), np.concatenate(Y), np.concatenate(M)
    s = score(task, P.astype(np.float64), Y, M)
    y_train = _train_labels(results, task)
    if y_train is None:
        log.warning("%s: no training labels under %s/index/labels; baseline fitted on the test truth", task, results)
        y_train = Y[M]
    base = constant_baseline(task, y_train, Y[M])
    res = {"score": s["score"], "baseline": base, "chance": chance_level(task, Y[M]),
           "metric": MAIN_METRIC[task], "n": int(M.sum()), "videos": len(common)}
    for k in ("per_class", "ccc_valence", "ccc_arousal"):
        if k in s:
            res[k] = s[k]
    return res


def summarize(results, tasks, folds, out, ablation, test_labels=None) -> dict:
    scores = collect_scores(results, tasks, folds)
    summary = {"folds": list(folds), "ensemble_folds": list(ENSEMBLE_FOLDS), "tasks": scores}
    if test_labels:
        summary["test"] = {}
        for task in tasks:
            r = test_metrics(results, task, test_labels)
            if r is not None:
                summary["test"][task] = r
                log.info("test %s: %s %.4f (constant baseline %.4f, chance %.4f, %d frames)", task,
                         r["metric"], r["score"], r["baseline"], r["chance"], r["n"])
    rows = ablation_rows(scores, folds)
    write_text(ablation, "\n".join("\t".join(r) for r in rows) + "\n")
    write_json(out, summary)
    return summary


def summarize_main(argv: list[str]) -> int:
    p = stage_parser("summarize", "Collect validation metrics into summary.json + a paper-style ablation table")
    p.add_argument("--results", required=True, help="the results/ folder")
    p.add_argument("--tasks", nargs="+", required=True, choices=TASKS)
    p.add_argument("--folds", nargs="+", default=["official", *ENSEMBLE_FOLDS])
    p.add_argument("--test-labels", default=None, help="held-back test truth (the demo's test_labels/)")
    p.add_argument("--out", required=True, help="metrics/summary.json")
    p.add_argument("--ablation", required=True, help="metrics/ablation.tsv")
    a = p.parse_args(argv)
    summarize(a.results, a.tasks, a.folds, a.out, a.ablation, a.test_labels)
    return 0
