"""The official ABAW submission files: format, reader, validator, test videos in official order.

One ``predictions.txt`` per task (the headers and row forms are those of public ABAW5 challenge
writers: EXPR one class index under the 8-name header, frames numbered from 1 over each test
video's full frame range)::

    AU    image_location,AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26
          demo_012/00001.jpg,0,1,0,0,0,0,1,0,0,0,1,0
    EXPR  image_location,Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other
          demo_012/00001.jpg,4
    VA    image_location,valence,arousal
          demo_012/00001.jpg,0.251300,-0.104000
    ERI   File_ID,Adoration,Amusement,Anxiety,Disgust,Empathic-Pain,Fear,Surprise
          00013,0.120000,0.410000,...   (one row per test video; CSV kept as predictions.txt)

Videos follow the official list, whose order index_dataset records as ``test_order`` in
index_report.json (videos.tsv lists ids sorted, so its order is only the fallback for a task the
report has no order for). The test lists accepted (``layout`` reads them):

- name list (``*_test_set_release.txt``, one video id a line; Hume: the Test rows of
  data_info.csv, in its order): one row per decoded frame ``video/00001.jpg`` ...
  ``video/{N:05d}.jpg`` (ERI: one row per video);
- the organizers' frame list (``CVPR_5th_ABAW_AU_test_set_example.txt``, ``CVPR_6th_ABAW_Expr_
  test_set_example.txt``, ...: a header line, then ``video/00001.jpg`` per test frame): the rows
  are its rows exactly (index_report.json's ``test_frames``): its videos, frame names and order.
  Listed frame f gets the prediction of decoded frame f; a decoded frame it does not list gets no
  row; a listed frame past the decoded end gets the video's last prediction (logged, and counted
  in ``frame_list_mismatch`` of the report and ``padded_rows`` of ensemble.h5).

Ids that a row cannot carry (``layout.id_problem``: comma, quote, line break, ...) are refused by
the writer, never written raw. Stage ``validate_submission`` (:func:`main`) checks a file, the
order of its videos and, with a frame list, its rows against the list.
"""
from __future__ import annotations

import logging
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.runtime import stage_parser
from affect_pipeline.common.tasks import CLASS_TASKS, FRAME_TASKS, TASK_COLUMNS, TASKS

log = logging.getLogger(__name__)

#: a frame task's rows name a frame (``video/00001.jpg``), ERI's a video (``File_ID``)
HEADERS = {t: ("image_location" if t in FRAME_TASKS else "File_ID",) + TASK_COLUMNS[t] for t in TASKS}
#: values per data row (EXPR: one class index under the 8-name header)
ROW_VALUES = {t: 1 if t == "EXPR" else len(TASK_COLUMNS[t]) for t in TASKS}
MAX_SHOWN = 5   # problems listed per kind in a validation error
FRAME_NAME = re.compile(r"^(?P<video>.+)/(?P<frame>\d{5,})\.jpg$")


# ======================================================================== test videos
def official_order(index_ids: list[str], report_path, task: str) -> list[str]:
    """``index_ids`` in the order of the task's official name list, as index_dataset recorded it
    (``test_order`` of index_report.json); videos.tsv order where the report has none for ``task``."""
    from affect_pipeline.common.runtime import read_json

    order = (read_json(report_path).get("test_order") or {}).get(task)
    if not order:
        log.info("%s: no test_order for %s; rows follow videos.tsv (sorted ids)", report_path, task)
        return index_ids
    extra, missing = [v for v in order if v not in set(index_ids)], [v for v in index_ids if v not in set(order)]
    if extra or missing:
        raise PipelineError(f"{report_path}: test_order[{task}] and videos.tsv disagree: {len(missing)} "
                            f"indexed test video(s) not in it {missing[:MAX_SHOWN]}, {len(extra)} listed "
                            f"video(s) not indexed as test {extra[:MAX_SHOWN]}")
    return list(dict.fromkeys(order))


def test_videos(index_path, task: str, report_path=None) -> dict[str, int]:
    """Test video ids of ``task`` -> frame count, in official order when ``report_path`` is given."""
    from affect_pipeline.data.index_dataset import read_index

    rows = read_index(index_path)
    col = f"split_{task}"
    if rows and col not in next(iter(rows.values())):
        raise PipelineError(f"{index_path}: no column {col!r} (an index written for other tasks?)")
    vids = {v: int(r["n_frames"]) for v, r in rows.items() if r.get(col) == "test"}
    if not vids:
        raise PipelineError(f"{index_path}: no test videos for task {task} ({col} == 'test' nowhere); "
                            f"is the test list (affwild2.test_lists / hume Split=Test) configured?")
    if report_path:
        vids = {v: vids[v] for v in official_order(list(vids), report_path, task)}
    return vids


