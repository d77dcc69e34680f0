"""Find the dataset's videos, splits and annotation files from the config — cheaply.

Used at Snakefile parse time (so it only lists folders and reads small text files: nothing is
decoded) and again by ``index_dataset``, so both agree on which videos exist. Every tree goes
through the same scan, the embedded demo's included (``demo_config.yaml`` points the data keys
at the tree ``make_demo`` writes).

Aff-Wild2: ``{annotations}/{AU_Detection_Challenge,EXPR_Classification_Challenge |
EXPR_Recognition_Challenge,VA_Estimation_Challenge}/{Train_Set,Validation_Set}/{id}.txt`` and the
test lists in ``{test_lists}``: ``*.txt`` files whose name holds "test" and the task
(``action_unit`` / ``au_detection`` / ``_au_``, ``expression`` / ``expr_``, ``valence`` /
``va_estimation`` / ``_va_``, any case). Two formats, told apart by their rows:

- name list (``*_test_set_release.txt``): one video id a line (an optional ``video_id`` /
  ``name`` header line); the test ids and their order; several name lists of a task add up;
- frame list, the organizers' per-frame test list (``CVPR_5th_ABAW_AU_test_set_example.txt``,
  ``CVPR_6th_ABAW_Expr_test_set_example.txt``, ...): a header line, then one row
  ``video/00001.jpg[,values]`` per test frame (values ignored), each video's rows together, frame
  numbers increasing and written ``%05d``. It sets the test videos, their order and the rows of
  the submission (:class:`FrameList`); a task has at most one, and a name list beside it must
  name the same videos.

An id ``X_left`` / ``X_right`` without its own media file uses ``X``'s video and audio.
Hume-Reaction: ``{root}/data_info.csv`` (File_ID, Split, the 7 intensities) and one video per
File_ID anywhere below ``root``; its test ids keep the CSV's order (the ERI submission's order).

Refused (``LayoutError`` naming the file): ids the official formats cannot carry (see
:func:`id_problem`), two media files with the stem a used id needs, a Hume id equal to an
Aff-Wild2 id, and two used media files with one stem (they would share ``frames/{stem}.json``).
"""
from __future__ import annotations

import csv
import functools
import os
import re
import zlib
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

from affect_pipeline.common.config import need
from affect_pipeline.common.runtime import PipelineError

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
ANNOTATION_DIRS = {
    "AU": ("AU_Detection_Challenge",),
    "EXPR": ("EXPR_Classification_Challenge", "EXPR_Recognition_Challenge"),
    "VA": ("VA_Estimation_Challenge",),
}
SPLIT_DIRS = {"Train_Set": "train", "Validation_Set": "validation"}
TEST_LIST_KEYS = {"AU": ("action_unit", "au_detection", "_au_"), "EXPR": ("expression", "expr_"),
                  "VA": ("valence", "va_estimation", "_va_")}
HUME_SPLITS = {"train": "train", "val": "validation", "valid": "validation",
               "validation": "validation", "test": "test", "devel": "validation"}
SIDE = re.compile(r"^(?P<media>.+)_(?P<side>left|right)$")
#: what an id may not hold: ids go unquoted into videos.tsv and into the submission rows, which the
#: organizers' scripts split on commas and lines (Python's str.splitlines also splits on \x85 \u2028 \u2029)
UNSAFE_ID = re.compile(r'[",\x00-\x1f\x7f\x85\u2028\u2029]|^\s|\s$')
UNSAFE_NAMES = {'"': "a double quote", ",": "a comma", "\t": "a tab", "\n": "a line break",
                "\r": "a carriage return"}
FRAME_ROW = re.compile(r"^(?P<video>[^/]+)/(?P<frame>\d+)\.jpg$")
#: well-formed frame-list rows (canonical %05d frame names, values ignored), each ending in "\n"
FAST_ROWS = re.compile(r"(?:[^/\n,]+/(?:\d{5}|[1-9]\d{5,})\.jpg(?:,[^\n]*)?\n)+")
FAST_VIDEO, FAST_FRAME = re.compile(r"^([^/\n]+)/", re.M), re.compile(r"^[^/\n]+/(\d+)\.jpg", re.M)


class LayoutError(PipelineError):
    """The dataset on disk does not match the layout the config promises."""


@dataclass
class VideoEntry:
    video_id: str
    path: str                      # media file (shared by X_left / X_right)
    side: str = ""                 # "left" / "right" / ""
    splits: dict = field(default_factory=dict)       # task -> train | validation | test
    annotations: dict = field(default_factory=dict)  # task -> annotation file

    @functools.cached_property
    def media(self) -> str:          # asked per job and per input: 3,700 times for 600 videos
        return Path(self.path).stem


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


