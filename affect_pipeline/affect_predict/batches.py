"""Which videos one ``affect-predict`` call covers, where each one's outputs go, and what a rerun
skips: the batch logic, apart from the models (``run_batch`` is given the function that predicts
one video), so that resuming and output layout are testable without a trained run.

Inputs: files as given (a video, or an image: one frame), folders searched recursively, quoted
globs (``**`` recursive); hidden files and anything not .mp4 / .avi / .mov / .mkv / .webm skipped
in folders and globs (globs also take images, each one frame). A folder with no videos below it
is a folder of frames instead: it, and every folder below it that holds images, is one input
whose frames are its images in natural name order (OpenFace's ``-fdir``; see
:mod:`affect_pipeline.affect_predict.frame_inputs`, which also checks every input is readable).
Outputs: per input ``{out_dir}/{path below its folder}.csv`` (+ ``.png``), or one combined CSV
assembled from per-video parts in ``.{name}.parts/`` beside it. Every file is renamed into place
when complete, so "the CSV exists" means "done" and a killed run resumes where it stopped; with a
:mod:`provenance` record (the command's), done means also "made by the same models, config, code
version and arguments from the same input bytes", else the video is redone.
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

from affect_pipeline.affect_predict.frame_inputs import FRAME_EXTS, frame_folders, is_image
from affect_pipeline.affect_predict.outputs import (
    CsvStyle,
    VideoResult,
    as_tracks,
    csv_line,
    csv_videos,
    is_done,
    plot_timeline,
    read_results,
    write_csv,
)
from affect_pipeline.affect_predict.provenance import (
    Provenance,
    copy_rows,
    keeps,
    kept_entries,
    kept_rows,
    read_record,
    sidecar,
)
from affect_pipeline.common.errors import PipelineError, UsageError
from affect_pipeline.common.files import TMP_PREFIX, atomic_path
from affect_pipeline.common.runtime import progress, write_json
from affect_pipeline.data.layout import VIDEO_EXTS

log = logging.getLogger("affect_pipeline.temporal.predict")


# ---------------------------------------------------------------- inputs
MAGIC = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class VideoInput:
    path: Path      # a video, an image or a folder of frames
    rel: Path       # below the folder / glob root it was found in (a file given by name: its name)
    frames_dir: bool = False

    @property
    def stem(self) -> Path:
        """``rel`` without the file suffix (a folder's name is kept whole): outputs are named by it."""
        return self.rel if self.frames_dir else self.rel.with_suffix("")


def _is_video(p: Path, root: Path) -> bool:
    hidden = any(part.startswith(".") for part in p.relative_to(root).parts)
    return p.suffix.lower() in VIDEO_EXTS and not hidden and p.is_file()


def expand_one(arg: str) -> list[VideoInput]:
    """A file as given; a folder's videos, recursively, else its folders of frames; a glob's
    videos and images (``**`` recursive)."""
    p = Path(arg)
    if p.is_file():
        return [VideoInput(p, Path(p.name))]
    if p.is_dir():
        found = sorted(p.rglob("*"))
        hits, what, root = [q for q in found if _is_video(q, p)], "in this folder", p
        if not hits:
            return folders_of_frames(p)
        if images := sum(is_image(q) for q in found):
            log.info("%s: %d image(s) left out: a folder with videos gives its videos (a folder of frames "
                     "is an input when given by its own name)", p, images)
    elif MAGIC.search(arg):
        parts = p.parts
        root = Path(*parts[:next(i for i, s in enumerate(parts) if MAGIC.search(s))] or ["."])
        hits = [q for q in map(Path, sorted(glob.glob(arg, recursive=True)))
                if _is_video(q, root) or (is_image(q) and not q.name.startswith("."))]
        what = f"or images ({' / '.join(FRAME_EXTS)}) match this pattern"
    else:
        raise UsageError(f"{p}: video not found")
    if not hits:
        raise UsageError(f"{arg}: no videos ({' / '.join(VIDEO_EXTS)}) {what}")
    return [VideoInput(q, q.relative_to(root)) for q in hits]


def folders_of_frames(root: Path) -> list[VideoInput]:
    """A folder without videos: it and each folder below it that holds images, one input each
    (named by its path below ``root``; ``root`` itself by its own name)."""
    dirs = frame_folders(root)
    if not dirs:
        raise UsageError(f"{root}: no videos ({' / '.join(VIDEO_EXTS)}) and no frames "
                         f"({' / '.join(FRAME_EXTS)}) in this folder")
    name = Path(root.resolve().name)
    return [VideoInput(d, name if d == root else d.relative_to(root), True) for d in dirs]


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
    stems = Counter(v.stem.name for v in inputs)
    rels = Counter(v.stem.as_posix() for v in inputs)
    fulls = Counter(v.rel.as_posix() for v in inputs)
    ids = []
    for v in inputs:
        r, f = v.stem.as_posix(), v.rel.as_posix()
        ids.append(v.stem.name if stems[v.stem.name] == 1 else r if rels[r] == 1 else f if fulls[f] == 1
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
    provenance: Provenance | None = None     # None: a finished CSV with the right columns is kept

    @property
    def header(self) -> list[str]:
        return self.style.header(self.tasks)

    def record(self, output: Path, indices: list[int], kept: list[dict] = ()) -> None:
        """``output``'s provenance sidecar (after ``output`` is in place): its videos ``indices``
        (+ ``kept``: the records of rows it kept)."""
        if self.provenance is not None:
            videos = [self.provenance.video(self.inputs[i].path, self.ids[i]) for i in indices]
            self.provenance.write(output, [*kept, *videos])

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
    csvs = [out_dir / f"{v.stem}.csv" for v in inputs]
    owner: dict[Path, Path] = {}
    for v, c in zip(inputs, csvs):
        if c in owner:
            raise UsageError(f"{owner[c]} and {v.path}: both would write {c} (same name below their "
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
    if batch.combined is not None and finished(batch, batch.combined):
        done = set(kept_rows(batch.provenance, batch.combined, dict(zip(batch.ids, (v.path for v in batch.inputs)))))
    return [i for i, (vid, c) in enumerate(zip(batch.ids, batch.csvs))
            if vid not in done and not (finished(batch, c) and keeps(batch.provenance, c, batch.inputs[i].path, vid))]


def finished(batch: Batch, csv: Path) -> bool:
    """A complete CSV with this call's columns exists. One with other columns is refused, unless
    its provenance record says this command wrote it (then it is redone: other arguments)."""
    try:
        return is_done(csv, batch.header)
    except PipelineError:
        if batch.provenance is None or read_record(csv) is None:
            raise
        log.info("%s: redoing it: written with other columns (%s)", csv, batch.provenance.differs(csv))
        return False


Predictor = Callable[[Path, str], VideoResult]


def run_batch(batch: Batch, predict_one: Callable[[], Predictor]) -> dict:
    """Predict the pending videos (``predict_one`` is built only if there are any), each written
    as soon as it is done; then the combined CSV / missing timelines. Returns the counts."""
    todo = pending(batch)
    skipped = len(batch.inputs) - len(todo)
    if skipped:
        log.info("%d of %d video(s) skipped: their CSV exists%s (--overwrite to redo them)", skipped, len(batch.inputs),
                 "" if batch.provenance is None else " with this call's provenance")
    if todo:
        fn = predict_one()
        for i in progress(todo, desc="videos", unit="video"):
            r = as_tracks(fn(batch.inputs[i].path, batch.ids[i]))       # one result per face track
            if batch.pngs[i] is not None:
                plot_timeline(r, batch.tasks, batch.pngs[i])       # before the CSV: a CSV means done
                batch.record(batch.pngs[i], [i])
            write_csv(batch.csvs[i], r, batch.tasks, batch.style)
            batch.record(batch.csvs[i], [i])
    for i, png in enumerate(batch.pngs):                          # e.g. an earlier --no-timeline run
        if png is not None and not (png.is_file() and keeps(batch.provenance, png, batch.inputs[i].path, batch.ids[i])):
            plot_timeline(read_results(batch.csvs[i], batch.tasks, batch.style), batch.tasks, png)
            batch.record(png, [i])
    if batch.combined is not None:
        assemble(batch)
    return {"predicted": len(todo), "skipped": skipped}


def assemble(batch: Batch) -> None:
    """The combined CSV: the rows it already had (unless --overwrite), then the parts of the videos
    it lacks (this call's and a killed call's), in input order; renamed into place, then the parts
    removed. Timeline of every input video."""
    out = batch.combined
    keep = out.is_file() and not batch.overwrite
    old = csv_videos(out) if keep else []
    had = kept_rows(batch.provenance, out, dict(zip(batch.ids, (v.path for v in batch.inputs))), quiet=True) \
        if keep else []
    new = [i for i, vid in enumerate(batch.ids) if vid not in set(had)]
    if new or not keep or len(had) < len(old):
        if gone := [v for v in old if v not in set(had) | set(batch.ids)]:
            log.warning("%s: %d video(s) not in this call dropped (made with other models, config or "
                        "arguments): %s", out, len(gone), ", ".join(gone[:5]) + (" ..." if len(gone) > 5 else ""))
        kept = kept_entries(out, had) if keep else []
        with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
            if keep and len(had) == len(old):
                with open(out, encoding="utf-8", newline="") as f:
                    shutil.copyfileobj(f, fh)
            elif keep:
                fh.write(csv_line(batch.header))
                copy_rows(out, fh, set(had))
            else:
                fh.write(csv_line(batch.header))
            for i in new:
                with open(batch.csvs[i], encoding="utf-8", newline="") as part:
                    part.readline()                                   # its header
                    shutil.copyfileobj(part, fh)
        batch.record(out, new, kept)
        log.info("wrote %s (%d new video(s))", out, len(new))
    shutil.rmtree(batch.parts_dir, ignore_errors=True)
    png = batch.timeline                                           # drawn from, and recorded as, the CSV
    if png is not None and (new or not png.is_file() or (batch.provenance and read_record(png) != read_record(out))):
        plot_timeline(read_results(out, batch.tasks, batch.style, batch.ids), batch.tasks, png)
        if batch.provenance is not None:
            write_json(sidecar(png), read_record(out))
        log.info("wrote %s", png)
