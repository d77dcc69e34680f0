"""What ``affect-predict`` writes: per-frame CSVs (its own columns or OpenFace-style names), read
back for resumed runs, and timeline PNGs; every file renamed into place only when complete.

Columns (native): ``video, frame`` (1-based), ``timestamp`` (s, media clock), ``face_found``, the
12 AU probabilities (``AU1`` …), the 8 EXPR probabilities (``Neutral`` …), ``valence, arousal``.

``--openface-columns`` names them the way OpenFace's FeatureExtraction does, so tools written for
its CSVs read these: ``frame, face_id`` (always 0: one face per video), ``timestamp``,
``confidence`` (the face detector's score, 0 without a face) and ``success`` (1 = a face was
found), then ``AU01_c`` … ``AU26_c``: OpenFace's *presence* columns, 0 or 1, here the AU
probability thresholded with the run's ``ensemble.au_threshold`` exactly as the submission
decodes it. OpenFace's ``AUxx_r`` columns are *intensities* (0–5); these models do not predict
intensity, so no ``_r`` column is written (the probabilities are in the native columns). OpenFace
has no expression or valence-arousal output: EXPR is written as lower-case class probabilities
(``neutral, anger, disgust, fear, happiness, sadness, surprise, other``, the py-feat convention)
and VA as ``valence, arousal``. A leading ``video`` column is kept in both styles (combined CSVs
need it). Ids are quoted by the csv module: an id with a comma or quote stays one field.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.files import atomic_path
from affect_pipeline.common.tasks import AU_NAMES, EXPR_NAMES, FRAME_TASKS, TASK_COLUMNS, VA_NAMES


@dataclass
class VideoResult:
    video_id: str
    timestamps: np.ndarray
    found: np.ndarray
    preds: dict                     # task -> (n, C) ensembled outputs
    score: np.ndarray | None = None  # face detector score per frame (OpenFace ``confidence``)


@dataclass(frozen=True)
class CsvStyle:
    """Column naming: native, or OpenFace-style (``au_threshold``: per-AU cut for ``AUxx_c``)."""
    openface: bool = False
    au_threshold: tuple[float, ...] | None = None

    def lead(self) -> list[str]:
        return (["video", "frame", "face_id", "timestamp", "confidence", "success"] if self.openface
                else ["video", "frame", "timestamp", "face_found"])

    def task_columns(self, task: str) -> list[str]:
        if not self.openface:
            return list(TASK_COLUMNS[task])
        return {"AU": [f"AU{int(n[2:]):02d}_c" for n in AU_NAMES],
                "EXPR": [n.lower() for n in EXPR_NAMES], "VA": list(VA_NAMES)}[task]

    def header(self, tasks) -> list[str]:
        return self.lead() + [c for t in FRAME_TASKS if t in tasks for c in self.task_columns(t)]

    def values(self, r: VideoResult, task: str) -> np.ndarray:
        """The strings of one task's columns."""
        v = r.preds[task]
        if self.openface and task == "AU":
            if self.au_threshold is None:
                raise ValueError("OpenFace AU presence columns need the run's AU threshold")
            return (v >= np.asarray(self.au_threshold)).astype(int).astype(str)
        return np.char.mod("%.6f", v)

    def table(self, r: VideoResult, tasks) -> np.ndarray:
        """(n, columns) strings, formatted with numpy (10^5 frames per video on Aff-Wild2)."""
        n = len(r.timestamps)
        ids, frames = np.full(n, r.video_id, dtype=object), np.arange(1, n + 1).astype(str)
        ts, found = np.char.mod("%.6f", r.timestamps), r.found.astype(int).astype(str)
        if self.openface:
            if r.score is None:
                raise ValueError(f"{r.video_id}: OpenFace columns need the face detector's scores")
            conf = np.char.mod("%.3f", np.where(r.found, r.score, 0.0))
            left = [ids, frames, np.zeros(n, int).astype(str), ts, conf, found]
        else:
            left = [ids, frames, ts, found]
        cols = [c[:, None] for c in left] + [self.values(r, t) for t in FRAME_TASKS if t in tasks]
        return np.concatenate([np.asarray(c, dtype=object) for c in cols], 1)


NATIVE = CsvStyle()


def csv_header(tasks, style: CsvStyle = NATIVE) -> list[str]:
    return style.header(tasks)


def csv_rows(r: VideoResult, tasks, style: CsvStyle = NATIVE) -> str:
    """One video's rows as CSV text (ids quoted where they need it)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(style.table(r, tasks).tolist())
    return buf.getvalue()


def write_csv(path: Path, results: list[VideoResult], tasks, style: CsvStyle = NATIVE) -> None:
    """Header + every result's rows, renamed into place only when complete."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(csv_line(style.header(tasks)))
        for r in results:
            fh.write(csv_rows(r, tasks, style))


