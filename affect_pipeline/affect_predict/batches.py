"""Which videos one ``affect-predict`` call covers, where each one's outputs go, and what a rerun
skips: the batch logic, apart from the models (``run_batch`` is given the function that predicts
one video), so that resuming and output layout are testable without a trained run.

Inputs: files as given, folders searched recursively, quoted globs (``**`` recursive); hidden
files and anything not .mp4 / .avi / .mov / .mkv / .webm skipped in folders and globs.
Outputs: per video ``{out_dir}/{path below its folder}.csv`` (+ ``.png``), or one combined CSV
assembled from per-video parts in ``.{name}.parts/`` beside it. Every file is renamed into place
when complete, so "the CSV exists" means "done" and a killed run resumes where it stopped.
"""
from __future__ import annotations

import glob
import hashlib
import logging
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from affect_pipeline.affect_predict.outputs import (
    CsvStyle,
    VideoResult,
    csv_line,
    csv_videos,
    is_done,
    plot_timeline,
    read_results,
    write_csv,
)
from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.files import TMP_PREFIX, atomic_path
from affect_pipeline.common.runtime import progress
from affect_pipeline.data.layout import VIDEO_EXTS

log = logging.getLogger("affect_pipeline.temporal.predict")


# ---------------------------------------------------------------- inputs
MAGIC = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class VideoInput:
    path: Path
    rel: Path       # below the folder / glob root it was found in (a file given by name: its name)


def _is_video(p: Path, root: Path) -> bool:
    hidden = any(part.startswith(".") for part in p.relative_to(root).parts)
    return p.suffix.lower() in VIDEO_EXTS and not hidden and p.is_file()


def expand_one(arg: str) -> list[VideoInput]:
    """A file as given; a folder's videos, recursively; a glob's videos (``**`` recursive)."""
    p = Path(arg)
    if p.is_file():
        return [VideoInput(p, Path(p.name))]
    if p.is_dir():
        hits, what = [q for q in sorted(p.rglob("*")) if _is_video(q, p)], "in this folder"
        root = p
    elif MAGIC.search(arg):
        parts = p.parts
        root = Path(*parts[:next(i for i, s in enumerate(parts) if MAGIC.search(s))] or ["."])
        hits = [q for q in map(Path, sorted(glob.glob(arg, recursive=True))) if _is_video(q, root)]
        what = "match this pattern"
    else:
        raise PipelineError(f"{p}: video not found")
    if not hits:
        raise PipelineError(f"{arg}: no videos ({' / '.join(VIDEO_EXTS)}) {what}")
    return [VideoInput(q, q.relative_to(root)) for q in hits]


def expand_inputs(args: list[str]) -> list[VideoInput]:
    """Every argument expanded, in order; a video reached twice is taken once."""
    seen: dict[Path, VideoInput] = {}
    for arg in args:
        for v in expand_one(arg):
            seen.setdefault(v.path.resolve(), v)
    return list(seen.values())


def video_ids(inputs: list[VideoInput]) -> list[str]:
    """File stems; where two share a stem, the path below their folder (then with the suffix,
    then the path as given), so every row of a combined CSV names one video."""
    stems = Counter(v.path.stem for v in inputs)
    rels = Counter(v.rel.with_suffix("").as_posix() for v in inputs)
    fulls = Counter(v.rel.as_posix() for v in inputs)
    ids = []
    for v in inputs:
        r, f = v.rel.with_suffix("").as_posix(), v.rel.as_posix()
        ids.append(v.path.stem if stems[v.path.stem] == 1 else r if rels[r] == 1 else f if fulls[f] == 1
                   else str(v.path))
    return ids


# ---------------------------------------------------------------- the batch
@dataclass
class Batch:
    """Where every video's rows go and what a rerun skips. Per-video: ``csvs[i]`` (+ ``pngs[i]``);
    combined: ``combined`` assembled from ``csvs[i]`` = parts in a hidden folder beside it."""
    inputs: list[VideoInput]
    ids: list[str]
    tasks: list[str]
    style: CsvStyle
    csvs: list[Path]
    pngs: list[Path | None]
    combined: Path | None = None
    timeline: Path | None = None
    overwrite: bool = False

    @property
    def header(self) -> list[str]:
        return self.style.header(self.tasks)

    @property
    def parts_dir(self) -> Path:
        return parts_dir(self.combined)


