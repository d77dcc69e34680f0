"""The report's figures as small drawing functions: loaded data in, a matplotlib figure out.

Nothing here reads a pipeline file (that is :mod:`affect_pipeline.submit.report_plots`), so each figure
can be drawn from any arrays; matplotlib is imported on first use (Agg backend), never at import.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from affect_pipeline.common.files import atomic_path
from affect_pipeline.common.tasks import AU_NAMES, EXPR_NAMES
from affect_pipeline.submit.summarize import METHOD_NAMES, STAGES


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)


def placeholder(title: str, reason: str):
    fig, ax = pyplot().subplots(figsize=(6, 2.2))
    ax.axis("off")
    ax.text(0.5, 0.62, title, ha="center", va="center", fontsize=13, weight="bold")
    ax.text(0.5, 0.3, reason, ha="center", va="center", fontsize=10, color="dimgray", wrap=True)
    return fig


# ======================================================================== training curves
def training_curves(task: str, curves: dict[str, dict[str, dict]], folds):
    """Loss (train solid, validation dashed) and validation score per epoch; ``curves[stage][fold]``."""
    plt = pyplot()
    fig, axes = plt.subplots(2, len(curves), figsize=(4.4 * len(curves), 6), sharex="col", squeeze=False)
    colors = dict(zip(folds, plt.cm.tab10.colors))
    for j, (st, cs) in enumerate(curves.items()):
        top, bot = axes[0, j], axes[1, j]
        top.set_title(f"{task} — {METHOD_NAMES[st]}")
        for f, c in cs.items():
            col = colors.get(f, "k")
            top.plot(c["epoch"], c["train_loss"], color=col, label=f)
            top.plot(c["epoch"], c["val_loss"], color=col, ls="--")
            bot.plot(c["epoch"], c["val_score"], color=col, marker="o", ms=3, label=f)
        if not cs:
            top.text(0.5, 0.5, "no curve", ha="center", transform=top.transAxes, color="gray")
        else:
            bot.legend(fontsize=7)
        top.set_ylabel("loss (— train, -- val)")
        bot.set_ylabel("validation score")
        bot.set_xlabel("epoch")
    fig.tight_layout()
    return fig


def pretrain_curve(c: dict):
    """MAE reconstruction loss per logged step (or epoch) and the learning rate."""
    plt = pyplot()
    x = c["step"] if "step" in c and np.isfinite(c["step"]).any() else c["epoch"]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot(x, c["loss"], color="C0", label="masked-patch loss")
    ax.set_xlabel("step" if x is c.get("step") else "epoch")
    ax.set_ylabel("reconstruction loss (train)")
    if "lr" in c:
        ax2 = ax.twinx()
        ax2.plot(x, c["lr"], color="C1", ls=":", label="lr")
        ax2.set_ylabel("learning rate", color="C1")
    ax.set_title("MAE pretraining")
    fig.tight_layout()
    return fig


# ======================================================================== validation figures
def confusion(cm: np.ndarray, where: str):
    """Row-normalised confusion (recall on the diagonal) with counts in brackets."""
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = pyplot().subplots(figsize=(7, 6))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(norm)):
        for j in range(len(norm)):
            ax.text(j, i, f"{norm[i, j]:.2f}\n({int(cm[i, j])})", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(8), EXPR_NAMES, rotation=45, ha="right")
    ax.set_yticks(range(8), EXPR_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"EXPR validation confusion ({where}; row-normalised, counts in brackets)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def per_class_bars(task: str, names, series: dict, ylabel: str):
    """Grouped bars per class; ``series[label] = (mean, sd or None)``."""
    fig, ax = pyplot().subplots(figsize=(max(7, 0.7 * len(names) * len(series)), 4))
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


def va_scatter(pred: np.ndarray, y: np.ndarray, where: str):
    """Predicted vs true valence / arousal as log-count hexbins, with each one's CCC."""
    from affect_pipeline.common.metrics import ccc

    fig, axes = pyplot().subplots(1, 2, figsize=(10, 4.6))
    for j, (ax, name) in enumerate(zip(axes, ("valence", "arousal"))):
        ax.hexbin(y[:, j], pred[:, j], gridsize=40, extent=(-1, 1, -1, 1), cmap="viridis", mincnt=1, bins="log")
        ax.plot([-1, 1], [-1, 1], "r--", lw=1)
        ax.set(xlim=(-1, 1), ylim=(-1, 1), xlabel=f"true {name}", ylabel=f"predicted {name}", aspect="equal")
        ax.set_title(f"{name}: CCC {ccc(pred[:, j], y[:, j]):.3f} (n={len(y)}, {where} validation)", fontsize=9)
    fig.tight_layout()
    return fig