@dataclass
class Layout:
    videos: dict[str, VideoEntry] = field(default_factory=dict)
    tasks: tuple = ()
    hume_csv: str | None = None
    test_order: dict = field(default_factory=dict)   # task -> test ids in the official list's order
    test_frames: dict = field(default_factory=dict)  # task -> FrameList, where the organizers give one
    stems: dict = field(default_factory=dict, repr=False)   # media stem -> path of the entries so far
    #: answers of ids() / media_paths() once the scan is complete: the rules ask them per job
    #: (600 videos: 370 k entry lookups, half of a dry run, before they were kept)
    answers: dict = field(default_factory=dict, repr=False, compare=False)

    def ids(self, task: str | None = None, splits=("train", "validation", "test")) -> list[str]:
        key = ("ids", task, tuple(splits))
        if key not in self.answers:
            self.answers[key] = sorted(v for v, e in self.videos.items()
                                       if (task is None and e.splits) or e.splits.get(task) in splits)
        return list(self.answers[key])

    def face_batches(self, n: int) -> dict[str, list[str]]:
        """batch name -> its video ids, for the per-batch stage ``crop_faces``: ``{dataset}_{k}``
        with k = crc32(id) mod n, so a video keeps its batch when videos are added or removed
        (only the batches that gain or lose one rerun), and Hume and Aff-Wild2 never share one."""
        key = ("batches", n)
        if key not in self.answers:
            out = {}
            for v in self.ids():
                out.setdefault(face_batch(v, "hume" if "ERI" in self.videos[v].splits else "affwild2", n), []).append(v)
            self.answers[key] = dict(sorted(out.items()))
        return self.answers[key]

    def face_batch(self, video: str, n: int) -> str:
        key = ("batch_of", n)
        if key not in self.answers:
            self.answers[key] = {v: b for b, vs in self.face_batches(n).items() for v in vs}
        return self.answers[key][video]

    def media_paths(self) -> dict[str, str]:
        """media stem -> path, for every media file some used video needs."""
        if "media" not in self.answers:
            self.answers["media"] = {e.media: e.path for e in self.videos.values() if e.splits}
        return self.answers["media"]


def face_batch(video_id: str, dataset: str, n: int) -> str:
    """The crop_faces batch of a video (see :meth:`Layout.face_batches`)."""
    return f"{dataset}_{zlib.crc32(video_id.encode()) % n:0{len(str(max(n - 1, 0)))}d}"


def enabled_tasks(config: dict) -> tuple:
    """The configured tasks whose data is given: ERI needs hume.root, the others affwild2.videos."""
    aff = need(config, "affwild2.videos", "config", LayoutError)
    hume = need(config, "hume.root", "config", LayoutError)
    return tuple(t for t in need(config, "tasks", "config", LayoutError) if (hume if t == "ERI" else aff))


def scan_dataset(config: dict) -> Layout:
    """Videos, splits and annotation files of the trees the config's data keys name."""
    tasks = enabled_tasks(config)
    if not tasks:
        raise LayoutError(f"config: no data for tasks {list(config['tasks'])}: affwild2.videos / hume.root "
                          f"are null (set the data keys with --configfile, or use the default profile, "
                          f"whose demo_config.yaml points them at the embedded demo)")
    lay = Layout(tasks=tasks)
    frame_tasks = [t for t in tasks if t != "ERI"]
    if frame_tasks:
        aff = config["affwild2"]
        media = _index_media(aff["videos"], "affwild2.videos")
        lists = need(config, "affwild2.test_lists", "config", LayoutError)
        annotations = need(config, "affwild2.annotations", "config", LayoutError)
        for task in frame_tasks:
            for vid, split, ann in _annotation_files(annotations, task):
                e = _entry(lay, vid, media, f"annotation {ann}")
                e.splits[task], e.annotations[task] = split, ann
            if lists:
                _add_test_lists(lay, task, media, _test_list_files(lists, task))
    if "ERI" in tasks:
        _scan_hume(lay, config["hume"]["root"])
    lay.answers.clear()          # nothing asked while scanning is kept
    return lay


def id_problem(vid: str) -> str | None:
    """What keeps ``vid`` out of videos.tsv and the official submission rows, or None."""
    if not vid:
        return "an empty id"
    m = UNSAFE_ID.search(vid)
    if m is None:
        return None
    ch = m.group()
    if ch.isspace() and (m.start() == 0 or m.end() == len(vid)) and ch not in "\t\n\r":
        return "leading or trailing white space"
    return UNSAFE_NAMES.get(ch, f"a control character (U+{ord(ch):04X})")


def _entry(lay: Layout, vid: str, media: dict, where: str) -> VideoEntry:
    if vid in lay.videos:
        return lay.videos[vid]
    bad = id_problem(vid)
    if bad:
        raise LayoutError(f"{where} names video {vid!r}: {bad} in a video id cannot go into videos.tsv and "
                          f"the submission rows (video/00001.jpg,… / File_ID,…) the organizers' scripts read; "
                          f"rename the file")
    side = ""
    path = _media_file(media, vid, where)
    m = SIDE.match(vid)
    if path is None and m:
        path, side = _media_file(media, m["media"], where), m["side"]
    if path is None:
        raise LayoutError(f"{where} names video {vid!r}, but no video file {vid}.* "
                          f"({' / '.join(VIDEO_EXTS)}) is in the videos folder")
    stem = Path(path).stem
    if lay.stems.setdefault(stem, path) != path:
        raise LayoutError(f"{where} names video {vid!r}, whose file {path} has the stem of {lay.stems[stem]} "
                          f"(used by another video): both would write results/frames/{stem}.json; rename one")
    lay.videos[vid] = e = VideoEntry(vid, path, side)
    return e


