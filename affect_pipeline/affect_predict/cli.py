"""``affect-predict``: run the trained models of a finished workflow run on new videos.

    affect-predict VIDEO|IMAGE|FOLDER|GLOB... --models results/ (--out-dir DIR [--combined] | --out CSV)
                   [--fps FPS] [--stride N]
                   [--timeline PNG | --no-timeline] [--overwrite] [--format native|openface|pyfeat]
                   [--no-face empty|interpolate|prior|audio]
                   [--tasks AU EXPR VA] [--config YAML]... [--workdir DIR]
                   [--device auto|cpu|cuda[:N]] [--batch-size N] [--threads N]

Inputs: video files, folders (searched recursively for .mp4 / .avi / .mov / .mkv / .webm; hidden
files skipped) and quoted globs (``'talks/**/*.mp4'``, recursive); images (one frame each) and
folders of frames (a folder without videos: its images in natural order, ``--fps`` apart, as
OpenFace's ``-fdir``); ``--stride N`` predicts every Nth frame (``frame_inputs``). Every input is
checked readable, and ``--device`` available, before any model loads: such errors exit 2. Outputs:
- ``--out-dir DIR``: one CSV (and timeline PNG, unless ``--no-timeline``) per video, at the
  video's path below the folder or glob root it was found in (``talks/day1/a.mp4`` given as
  ``talks`` -> ``DIR/day1/a.csv``);
- ``--out-dir DIR --combined`` or ``--out CSV``: one CSV of every video (``DIR/predictions.csv``),
  a timeline of all with ``--timeline PNG``.
Resumable: a video whose CSV (combined: whose rows) already exists is skipped unless
``--overwrite``; every file is renamed into place only when complete, so a killed run leaves no
half CSV that looks done (a combined run keeps finished videos in ``.{name}.parts/`` until the
CSV is assembled). Columns: :mod:`affect_pipeline.affect_predict.formats` (``--format``: native,
OpenFace 2's or py-feat's), one row per frame per face track (every face is tracked, its own
``face_id``); frames without the face are empty unless ``--no-face`` fills them (:mod:`.predict_tracks`).
A progress bar per video (decode, faces, each feature source, each task) goes to stderr.

Per video it runs the workflow's own stage code, in memory or in a temporary folder (removed
at the end): decode (``video.frame_info``), faces (the run's ``faces`` detector, every face tracked:
``faces.tracking``) into a face store per track, each fold's fine-tuned MAE features (``visual_features.embed_crops``),
the wav (``audio_track.extract_audio``) and its HuBERT / wav2vec2 / VGGish features
(``audio_features.extract``), every fold's temporal model (``temporal.checkpoint.predict_video``)
and the fold ensemble exactly as the submission does it (``ensemble.fold_weights``,
``average_folds``; frames without the face: ``--no-face``).

Where the settings come from (``--models``: a run's ``results/`` or a model bundle, laid out
alike: :mod:`affect_pipeline.affect_predict.bundle`; provenance sidecars: ``provenance``):
- the run's effective config, ``{models}/config.yaml`` (rule ``run_config``: workflow_config.yaml +
  the run's overlays), with each ``--config`` file deep-merged over it (e.g. weights moved since
  the run); every setting used here is read from it, a missing key is an error naming it.
  Relative weight paths are resolved against ``--workdir`` (default: the parent of a run's
  results/, a bundle's own folder);
- the ensemble: ``{models}/models/{task}/fold{1..k}/dcl.pt`` (k = config ``folds``, the folds the
  submission ensembles), for the config's ``tasks``;
- each temporal checkpoint records the feature shards it was trained on (``feature_sources``:
  name, fold, checkpoint_digest per store). A visual store ``mae_X`` of fold F is recomputed with
  ``{models}/mae/X/F/finetune.pt`` (per-fold encoders: each fold's model gets its own encoder's
  features; each encoder is loaded once), an audio store with the configured weights.
Honesty: every weight file used here must have the digest recorded in the checkpoint (and in the
run's own audio shards ``{models}/features/{model}.h5``, when still there) and give the same
dimension; else the error names the checkpoint, the shard and both digests.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from affect_pipeline.affect_predict.batches import (
    Batch,
    Predictor,
    VideoInput,
    expand_inputs,
    plan_batch,
    run_batch,
)
from affect_pipeline.affect_predict.bundle import open_models, warn_if_demo
from affect_pipeline.affect_predict.frame_inputs import (
    DEFAULT_FPS,
    FrameOptions,
    check_inputs,
    prepare_input,
)
from affect_pipeline.affect_predict.options import (
    add_output_options,
    check_output_options,
)
from affect_pipeline.affect_predict.outputs import CsvStyle, VideoResult
from affect_pipeline.affect_predict.predict_tracks import (
    NoFace,
    no_face_settings,
    predict_tracks,
)
from affect_pipeline.affect_predict.provenance import make_provenance
from affect_pipeline.affect_predict.run_models import (
    AudioSource,
    au_threshold,
    check_faces,
    ensemble_folds,
    faces_params,
    find_fold_models,
    load_task_models,
    make_sources,
    setting,
)
from affect_pipeline.common import results
from affect_pipeline.common.config import RUN_CONFIG
from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.files import ensure_utf8_mode
from affect_pipeline.common.runtime import check_device, progress, run_stage
from affect_pipeline.common.tasks import FRAME_TASKS
from affect_pipeline.common.version import version_string
from affect_pipeline.submit.ensemble import EnsembleSettings

log = logging.getLogger("affect_pipeline.temporal.predict")


# ---------------------------------------------------------------- config
def load_config(models_dir: Path, paths=()) -> dict:
    """The run's effective config (``{models_dir}/config.yaml``) with ``paths`` merged in order."""
    from affect_pipeline.common.config import load_run_config

    return load_run_config(Path(models_dir) / RUN_CONFIG, paths or ())


