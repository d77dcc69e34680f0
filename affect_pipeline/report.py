"""``report_plots``: the figures of the Snakemake report, one PNG per figure, fixed names.

The file names never depend on the data (:data:`REPORT_FILES`), so the Snakefile can list them
as outputs; a figure whose task is switched off, or whose inputs are absent, becomes a
placeholder PNG that says why. Inputs are read from ``--results`` (the layout of
docs/stages.md)::

    curves_{AU,EXPR,VA,ERI}.png  training curves (loss, validation score) of the MAE fine-tune,
                                 BLB and DCL per fold            <- *_curve.csv
    confusion_EXPR.png           EXPR confusion, summed over fold1-5 validation sets, row-normalised
                                                                 <- models/EXPR/*/dcl_metrics.json
    au_f1.png                    per-AU F1, BLB vs DCL (mean ± sd over fold1-5) [+ test]
    va_scatter.png               VA prediction vs truth on the out-of-fold validation frames
                                                                 <- predictions/VA/*.h5 + labels
    eri_pcc.png                  per-emotion PCC of ERI, BLB vs DCL [+ test]
    timelines.png                per-frame ensembled outputs of a few test videos (no-face frames
                                 shaded) [+ truth with --test-labels] <- submission/*/ensemble.h5
    faces_contact_sheet.png      evenly spaced crops of a few videos; red = no face found
                                                                 <- faces/*.h5
    ablation.png                 the paper-style table (Tables 1-5) [+ test scores vs baseline]
"""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np

from . import AU_NAMES, ERI_NAMES, EXPR_NAMES, FRAME_TASKS, TASKS
from .runtime import PipelineError, atomic_path, stage_parser

log = logging.getLogger(__name__)

REPORT_FILES = (*(f"curves_{t}.png" for t in TASKS), "confusion_EXPR.png", "au_f1.png", "va_scatter.png",
                "eri_pcc.png", "timelines.png", "faces_contact_sheet.png", "ablation.png")
FOLDS = ("official", "fold1", "fold2", "fold3", "fold4", "fold5")
CV_FOLDS = FOLDS[1:]
STAGE_LABEL = {"finetune": "MAE fine-tune", "blb": "BLB", "dcl": "DCL"}


class Skip(Exception):
    """This figure cannot be drawn (task off, inputs absent): a placeholder says why."""


def report_files() -> list[str]:
    return list(REPORT_FILES)


# ======================================================================== helpers
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)


def placeholder(title: str, reason: str):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 2.2))
    ax.axis("off")
    ax.text(0.5, 0.62, title, ha="center", va="center", fontsize=13, weight="bold")
    ax.text(0.5, 0.3, reason, ha="center", va="center", fontsize=10, color="dimgray", wrap=True)
    return fig


def _json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PipelineError(f"{path}: not valid JSON ({e})") from e