def ablation(rows: list[list[str]], test: dict, title: str, note: str = ""):
    """The paper-style table (``rows[0]`` the header) and, with known test truth, test vs baselines."""
    n_test = len(test)
    height = 0.26 * (len(rows) + 2) + (0.26 * (n_test + 3) if n_test else 0) + (0.5 if note else 0)
    fig, axes = pyplot().subplots(2 if n_test else 1, 1, figsize=(12, height), squeeze=False,
                                  gridspec_kw={"height_ratios": [len(rows) + 2, n_test + 3] if n_test else [1]})
    ax = axes[0, 0]
    ax.axis("off")
    ax.set_title(title + (f"\nLEAKY: {note}" if note else ""), fontsize=10 if not note else 8,
                 color="black" if not note else "darkred", wrap=True)
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


# ======================================================================== test-video timelines
def shade_no_face(ax, valid: np.ndarray, over: bool = False):
    """Grey bands over runs of frames without a face (``over``: translucent, above a heat map)."""
    bad = np.flatnonzero(np.diff(np.r_[0, (~valid).astype(int), 0]))
    for s, e in zip(bad[::2], bad[1::2]):
        if over:
            ax.axvspan(s + 0.5, e + 0.5, facecolor="white", alpha=0.35, hatch="//", edgecolor="0.6", zorder=2)
        else:
            ax.axvspan(s + 0.5, e + 0.5, color="0.85", zorder=0)


def _truth_rows(truth, n: int):
    yy, m = truth
    k = min(len(yy), n)
    return yy[:k], m[:k], k


def _timeline_au(ax, prob, valid, truth):
    ax.imshow(prob.T, aspect="auto", cmap="magma", vmin=0, vmax=1, interpolation="nearest",
              extent=(0.5, len(prob) + 0.5, 11.5, -0.5))
    ax.set_yticks(range(12), AU_NAMES, fontsize=6)
    if truth is not None:
        yy, m, _ = _truth_rows(truth, len(prob))
        fi, ai = np.nonzero((yy > 0.5) & m[:, None])
        ax.scatter(fi + 1, ai, s=2, c="cyan", marker="s", label="true on")
    shade_no_face(ax, valid, over=True)


def _timeline_expr(ax, prob, x, truth):
    ax.step(x, prob.argmax(1), where="mid", label="predicted")
    ax.set_yticks(range(8), EXPR_NAMES, fontsize=6)
    ax.set_ylim(-0.5, 7.5)
    if truth is not None:
        yy, m, k = _truth_rows(truth, len(prob))
        ax.step(x[:k], np.where(m, yy[:, 0], np.nan), where="mid", ls="--", label="true")


def _timeline_va(ax, prob, x, truth):
    for c, name in enumerate(("valence", "arousal")):
        ax.plot(x, prob[:, c], label=name)
        if truth is not None:
            yy, m, k = _truth_rows(truth, len(prob))
            ax.plot(x[:k], np.where(m, yy[:, c], np.nan), ls="--", color=f"C{c}", label=f"true {name}")
    ax.set_ylim(-1.05, 1.05)


def timelines(data: dict, vids: list[str], truth: dict):
    """Rows: tasks, columns: videos; ``data[task][vid] = (prob, valid)``, ``truth[task][vid]`` or None."""
    fig, axes = pyplot().subplots(len(data), len(vids), figsize=(5 * len(vids), 2.6 * len(data)), squeeze=False)
    for i, (t, per_video) in enumerate(data.items()):
        for j, vid in enumerate(vids):
            ax = axes[i, j]
            if vid not in per_video:
                ax.axis("off")
                continue
            prob, valid = per_video[vid]
            tr = truth.get(t, {}).get(vid)
            if t == "AU":
                _timeline_au(ax, prob, valid, tr)
            else:
                shade_no_face(ax, valid)
                x = np.arange(1, len(prob) + 1)
                (_timeline_expr if t == "EXPR" else _timeline_va)(ax, prob, x, tr)
                ax.legend(fontsize=6, loc="upper right")
            ax.set_title(f"{t} — {vid} ({int((~valid).sum())} no-face frames shaded: interpolated)", fontsize=8)
            ax.set_xlabel("frame")
    fig.tight_layout()
    return fig


