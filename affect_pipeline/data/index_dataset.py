"""``index_dataset``: one table of every video (probe + splits) and one label store per task.

``python -m affect_pipeline index_dataset --data '<JSON: affwild2, hume, tasks>'
--frames results/frames/{batch}... --out-dir results/index`` (extract_frames' batch folders of
``{media}.json``, or the files) writes ``videos.tsv``,
``labels/{task}.h5`` and ``index_report.json`` (length mismatches, all-invalid files, counts,
``test_order``: each task's test ids in the order of its official list (Hume: of data_info.csv),
and, for a task whose test list is the organizers' frame list, ``test_frames`` (the listed frames
per video, as runs) and ``frame_list_mismatch`` (:func:`compare_frame_lists`)).

A media file that extract_frames could not decode (its frames JSON records the ``error``) leaves
its videos out: they are not in videos.tsv, the label stores, ``test_order`` or ``test_frames``,
and ``decode_failed`` of the report names each with the file and the error (logged too). Nothing
decoded at all is an error.

Annotation policy (Aff-Wild2): line i (after the header) is frame i. When a file's row count
differs from the video's decoded frame count, the mismatch is logged with both counts and
recorded in ``index_report.json``; extra rows are dropped and missing rows are marked invalid
— rows are never shifted. Invalid markers (AU -1, EXPR -1, VA -5) become ``mask = False``
(:func:`affect_pipeline.data.annotations.parse_annotation`).
"""
from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Iterable

import numpy as np

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.files import not_utf8
from affect_pipeline.common.runtime import read_json, stage_parser, write_json, write_text
from affect_pipeline.common.stores import Labels, write_labels
from affect_pipeline.common.tasks import FRAME_TASKS, TASKS
from affect_pipeline.data.annotations import parse_annotation, read_eri_labels
from affect_pipeline.data.layout import Layout, scan_dataset

log = logging.getLogger(__name__)
INDEX_COLUMNS = ("video_id", "path", "media", "side", "fps", "n_frames", "width", "height",
                 "duration", "has_audio", *(f"split_{t}" for t in TASKS))