def read_curve(path: Path) -> dict[str, np.ndarray] | None:
    """``epoch, train_loss, val_loss, val_score, lr`` -> column arrays (NaN where empty)."""
    if not path.exists():
        return None
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return None
    def num(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return np.nan
    return {k: np.array([num(r.get(k)) for r in rows]) for k in ("epoch", "train_loss", "val_loss", "val_score", "lr")}


def _stage_metrics(results: Path, task: str, stage: str, folds=CV_FOLDS) -> dict[str, dict]:
    out = {}
    for f in folds:
        m = _json(results / "models" / task / f / f"{stage}_metrics.json")
        if m:
            out[f] = m
    return out


def _test_summary(results: Path) -> dict:
    s = _json(results / "metrics" / "summary.json") or {}
    return s.get("test", {}) or {}


def _require_task(task: str, tasks) -> None:
    if task not in tasks:
        raise Skip(f"task {task} disabled in this run")


# ======================================================================== figures
def plot_curves(results: Path, task: str, tasks, folds=FOLDS):
    """Loss (train solid, validation dashed) and validation score per epoch, per fold and stage."""
    _require_task(task, tasks)
    plt = _plt()
    sources = {"finetune": {"": results / "mae" / f"finetune_{task}_curve.csv"},
               "blb": {f: results / "models" / task / f / "blb_curve.csv" for f in folds},
               "dcl": {f: results / "models" / task / f / "dcl_curve.csv" for f in folds}}
    curves = {st: {f: c for f, p in src.items() if (c := read_curve(p)) is not None} for st, src in sources.items()}
    if not any(curves.values()):
        raise Skip(f"no training curves for {task} under {results}")
    fig, axes = plt.subplots(2, 3, figsize=(13, 6), sharex="col", squeeze=False)
    colors = dict(zip(("", *folds), plt.cm.tab10.colors))
    for j, (st, cs) in enumerate(curves.items()):
        top, bot = axes[0, j], axes[1, j]
        top.set_title(f"{task} — {STAGE_LABEL[st]}")
        for f, c in cs.items():
            col, lab = colors.get(f, "k"), f or "official split"
            top.plot(c["epoch"], c["train_loss"], color=col, label=lab)
            top.plot(c["epoch"], c["val_loss"], color=col, ls="--")
            bot.plot(c["epoch"], c["val_score"], color=col, marker="o", ms=3, label=lab)
        if not cs:
            top.text(0.5, 0.5, "no curve", ha="center", transform=top.transAxes, color="gray")
        top.set_ylabel("loss (— train, -- val)")
        bot.set_ylabel("validation score")
        bot.set_xlabel("epoch")
        if cs:
            bot.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_confusion(results: Path, tasks):
    _require_task("EXPR", tasks)
    ms = _stage_metrics(results, "EXPR", "dcl") or _stage_metrics(results, "EXPR", "blb") or \
        _stage_metrics(results, "EXPR", "dcl", ("official",))
    mats = [np.asarray(m["confusion"], np.float64) for m in ms.values() if m.get("confusion") is not None]
    if not mats:
        raise Skip("no 'confusion' in the EXPR metrics")
    cm = np.sum(mats, axis=0)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(norm)):
        for j in range(len(norm)):
            ax.text(j, i, f"{norm[i, j]:.2f}\n({int(cm[i, j])})", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(8), EXPR_NAMES, rotation=45, ha="right")
    ax.set_yticks(range(8), EXPR_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"EXPR validation confusion ({', '.join(ms)}; row-normalised, counts in brackets)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def _per_class_bars(results: Path, task: str, names, ylabel: str):
    series = {}
    for st in ("blb", "dcl"):
        per = [m["per_class"] for m in _stage_metrics(results, task, st).values()
               if m.get("per_class") is not None and len(m["per_class"]) == len(names)]
        if per:
            series[f"{STAGE_LABEL[st]} (validation, {len(per)} folds)"] = (np.mean(per, 0), np.std(per, 0))
    test = _test_summary(results).get(task, {})
    if test.get("per_class") and len(test["per_class"]) == len(names):
        series["ensemble (test)"] = (np.asarray(test["per_class"]), None)
    if not series:
        raise Skip(f"no per-class scores in the {task} metrics")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(7, 0.7 * len(names) * len(series)), 4))
    width = 0.8 / len(series)
    x = np.arange(len(names))
    for k, (lab, (mean, sd)) in enumerate(series.items()):
        ax.bar(x + (k - (len(series) - 1) / 2) * width, mean, width, yerr=sd, capsize=2, label=lab)
    ax.set_xticks(x, names, rotation=30 if len(names) > 8 else 0)
    ax.set_ylabel(ylabel)
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=8)
    ax.set_title(f"{task}: {ylabel} per class")
    fig.tight_layout()
    return fig


def plot_au_f1(results: Path, tasks):
    _require_task("AU", tasks)
    return _per_class_bars(results, "AU", AU_NAMES, "F1")


def plot_eri_pcc(results: Path, tasks):
    _require_task("ERI", tasks)
    return _per_class_bars(results, "ERI", ERI_NAMES, "PCC")


def _validation_pairs(results: Path, task: str):
    """Out-of-fold validation predictions of fold1-5 with their labels -> (pred, y) on valid rows."""
    import h5py

    from .stores import read_labels

    lab_path = results / "index" / "labels" / f"{task}.h5"
    if not lab_path.exists():
        raise Skip(f"{lab_path} not found")
    labels = read_labels(lab_path)
    P, Y = [], []
    for fold in CV_FOLDS:
        path = results / "predictions" / task / f"{fold}.h5"
        if not path.exists():
            continue
        with h5py.File(path, "r") as f:
            for vid, g in (f["validation"].items() if "validation" in f else []):
                if vid in labels:
                    lab = labels[vid]
                    p = g["pred"][:]
                    n = min(len(p), len(lab.y))
                    m = lab.mask[:n]
                    P.append(p[:n][m]), Y.append(lab.y[:n][m])
    if not P:
        raise Skip(f"no validation predictions of {task} under {results / 'predictions' / task}")
    return np.concatenate(P), np.concatenate(Y)


def plot_va_scatter(results: Path, tasks):
    from .metrics import ccc

    _require_task("VA", tasks)
    pred, y = _validation_pairs(results, "VA")
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for j, (ax, name) in enumerate(zip(axes, ("valence", "arousal"))):
        ax.hexbin(y[:, j], pred[:, j], gridsize=40, extent=(-1, 1, -1, 1), cmap="viridis", mincnt=1, bins="log")
        ax.plot([-1, 1], [-1, 1], "r--", lw=1)
        ax.set(xlim=(-1, 1), ylim=(-1, 1), xlabel=f"true {name}", ylabel=f"predicted {name}", aspect="equal")
        ax.set_title(f"{name}: CCC {ccc(pred[:, j], y[:, j]):.3f} (n={len(y)}, fold1-5 validation)", fontsize=9)
    fig.tight_layout()
    return fig


