"""Parsers of the dataset's text files: Aff-Wild2 annotation files and test lists, and
Hume-Reaction's ``data_info.csv``. The folder scan (:mod:`affect_pipeline.data.layout`) finds the
files; these read them.

- Aff-Wild2 annotation file ``{id}.txt``: a header line (the task's columns), then row i is
  frame i (:func:`parse_annotation`).
- Aff-Wild2 test lists, two formats, told apart by their rows (:func:`read_test_list`):
  name list (``*_test_set_release.txt``): one video id a line (an optional ``video_id`` /
  ``name`` header line), the test ids and their order; frame list, the organizers' per-frame test
  list (``CVPR_5th_ABAW_AU_test_set_example.txt``, ``CVPR_6th_ABAW_Expr_test_set_example.txt``,
  ...): a header line, then one row ``video/00001.jpg[,values]`` per test frame (values
  ignored), each video's rows together, frame numbers increasing and written ``%05d``
  (:class:`FrameList`).
- Hume-Reaction ``data_info.csv``: File_ID, Split and the 7 ERI intensities a row
  (:func:`read_hume_csv`, :func:`read_eri_labels`).
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

import numpy as np

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.files import not_utf8
from affect_pipeline.common.tasks import ERI_NAMES, INVALID_MARKER, TASK_COLUMNS

HUME_SPLITS = {"train": "train", "val": "validation", "valid": "validation",
               "validation": "validation", "test": "test", "devel": "validation"}
FRAME_ROW = re.compile(r"^(?P<video>[^/]+)/(?P<frame>\d+)\.jpg$")
#: well-formed frame-list rows (canonical %05d frame names, values ignored), each ending in "\n"
FAST_ROWS = re.compile(r"(?:[^/\n,]+/(?:\d{5}|[1-9]\d{5,})\.jpg(?:,[^\n]*)?\n)+")
FAST_VIDEO, FAST_FRAME = re.compile(r"^([^/\n]+)/", re.M), re.compile(r"^[^/\n]+/(\d+)\.jpg", re.M)


class LayoutError(PipelineError):
    """The dataset on disk does not match the layout the config promises."""


# ======================================================================== Aff-Wild2 annotation files
def parse_annotation(path: str | Path, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one Aff-Wild2 annotation file -> (values (rows, C) float32, row-valid mask)."""
    path = Path(path)
    cols = TASK_COLUMNS[task] if task != "EXPR" else None
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise PipelineError(not_utf8(path, e)) from None
    except OSError as e:
        raise PipelineError(f"{path}: cannot read annotation ({e})") from e
    if not lines:
        raise PipelineError(f"{path}: empty annotation file (expected a header line)")
    header = [h.strip() for h in lines[0].split(",")]
    expected = list(TASK_COLUMNS[task])
    if [h.lower() for h in header] != [c.lower() for c in expected]:
        raise PipelineError(f"{path}: header {lines[0]!r} is not the {task} header {','.join(expected)!r}")
    width = 1 if task == "EXPR" else len(cols)
    rows = [ln for ln in lines[1:] if ln.strip()]
    y = np.empty((len(rows), width), np.float32)
    for i, ln in enumerate(rows):
        parts = ln.split(",")
        if len(parts) != width:
            raise PipelineError(f"{path} line {i + 2}: expected {width} value(s), got {len(parts)}: {ln!r}")
        try:
            y[i] = [float(p) for p in parts]
        except ValueError as e:
            raise PipelineError(f"{path} line {i + 2}: not a number: {ln!r}") from e
    mask = ~np.any(y == INVALID_MARKER[task], axis=1)
    if task == "EXPR":
        bad = mask & ~np.isin(y[:, 0], np.arange(8))
    elif task == "AU":
        bad = mask & ~np.all(np.isin(y, (0.0, 1.0)), axis=1)
    else:
        bad = mask & ~np.all(np.abs(y) <= 1.0, axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise PipelineError(f"{path} line {i + 2}: value out of range for {task}: {rows[i]!r}")
    return y, mask


# ======================================================================== test lists
@dataclass
class FrameList:
    """An organizers' per-frame test list. ``runs``: per video (in list order) its frame numbers
    as runs ``[first, last]`` (inclusive; one run for a video listed 1..N), so a million rows stay
    small; parsed and checked on first use (index_dataset), not at Snakefile parse time."""
    path: str
    parsed: dict | None = field(default=None, repr=False)

    @property
    def runs(self) -> dict:
        if self.parsed is None:
            self.parsed = frame_list_runs(self.path)
        return self.parsed


def read_test_list(path: str) -> tuple[list[str], FrameList | None]:
    """(test ids in order, the FrameList or None) of a name list or a frame list (module docstring).
    A frame list's ids come from its rows' first path parts (cheap: ABAW's lists have a million rows)."""
    lines = _read_lines(path)
    skip = _frame_rows_start(lines)
    if skip is None:
        ids = [ln.strip().strip(",").strip() for ln in lines]
        return [v for v in ids if v and not v.lower().startswith(("video_id", "name"))], None
    rows = [ln for ln in lines[skip:] if ln.strip()]
    if any("/" not in ln for ln in rows):
        frame_list_runs(path)                         # names the malformed line
    return list(dict.fromkeys(ln.partition("/")[0].strip() for ln in rows)), FrameList(path)


def frame_list_runs(path: str) -> dict[str, list[list[int]]]:
    """Video -> runs of a frame list, every row checked (a malformed one names its line)."""
    lines = _read_lines(path)
    skip = _frame_rows_start(lines) or 0
    fast = _fast_frame_list([ln.strip() for ln in lines[skip:] if ln.strip()])
    return fast or _frame_list(path, [(i, ln.strip()) for i, ln in enumerate(lines[skip:], skip + 1) if ln.strip()])


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return fh.read().replace("\r", "").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise LayoutError(f"{path}: cannot read test list ({e})") from e


def _frame_rows_start(lines: list[str]) -> int | None:
    """Index of a frame list's first row (after its header line), or None for a name list (whose
    ids, file stems, hold no "/")."""
    first = []
    for i, ln in enumerate(lines):
        if ln.strip():
            first.append(i)
            if len(first) == 2:
                break
    rows = [bool(FRAME_ROW.match(lines[i].split(",", 1)[0].strip())) for i in first]
    if not any(rows):
        return None
    return first[0] + (not rows[0])


def _fast_frame_list(rows: list[str]) -> dict | None:
    """The runs of well-formed rows (stripped, non-blank) in a few C-speed passes that build no
    per-row containers; None when anything is off, for :func:`_frame_list` to name the line."""
    text = "\n".join(rows) + "\n"
    if not rows or not FAST_ROWS.fullmatch(text):
        return None
    vids, nums = FAST_VIDEO.findall(text), np.array(list(map(int, FAST_FRAME.findall(text))), np.int64)
    runs, start = {}, 0
    for vid, grp in groupby(vids):
        n = sum(1 for _ in grp)
        seg, start = nums[start:start + n], start + n
        if vid in runs or seg[0] < 1 or (np.diff(seg) <= 0).any():
            return None
        cut = np.flatnonzero(np.diff(seg) != 1) + 1
        runs[vid] = [[int(a[0]), int(a[-1])] for a in np.split(seg, cut)]
    return runs


def _frame_list(path: str, rows: list) -> dict[str, list[list[int]]]:
    """Runs per video of the rows ``video/00001.jpg[,…]``; malformed rows name their line."""
    runs_of, last, prev = {}, None, 0
    for i, ln in rows:
        key = ln.split(",", 1)[0].strip()
        m = FRAME_ROW.match(key)
        if not m:
            raise LayoutError(f"{path} line {i}: {key!r} is not video/NNNNN.jpg (a frame list row)")
        vid, num = m["video"], int(m["frame"])
        if m["frame"] != f"{num:05d}":
            raise LayoutError(f"{path} line {i}: frame {m['frame']!r} is not written {num:05d} "
                              f"(the submission writes video/%05d.jpg)")
        if vid != last:
            if vid in runs_of:
                raise LayoutError(f"{path} line {i}: video {vid!r} again after other videos (a frame list "
                                  f"keeps each video's rows together)")
            runs_of[vid], last, prev = [], vid, 0
        if num < 1 or num <= prev:
            why = "frame numbers start at 00001" if num < 1 else f"it does not follow frame {prev:05d}"
            raise LayoutError(f"{path} line {i}: {key}: {why} (frame numbers increase within a video)")
        runs = runs_of[vid]
        if runs and runs[-1][1] == num - 1:
            runs[-1][1] = num
        else:
            runs.append([num, num])
        prev = num
    return runs_of


# ======================================================================== Hume-Reaction
def read_hume_csv(path: str) -> list[dict]:
    """Rows of data_info.csv with File_ID unbracketed and Split normalised."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return _hume_rows(path, fh)
    except UnicodeDecodeError as e:
        raise LayoutError(not_utf8(path, e)) from None


def _hume_rows(path: str, fh) -> list[dict]:
    rows = []
    for i, row in enumerate(csv.DictReader(fh), start=2):
        fid = (row.get("File_ID") or "").strip().strip("[]")
        split = HUME_SPLITS.get((row.get("Split") or "").strip().lower())
        if not fid or split is None:
            raise LayoutError(f"{path} line {i}: needs File_ID and a Split of Train/Val/Test, got "
                              f"{row.get('File_ID')!r} / {row.get('Split')!r}")
        rows.append({**row, "File_ID": fid, "Split": split})
    return rows


def read_eri_labels(csv_path: str) -> dict[str, np.ndarray]:
    """File_ID -> its 7 ERI intensities, for the train / validation rows that give them."""
    out = {}
    for row in read_hume_csv(csv_path):
        vals = [row.get(c, "") for c in ERI_NAMES]
        if row["Split"] == "test" or all(v in ("", None) for v in vals):
            continue
        try:
            out[row["File_ID"]] = np.array([float(v) for v in vals], np.float32)
        except (TypeError, ValueError) as e:
            raise PipelineError(f"{csv_path}: File_ID {row['File_ID']}: intensities {vals} are not numbers") from e
    return out