def csv_line(fields: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(fields)
    return buf.getvalue()


def read_header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return next(csv.reader(fh), [])


def is_done(path: Path, header: list[str]) -> bool:
    """A finished CSV with these columns exists (files are only ever renamed in complete); one
    with other columns is refused rather than silently kept or replaced."""
    if not path.is_file():
        return False
    got = read_header(path)
    if got != header:
        raise PipelineError(f"{path}: written with other columns ({', '.join(got[:6])}, …) than this call "
                            f"asks for ({', '.join(header[:6])}, …): pass --overwrite to redo it, or another output")
    return True


def csv_videos(path: Path) -> list[str]:
    """The video ids of a CSV, in file order."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = csv.reader(fh)
        next(rows, None)
        return list(dict.fromkeys(row[0] for row in rows if row))


def read_results(path: Path, tasks, style: CsvStyle = NATIVE, ids=None) -> list[VideoResult]:
    """The videos of a CSV this module wrote (``ids``: those, in that order), for timelines of
    videos a resumed run skipped. OpenFace-style AU columns read back as 0 / 1."""
    header = style.header(tasks)
    if read_header(path) != header:
        raise PipelineError(f"{path}: not an affect-predict CSV with the columns {header}")
    rows: dict[str, list[list[str]]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in list(csv.reader(fh))[1:]:
            rows.setdefault(row[0], []).append(row)
    found_col = header.index("success" if style.openface else "face_found")
    out = []
    for vid in (rows if ids is None else ids):
        a = np.array([r[1:] for r in rows[vid]], dtype=object)
        num = lambda c: a[:, header.index(c) - 1].astype(np.float64)  # noqa: E731
        preds = {t: np.stack([num(c) for c in style.task_columns(t)], 1) for t in FRAME_TASKS if t in tasks}
        score = num("confidence") if style.openface else None
        out.append(VideoResult(vid, num("timestamp"), a[:, found_col - 1].astype(int) == 1, preds, score))
    return out


# ---------------------------------------------------------------- timeline
def plot_timeline(results: list[VideoResult], tasks, out) -> None:
    """Per video: AU probabilities as a heat strip, the EXPR argmax, valence / arousal vs time;
    frames without a face shaded grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [t for t in FRAME_TASKS if t in tasks]
    heights = {"AU": 2.2, "EXPR": 1.6, "VA": 1.6}
    ratios = [heights[t] for _ in results for t in rows]
    fig, axes = plt.subplots(len(ratios), 1, figsize=(12, 0.6 + sum(ratios)), squeeze=False,
                             gridspec_kw={"height_ratios": ratios})
    axes = iter(axes[:, 0])
    for r in results:
        t = r.timestamps
        t1 = t[-1] + (np.median(np.diff(t)) if len(t) > 1 else 0.04)
        for k, task in enumerate(rows):
            ax = next(axes)
            _draw_task(fig, ax, task, r, t, t1)
            _shade_no_face(ax, t, r.found, t1)
            ax.set_xlim(t[0], t1)
            ax.set_ylabel(task, fontsize=8)
            if k == 0:
                ax.set_title(f"{r.video_id}  ({len(t)} frames, face in {int(r.found.sum())})", fontsize=9)
            if k < len(rows) - 1:
                ax.tick_params(labelbottom=False)
            else:
                ax.set_xlabel("time (s)", fontsize=8)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _draw_task(fig, ax, task: str, r: VideoResult, t: np.ndarray, t1: float) -> None:
    if task == "AU":
        im = ax.imshow(r.preds["AU"].T, aspect="auto", interpolation="nearest", cmap="magma", vmin=0, vmax=1,
                       extent=(t[0], t1, len(AU_NAMES) - 0.5, -0.5))
        ax.set_yticks(range(len(AU_NAMES)), AU_NAMES, fontsize=6)
        cb = fig.colorbar(im, cax=ax.inset_axes([1.005, 0.0, 0.008, 1.0]))   # keeps the time axes aligned
        cb.ax.tick_params(labelsize=6)
    elif task == "EXPR":
        ax.step(t, r.preds["EXPR"].argmax(1), where="post", lw=1.2, color="tab:blue")
        ax.set_yticks(range(len(EXPR_NAMES)), EXPR_NAMES, fontsize=6)
        ax.set_ylim(-0.5, len(EXPR_NAMES) - 0.5)
    else:
        for j, (name, c) in enumerate(zip(VA_NAMES, ("tab:red", "tab:green"))):
            ax.plot(t, r.preds["VA"][:, j], color=c, lw=1.0, label=name)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_ylim(-1.05, 1.05)
        ax.legend(loc="upper right", fontsize=6, ncol=2)


def _shade_no_face(ax, t, found, t_end) -> None:
    edges = np.append(t, t_end)
    d = np.diff(np.concatenate([[0], (~found).astype(np.int8), [0]]))
    for s, e in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)):
        ax.axvspan(edges[s], edges[e], color="0.6", alpha=0.35, lw=0)