# ---------------------------------------------------------------- one video
@dataclass
class Run:
    """What every video of one affect-predict call goes through."""
    tasks: dict
    sources: dict
    ens: object
    fparams: dict
    sample_rate: int | None
    threads: int
    device: object
    batch_size: int
    tmp_root: Path
    frames: FrameOptions = FrameOptions()
    no_face: NoFace = NoFace()


def predict_video_file(path: Path, video_id: str, run: Run) -> list[VideoResult]:
    """One video through every stage, one result per face track (``predict_tracks``), its bar
    advanced per stage (decode+faces, each source, each task; visual sources and tasks per track)."""
    bar = progress(total=1 + len(run.sources) + len(run.tasks), desc=video_id, unit="stage", leave=True)
    with bar, tempfile.TemporaryDirectory(prefix="video-", dir=run.tmp_root) as tmp:
        bar.set_postfix_str("decode + faces")
        job, frame_numbers = prepare_input(path, video_id, Path(tmp), run)
        bar.update()
        tracks = predict_tracks(job, run, bar)
    for r in tracks:
        r.frames, r.source = frame_numbers, str(path)
    log.info("%s: %d frames, %d face track(s), face in %s frames; tasks %s; no-face rows: %s", path,
             len(job.timestamps), len(tracks), "/".join(str(int(r.found.sum())) for r in tracks),
             ", ".join(run.tasks), run.no_face.policy)
    return tracks