def _index_media(folder: str, key: str) -> dict[str, list[str]]:
    """stem -> every media file with that stem below ``folder`` (sorted walk)."""
    if not folder or not os.path.isdir(folder):
        raise LayoutError(f"config {key}: {folder!r} is not a folder")
    out: dict[str, list[str]] = {}
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for f in sorted(files):
            stem, ext = os.path.splitext(f)
            if ext.lower() in VIDEO_EXTS:
                out.setdefault(stem, []).append(os.path.join(root, f))
    return out


def _media_file(media: dict, stem: str, where: str) -> str | None:
    """The one media file of ``stem``; two are an ambiguity the walk order must not settle."""
    paths = media.get(stem) or [None]
    if len(paths) > 1:
        raise LayoutError(f"{where} names video {stem!r}, but {len(paths)} video files have that stem: "
                          f"{' and '.join(paths)}; ids are file stems, so remove or rename all but one")
    return paths[0]


def _annotation_files(folder: str, task: str):
    if not folder or not os.path.isdir(folder):
        raise LayoutError(f"config affwild2.annotations: {folder!r} is not a folder")
    found = [d for d in ANNOTATION_DIRS[task] if os.path.isdir(os.path.join(folder, d))]
    if not found:
        raise LayoutError(f"{folder}: no {' or '.join(ANNOTATION_DIRS[task])} folder for task {task}")
    base = os.path.join(folder, found[0])
    for sub, split in SPLIT_DIRS.items():
        d = os.path.join(base, sub)
        if os.path.isdir(d):
            for f in sorted(os.listdir(d)):
                if f.endswith(".txt"):
                    yield f[:-4], split, os.path.join(d, f)


# ======================================================================== test lists
def _test_list_files(folder: str, task: str) -> list[str]:
    if not os.path.isdir(folder):
        return []
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder))
            if f.endswith(".txt") and "test" in f.lower() and any(k in f.lower() for k in TEST_LIST_KEYS[task])]


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
    import numpy as np

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


def _add_test_lists(lay: Layout, task: str, media: dict, files: list[str]) -> None:
    """Mark the task's test videos; a frame list (at most one) sets their order and frames."""
    names, frames = {}, []
    for path in files:
        ids, fl = read_test_list(path)
        if fl is None:
            names.update((v, path) for v in ids)
        else:
            frames.append((fl, ids))
    if len(frames) > 1:
        raise LayoutError(f"two frame lists for {task}: {frames[0][0].path} and {frames[1][0].path}; keep the "
                          f"one of the challenge you submit to in affwild2.test_lists")
    fl, order = frames[0] if frames else (None, list(names))
    if fl and names and set(names) != set(order):
        extra, missing = [v for v in names if v not in set(order)], [v for v in order if v not in names]
        raise LayoutError(f"{task}: the frame list {fl.path} and the name list(s) {sorted(set(names.values()))} "
                          f"name different test videos: {len(extra)} only in the name list(s) {extra[:5]}, "
                          f"{len(missing)} only in the frame list {missing[:5]}")
    for vid in order:
        _entry(lay, vid, media, f"test list {fl.path if fl else names[vid]}").splits[task] = "test"
    if order:
        lay.test_order[task] = order
    if fl:
        lay.test_frames[task] = fl


# ======================================================================== Hume-Reaction
def _scan_hume(lay: Layout, root: str):
    csv_path = os.path.join(root, "data_info.csv")
    if not os.path.isfile(csv_path):
        raise LayoutError(f"config hume.root: {csv_path} not found")
    media = _index_media(root, "hume.root")
    lay.hume_csv = csv_path
    for row in read_hume_csv(csv_path):
        fid, prev = row["File_ID"], lay.videos.get(row["File_ID"])
        if prev is not None:
            what = ("is listed twice" if "ERI" in prev.splits else
                    f"({_media_file(media, fid, csv_path) or 'no video file'}) is also an Aff-Wild2 video id "
                    f"({prev.path}); ids name results/ files, so rename one")
            raise LayoutError(f"{csv_path}: File_ID {fid!r} {what}")
        _entry(lay, fid, media, csv_path).splits["ERI"] = row["Split"]
        if row["Split"] == "test":
            lay.test_order.setdefault("ERI", []).append(fid)


def read_hume_csv(path: str) -> list[dict]:
    """Rows of data_info.csv with File_ID unbracketed and Split normalised."""
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for i, row in enumerate(csv.DictReader(fh), start=2):
            fid = (row.get("File_ID") or "").strip().strip("[]")
            split = HUME_SPLITS.get((row.get("Split") or "").strip().lower())
            if not fid or split is None:
                raise LayoutError(f"{path} line {i}: needs File_ID and a Split of Train/Val/Test, got "
                                  f"{row.get('File_ID')!r} / {row.get('Split')!r}")
            rows.append({**row, "File_ID": fid, "Split": split})
    return rows