def _truth(test_labels: Path | None, task: str, vid: str):
    if test_labels is None:
        return None
    path = Path(test_labels) / task / f"{vid}.txt"
    if not path.exists():
        return None
    from .dataset import parse_annotation

    return parse_annotation(path, task)


def _shade_no_face(ax, valid: np.ndarray, over: bool = False):
    """Grey bands over runs of frames without a face (``over``: translucent, above a heat map)."""
    bad = np.flatnonzero(np.diff(np.r_[0, (~valid).astype(int), 0]))
    for s, e in zip(bad[::2], bad[1::2]):
        if over:
            ax.axvspan(s + 0.5, e + 0.5, facecolor="white", alpha=0.35, hatch="//", edgecolor="0.6", zorder=2)
        else:
            ax.axvspan(s + 0.5, e + 0.5, color="0.85", zorder=0)


def plot_timelines(results: Path, tasks, test_labels=None, n_videos: int = 3):
    import h5py

    rows = [t for t in FRAME_TASKS if t in tasks and (results / "submission" / t / "ensemble.h5").exists()]
    if not rows:
        raise Skip("no frame-task ensemble.h5 under submission/ (tasks disabled or not run)")
    data = {}
    for t in rows:
        with h5py.File(results / "submission" / t / "ensemble.h5", "r") as f:
            data[t] = {v: (f[v]["prob"][:], f[v]["valid"][:]) for v in list(f.keys())[:n_videos]}
    vids = sorted({v for d in data.values() for v in d})[:n_videos]
    plt = _plt()
    fig, axes = plt.subplots(len(rows), len(vids), figsize=(5 * len(vids), 2.6 * len(rows)), squeeze=False)
    for i, t in enumerate(rows):
        for j, vid in enumerate(vids):
            ax = axes[i, j]
            if vid not in data[t]:
                ax.axis("off")
                continue
            prob, valid = data[t][vid]
            truth = _truth(test_labels, t, vid)
            x = np.arange(1, len(prob) + 1)
            if t == "AU":
                ax.imshow(prob.T, aspect="auto", cmap="magma", vmin=0, vmax=1, interpolation="nearest",
                          extent=(0.5, len(prob) + 0.5, 11.5, -0.5))
                ax.set_yticks(range(12), AU_NAMES, fontsize=6)
                if truth is not None:
                    yy, m = truth
                    k = min(len(yy), len(prob))
                    fi, ai = np.nonzero((yy[:k] > 0.5) & m[:k, None])
                    ax.scatter(fi + 1, ai, s=2, c="cyan", marker="s", label="true on")
                _shade_no_face(ax, valid, over=True)
            else:
                _shade_no_face(ax, valid)
                if t == "EXPR":
                    ax.step(x, prob.argmax(1), where="mid", label="predicted")
                    ax.set_yticks(range(8), EXPR_NAMES, fontsize=6)
                    ax.set_ylim(-0.5, 7.5)
                    if truth is not None:
                        yy, m = truth
                        k = min(len(yy), len(prob))
                        ax.step(x[:k], np.where(m[:k], yy[:k, 0], np.nan), where="mid", ls="--", label="true")
                else:
                    for c, name in enumerate(("valence", "arousal")):
                        ax.plot(x, prob[:, c], label=f"{name}")
                        if truth is not None:
                            yy, m = truth
                            k = min(len(yy), len(prob))
                            ax.plot(x[:k], np.where(m[:k], yy[:k, c], np.nan), ls="--", color=f"C{c}",
                                    label=f"true {name}")
                    ax.set_ylim(-1.05, 1.05)
                ax.legend(fontsize=6, loc="upper right")
            ax.set_title(f"{t} — {vid} ({int((~valid).sum())} no-face frames shaded: interpolated)", fontsize=8)
            ax.set_xlabel("frame")
    fig.tight_layout()
    return fig