# ---------------------------------------------------------------- the command
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="affect-predict", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the trained models of a finished workflow run on new videos: one CSV row per "
                    "decoded frame\nper face (AU / EXPR probabilities, valence, arousal) and timeline PNGs. "
                    "Videos whose CSV exists are skipped\n(rerun a killed batch to resume it).",
        epilog="examples:\n"
               "  affect-predict talks/ --models results/ --out-dir preds/          # one CSV + PNG per video\n"
               "  affect-predict 'talks/**/*.mp4' --models results/ --out-dir preds/ --combined --device cuda\n"
               "  affect-predict talk.mp4 --models results/ --out talk.csv --timeline talk.png\n"
               "  affect-predict a.mp4 b.avi --models run/results --config my.yaml --tasks AU VA --out ab.csv\n"
               "  affect-predict talks/ --models results/ --out-dir of/ --format openface  # OpenFace 2's CSV\n"
               "  affect-predict talk.mp4 --models results/ --out t.csv --no-face interpolate")
    p.add_argument("videos", nargs="+", metavar="VIDEO",
                   help="video or image files, folders (searched recursively; one without videos is a "
                        "folder of frames) or quoted globs ('dir/**/*.mp4')")
    p.add_argument("--models", required=True, type=Path, metavar="BUNDLE|RESULTS",
                   help="a model bundle (python -m affect_pipeline export_models) or a finished run's results/")
    p.add_argument("--version", action="version", version=version_string("affect-predict"))
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--out-dir", type=Path, metavar="DIR",
                     help="one CSV (+ timeline PNG) per video, below this folder")
    out.add_argument("--out", type=Path, metavar="CSV", help="one combined CSV of every video")
    p.add_argument("--combined", action="store_true", help="with --out-dir: one DIR/predictions.csv instead")
    p.add_argument("--timeline", type=Path, default=None, metavar="PNG",
                   help="combined: also write a timeline PNG of every video")
    p.add_argument("--no-timeline", action="store_true", help="--out-dir: no per-video timeline PNGs")
    p.add_argument("--overwrite", action="store_true", help="redo videos whose CSV exists (default: skip them)")
    add_output_options(p)
    p.add_argument("--tasks", nargs="+", choices=FRAME_TASKS, default=None,
                   help="tasks to predict (default: every frame task the run trained)")
    p.add_argument("--config", action="append", default=[], type=Path, metavar="YAML",
                   help="a config overlay merged over the run's saved config, {models}/config.yaml (repeatable)")
    p.add_argument("--workdir", type=Path, default=None, metavar="DIR",
                   help="the run's working directory, for relative weight paths (default: parent of --models)")
    p.add_argument("--fps", type=float, default=DEFAULT_FPS,
                   help=f"frame rate of image inputs, for their timestamps (default: {DEFAULT_FPS:g}, as OpenFace)")
    p.add_argument("--stride", type=int, default=1, metavar="N",
                   help="predict every Nth frame (1, 1+N, ...): rows of those frames only (default: 1, all)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--threads", type=int, default=1, metavar="N", help="CPU threads to use")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="face crops per MAE forward and clips per temporal-model call "
                        "(default: the run's mae.features.batch_size, 32 clips)")
    p.add_argument("--tmpdir", type=Path, default=None, metavar="DIR",
                   help="where intermediates go (removed at the end)")
    p.add_argument("--seed", type=int, default=0, help="random seed (torch, numpy)")
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = parser()
    a = p.parse_args(argv)
    if a.combined and a.out_dir is None:
        p.error("--combined goes with --out-dir (--out is already one combined CSV)")
    if a.timeline and not (a.out or a.combined):
        p.error("--timeline PNG is the combined timeline: per-video PNGs are written by --out-dir")
    if a.batch_size is not None and a.batch_size < 1:
        p.error("--batch-size must be at least 1")
    check_output_options(p, a)
    if a.stride < 1 or not 0 < a.fps < 10_000:
        p.error("--stride must be at least 1 and --fps a positive frame rate")
    return a


def select_tasks(models_dir: Path, cfg: dict, requested) -> dict[str, list[Path]]:
    """The ensembles to run: the requested tasks (default: every frame task of the run's
    ``tasks``), each as its fold1..k checkpoints."""
    trained = [t for t in FRAME_TASKS if t in setting(cfg, "tasks")]
    folds = ensemble_folds(cfg)
    for t in requested or ():
        if t not in trained:
            raise PipelineError(f"{results.fold_model(t, folds[0], 'dcl', root=models_dir)}: model not found (task {t} "
                                f"was not trained in this run: its frame tasks are {trained})")
    tasks = list(requested or trained)
    if not tasks:
        raise PipelineError(f"{models_dir / RUN_CONFIG}: the run trained no {' / '.join(FRAME_TASKS)} models "
                            f"(tasks {setting(cfg, 'tasks')})")
    return {t: find_fold_models(models_dir, t, folds) for t in tasks}


