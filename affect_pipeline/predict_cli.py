"""``affect-predict``: run the trained models of a finished workflow run on any new video.

    affect-predict VIDEO... --models results/ --out out.csv [--timeline out.png]
                   [--tasks AU EXPR VA] [--config YAML]... [--workdir DIR] [--device auto] [--threads N]

Per video it runs the workflow's own stage code, in memory or in a temporary folder (removed
at the end): decode (``video.frame_info``), faces (``crop_faces.crop_faces`` with the run's
``faces`` settings) into a face store, each fold's fine-tuned MAE features (``visual_features.embed_crops``),
the wav (``video.extract_audio``) and its HuBERT / wav2vec2 / VGGish features
(``audio_features.extract``), every fold's temporal model (``temporal_checkpoint.predict_video``)
and the fold ensemble exactly as the submission does it (``ensemble.fold_weights``,
``average_folds``, ``interpolate_no_face``). Output: one CSV row per decoded frame —
``video, frame`` (1-based), ``timestamp`` (s, media clock), ``face_found``, the 12 AU
probabilities, the 8 EXPR probabilities, ``valence, arousal`` (columns of tasks the run did not
train are left out) — and optionally a timeline PNG.

Where the settings come from:
- the run's effective config, ``{models}/config.yaml`` (rule ``run_config``: workflow_config.yaml +
  the run's overlays), with each ``--config`` file deep-merged over it (e.g. weights moved since
  the run); every setting used here is read from it, a missing key is an error naming it.
  Relative weight paths are resolved against ``--workdir`` (default: the parent of --models);
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
import copy
import logging
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import AU_NAMES, EXPR_NAMES, TASK_COLUMNS, VA_NAMES
from .config import RUN_CONFIG as RUN_CONFIG_NAME
from .ensemble import EnsembleSettings
from .run_models import (AudioSource, TaskModels, ensemble_folds, find_fold_models, load_task_models,
                         local_path, make_sources, setting)
from .runtime import PipelineError, atomic_path, progress, run_stage

log = logging.getLogger("affect_pipeline.predict")

CSV_TASKS = ("AU", "EXPR", "VA")            # per-frame tasks (ERI is per video: not a CSV column)


# ---------------------------------------------------------------- config
def load_config(models_dir: Path, paths=()) -> dict:
    """The run's effective config (``{models_dir}/config.yaml``) with ``paths`` merged in order."""
    from .config import RUN_CONFIG, load_run_config

    return load_run_config(Path(models_dir) / RUN_CONFIG, paths or ())






def faces_params(cfg: dict, workdir: Path) -> dict:
    """The run's ``faces`` settings for detection (official crops do not exist for a new video)."""
    from .faces import FaceParams

    p = copy.deepcopy(setting(cfg, "faces"))
    FaceParams.from_config(p)  # complete (workflow_config.yaml): a missing key names itself
    if setting(cfg, "affwild2.cropped_aligned") or p["backend"] == "cropped_aligned":
        p["backend"] = "mtcnn" if p["backend"] == "cropped_aligned" else p["backend"]
        log.warning("the run used the official cropped_aligned faces; a new video has none: detecting "
                    "faces with %s instead (crops the models did not train on)", p["backend"])
    fa = p["face_alignment"]
    p["face_alignment"] = {k: (str(local_path(v, workdir)) if local_path(v, workdir) else None) for k, v in fa.items()}
    return p


def check_faces(faces_dir: Path, params: dict) -> None:
    """The run's face stores (if kept) record the crop settings: a different --config is refused."""
    import h5py

    first = next(iter(sorted(faces_dir.glob("*.h5"))), None) if faces_dir.is_dir() else None
    if first is None:
        return
    with h5py.File(first, "r") as f:
        size, margin, backend = f.attrs.get("size"), f.attrs.get("margin"), str(f.attrs.get("backend", ""))
    if size is not None and (int(size) != int(params["size"]) or abs(float(margin or 0) - float(params["margin"])) > 1e-9):
        raise PipelineError(f"{first}: the run cropped faces at size {int(size)}, margin {float(margin or 0)}, "
                            f"but the config here says size {params['size']}, margin {params['margin']} "
                            f"(pass the --config the run used)")
    if backend and backend not in ("cropped_aligned", params["backend"]):
        log.warning("%s: the run detected faces with %s, the config here says %s", first, backend, params["backend"])