def plot_faces(results: Path, n_videos: int = 4, n_frames: int = 8):
    from matplotlib.patches import Rectangle

    from .stores import FaceStore

    paths = sorted((results / "faces").glob("*.h5"))[:n_videos]
    if not paths:
        raise Skip(f"no face stores under {results / 'faces'}")
    plt = _plt()
    fig, axes = plt.subplots(len(paths), n_frames, figsize=(1.4 * n_frames, 1.6 * len(paths)), squeeze=False)
    for i, p in enumerate(paths):
        with FaceStore(p) as fs:
            idx = np.unique(np.linspace(0, fs.n_frames - 1, n_frames).round().astype(int)) if fs.n_frames else []
            crops = fs.read_crops(idx) if len(idx) else []
            for j in range(n_frames):
                ax = axes[i, j]
                ax.set_xticks([]), ax.set_yticks([])
                if j >= len(idx):
                    ax.axis("off")
                    continue
                found = bool(fs.found[idx[j]])
                ax.imshow(crops[j])
                col = "limegreen" if found else "red"
                ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, lw=3, ec=col))
                if not found:
                    ax.text(0.5, 0.5, "no face", color="red", ha="center", va="center", transform=ax.transAxes)
                ax.set_title(f"#{idx[j] + 1}", fontsize=7)
            axes[i, 0].set_ylabel(f"{p.stem}\n{int(fs.found.sum())}/{fs.n_frames} found", fontsize=7)
    fig.suptitle("face crops (green: face found, red: none)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_ablation(results: Path, tasks, folds=FOLDS):
    from .submission import ablation_rows, collect_scores

    rows = ablation_rows(collect_scores(results, tasks, folds), folds)
    test = _test_summary(results)
    if len(rows) == 1 and not test:
        raise Skip("no validation metrics found")
    plt = _plt()
    n_test = len(test)
    height = 0.26 * (len(rows) + 2) + (0.26 * (n_test + 3) if n_test else 0)
    fig, axes = plt.subplots(2 if n_test else 1, 1, figsize=(12, height), squeeze=False,
                             gridspec_kw={"height_ratios": [len(rows) + 2, n_test + 3] if n_test else [1]})
    ax = axes[0, 0]
    ax.axis("off")
    ax.set_title("Validation scores per fold (paper Tables 1-5)", fontsize=10)
    if len(rows) > 1:
        tb = ax.table(cellText=rows[1:], colLabels=rows[0], loc="upper center", cellLoc="center")
        tb.auto_set_font_size(False)
        tb.set_fontsize(8)
    if n_test:
        ax = axes[1, 0]
        ax.axis("off")
        ax.set_title("Test set (held-back truth): ensemble vs constant baseline and chance", fontsize=10)
        cells = [[t, r.get("metric", ""), f"{r['score']:.4f}", f"{r['baseline']:.4f}", f"{r['chance']:.4f}",
                  str(r.get("n", ""))] for t, r in test.items()]
        tb = ax.table(cellText=cells, colLabels=["task", "metric", "ensemble", "constant baseline", "chance", "n"],
                      loc="upper center", cellLoc="center")
        tb.auto_set_font_size(False)
        tb.set_fontsize(8)
    fig.tight_layout()
    return fig


# ======================================================================== stage
def make_report(results, out_dir, tasks=TASKS, test_labels=None, n_videos: int = 3) -> dict[str, str]:
    """Write every file of :data:`REPORT_FILES`; returns name -> "plot" | "placeholder: why"."""
    results, out_dir = Path(results), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = {f"curves_{t}.png": (f"{t} training curves", lambda t=t: plot_curves(results, t, tasks)) for t in TASKS}
    jobs.update({
        "confusion_EXPR.png": ("EXPR confusion matrix", lambda: plot_confusion(results, tasks)),
        "au_f1.png": ("AU F1 per action unit", lambda: plot_au_f1(results, tasks)),
        "va_scatter.png": ("VA prediction vs truth", lambda: plot_va_scatter(results, tasks)),
        "eri_pcc.png": ("ERI PCC per emotion", lambda: plot_eri_pcc(results, tasks)),
        "timelines.png": ("per-frame timelines", lambda: plot_timelines(results, tasks, test_labels, n_videos)),
        "faces_contact_sheet.png": ("face crops", lambda: plot_faces(results)),
        "ablation.png": ("ablation table", lambda: plot_ablation(results, tasks)),
    })
    assert set(jobs) == set(REPORT_FILES)
    status = {}
    for name, (title, fn) in jobs.items():
        try:
            fig, status[name] = fn(), "plot"
        except Skip as e:
            log.info("%s: placeholder (%s)", name, e)
            fig, status[name] = placeholder(title, str(e)), f"placeholder: {e}"
        _save(fig, out_dir / name)
    return status


def main(argv: list[str]) -> int:
    p = stage_parser("report_plots", "PNG figures for the Snakemake report (fixed file names)")
    p.add_argument("--results", required=True, help="the results/ folder")
    p.add_argument("--out-dir", required=True, help="results/report")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS,
                   help="enabled tasks; the others get a 'task disabled' placeholder")
    p.add_argument("--test-labels", default=None, help="held-back truth for the timelines (demo test_labels/)")
    p.add_argument("--videos", type=int, default=3, help="test videos in the timelines")
    a = p.parse_args(argv)
    status = make_report(a.results, a.out_dir, a.tasks, a.test_labels, a.videos)
    for name, s in status.items():
        log.info("%-26s %s", name, s)
    return 0
