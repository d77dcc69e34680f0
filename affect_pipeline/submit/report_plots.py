"""``report_plots``: every figure of :data:`affect_pipeline.submit.report.REPORT_FILES`, from named files.

Inputs (each named by the rule, none found by globbing a folder):
- ``--summary``: metrics/summary.json (folds, scores, per-class scores and confusions per fold,
  test scores, the leaky flag) -> ablation, confusion_EXPR, au_f1, eri_pcc;
- ``--curves``: ``models/{task}/{fold}/{blb,dcl}_curve.csv``, ``mae/{task}/{fold}/finetune_curve.csv``,
  ``mae/pretrain_curve.csv`` -> curves_*;
- ``--predictions`` (``predictions/VA/{fold}.h5``, their validation groups) + ``--labels``
  (``index/labels/VA.h5``) -> va_scatter, out-of-fold over the ensembled folds;
- ``--ensembles`` (``submission/{task}/ensemble.h5``) [+ ``--test-labels``] -> timelines;
- ``--faces`` (a few face stores the rule picks) -> faces_contact_sheet.
A figure whose task is off or whose inputs are absent becomes a placeholder that says why.
"""
from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.lists import read_list
from affect_pipeline.common.runtime import read_json, stage_parser
from affect_pipeline.common.tasks import AU_NAMES, ERI_NAMES, FRAME_TASKS, TASKS
from affect_pipeline.submit import figures
from affect_pipeline.submit.ensemble import video_order
from affect_pipeline.submit.report import BY_NAME, REPORT_FILES
from affect_pipeline.submit.summarize import (
    METHOD_NAMES,
    STAGES,
    ablation_rows,
    fold_span,
    read_truth,
)

log = logging.getLogger(__name__)

_CURVE_PATHS = (
    re.compile(r"(?:^|/)models/(?P<task>[^/]+)/(?P<fold>[^/]+)/(?P<stage>blb|dcl)_curve\.csv$"),
    re.compile(r"(?:^|/)mae/(?P<task>[^/]+)/(?P<fold>[^/]+)/(?P<stage>finetune)_curve\.csv$"),
    re.compile(r"(?:^|/)mae/(?P<stage>pretrain)_curve\.csv$"),
)


class Skip(Exception):
    """This figure cannot be drawn (task off, inputs absent): a placeholder says why."""


@dataclass(frozen=True)
class ReportInputs:
    summary: Path | None = None
    curves: tuple = ()
    predictions: tuple = ()
    labels: tuple = ()
    ensembles: tuple = ()
    faces: tuple = ()
    test_labels: Path | None = None
    tasks: tuple = TASKS