def batch_from_args(a: argparse.Namespace, inputs: list[VideoInput], cfg: dict, task_paths: dict) -> Batch:
    style = CsvStyle(a.format, au_threshold(cfg, task_paths["AU"]) if "AU" in task_paths else None) \
        if a.format == "openface" else CsvStyle(a.format)
    combined = a.out if a.out else (a.out_dir / "predictions.csv" if a.combined else None)
    return plan_batch(inputs, list(task_paths), style, a.out_dir, combined,
                      a.timeline if combined else not a.no_timeline, a.overwrite)


def make_predictor(a: argparse.Namespace, cfg: dict, task_paths: dict, tmp_root: Path) -> Predictor:
    """Load every model once (on ``--device``): the function that predicts one video."""
    import cv2

    from affect_pipeline.common.runtime import pick_device, setup_torch

    workdir = a.workdir or a.models.resolve().parent
    ens = EnsembleSettings.from_params(setting(cfg, "ensemble"))
    fparams = faces_params(cfg, workdir)
    check_faces(Path(results.faces(a.models)), fparams)
    torch = setup_torch(a.threads, a.seed)
    cv2.setNumThreads(a.threads)
    device = pick_device(a.device)
    tasks = {t: load_task_models(a.models, t, p, device) for t, p in task_paths.items()}
    sources = make_sources(tasks, a.models, cfg, workdir, device, a.batch_size)
    need_audio = any(isinstance(s, AudioSource) for s in sources.values())
    sample_rate = int(setting(cfg, "audio.sample_rate")) if need_audio else None
    log.info("tasks %s; folds %s; feature sources %s; faces %s (size %s); device %s; torch threads %d",
             list(tasks), {t: tm.folds for t, tm in tasks.items()}, list(sources), fparams["backend"],
             fparams["size"], device, torch.get_num_threads())
    run = Run(tasks, sources, ens, fparams, sample_rate, a.threads, device, a.batch_size or 32, tmp_root,
              FrameOptions(a.fps, a.stride), no_face_settings(a.no_face, a.models, tasks, sources))
    return lambda path, vid: predict_video_file(path, vid, run)


def predict(argv: list[str]) -> int:
    a = parse_args(argv)
    check_device(a.device)                      # usage errors (exit 2) before anything is read
    inputs = expand_inputs(a.videos)
    check_inputs(v.path for v in inputs)        # every input readable, before any model loads
    models = open_models(a.models, a.workdir)   # a bundle or a run's results/: the same layout
    a.workdir = models.workdir                  # what relative weight paths are relative to
    cfg = load_config(a.models, a.config)
    task_paths = select_tasks(a.models, cfg, a.tasks)
    batch = batch_from_args(a, inputs, cfg, task_paths)
    batch.provenance = make_provenance(a, models, cfg, task_paths)   # sidecars; what a rerun may keep
    warn_if_demo(models)
    log.info("%d video(s) from %d argument(s)", len(inputs), len(a.videos))
    with tempfile.TemporaryDirectory(prefix="affect-predict-", dir=a.tmpdir) as tmp_root:
        counts = run_batch(batch, lambda: make_predictor(a, cfg, task_paths, Path(tmp_root)))
    log.info("%d video(s) predicted, %d skipped", counts["predicted"], counts["skipped"])
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console script ``affect-predict``; user errors end with one line: exit code 2 for a bad
    argument or input (a UsageError, argparse's code), 1 for the others."""
    if argv is None:              # the console script: file names and text as UTF-8 under any locale
        ensure_utf8_mode()
    return run_stage("affect-predict", predict, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