class ListedFrames(dict):
    """video -> the frame numbers (int64 array) the organizers' frame list names, in its order."""

    def __init__(self, file: str, frames: dict):
        super().__init__(frames)
        self.file = file


def listed_frames(report_path, task: str, videos: dict[str, int]) -> ListedFrames | None:
    """The rows the organizers' frame list asks for (``test_frames`` of index_report.json), or None
    where the task's test list is a name list; its videos must be ``videos``."""
    from affect_pipeline.common.runtime import read_json

    fl = (read_json(report_path).get("test_frames") or {}).get(task) if report_path else None
    if not fl:
        return None
    runs = fl["videos"]
    if list(runs) != list(videos):
        raise PipelineError(f"{report_path}: test_frames[{task}] ({fl['file']}) lists videos "
                            f"{list(runs)[:MAX_SHOWN]}... but the test videos are {list(videos)[:MAX_SHOWN]}...")
    return ListedFrames(fl["file"], {v: np.concatenate([np.arange(a, b + 1) for a, b in runs[v]]) for v in videos})


def rows_for_list(values: dict[str, np.ndarray], frames: ListedFrames) -> tuple[dict, dict[str, int]]:
    """Per video the rows of its listed frames (frame f = decoded frame f; past the decoded end:
    the last one) and how many rows were so padded, per video that needed it."""
    out, padded = {}, {}
    for vid, vals in values.items():
        f = frames[vid]
        out[vid] = np.asarray(vals)[np.minimum(f, len(vals)) - 1]
        if f[-1] > len(vals):
            padded[vid] = int((f > len(vals)).sum())
    return out, padded


# ======================================================================== file format
def _value_strings(task: str, vals: np.ndarray) -> list[list[str]]:
    """Rows of formatted values, converted in one numpy call (millions of frames on Aff-Wild2)."""
    a = np.asarray(vals).reshape(len(vals), -1)
    if task in CLASS_TASKS:
        return a.astype(np.int64).astype(str).tolist()
    return np.char.mod("%.6f", a.astype(np.float64)).tolist()


def safe_ids(vids) -> None:
    """Refuse an id the official rows cannot carry (they are split on commas and lines)."""
    from affect_pipeline.data.layout import id_problem

    for vid in vids:
        bad = id_problem(str(vid))
        if bad:
            raise PipelineError(f"video id {vid!r}: {bad}; the submission row (video/00001.jpg,… / File_ID,…) "
                                f"cannot carry it (rename the video)")


def format_submission(task: str, values: dict[str, np.ndarray], frames: dict | None = None) -> str:
    """The official text: header, then one row per frame (per video for ERI), videos in dict order;
    ``frames``: per video the frame numbers of its rows (default 1..len), one per row of values."""
    safe_ids(values)
    lines = [",".join(HEADERS[task])]
    for vid, vals in values.items():
        rows = _value_strings(task, np.asarray(vals).reshape(1, -1) if task == "ERI" else vals)
        if task == "ERI":
            lines.append(f"{vid},{','.join(rows[0])}")
            continue
        nums = range(1, len(rows) + 1) if frames is None else frames[vid].tolist()
        if len(nums) != len(rows):
            raise PipelineError(f"video {vid}: {len(rows)} rows of values for {len(nums)} listed frames")
        lines.extend(f"{vid}/{i:05d}.jpg,{','.join(r)}" for i, r in zip(nums, rows))
    return "\n".join(lines) + "\n"


def read_submission(task: str, path) -> dict[str, np.ndarray]:
    """Parse a (valid) submission -> video -> values (AU (n,12) int, EXPR (n,) int, VA (n,2), ERI (7,))."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: submission file not found")
    rows: dict[str, list] = defaultdict(list)
    with open(path, encoding="utf-8") as fh:
        next(fh, None)
        for lineno, ln in enumerate(fh, start=2):
            if not ln.strip():
                continue
            key, _, rest = ln.rstrip("\r\n").partition(",")
            vid = key if task == "ERI" else key.rsplit("/", 1)[0]
            try:
                rows[vid].append([float(x) for x in rest.split(",")])
            except ValueError:
                raise PipelineError(f"{path} line {lineno}: values are not numbers: {rest[:80]!r}") from None
    out = {}
    for vid, r in rows.items():
        a = np.asarray(r, np.float64)
        out[vid] = (a.astype(np.int64) if task == "AU" else a[:, 0].astype(np.int64) if task == "EXPR"
                    else a if task == "VA" else a[0])
    return out


# ======================================================================== validator
class Problems:
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


def check_values(task: str, vals: list[str]) -> str | None:
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


def _row_key(task: str, key: str, lineno: int, probs: Problems):
    """(video, frame) of a row's first field; frame None for ERI; video None if malformed."""
    if task == "ERI":
        return key, None
    m = FRAME_NAME.match(key)
    if not m:
        probs.add("bad image_location", f"line {lineno}: {key!r} is not video/NNNNN.jpg")
        return None, None
    return m["video"], int(m["frame"])