# ======================================================================== readers
def read_curve(path) -> dict[str, np.ndarray] | None:
    """A curve CSV -> column arrays (NaN where empty); None if it has no rows."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: curve file not found")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows, cols = list(reader), reader.fieldnames or []

    def num(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return np.nan
    return {k: np.array([num(r.get(k)) for r in rows]) for k in cols} if rows else None


def curve_key(path) -> tuple[str, str | None, str | None]:
    """(stage, task, fold) of a curve file from its path (pretrain: task and fold None)."""
    for pat in _CURVE_PATHS:
        m = pat.search(Path(path).as_posix())
        if m:
            g = m.groupdict()
            return g["stage"], g.get("task"), g.get("fold")
    raise PipelineError(f"{path}: not a curve path the report knows "
                        f"({', '.join(p.pattern for p in _CURVE_PATHS)})")


def load_curves(paths) -> dict:
    """{(stage, task, fold): columns} of every non-empty curve."""
    out = {}
    for p in paths:
        c = read_curve(p)
        if c is not None:
            out[curve_key(p)] = c
    return out


def _by_task(paths, attr_task) -> dict[str, Path]:
    return {attr_task(Path(p)): Path(p) for p in paths}


def validation_pairs(pred_paths, labels_path, task: str, folds):
    """Out-of-fold validation predictions of ``folds`` with their labels -> (pred, y) on labelled
    frames, or None if there are none."""
    import h5py

    from affect_pipeline.common.stores import read_labels

    lab, P, Y = read_labels(labels_path), [], []
    for path in pred_paths:
        with h5py.File(path, "r") as f:
            if str(f.attrs.get("task", task)) != task or str(f.attrs.get("fold", Path(path).stem)) not in folds:
                continue
            for vid, g in (f["validation"].items() if "validation" in f else []):
                if vid in lab:
                    p, y, m = g["pred"][:], lab[vid].y, lab[vid].mask
                    n = min(len(p), len(y))
                    P.append(p[:n][m[:n]])
                    Y.append(y[:n][m[:n]])
    return (np.concatenate(P), np.concatenate(Y)) if P else None


def _require_task(task: str, tasks) -> None:
    if task not in tasks:
        raise Skip(f"task {task} disabled in this run")


# ======================================================================== the figures' data
class Report:
    """Loads each input once and turns it into the data of one figure (or a Skip)."""

    def __init__(self, inp: ReportInputs, n_videos: int = 3):
        self.inp, self.n_videos = inp, n_videos
        self.summary = read_json(inp.summary) if inp.summary else {}
        self.folds = list(self.summary.get("folds") or [])
        self.cv = list(self.summary.get("ensemble_folds") or [f for f in self.folds if f != "official"])
        self.span = fold_span(self.cv) or "no"
        self.curves = load_curves(inp.curves)

    def task(self, task: str) -> dict:
        t = (self.summary.get("tasks") or {}).get(task)
        if not t:
            raise Skip(f"no {task} metrics in {self.inp.summary or 'the (absent) summary'}")
        return t

    def curves_fig(self, task: str):
        _require_task(task, self.inp.tasks)
        per_stage = {st: {f: c for (s, t, f), c in self.curves.items() if s == st and t == task}
                     for st in STAGES}
        if not any(per_stage.values()):
            raise Skip(f"no training curves for {task} among --curves")
        folds = self.folds or sorted({f for cs in per_stage.values() for f in cs})
        return figures.training_curves(task, per_stage, folds)

    def pretrain_fig(self):
        c = next((c for (s, _, _), c in self.curves.items() if s == "pretrain"), None)
        if c is None or "loss" not in c:
            raise Skip("no MAE pretraining curve among --curves (a checkpoint was imported?)")
        return figures.pretrain_curve(c)

    def confusion_fig(self):
        _require_task("EXPR", self.inp.tasks)
        conf = self.task("EXPR").get("confusion") or {}
        for st, folds in (("dcl", self.cv), ("blb", self.cv), ("dcl", ["official"])):
            mats = {f: np.asarray(conf.get(st, {})[f], np.float64) for f in folds if f in conf.get(st, {})}
            if mats:
                return figures.confusion(np.sum(list(mats.values()), axis=0), f"{METHOD_NAMES[st]}, "
                                         f"{', '.join(mats)}")
        raise Skip("no 'confusion' in the EXPR metrics")

    def per_class_fig(self, task: str, names, ylabel: str):
        _require_task(task, self.inp.tasks)
        t, series = self.task(task), {}
        for st in ("blb", "dcl"):
            per = [v for f, v in (t.get("per_class") or {}).get(st, {}).items()
                   if f in self.cv and v is not None and len(v) == len(names)]
            if per:
                label = f"{METHOD_NAMES[st]} (validation, {len(per)} folds)"
                series[label] = (np.mean(per, 0), np.std(per, 0))
        test = (self.summary.get("test") or {}).get(task, {})
        if test.get("per_class") and len(test["per_class"]) == len(names):
            series["ensemble (test)"] = (np.asarray(test["per_class"]), None)
        if not series:
            raise Skip(f"no per-class scores in the {task} metrics")
        return figures.per_class_bars(task, names, series, ylabel)

    def va_scatter_fig(self):
        _require_task("VA", self.inp.tasks)
        labels = _by_task(self.inp.labels, lambda p: p.stem)
        if "VA" not in labels:
            raise Skip("no VA label store among --labels")
        pairs = validation_pairs(self.inp.predictions, labels["VA"], "VA", self.cv)
        if pairs is None:
            raise Skip(f"no VA validation predictions of the {self.span} folds among --predictions")
        return figures.va_scatter(*pairs, self.span)

    def ablation_fig(self):
        test = self.summary.get("test") or {}
        rows = ablation_rows(self.summary.get("tasks") or {}, self.folds) if self.summary else [[]]
        if len(rows) == 1 and not test:
            raise Skip("no validation metrics in the summary")
        title = f"Validation scores per fold, mean over {self.span} (paper Tables 1-5)"
        note = self.summary.get("note", "") if self.summary.get("leaky_folds") else ""
        return figures.ablation(rows, test, title, note)

    def timelines_fig(self):
        import h5py

        ens = {t: p for t, p in _by_task(self.inp.ensembles, lambda p: p.parent.name).items()
               if t in FRAME_TASKS and t in self.inp.tasks}
        if not ens:
            raise Skip("no frame-task ensemble.h5 among --ensembles (tasks disabled or not run)")
        data, vids = {}, []
        for t in FRAME_TASKS:
            if t not in ens:
                continue
            with h5py.File(ens[t], "r") as f:
                order = video_order(f)[: self.n_videos]
                data[t] = {v: (f[v]["prob"][:], f[v]["valid"][:]) for v in order}
            vids += [v for v in order if v not in vids]
        vids = vids[: self.n_videos]
        truth = {t: read_truth(self.inp.test_labels, t, vids) for t in data} if self.inp.test_labels else {}
        return figures.timelines(data, vids, truth)

    def faces_fig(self, n_frames: int = 8):
        from affect_pipeline.common.stores import FaceStore

        if not self.inp.faces:
            raise Skip("no face stores among --faces")
        rows = []
        for p in self.inp.faces:
            with FaceStore(p) as fs:
                idx = np.unique(np.linspace(0, max(fs.n_frames - 1, 0), n_frames).round().astype(int))
                idx = idx[: fs.n_frames]
                rows.append(figures.FaceRow(Path(p).stem, idx, fs.read_crops(idx), fs.found[idx].astype(bool),
                                            int(fs.found.sum()), fs.n_frames))
        return figures.faces_sheet(rows, n_frames)

    def jobs(self) -> dict:
        """File name -> a callable drawing it (or raising Skip)."""
        jobs = {f"curves_{t}.png": (lambda t=t: self.curves_fig(t)) for t in TASKS}
        jobs.update({
            "curves_pretrain.png": self.pretrain_fig,
            "confusion_EXPR.png": self.confusion_fig,
            "au_f1.png": lambda: self.per_class_fig("AU", AU_NAMES, "F1"),
            "va_scatter.png": self.va_scatter_fig,
            "eri_pcc.png": lambda: self.per_class_fig("ERI", ERI_NAMES, "PCC"),
            "ablation.png": self.ablation_fig,
            "timelines.png": self.timelines_fig,
            "faces_contact_sheet.png": self.faces_fig,
        })
        assert set(jobs) == set(REPORT_FILES)
        return jobs


# ======================================================================== the stage
def make_report(inp: ReportInputs, out_dir, n_videos: int = 3) -> dict[str, str]:
    """Write every file of REPORT_FILES; returns name -> "plot" | "placeholder: why"."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    status = {}
    for name, draw in Report(inp, n_videos).jobs().items():
        try:
            fig, status[name] = draw(), "plot"
        except Skip as e:
            log.info("%s: placeholder (%s)", name, e)
            fig, status[name] = figures.placeholder(BY_NAME[name].title, str(e)), f"placeholder: {e}"
        figures.save(fig, out_dir / name)
    return status


