"""What ``affect-predict`` writes: per-frame CSVs in one of three layouts (:mod:`.formats`:
native, OpenFace 2, py-feat), read back for resumed runs, and timeline PNGs; every file renamed
into place only when complete. A video's result is one :class:`VideoResult` per face track.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from affect_pipeline.affect_predict.formats import NATIVE, CsvStyle
from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.files import atomic_path
from affect_pipeline.common.tasks import AU_NAMES, EXPR_NAMES, FRAME_TASKS, VA_NAMES

__all__ = [
    "NATIVE",
    "CsvStyle",
    "VideoResult",
    "as_tracks",
    "csv_header",
    "csv_rows",
    "plot_timeline",
    "read_results",
    "write_csv",
]


@dataclass
class VideoResult:
    """One face track of one input: per frame its outputs (NaN where ``--no-face empty`` left
    them empty) and the face's detection (``found`` false: no face; box / landmarks ignored)."""
    video_id: str
    timestamps: np.ndarray
    found: np.ndarray
    preds: dict                       # task -> (n, C) ensembled outputs
    score: np.ndarray | None = None   # face detector score per frame (OpenFace ``confidence``)
    frames: np.ndarray | None = None  # 1-based frame numbers in the input (--stride keeps some); None: 1..n
    face_id: int = 0
    box: np.ndarray | None = None     # (n, 4) x1, y1, x2, y2 in pixels
    landmarks: np.ndarray | None = None  # (n, 5, 2) eyes, nose, mouth corners in pixels
    source: str = ""                  # the input's path (py-feat's ``input``)

    @property
    def frame_numbers(self) -> np.ndarray:
        return np.arange(1, len(self.timestamps) + 1) if self.frames is None else np.asarray(self.frames, np.int64)


def as_tracks(r) -> list[VideoResult]:
    """A predictor's answer for one input: a result per face track (a single result: one track)."""
    return list(r) if isinstance(r, (list, tuple)) else [r]


def csv_header(tasks, style: CsvStyle = NATIVE) -> list[str]:
    return style.header(tasks)


def csv_rows(r: VideoResult, tasks, style: CsvStyle = NATIVE) -> str:
    """One track's rows as CSV text (ids quoted where they need it)."""
    return style.lines(style.table(r, tasks))


def write_csv(path: Path, results: list[VideoResult], tasks, style: CsvStyle = NATIVE) -> None:
    """Header + every result's rows (frame by frame, the tracks of a frame by face_id, as
    OpenFace's multi-face output), renamed into place only when complete."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(style.line(style.header(tasks)))
        for vid in dict.fromkeys(r.video_id for r in results):
            mine = [r for r in results if r.video_id == vid]
            if len(mine) == 1:
                fh.write(csv_rows(mine[0], tasks, style))
                continue
            tables = [style.table(r, tasks) for r in sorted(mine, key=lambda r: r.face_id)]
            fh.write(style.lines(np.stack(tables, 1).reshape(-1, tables[0].shape[1])))


def csv_line(fields: list[str]) -> str:
    return NATIVE.line(fields)


def read_header(path: Path) -> list[str]:
    """The column names (OpenFace's ", " separators: names stripped)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return [c.strip() for c in next(csv.reader(fh), [])]


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
    """The video ids of a (native: its first column names the video) CSV, in file order."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = csv.reader(fh)
        next(rows, None)
        return list(dict.fromkeys(row[0] for row in rows if row))


def read_results(path: Path, tasks, style: CsvStyle = NATIVE, ids=None) -> list[VideoResult]:
    """The tracks of a CSV this module wrote (``ids``: those videos, in that order), for timelines
    of videos a resumed run skipped; a file without a video column is the video named by its
    stem. OpenFace AU presence columns read back as 0 / 1."""
    header = style.header(tasks)
    if read_header(path) != header:
        raise PipelineError(f"{path}: not an affect-predict CSV with the columns {header}")
    with open(path, newline="", encoding="utf-8") as fh:
        a = np.array(list(csv.reader(fh, skipinitialspace=True))[1:], dtype=object).reshape(-1, len(header))
    col = {c: i for i, c in enumerate(header)}
    vids = a[:, col["video"]] if style.id_column else np.full(len(a), Path(path).stem, dtype=object)
    tracks: dict[tuple[str, int], np.ndarray] = {}
    for key in dict.fromkeys(zip(vids.tolist(), a[:, col["face_id"]].astype(int).tolist())):
        tracks[key] = a[(vids == key[0]) & (a[:, col["face_id"]].astype(int) == key[1])]
    out = []
    for vid in (dict.fromkeys(v for v, _ in tracks) if ids is None else ids):
        for (v, fid), rows in tracks.items():
            if v != vid:
                continue
            preds = {t: np.stack([_numbers(rows, col[c]) for c in style.task_columns(t)], 1)
                     [:, np.argsort(style.task_order(t))] for t in FRAME_TASKS if t in tasks}
            found = _numbers(rows, col[style.found_column])
            found = ~np.isnan(found) if style.format == "pyfeat" else found == 1
            frames = _numbers(rows, col["frame"]).astype(np.int64) + (style.format == "pyfeat")
            out.append(VideoResult(vid, _numbers(rows, col["timestamp"]), found, preds, None, frames, fid))
    return out


def _numbers(rows: np.ndarray, i: int) -> np.ndarray:
    return np.array([float(x) if x != "" else np.nan for x in rows[:, i]])


# ---------------------------------------------------------------- timeline
def plot_timeline(results: list[VideoResult], tasks, out) -> None:
    """Per face track: AU probabilities as a heat strip, the EXPR argmax, valence / arousal vs
    time; frames without the face shaded grey, their empty (NaN) rows left blank: gaps."""
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
                ax.set_title(f"{r.video_id}, face {r.face_id}  ({len(t)} frames, face in {int(r.found.sum())}; "
                             f"grey: no face, {_n_empty(r)} rows left empty)", fontsize=9)
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
        p = r.preds["EXPR"]
        top = np.where(np.isnan(p).any(1), np.nan, np.nan_to_num(p, nan=-1.0).argmax(1))   # empty rows: a gap
        ax.step(t, top, where="post", lw=1.2, color="tab:blue")
        ax.set_yticks(range(len(EXPR_NAMES)), EXPR_NAMES, fontsize=6)
        ax.set_ylim(-0.5, len(EXPR_NAMES) - 0.5)
    else:
        for j, (name, c) in enumerate(zip(VA_NAMES, ("tab:red", "tab:green"))):
            ax.plot(t, r.preds["VA"][:, j], color=c, lw=1.0, label=name)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_ylim(-1.05, 1.05)
        ax.legend(loc="upper right", fontsize=6, ncol=2)


def _n_empty(r: VideoResult) -> int:
    return int(np.any([np.isnan(p).any(1) for p in r.preds.values()], axis=0).sum()) if r.preds else 0


def _shade_no_face(ax, t, found, t_end) -> None:
    edges = np.append(t, t_end)
    d = np.diff(np.concatenate([[0], (~found).astype(np.int8), [0]]))
    for s, e in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)):
        ax.axvspan(edges[s], edges[e], color="0.6", alpha=0.35, lw=0)