# ======================================================================== face crops
@dataclass
class FaceRow:
    name: str
    frames: np.ndarray      # 0-based frame indices shown
    crops: np.ndarray       # (len(frames), S, S, 3) uint8
    found: np.ndarray       # (len(frames),) bool
    n_found: int
    n_frames: int


def faces_sheet(rows: list[FaceRow], n_cols: int):
    """Evenly spaced crops per video; green border: face found, red: none."""
    from matplotlib.patches import Rectangle

    fig, axes = pyplot().subplots(len(rows), n_cols, figsize=(1.4 * n_cols, 1.6 * len(rows)), squeeze=False)
    for i, r in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i, j]
            ax.set_xticks([]), ax.set_yticks([])
            if j >= len(r.frames):
                ax.axis("off")
                continue
            ax.imshow(r.crops[j])
            ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, lw=3,
                                   ec="limegreen" if r.found[j] else "red"))
            if not r.found[j]:
                ax.text(0.5, 0.5, "no face", color="red", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(f"#{r.frames[j] + 1}", fontsize=7)
        axes[i, 0].set_ylabel(f"{r.name}\n{r.n_found}/{r.n_frames} found", fontsize=7)
    fig.suptitle("face crops (green: face found, red: none)", fontsize=9)
    fig.tight_layout()
    return fig


# ======================================================================== multi-seed ablation
def _stage_bars(ax, tasks: dict):
    """Each task's stages as mean ± sd bars over the (fold, seed) cells."""
    stages = STAGES
    x, w = np.arange(len(tasks)), 0.8 / len(stages)
    for i, st in enumerate(stages):
        s = [t["stages"][st] for t in tasks.values()]
        ax.bar(x + (i - 1) * w, [np.nan if v["mean"] is None else v["mean"] for v in s], w,
               yerr=[0 if v["sd"] is None else v["sd"] for v in s], capsize=3, label=METHOD_NAMES[st])
    ax.scatter(x, [np.nan if t["baseline"] is None else t["baseline"] for t in tasks.values()], marker="_",
               s=400, color="black", zorder=3, label="constant baseline")
    ax.set_xlim(-0.75, len(tasks) - 0.25)
    ax.set_xticks(x, [f"{k}\n{t['metric']}" for k, t in tasks.items()], fontsize=8)
    ax.set_title("validation score, mean ± sd over folds × seeds", fontsize=9)
    ax.legend(fontsize=7)


def _paired_strip(ax, tasks: dict, seeds: list):
    """Every (fold, seed) cell's DCL − BLB, a colour per seed, with the task's mean ± sd."""
    colors = {s: f"C{i}" for i, s in enumerate(seeds)}
    rng = np.random.default_rng(0)
    for k, t in enumerate(tasks.values()):
        for c in t["cells"]:
            if c["blb"] is not None and c["dcl"] is not None:
                ax.scatter(k + rng.uniform(-0.2, 0.2), c["dcl"] - c["blb"], s=14, color=colors[c["seed"]])
        p = t["dcl_minus_blb"]
        if p["mean"] is not None:
            ax.errorbar(k + 0.3, p["mean"], yerr=p["sd"] or 0, fmt="D", color="black", capsize=3)
            ax.annotate(f"{p['wins']}/{p['n']}\np={p['p_sign']:.2g}", (k + 0.33, p["mean"]), fontsize=7)
    for s, col in colors.items():
        ax.scatter([], [], color=col, s=14, label=f"seed {s}")
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xlim(-0.5, len(tasks) - 0.1)
    ax.set_xticks(range(len(tasks)), list(tasks), fontsize=8)
    ax.set_title("DCL − BLB per (fold, seed) cell: DCL wins / cells, sign test", fontsize=9)
    ax.legend(fontsize=7)


def seed_ablation(table: dict):
    """The multi-seed ablation (:mod:`affect_pipeline.submit.seed_ablation` table): stages and the paired gap."""
    tasks = table["tasks"]
    if not tasks:
        return placeholder("multi-seed ablation", "the table has no task")
    fig, (a, b) = pyplot().subplots(1, 2, figsize=(12, 4))
    _stage_bars(a, tasks)
    _paired_strip(b, tasks, table["seeds"])
    fig.suptitle(f"seeds {', '.join(map(str, table['seeds']))} — all tasks: {table['all']['verdict']}",
                 fontsize=9, wrap=True)
    fig.tight_layout()
    return fig