def main(argv: list[str]) -> int:
    p = stage_parser("report_plots", "PNG figures for the Snakemake report (fixed file names)")
    p.add_argument("--summary", required=True, help="metrics/summary.json")
    p.add_argument("--curves", nargs="*", default=[], help="blb/dcl/finetune/pretrain curve CSVs")
    p.add_argument("--predictions", nargs="*", default=[], help="predictions/VA/{fold}.h5 (validation groups)")
    p.add_argument("--labels", nargs="*", default=[], help="index/labels/{task}.h5")
    p.add_argument("--ensembles", nargs="*", default=[], help="submission/{task}/ensemble.h5")
    p.add_argument("--faces", nargs="*", default=[], help="face stores or batch directories (faces/{batch})")
    p.add_argument("--face-videos", type=read_list, default=None,
                   help="JSON list (or @FILE) of the videos of the contact sheet (default: all); give it as "
                        "--face-videos=JSON: an id may start with '-'")
    p.add_argument("--test-labels", default=None, help="held-back truth for the timelines (demo test_labels/)")
    p.add_argument("--tasks", nargs="+", required=True, choices=TASKS,
                   help="enabled tasks; the others get a 'task disabled' placeholder")
    p.add_argument("--videos", type=int, default=3, help="test videos in the timelines")
    p.add_argument("--out-dir", required=True, help="results/report")
    a = p.parse_args(argv)
    from affect_pipeline.common.stores import face_store_paths

    faces = tuple(face_store_paths(a.faces, a.face_videos).values())
    inp = ReportInputs(Path(a.summary), tuple(a.curves), tuple(a.predictions), tuple(a.labels),
                       tuple(a.ensembles), faces, Path(a.test_labels) if a.test_labels else None,
                       tuple(a.tasks))
    for name, s in make_report(inp, a.out_dir, a.videos).items():
        log.info("%-26s %s", name, s)
    return 0
