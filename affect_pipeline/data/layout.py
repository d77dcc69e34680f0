"""Find the dataset's videos, splits and annotation files from the config — cheaply.

Used at Snakefile parse time (so it only lists folders and reads small text files: nothing is
decoded) and again by ``index_dataset``, so both agree on which videos exist. Every tree goes
through the same scan, the embedded demo's included (``demo_config.yaml`` points the data keys
at the tree ``make_demo`` writes). The files found are read by :mod:`affect_pipeline.data.annotations`.

Aff-Wild2: ``{annotations}/{AU_Detection_Challenge,EXPR_Classification_Challenge |
EXPR_Recognition_Challenge,VA_Estimation_Challenge}/{Train_Set,Validation_Set}/{id}.txt`` and the
test lists in ``{test_lists}``: ``*.txt`` files whose name holds "test" and the task
(``action_unit`` / ``au_detection`` / ``_au_``, ``expression`` / ``expr_``, ``valence`` /
``va_estimation`` / ``_va_``, any case). Several name lists of a task add up; a frame list sets
the test videos, their order and the rows of the submission; a task has at most one, and a name
list beside it must name the same videos.

An id ``X_left`` / ``X_right`` without its own media file uses ``X``'s video and audio.
Hume-Reaction: ``{root}/data_info.csv`` and one video per File_ID anywhere below ``root``; its
test ids keep the CSV's order (the ERI submission's order).

Refused (``LayoutError`` naming the file): ids the official formats cannot carry (see
:func:`id_problem`), two media files with the stem a used id needs, a Hume id equal to an
Aff-Wild2 id, and two used media files with one stem (they would share ``frames/{stem}.json``).
"""
from __future__ import annotations

import functools
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from affect_pipeline.common.config import need
from affect_pipeline.common.tasks import FRAME_TASKS
from affect_pipeline.data.annotations import LayoutError, read_hume_csv, read_test_list

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
ANNOTATION_DIRS = {
    "AU": ("AU_Detection_Challenge",),
    "EXPR": ("EXPR_Classification_Challenge", "EXPR_Recognition_Challenge"),
    "VA": ("VA_Estimation_Challenge",),
}
SPLIT_DIRS = {"Train_Set": "train", "Validation_Set": "validation"}
TEST_LIST_KEYS = {"AU": ("action_unit", "au_detection", "_au_"), "EXPR": ("expression", "expr_"),
                  "VA": ("valence", "va_estimation", "_va_")}
SIDE = re.compile(r"^(?P<media>.+)_(?P<side>left|right)$")
#: what an id may not hold: ids go unquoted into videos.tsv and into the submission rows, which the
#: organizers' scripts split on commas and lines (Python's str.splitlines also splits on \x85 \u2028 \u2029)
UNSAFE_ID = re.compile(r'[",\x00-\x1f\x7f\x85\u2028\u2029]|^\s|\s$')
UNSAFE_NAMES = {'"': "a double quote", ",": "a comma", "\t": "a tab", "\n": "a line break",
                "\r": "a carriage return"}


@dataclass
class VideoEntry:
    video_id: str
    path: str                      # media file (shared by X_left / X_right)
    side: str = ""                 # "left" / "right" / ""
    splits: dict = field(default_factory=dict)       # task -> train | validation | test
    annotations: dict = field(default_factory=dict)  # task -> annotation file

    @functools.cached_property
    def media(self) -> str:          # cached: the rules ask it per job and per input
        return Path(self.path).stem


@dataclass
class Layout:
    videos: dict[str, VideoEntry] = field(default_factory=dict)
    tasks: tuple = ()
    hume_csv: str | None = None
    test_order: dict = field(default_factory=dict)   # task -> test ids in the official list's order
    test_frames: dict = field(default_factory=dict)  # task -> FrameList, where the organizers give one
    stems: dict = field(default_factory=dict, repr=False)   # media stem -> path of the entries so far
    #: answers of ids() / batches() / media_paths() once the scan is complete: the rules ask
    #: them per job, and recomputing each answer walks every entry
    answers: dict = field(default_factory=dict, repr=False, compare=False)

    def ids(self, task: str | None = None, splits=("train", "validation", "test")) -> list[str]:
        key = ("ids", task, tuple(splits))
        if key not in self.answers:
            self.answers[key] = sorted(v for v, e in self.videos.items()
                                       if (task is None and e.splits) or e.splits.get(task) in splits)
        return list(self.answers[key])

    def media_batches(self, n: int) -> dict[str, list[str]]:
        """batch name -> its media stems, for the per-batch stages ``extract_frames`` and
        ``crop_faces``: ``{dataset}_{k}`` with k = crc32(media stem) mod n, so a media file keeps its
        batch when others are added or removed (only the batches that gain or lose one rerun), the
        videos of one media file (``X``, ``X_left``, ``X_right``) share its batch, and Hume and
        Aff-Wild2 never share one."""
        key = ("media_batches", n)
        if key not in self.answers:
            out = {}
            for v in self.ids():
                e = self.videos[v]
                out.setdefault(media_batch(e.media, "hume" if "ERI" in e.splits else "affwild2", n), set()).add(e.media)
            self.answers[key] = {b: sorted(ms) for b, ms in sorted(out.items())}
        return self.answers[key]

    def batches(self, n: int) -> dict[str, list[str]]:
        """batch name -> its video ids (the videos of the batch's media files)."""
        key = ("batches", n)
        if key not in self.answers:
            out = {}
            for v in self.ids():
                out.setdefault(self.batch_of(v, n), []).append(v)
            self.answers[key] = dict(sorted(out.items()))
        return self.answers[key]

    def batch_of(self, video: str, n: int) -> str:
        """The batch of a video: its media file's."""
        key = ("batch_of", n)
        if key not in self.answers:
            of_media = {m: b for b, ms in self.media_batches(n).items() for m in ms}
            self.answers[key] = {v: of_media[e.media] for v, e in self.videos.items() if e.splits}
        return self.answers[key][video]

    def media_paths(self) -> dict[str, str]:
        """media stem -> path, for every media file some used video needs."""
        if "media" not in self.answers:
            self.answers["media"] = {e.media: e.path for e in self.videos.values() if e.splits}
        return self.answers["media"]


def media_batch(media: str, dataset: str, n: int) -> str:
    """The batch of a media file (see :meth:`Layout.media_batches`)."""
    return f"{dataset}_{zlib.crc32(media.encode()) % n:0{len(str(max(n - 1, 0)))}d}"


def enabled_tasks(config: dict) -> tuple:
    """The configured tasks whose data is given: the frame tasks need affwild2.videos, ERI hume.root."""
    aff = need(config, "affwild2.videos", "config", LayoutError)
    hume = need(config, "hume.root", "config", LayoutError)
    return tuple(t for t in need(config, "tasks", "config", LayoutError) if (aff if t in FRAME_TASKS else hume))


def scan_dataset(config: dict) -> Layout:
    """Videos, splits and annotation files of the trees the config's data keys name."""
    tasks = enabled_tasks(config)
    if not tasks:
        raise LayoutError(f"config: no data for tasks {list(config['tasks'])}: affwild2.videos / hume.root "
                          f"are null (set the data keys with --configfile, or use the default profile, "
                          f"whose demo_config.yaml points them at the embedded demo)")
    lay = Layout(tasks=tasks)
    frame_tasks = [t for t in tasks if t in FRAME_TASKS]
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
                          f"(used by another video): both would write {stem}.json in results/frames/; rename one")
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
