"""``summarize``: every stage's validation metrics -> ``summary.json`` + a paper-style ablation table.

Inputs are named files, never folders: the frame-wise fine-tune's
``mae/{task}/{fold}/finetune_metrics.json`` (one per frame task x fold; ERI has none), the temporal
stages' ``models/{task}/{fold}/{blb,dcl}_metrics.json``, and, to score the test set where its
truth is known (the demo), the submission files and the label stores (the constant baseline is
fitted on the training labels). Task, fold and stage of a metrics file come from its own fields
(``task``, ``fold``, ``stage``) or from that path layout; a file for a task or fold outside
``--tasks`` / ``--folds`` is an error. The "MAE finetune" row is the head's score on the frames
BLB and DCL are scored on (``framewise_score`` of ``blb_metrics.json``: every labelled validation
frame, no-face frames given the training prior), falling back to ``finetune_metrics.json`` (face
frames only) where a fold has no BLB. The table's mean is over every fold but ``official``
(the ensembled folds), headed ``mean(fold1-{k})``.

With ``--shared-encoder`` (``mae.finetune.per_fold: false``) one encoder per task, fine-tuned on
the official train split, fed every fold: the fold rows' validation videos were in its training
data, so summary.json flags those rows as leaky.
"""
from __future__ import annotations

import csv
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.runtime import read_json, stage_parser, write_json, write_text
from affect_pipeline.common.tasks import ERI_NAMES, TASKS

log = logging.getLogger(__name__)

STAGES = ("finetune", "blb", "dcl")
METHOD_NAMES = {"finetune": "MAE finetune", "blb": "BLB", "dcl": "DCL"}
VA_EXTRAS = tuple(f"{st}_{k}" for k in ("valence", "arousal") for st in ("blb", "dcl"))
_PATHS = {
    "finetune": re.compile(r"(?:^|/)mae/(?P<task>[^/]+)/(?P<fold>[^/]+)/finetune_metrics\.json$"),
    "temporal": re.compile(r"(?:^|/)models/(?P<task>[^/]+)/(?P<fold>[^/]+)/(?P<stage>blb|dcl)_metrics\.json$"),
}
LEAKY_NOTE = ("mae.finetune.per_fold is false: one MAE encoder per task, fine-tuned on the official "
              "train split, encoded every fold, so the {span} rows' validation videos were in its "
              "training data: those rows (and their mean) are optimistic, not honest cross-validation. "
              "The official row is unaffected.")


# ======================================================================== folds
def cv_folds(folds) -> list[str]:
    """The ensembled folds: every fold but the official split."""
    return [f for f in folds if f != "official"]


def fold_span(cv) -> str:
    """``fold1-3`` for fold1..fold3, else the names joined by commas."""
    cv = list(cv)
    if cv and cv == [f"fold{i}" for i in range(1, len(cv) + 1)]:
        return f"fold1-{len(cv)}"
    return ",".join(cv)


# ======================================================================== metrics files
@dataclass(frozen=True)
class MetricsFile:
    path: str
    task: str
    fold: str
    stage: str
    doc: dict


def _stage_name(stage) -> str | None:
    if stage is None:
        return None
    s = str(stage)
    return "finetune" if s.startswith("finetune") else s


def read_metrics_file(path, kind: str) -> MetricsFile:
    """One metrics JSON with its task / fold / stage, from its fields or its path (they must agree)."""
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise PipelineError(f"{path}: metrics JSON is not an object")
    m = _PATHS[kind].search(Path(path).as_posix())
    from_path = {**(m.groupdict() if m else {}), **({"stage": "finetune"} if m and kind == "finetune" else {})}
    from_doc = {"task": doc.get("task"), "fold": doc.get("fold"), "stage": _stage_name(doc.get("stage"))}
    key = {}
    for name in ("task", "fold", "stage"):
        a, b = from_path.get(name), from_doc[name]
        if a and b and str(a) != str(b):
            raise PipelineError(f"{path}: the file says {name} {b!r} but its path says {a!r}")
        key[name] = str(b or a or "")
        if not key[name]:
            raise PipelineError(f"{path}: cannot tell its {name}: the JSON has no {name!r} field and the "
                                f"path is not {_PATHS[kind].pattern}")
    want = ("finetune",) if kind == "finetune" else ("blb", "dcl")
    if key["stage"] not in want:
        raise PipelineError(f"{path}: metrics of stage {key['stage']!r}, expected {' | '.join(want)}")
    return MetricsFile(str(path), key["task"], key["fold"], key["stage"], doc)