# ---------------------------------------------------------------- one video
@dataclass
class VideoJob:
    path: Path
    video_id: str
    info: dict
    faces: Path
    wav: Path | None
    timestamps: np.ndarray = field(default_factory=lambda: np.zeros(0))


@dataclass
class VideoResult:
    video_id: str
    timestamps: np.ndarray
    found: np.ndarray
    preds: dict                     # task -> (n, C) ensembled outputs


def prepare_video(path: Path, video_id: str, tmp: Path, fparams: dict, sample_rate: int | None,
                  threads: int, device) -> VideoJob:
    """Decode once for the timestamps, then the face store and (``sample_rate`` given) the wav, in ``tmp``."""
    from .crop_faces import FaceJob, crop_faces
    from .faces import FaceParams
    from .video import extract_audio, frame_info

    info = frame_info(path, threads)
    job = VideoJob(path, video_id, info, tmp / "faces.h5", tmp / "audio.wav" if sample_rate else None,
                   np.asarray(info["timestamps"], np.float64))
    crop_faces(FaceJob(path, info, job.faces, video_id), FaceParams.from_config(fparams), threads=threads, device=device)
    if sample_rate and info["has_audio"]:
        extract_audio(path, job.wav, sample_rate, duration=float(info["duration"]), threads=threads)
    return job


def ensemble_task(tm: TaskModels, feats: dict, ens, batch_size: int) -> np.ndarray:
    """Every fold's prediction (its stores from its own sources, ``tm.keys``), averaged and
    no-face filled exactly as the submission's ensemble (``ens``: ensemble.EnsembleSettings)."""
    from .fold_data import primary_stores
    from .ensemble import FoldPreds, average_folds, fold_weights, interpolate_no_face
    from .temporal_checkpoint import predict_video

    folds = []
    for fold, path, m, keys in zip(tm.folds, tm.paths, tm.models, tm.keys):
        x = np.concatenate([feats[k][0] for k in keys], 1)
        valid = np.stack([feats[k][1] for k in keys], 1)
        pred = predict_video(m, x, valid, batch_size)
        face = valid[:, primary_stores(m.feature_names)].all(1)
        score = m.meta["score"]
        folds.append(FoldPreds(path, fold, float(np.nan if score is None else score), {"video": (pred, face)}))
    weights = fold_weights(ens.weighting, tm.metrics, folds)
    prob, valid = average_folds(folds, weights, "video", tm.task)
    if ens.no_face == "interpolate":
        prob = interpolate_no_face(prob, valid)     # no face at all: the models' (audio) outputs stay
    return np.clip(prob, -1.0, 1.0) if tm.task == "VA" else prob


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


def predict_video_file(path: Path, video_id: str, run: Run) -> VideoResult:
    tasks = run.tasks
    with tempfile.TemporaryDirectory(prefix="video-", dir=run.tmp_root) as tmp:
        job = prepare_video(path, video_id, Path(tmp), run.fparams, run.sample_rate, run.threads, run.device)
        feats = {key: src(job) for key, src in run.sources.items()}
        found = _found(job.faces)
        preds = {t: ensemble_task(tm, feats, run.ens, run.batch_size) for t, tm in tasks.items()}
    n_found = int(found.sum())
    log.info("%s: %d frames, face in %d (%.1f %%), tasks %s", path, len(found), n_found,
             100 * n_found / max(len(found), 1), ", ".join(tasks))
    return VideoResult(video_id, job.timestamps, found, preds)


def _found(faces: Path) -> np.ndarray:
    from .stores import FaceStore

    with FaceStore(faces) as fs:
        return fs.found.astype(bool)


# ---------------------------------------------------------------- outputs
def csv_header(tasks) -> list[str]:
    return ["video", "frame", "timestamp", "face_found"] + [c for t in CSV_TASKS if t in tasks
                                                            for c in TASK_COLUMNS[t]]