def check_submission(task: str, path, videos: dict[str, int], ordered: bool = False,
                     frames: dict | None = None) -> Problems:
    """Every problem of a submission file against the test ids and their frame counts; with
    ``ordered``, the videos must also come in the order of ``videos`` (the official order); with
    ``frames`` (:func:`listed_frames`), each video's rows must be its listed frames, in order."""
    path, probs = Path(path), Problems()
    if task not in TASKS:
        raise PipelineError(f"unknown task {task!r}; known: {TASKS}")
    if not path.exists():
        raise PipelineError(f"{path}: submission file not found")
    listed = frames is not None and task != "ERI"
    due = {v: frames[v].tolist() if listed else range(1, n + 1) for v, n in videos.items()}
    seen: dict[str, int] = {}          # video -> rows seen so far, in order of first appearance
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
            vid, frame = _row_key(task, key, lineno, probs)
            if vid is None:
                continue
            if vid not in videos:
                if vid not in unknown:
                    probs.add("unknown video (not in the test list)", f"line {lineno}: {vid!r}")
                unknown.add(vid)
                continue
            k = seen.get(vid, 0) + 1
            seen[vid] = k
            if task == "ERI" and k > 1:
                probs.add("duplicate File_ID", f"line {lineno}: {vid}")
            if task != "ERI":
                _check_frame(key, lineno, (k, frame), due[vid], listed, probs)
            bad = check_values(task, vals)
            if bad:
                probs.add("bad values", f"line {lineno}: {bad}")
    _check_coverage(task, {v: len(d) for v, d in due.items()}, seen, probs, ordered, listed)
    return probs


def _check_frame(key: str, lineno: int, row: tuple[int, int], due, listed: bool, probs: Problems) -> None:
    """Row k (``row`` = (k, its frame number)) of a video must name its k-th due frame (1..N, or
    the k-th listed frame)."""
    k, frame = row
    if k > len(due):
        probs.add("more rows than listed frames" if listed else "more rows than frames",
                  f"line {lineno}: {key} (video has {len(due)} {'listed ' if listed else ''}frames)")
    elif frame != due[k - 1]:
        probs.add("frames not as in the organizers' list" if listed else "frames not consecutive",
                  f"line {lineno}: {key} where frame {due[k - 1]:05d} was due")


def _check_coverage(task: str, videos: dict[str, int], seen: dict[str, int], probs: Problems,
                    ordered: bool, listed: bool = False) -> None:
    """Every test video has all its rows (and, if ``ordered``, comes in the order of ``videos``)."""
    for vid, n in videos.items():
        got, want = seen.get(vid, 0), 1 if task == "ERI" else n
        if got == 0:
            probs.add("missing video", vid)
        elif got < want:
            probs.add("missing frames", f"{vid}: {got} rows for {want} {'listed ' if listed else ''}frames")
    present = [v for v in videos if v in seen]
    order = [v for v in seen if v in videos]
    if ordered and present != order:
        i = next(k for k, (a, b) in enumerate(zip(present, order)) if a != b)
        probs.add("videos out of the official order", f"video #{i + 1} is {order[i]}, expected {present[i]}")


def validate_submission(task: str, path, videos: dict[str, int], name=None, ordered: bool = False,
                        frames: dict | None = None) -> None:
    """Raise a PipelineError listing what is wrong (first few per kind + counts), if anything."""
    probs = check_submission(task, path, videos, ordered, frames)
    if probs:
        raise PipelineError(probs.report(name or path))


def main(argv: list[str]) -> int:
    """``validate_submission``: check a file against the index's test videos and frame counts."""
    p = stage_parser("validate_submission", "Check a submission file against the test list and frame counts")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--file", required=True)
    p.add_argument("--index", required=True, help="results/index/videos.tsv")
    p.add_argument("--index-report", default=None,
                   help="results/index/index_report.json: its test_order is the official row order "
                        "(and its test_frames the rows, where the organizers' frame list was given)")
    a = p.parse_args(argv)
    videos = test_videos(a.index, a.task, a.index_report)
    frames = listed_frames(a.index_report, a.task, videos)
    validate_submission(a.task, a.file, videos, ordered=bool(a.index_report), frames=frames)
    rows = len(videos) if a.task == "ERI" else sum(map(len, frames.values())) if frames else sum(videos.values())
    print(f"{a.file}: valid {a.task} submission ({len(videos)} test videos, {rows} rows"
          + (f", as {frames.file} lists them)" if frames else ")"))
    return 0