def load_metrics(finetune, temporal, tasks, folds) -> dict[tuple[str, str, str], MetricsFile]:
    """(task, fold, stage) -> its metrics file; unknown tasks / folds and duplicates are errors."""
    out: dict[tuple[str, str, str], MetricsFile] = {}
    files = [read_metrics_file(p, "finetune") for p in finetune]
    files += [read_metrics_file(p, "temporal") for p in temporal]
    for mf in files:
        if mf.task not in tasks:
            raise PipelineError(f"{mf.path}: metrics of task {mf.task}, not among --tasks {list(tasks)}")
        if mf.fold not in folds:
            raise PipelineError(f"{mf.path}: metrics of fold {mf.fold}, not among --folds {list(folds)}")
        k = (mf.task, mf.fold, mf.stage)
        if k in out:
            raise PipelineError(f"{mf.path}: a second {mf.stage} metrics file for {mf.task}/{mf.fold} "
                                f"(first: {out[k].path})")
        out[k] = mf
    return out


# ======================================================================== scores and table
def _score(m: dict | None, key: str = "score") -> float | None:
    v = (m or {}).get(key)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _mean(vals) -> float | None:
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


def task_scores(task: str, metrics: dict, folds) -> dict:
    """One task's scores: ``{"metric", "folds": {fold: {stage: score}}, "extra": {fold: {...}},
    "mean": {stage: mean over the ensembled folds}, "per_class"/"confusion": {stage: {fold: ...}}}``."""
    from affect_pipeline.common.metrics import MAIN_METRIC

    def doc(fold, st):
        mf = metrics.get((task, fold, st))
        return mf.doc if mf else None

    t = {"metric": MAIN_METRIC.get(task, "score"), "folds": {}, "extra": {}, "mean": {},
         "per_class": {"blb": {}, "dcl": {}}, "confusion": {"blb": {}, "dcl": {}}}
    for fold in folds:
        t["folds"][fold] = {st: _score(doc(fold, st)) for st in STAGES}
        framewise = _score(doc(fold, "blb"), "framewise_score")
        if framewise is not None:   # the head scored on BLB / DCL's frames (no-face frames included)
            t["folds"][fold]["finetune"] = framewise
        if task == "VA":     # the paper reports valence and arousal CCC separately (Tables 3, 4)
            t["extra"][fold] = {f"{st}_{k}": _score(doc(fold, st), f"ccc_{k}")
                                for st in ("blb", "dcl") for k in ("valence", "arousal")}
        for st in ("blb", "dcl"):
            for key in ("per_class", "confusion"):
                if (doc(fold, st) or {}).get(key) is not None:
                    t[key][st][fold] = doc(fold, st)[key]
    for st in STAGES:
        t["mean"][st] = _mean(t["folds"][f][st] for f in cv_folds(folds))
    # the DCL's best epoch under each dcl.inference combination (validation): what its default rests on
    inf = {f: (doc(f, "dcl") or {}).get("inference_scores") for f in folds}
    if any(inf.values()):
        modes = sorted({m for v in inf.values() if v for m in v})
        t["dcl_inference"] = {"folds": {f: v for f, v in inf.items() if v},
                              "mean": {m: _mean((inf[f] or {}).get(m) for f in folds) for m in modes}}
    if all(v is None for f in t["folds"].values() for v in f.values()):
        log.warning("summarize: no metrics given for task %s", task)
    return t