def csv_rows(r: VideoResult, tasks) -> str:
    """One video's rows, formatted with numpy (10^5 frames per video on Aff-Wild2)."""
    n = len(r.timestamps)
    vals = np.concatenate([r.preds[t] for t in CSV_TASKS if t in tasks], 1) if tasks else np.zeros((n, 0))
    cols = [np.char.mod("%.6f", vals)] if vals.shape[1] else []
    left = np.stack([np.full(n, r.video_id), np.arange(1, n + 1).astype(str),
                     np.char.mod("%.6f", r.timestamps), r.found.astype(int).astype(str)], 1)
    table = np.concatenate([left] + cols, 1)
    return "".join(",".join(row) + "\n" for row in table.tolist())


def plot_timeline(results: list[VideoResult], tasks, out) -> None:
    """Per video: AU probabilities as a heat strip, the EXPR argmax, valence / arousal vs time;
    frames without a face shaded grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [t for t in CSV_TASKS if t in tasks]
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
            if task == "AU":
                im = ax.imshow(r.preds["AU"].T, aspect="auto", interpolation="nearest", cmap="magma", vmin=0, vmax=1,
                               extent=(t[0], t1, len(AU_NAMES) - 0.5, -0.5))
                ax.set_yticks(range(len(AU_NAMES)), AU_NAMES, fontsize=6)
                cb = fig.colorbar(im, cax=ax.inset_axes([1.005, 0.0, 0.008, 1.0]))   # keeps the time axes aligned
                cb.ax.tick_params(labelsize=6)
            elif task == "EXPR":
                ax.step(t, r.preds["EXPR"].argmax(1), where="post", lw=1.2, color="tab:blue")
                ax.set_yticks(range(len(EXPR_NAMES)), EXPR_NAMES, fontsize=6)
                ax.set_ylim(-0.5, len(EXPR_NAMES) - 0.5)
            else:
                for j, (name, c) in enumerate(zip(VA_NAMES, ("tab:red", "tab:green"))):
                    ax.plot(t, r.preds["VA"][:, j], color=c, lw=1.0, label=name)
                ax.axhline(0, color="k", lw=0.5)
                ax.set_ylim(-1.05, 1.05)
                ax.legend(loc="upper right", fontsize=6, ncol=2)
            _shade_no_face(ax, t, r.found, t1)
            ax.set_xlim(t[0], t1)
            ax.set_ylabel(task, fontsize=8)
            if k == 0:
                ax.set_title(f"{r.video_id}  ({len(t)} frames, face in {int(r.found.sum())})", fontsize=9)
            if k < len(rows) - 1:
                ax.tick_params(labelbottom=False)
            else:
                ax.set_xlabel("time (s)", fontsize=8)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _shade_no_face(ax, t, found, t_end) -> None:
    edges = np.append(t, t_end)
    d = np.diff(np.concatenate([[0], (~found).astype(np.int8), [0]]))
    for s, e in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)):
        ax.axvspan(edges[s], edges[e], color="0.6", alpha=0.35, lw=0)


# ---------------------------------------------------------------- the command
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="affect-predict", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the trained models of a finished workflow run on new videos: one CSV row per "
                    "decoded frame\n(AU / EXPR probabilities, valence, arousal) and an optional timeline PNG.",
        epilog="example:\n  affect-predict talk.mp4 --models results/ --out talk.csv --timeline talk.png\n"
               "  affect-predict a.mp4 b.avi --models run/results --config my.yaml --tasks AU VA --out ab.csv")
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files (any container FFmpeg reads)")
    p.add_argument("--models", required=True, type=Path, help="the results/ folder of a finished run")
    p.add_argument("--out", required=True, type=Path, help="per-frame CSV to write")
    p.add_argument("--timeline", type=Path, default=None, help="also write a timeline PNG")
    p.add_argument("--tasks", nargs="+", choices=CSV_TASKS, default=None,
                   help="tasks to predict (default: every frame task the run trained)")
    p.add_argument("--config", action="append", default=[], type=Path, metavar="YAML",
                   help="a config overlay merged over the run's saved config, {models}/config.yaml (repeatable)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="the run's working directory, for relative weight paths (default: parent of --models)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=1, help="CPU threads to use")
    p.add_argument("--batch-size", type=int, default=32, help="clips per temporal-model call")
    p.add_argument("--tmpdir", type=Path, default=None, help="where intermediates go (removed at the end)")
    p.add_argument("--seed", type=int, default=0)
    return p


def video_ids(paths: list[Path]) -> list[str]:
    """File stems; the path as given where two videos share a stem."""
    stems = [p.stem for p in paths]
    return [s if stems.count(s) == 1 else str(p) for s, p in zip(stems, paths)]


def select_tasks(models_dir: Path, cfg: dict, requested) -> dict[str, list[Path]]:
    """The ensembles to run: the requested tasks (default: every frame task of the run's
    ``tasks``), each as its fold1..k checkpoints."""
    trained = [t for t in CSV_TASKS if t in setting(cfg, "tasks")]
    folds = ensemble_folds(cfg)
    for t in requested or ():
        if t not in trained:
            raise PipelineError(f"{models_dir / 'models' / t / folds[0] / 'dcl.pt'}: model not found (task {t} "
                                f"was not trained in this run: its frame tasks are {trained})")
    tasks = list(requested or trained)
    if not tasks:
        raise PipelineError(f"{models_dir / RUN_CONFIG_NAME}: the run trained no AU / EXPR / VA models "
                            f"(tasks {setting(cfg, 'tasks')})")
    return {t: find_fold_models(models_dir, t, folds) for t in tasks}


def predict(argv: list[str]) -> int:
    a = parser().parse_args(argv)
    models_dir = a.models
    if not models_dir.is_dir():
        raise PipelineError(f"{models_dir}: models directory not found (--models must be a finished run's results/)")
    videos = [Path(v) for v in a.videos]
    for v in videos:
        if not v.is_file():
            raise PipelineError(f"{v}: video not found")
    workdir = a.workdir or models_dir.resolve().parent
    cfg = load_config(models_dir, a.config)
    task_paths = select_tasks(models_dir, cfg, a.tasks)
    ens = EnsembleSettings.from_params(setting(cfg, "ensemble"))
    fparams = faces_params(cfg, workdir)
    check_faces(models_dir / "faces", fparams)

    import cv2

    from .runtime import pick_device, setup_torch

    torch = setup_torch(a.threads, a.seed)
    cv2.setNumThreads(a.threads)
    device = pick_device(a.device)
    tasks = {t: load_task_models(models_dir, t, p, device) for t, p in task_paths.items()}
    sources = make_sources(tasks, models_dir, cfg, workdir, device)
    need_audio = any(isinstance(s, AudioSource) for s in sources.values())
    sample_rate = int(setting(cfg, "audio.sample_rate")) if need_audio else None
    log.info("tasks %s; folds %s; feature sources %s; faces %s (size %s); %d video(s); torch threads %d",
             list(tasks), {t: tm.folds for t, tm in tasks.items()}, list(sources), fparams["backend"],
             fparams["size"], len(videos), torch.get_num_threads())

    results = []
    with tempfile.TemporaryDirectory(prefix="affect-predict-", dir=a.tmpdir) as tmp_root, \
            atomic_path(a.out) as tmp_csv, open(tmp_csv, "w", encoding="utf-8") as fh:
        fh.write(",".join(csv_header(tasks)) + "\n")
        for path, vid in progress(list(zip(videos, video_ids(videos))), desc="videos", unit="video"):
            run = Run(tasks, sources, ens, fparams, sample_rate, a.threads, device, a.batch_size, Path(tmp_root))
            r = predict_video_file(path, vid, run)
            fh.write(csv_rows(r, tasks))
            if a.timeline:
                results.append(r)
    log.info("wrote %s", a.out)
    if a.timeline:
        plot_timeline(results, tasks, a.timeline)
        log.info("wrote %s", a.timeline)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console script ``affect-predict``; user errors end with one line, exit code 1."""
    return run_stage("affect-predict", predict, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