def fit_to_frames(y: np.ndarray, mask: np.ndarray, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Apply the length policy: drop rows past the last frame, mark missing rows invalid."""
    if len(y) >= n_frames:
        return y[:n_frames], mask[:n_frames]
    pad = n_frames - len(y)
    return (np.concatenate([y, np.zeros((pad, y.shape[1]), y.dtype)]),
            np.concatenate([mask, np.zeros(pad, bool)]))


def probe_files(frames: Iterable[str | Path]) -> dict[str, Path]:
    """media stem -> frames JSON, from the files and batch folders (``{media}.json`` inside) given."""
    out: dict[str, Path] = {}
    for f in map(Path, frames):
        for p in sorted(f.glob("*.json")) if f.is_dir() else [f]:
            if p.stem in out:
                raise PipelineError(f"--frames gives media {p.stem!r} twice: {out[p.stem]} and {p}")
            out[p.stem] = p
    return out


def build_index(lay: Layout, frames: Iterable[str | Path]) -> tuple[list[dict], dict[str, dict[str, Labels]], dict]:
    """Rows of videos.tsv, labels per task and video, and the report; ``frames`` are the probe
    files ``{media}.json`` of extract_frames (matched to media by file stem) or their folders."""
    probes = probe_files(frames)
    rows, labels = [], {t: {} for t in lay.tasks}
    report = {"length_mismatch": [], "all_invalid": [], "decode_failed": []}
    eri = read_eri_labels(lay.hume_csv) if "ERI" in lay.tasks else {}
    for vid in lay.ids():
        e = lay.videos[vid]
        if e.media not in probes:
            raise PipelineError(f"{e.path}: no frames probe {e.media}.json among --frames for video {vid}")
        probe = read_json(probes[e.media])
        if "error" in probe:
            log.error("video %s left out: extract_frames could not decode %s: %s", vid, e.path, probe["error"])
            report["decode_failed"].append({"video": vid, "media": e.media, "file": e.path, "splits": e.splits,
                                            "error": probe["error"]})
            continue
        n = int(probe["n_frames"])
        rows.append({"video_id": vid, "path": e.path, "media": e.media, "side": e.side,
                     "fps": round(float(probe["fps"]), 6), "n_frames": n, "width": probe["width"],
                     "height": probe["height"], "duration": round(float(probe["duration"]), 6),
                     "has_audio": bool(probe["has_audio"]),
                     **{f"split_{t}": e.splits.get(t, "") for t in TASKS}})
        for task in lay.tasks:
            split = e.splits.get(task)
            if task in FRAME_TASKS and task in e.annotations:
                y, mask = parse_annotation(e.annotations[task], task)
                if len(y) != n:
                    msg = (f"{e.annotations[task]}: {len(y)} annotation rows but the video "
                           f"{e.path} has {n} decoded frames; "
                           + ("extra rows dropped" if len(y) > n else "missing rows marked invalid"))
                    log.warning(msg)
                    report["length_mismatch"].append({"video": vid, "task": task, "rows": len(y),
                                                      "frames": n, "file": e.annotations[task]})
                    y, mask = fit_to_frames(y, mask, n)
                labels[task][vid] = Labels(y, mask, split)
            elif task == "ERI" and vid in eri:
                labels[task][vid] = Labels(eri[vid][None], np.ones(1, bool), split)
    if not rows:
        shown = "; ".join(f"{d['file']}: {d['error']}" for d in report["decode_failed"][:3])
        raise PipelineError(f"none of the {len(report['decode_failed'])} videos decoded (see the extract_frames "
                            f"logs): {shown}")
    report["test_frames"], report["frame_list_mismatch"] = compare_frame_lists(lay, {r["video_id"]: r["n_frames"]
                                                                                   for r in rows})
    for task, labs in labels.items():
        if labs and not any(l.mask.any() for l in labs.values() if l.split == "train"):
            raise PipelineError(f"task {task}: every training label is invalid (checked {len(labs)} "
                                f"annotation files) — nothing to learn from; remove the task from `tasks`")
        for vid, l in labs.items():
            if not l.mask.any():
                report["all_invalid"].append({"video": vid, "task": task})
    return rows, labels, report


def compare_frame_lists(lay: Layout, decoded: dict[str, int]) -> tuple[dict, list[dict]]:
    """The organizers' frame lists for the report (``test_frames``: task -> file + runs per video)
    and, per test video whose listed frames are not its decoded frames 1..N, what the submission
    does: rows for the listed frames only (``unlisted`` decoded frames get none) and the last
    prediction repeated for the ``padded`` listed frames past the decoded end (logged)."""
    out, mismatch = {}, []
    for task, fl in lay.test_frames.items():
        out[task] = {"file": fl.path, "videos": {v: r for v, r in fl.runs.items() if v in decoded}}
        for vid, runs in out[task]["videos"].items():
            n, listed = decoded[vid], sum(b - a + 1 for a, b in runs)
            padded = sum(max(0, b - max(a - 1, n)) for a, b in runs)
            unlisted = n - (listed - padded)
            if not (padded or unlisted):
                continue
            log.warning("%s: test video %s (%s): %d listed frames (last %05d), %d decoded: %s", fl.path, vid, task,
                        listed, runs[-1][1], n, "; ".join(
                            ([f"{unlisted} decoded frame(s) not listed get no row"] if unlisted else [])
                            + ([f"the last prediction is repeated for {padded} listed frame(s) past the "
                                f"decoded end"] if padded else [])))
            mismatch.append({"task": task, "video": vid, "file": fl.path, "listed": listed,
                             "last_listed": runs[-1][1], "decoded": n, "padded": padded, "unlisted": unlisted})
    return out, mismatch


def write_index_tsv(path: Path, rows: list[dict]) -> None:
    """Tab-separated, a field with a tab, line break or quote quoted (csv's minimal quoting), so a
    videos folder named with any of them reads back as written; ids never need it (layout.id_problem)."""
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    w.writerow(INDEX_COLUMNS)
    w.writerows([str(r[c]).lower() if isinstance(r[c], bool) else r[c] for c in INDEX_COLUMNS] for r in rows)
    write_text(path, buf.getvalue())


def read_index(path: str | Path) -> dict[str, dict]:
    """videos.tsv -> {video_id: row} with numbers and booleans parsed."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: index not found (run the index_dataset rule)")
    out = {}
    with open(path, newline="", encoding="utf-8") as fh:
        try:
            for r in csv.DictReader(fh, delimiter="\t", strict=True):   # quoted as write_index_tsv quotes
                r["n_frames"] = int(r["n_frames"])
                r["fps"], r["duration"] = float(r["fps"]), float(r["duration"])
                r["width"], r["height"] = int(r["width"]), int(r["height"])
                r["has_audio"] = r["has_audio"] == "true"
                out[r["video_id"]] = r
        except UnicodeDecodeError as e:
            raise PipelineError(f"{not_utf8(path, e)}, or rerun the index_dataset rule") from None
        except (csv.Error, TypeError, ValueError) as e:
            raise PipelineError(f"{path}: malformed index after {len(out)} good row(s) ({e}); "
                                f"rerun the index_dataset rule") from None
    return out


def index_dataset(data: dict, frames: Iterable[str | Path], out_dir: Path) -> dict:
    """Scan the trees ``data`` names, index them with the probes; returns the report."""
    lay = scan_dataset(data)
    rows, labels, report = build_index(lay, frames)
    for task, labs in labels.items():
        write_labels(out_dir / "labels" / f"{task}.h5", task, labs)
        report[task] = {s: sum(1 for l in labs.values() if l.split == s) for s in ("train", "validation")}
        report[task]["test"] = sum(1 for r in rows if r[f"split_{task}"] == "test")
    indexed = {r["video_id"] for r in rows}
    report["n_videos"] = len(rows)
    report["no_audio"] = [r["video_id"] for r in rows if not r["has_audio"]]
    report["test_order"] = {t: [v for v in order if v in indexed] for t, order in lay.test_order.items()}
    write_json(out_dir / "index_report.json", report)
    write_index_tsv(out_dir / "videos.tsv", rows)
    log.info("indexed %d videos; tasks %s", len(rows), {t: report[t] for t in labels})
    return report


def main(argv: list[str]) -> int:
    p = stage_parser("index_dataset", __doc__.split("\n")[0])
    p.add_argument("--data", type=json.loads, required=True,
                   help="JSON of the config's data keys: affwild2, hume, tasks")
    p.add_argument("--frames", type=Path, nargs="+", required=True,
                   help="extract_frames' batch folders results/frames/{batch} (or {media}.json files)")
    p.add_argument("--out-dir", type=Path, required=True)
    a = p.parse_args(argv)
    index_dataset(a.data, a.frames, a.out_dir)
    return 0