def parts_dir(combined: Path) -> Path:
    """The hidden folder of a combined CSV's finished videos, named with the package's temporary
    prefix (nothing a user names so is ever removed with it)."""
    return combined.with_name(f"{TMP_PREFIX}{combined.name}.parts")


def plan_batch(inputs: list[VideoInput], tasks, style: CsvStyle, out_dir: Path | None = None,
               combined: Path | None = None, timeline: Path | bool = True, overwrite: bool = False) -> Batch:
    """Output paths of every video; two videos that would write the same file are refused."""
    ids = video_ids(inputs)
    if combined is not None:
        parts = parts_dir(combined)
        csvs = [parts / f"{hashlib.sha1(str(v.path.resolve()).encode()).hexdigest()[:16]}.csv" for v in inputs]
        return Batch(inputs, ids, list(tasks), style, csvs, [None] * len(inputs), combined,
                     timeline if isinstance(timeline, Path) else None, overwrite)
    csvs = [out_dir / v.rel.with_suffix(".csv") for v in inputs]
    owner: dict[Path, Path] = {}
    for v, c in zip(inputs, csvs):
        if c in owner:
            raise PipelineError(f"{owner[c]} and {v.path}: both would write {c} (same name below their "
                                f"folders); rename one, or use --combined")
        owner[c] = v.path
    pngs = [c.with_suffix(".png") if timeline else None for c in csvs]
    return Batch(inputs, ids, list(tasks), style, csvs, pngs, None, None, overwrite)


def pending(batch: Batch) -> list[int]:
    """Indices of the videos still to predict (all with ``overwrite``)."""
    if batch.overwrite:
        if batch.combined is not None:
            shutil.rmtree(batch.parts_dir, ignore_errors=True)
        return list(range(len(batch.inputs)))
    done = set()
    if batch.combined is not None and is_done(batch.combined, batch.header):
        done = set(csv_videos(batch.combined))
    return [i for i, (vid, c) in enumerate(zip(batch.ids, batch.csvs))
            if vid not in done and not is_done(c, batch.header)]


Predictor = Callable[[Path, str], VideoResult]


def run_batch(batch: Batch, predict_one: Callable[[], Predictor]) -> dict:
    """Predict the pending videos (``predict_one`` is built only if there are any), each written
    as soon as it is done; then the combined CSV / missing timelines. Returns the counts."""
    todo = pending(batch)
    skipped = len(batch.inputs) - len(todo)
    if skipped:
        log.info("%d of %d video(s) skipped: their CSV exists (--overwrite to redo them)", skipped, len(batch.inputs))
    if todo:
        fn = predict_one()
        for i in progress(todo, desc="videos", unit="video"):
            r = fn(batch.inputs[i].path, batch.ids[i])
            if batch.pngs[i] is not None:
                plot_timeline([r], batch.tasks, batch.pngs[i])     # before the CSV: a CSV means done
            write_csv(batch.csvs[i], [r], batch.tasks, batch.style)
    for i, png in enumerate(batch.pngs):
        if png is not None and not png.is_file():                 # e.g. an earlier --no-timeline run
            plot_timeline(read_results(batch.csvs[i], batch.tasks, batch.style), batch.tasks, png)
    if batch.combined is not None:
        assemble(batch)
    return {"predicted": len(todo), "skipped": skipped}


def assemble(batch: Batch) -> None:
    """The combined CSV: the rows it already had (unless --overwrite), then the parts of the videos
    it lacks (this call's and a killed call's), in input order; renamed into place, then the parts
    removed. Timeline of every input video."""
    out = batch.combined
    keep = out.is_file() and not batch.overwrite
    had = set(csv_videos(out)) if keep else set()
    new = [i for i, vid in enumerate(batch.ids) if vid not in had]
    if new or not keep:
        with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
            if keep:
                with open(out, encoding="utf-8", newline="") as old:
                    shutil.copyfileobj(old, fh)
            else:
                fh.write(csv_line(batch.header))
            for i in new:
                with open(batch.csvs[i], encoding="utf-8", newline="") as part:
                    part.readline()                                   # its header
                    shutil.copyfileobj(part, fh)
        log.info("wrote %s (%d new video(s))", out, len(new))
    shutil.rmtree(batch.parts_dir, ignore_errors=True)
    if batch.timeline is not None and (new or not batch.timeline.is_file()):
        plot_timeline(read_results(out, batch.tasks, batch.style, batch.ids), batch.tasks, batch.timeline)
        log.info("wrote %s", batch.timeline)
