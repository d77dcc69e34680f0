"""Find the dataset's videos, splits and annotation files from the config — cheaply.

Used at Snakefile parse time (so it only lists folders and reads small text files: nothing is
decoded) and again by ``index_dataset``, so both agree on which videos exist. Every tree goes
through the same scan, the embedded demo's included (``demo_config.yaml`` points the data keys
at the tree ``make_demo`` writes).

Aff-Wild2: ``{annotations}/{AU_Detection_Challenge,EXPR_Classification_Challenge |
EXPR_Recognition_Challenge,VA_Estimation_Challenge}/{Train_Set,Validation_Set}/{id}.txt`` and
``{test_lists}/*test_set_release*.txt``. An id ``X_left`` / ``X_right`` without its own media
file uses ``X``'s video and audio. Hume-Reaction: ``{root}/data_info.csv`` (File_ID, Split, the
7 intensities) and one video per File_ID anywhere below ``root``.
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .config import need
from .runtime import PipelineError

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
ANNOTATION_DIRS = {
    "AU": ("AU_Detection_Challenge",),
    "EXPR": ("EXPR_Classification_Challenge", "EXPR_Recognition_Challenge"),
    "VA": ("VA_Estimation_Challenge",),
}
SPLIT_DIRS = {"Train_Set": "train", "Validation_Set": "validation"}
TEST_LIST_KEYS = {"AU": ("action_unit", "au_detection"), "EXPR": ("expression", "expr_"),
                  "VA": ("valence", "va_estimation")}
HUME_SPLITS = {"train": "train", "val": "validation", "valid": "validation",
               "validation": "validation", "test": "test", "devel": "validation"}
SIDE = re.compile(r"^(?P<media>.+)_(?P<side>left|right)$")
UNSAFE_ID = re.compile(r"[,\t\r\n]")     # ids go unquoted into videos.tsv and submission CSVs


class LayoutError(PipelineError):
    """The dataset on disk does not match the layout the config promises."""


@dataclass
class VideoEntry:
    video_id: str
    path: str                      # media file (shared by X_left / X_right)
    side: str = ""                 # "left" / "right" / ""
    splits: dict = field(default_factory=dict)       # task -> train | validation | test
    annotations: dict = field(default_factory=dict)  # task -> annotation file

    @property
    def media(self) -> str:
        return Path(self.path).stem


@dataclass
class Layout:
    videos: dict[str, VideoEntry] = field(default_factory=dict)
    tasks: tuple = ()
    hume_csv: str | None = None
    test_order: dict = field(default_factory=dict)   # task -> test ids in name-list order

    def ids(self, task: str | None = None, splits=("train", "validation", "test")) -> list[str]:
        return sorted(v for v, e in self.videos.items()
                      if (task is None and e.splits) or e.splits.get(task) in splits)

    def media_paths(self) -> dict[str, str]:
        """media stem -> path, for every media file some used video needs."""
        return {e.media: e.path for e in self.videos.values() if e.splits}


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
                for vid, src in _test_ids(lists, task):
                    _entry(lay, vid, media, f"test list {src}").splits[task] = "test"
                    lay.test_order.setdefault(task, []).append(vid)
    if "ERI" in tasks:
        _scan_hume(lay, config["hume"]["root"])
    return lay


def _entry(lay: Layout, vid: str, media: dict, where: str) -> VideoEntry:
    if vid in lay.videos:
        return lay.videos[vid]
    if UNSAFE_ID.search(vid):
        raise LayoutError(f"{where} names video {vid!r}: a comma, tab or line break in a video id would "
                          f"break videos.tsv and the submission CSV; rename the file")
    side = ""
    path = media.get(vid)
    m = SIDE.match(vid)
    if path is None and m:
        path, side = media.get(m["media"]), m["side"]
    if path is None:
        raise LayoutError(f"{where} names video {vid!r}, but no video file {vid}.* "
                          f"({' / '.join(VIDEO_EXTS)}) is in the videos folder")
    lay.videos[vid] = e = VideoEntry(vid, path, side)
    return e


def _index_media(folder: str, key: str) -> dict[str, str]:
    if not folder or not os.path.isdir(folder):
        raise LayoutError(f"config {key}: {folder!r} is not a folder")
    out: dict[str, str] = {}
    for root, _, files in os.walk(folder):
        for f in files:
            stem, ext = os.path.splitext(f)
            if ext.lower() in VIDEO_EXTS:
                out.setdefault(stem, os.path.join(root, f))
    return out


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


def _test_ids(folder: str, task: str):
    if not os.path.isdir(folder):
        return
    for f in sorted(os.listdir(folder)):
        low = f.lower()
        if f.endswith(".txt") and "test" in low and any(k in low for k in TEST_LIST_KEYS[task]):
            path = os.path.join(folder, f)
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    vid = line.strip().strip(",")
                    if vid and not vid.lower().startswith(("video_id", "name")):
                        yield vid, path


def _scan_hume(lay: Layout, root: str):
    csv_path = os.path.join(root, "data_info.csv")
    if not os.path.isfile(csv_path):
        raise LayoutError(f"config hume.root: {csv_path} not found")
    media = _index_media(root, "hume.root")
    lay.hume_csv = csv_path
    for row in read_hume_csv(csv_path):
        e = _entry(lay, row["File_ID"], media, f"{csv_path}")
        e.splits["ERI"] = row["Split"]


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