def ablation_rows(scores: dict, folds) -> list[list[str]]:
    """Rows of the paper-style table: task, method, metric, each fold, mean over the ensembled folds."""
    def cell(v):
        return "" if v is None else f"{v:.4f}"

    cv = cv_folds(folds)
    rows = [["task", "method", "metric", *folds, *([f"mean({fold_span(cv)})"] if cv else [])]]
    for task, t in scores.items():
        for st in STAGES:
            vals = [t["folds"][f][st] for f in folds]
            if any(v is not None for v in vals):
                rows.append([task, METHOD_NAMES[st], t["metric"], *map(cell, vals),
                             *([cell(t["mean"][st])] if cv else [])])
        for key in VA_EXTRAS:
            vals = [t["extra"].get(f, {}).get(key) for f in folds]
            if any(v is not None for v in vals):
                st, k = key.split("_")
                mean = _mean(t["extra"].get(f, {}).get(key) for f in cv)
                rows.append([task, METHOD_NAMES[st], f"CCC {k}", *map(cell, vals), *([cell(mean)] if cv else [])])
    return rows


# ======================================================================== test metrics (known truth)
def read_truth(test_labels, task: str, videos) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Held-back test truth: ``{AU,EXPR,VA}/{video}.txt`` (annotation format) or ``ERI.csv``."""
    from affect_pipeline.data.annotations import parse_annotation

    root, out = Path(test_labels), {}
    if task != "ERI":
        for vid in videos:
            path = root / task / f"{vid}.txt"
            if path.exists():
                out[vid] = parse_annotation(path, task)
        return out
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
                out[r["File_ID"].strip().strip("[]")] = (np.array([[float(r[c]) for c in ERI_NAMES]]),
                                                         np.ones(1, bool))
            except ValueError as e:
                raise PipelineError(f"{path} line {i}: intensities are not numbers") from e
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


def train_labels(path) -> np.ndarray | None:
    """The valid training-split label rows of one label store (for the constant baseline)."""
    if path is None:
        return None
    from affect_pipeline.common.stores import read_labels

    ys = [l.y[l.mask] for l in read_labels(path).values() if l.split == "train" and l.mask.any()]
    return np.concatenate(ys) if ys else None


def _paired(task: str, pred: dict, truth: dict, common: list[str]):
    P, Y, M = [], [], []
    for vid in common:
        p, (y, m) = pred[vid], truth[vid]
        p = p.reshape(1, -1) if task == "ERI" else p
        if task != "ERI" and len(y) != len(p):
            k = min(len(y), len(p))
            log.warning("%s: truth has %d rows, submission %d; scoring the first %d", vid, len(y), len(p), k)
            p, y, m = p[:k], y[:k], m[:k]
        P.append(p), Y.append(y), M.append(m)
    return np.concatenate(P).astype(np.float64), np.concatenate(Y), np.concatenate(M)


def test_metrics(task: str, submission, labels, test_labels, videos=None) -> dict | None:
    """Score a submission file against the held-back truth, with a constant baseline and chance."""
    from affect_pipeline.common.metrics import MAIN_METRIC, constant_baseline, score
    from affect_pipeline.submit.submission import read_submission

    pred = read_submission(task, submission)
    truth = read_truth(test_labels, task, videos if videos is not None else pred)
    common = [v for v in (videos if videos is not None else pred) if v in truth and v in pred]
    if not common:
        log.warning("summarize: no test truth under %s for the videos of %s", test_labels, submission)
        return None
    P, Y, M = _paired(task, pred, truth, common)
    s = score(task, P, Y, M)
    y_train = train_labels(labels)
    if y_train is None:
        log.warning("%s: no training labels in %s; baseline fitted on the test truth", task, labels)
        y_train = Y[M]
    res = {"score": s["score"], "baseline": constant_baseline(task, y_train, Y[M]),
           "chance": chance_level(task, Y[M]), "metric": MAIN_METRIC[task], "n": int(M.sum()),
           "videos": len(common)}
    res.update({k: s[k] for k in ("per_class", "ccc_valence", "ccc_arousal") if k in s})
    return res


# ======================================================================== the stage
@dataclass(frozen=True)
class SummaryInputs:
    tasks: tuple
    folds: tuple
    finetune_metrics: tuple = ()
    stage_metrics: tuple = ()
    submissions: tuple = ()          # submission/{task}/predictions.txt
    labels: tuple = ()               # index/labels/{task}.h5
    index: Path | None = None        # index/videos.tsv (test videos per task)
    test_labels: Path | None = None  # held-back truth (demo)
    shared_encoder: bool = False


def _by_task(paths, name_of) -> dict[str, Path]:
    return {name_of(Path(p)): Path(p) for p in paths}


def test_section(inp: SummaryInputs) -> dict:
    from affect_pipeline.submit.submission import test_videos

    subs = _by_task(inp.submissions, lambda p: p.parent.name)
    labels = _by_task(inp.labels, lambda p: p.stem)
    out = {}
    for task in inp.tasks:
        if task not in subs:
            log.warning("summarize: no --submissions file for %s; no test metrics", task)
            continue
        videos = list(test_videos(inp.index, task)) if inp.index else None
        r = test_metrics(task, subs[task], labels.get(task), inp.test_labels, videos)
        if r is not None:
            out[task] = r
            log.info("test %s: %s %.4f (constant baseline %.4f, chance %.4f, %d frames)", task, r["metric"],
                     r["score"], r["baseline"], r["chance"], r["n"])
    return out


def summarize(inp: SummaryInputs, out, ablation) -> dict:
    """Write summary.json and ablation.tsv; returns the summary."""
    metrics = load_metrics(inp.finetune_metrics, inp.stage_metrics, inp.tasks, inp.folds)
    scores = {task: task_scores(task, metrics, inp.folds) for task in inp.tasks}
    cv = cv_folds(inp.folds)
    summary = {"folds": list(inp.folds), "ensemble_folds": cv, "fold_span": fold_span(cv),
               "encoder": "shared" if inp.shared_encoder else "per_fold",
               "leaky_folds": cv if inp.shared_encoder else [],
               "note": LEAKY_NOTE.format(span=fold_span(cv)) if inp.shared_encoder else "",
               "tasks": scores}
    if inp.shared_encoder:
        log.warning(summary["note"])
    if inp.test_labels:
        summary["test"] = test_section(inp)
    rows = ablation_rows(scores, inp.folds)
    write_text(ablation, "\n".join("\t".join(r) for r in rows) + "\n")
    write_json(out, summary)
    return summary


def main(argv: list[str]) -> int:
    p = stage_parser("summarize", "Validation metrics -> summary.json + a paper-style ablation table")
    p.add_argument("--tasks", nargs="+", required=True, choices=TASKS)
    p.add_argument("--folds", nargs="+", required=True, help="official fold1 ... foldk")
    p.add_argument("--finetune-metrics", nargs="*", default=[], help="mae/{task}/{fold}/finetune_metrics.json")
    p.add_argument("--stage-metrics", nargs="*", default=[], help="models/{task}/{fold}/{blb,dcl}_metrics.json")
    p.add_argument("--submissions", nargs="*", default=[], help="submission/{task}/predictions.txt")
    p.add_argument("--labels", nargs="*", default=[], help="index/labels/{task}.h5 (constant baseline)")
    p.add_argument("--index", default=None, help="index/videos.tsv")
    p.add_argument("--test-labels", default=None, help="held-back test truth (the demo's test_labels/)")
    p.add_argument("--shared-encoder", action="store_true",
                   help="mae.finetune.per_fold was false: flag the fold rows as leaky")
    p.add_argument("--out", required=True, help="metrics/summary.json")
    p.add_argument("--ablation", required=True, help="metrics/ablation.tsv")
    a = p.parse_args(argv)
    inp = SummaryInputs(tuple(a.tasks), tuple(a.folds), tuple(a.finetune_metrics), tuple(a.stage_metrics),
                        tuple(a.submissions), tuple(a.labels), Path(a.index) if a.index else None,
                        Path(a.test_labels) if a.test_labels else None, a.shared_encoder)
    summarize(inp, a.out, a.ablation)
    return 0
