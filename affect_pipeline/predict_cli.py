"""``affect-predict``: run the trained models of a finished workflow run on any new video.

    affect-predict VIDEO... --models results/ --out out.csv [--timeline out.png]
                   [--tasks AU EXPR VA] [--config YAML]... [--workdir DIR] [--device auto] [--threads N]

Per video it runs the workflow's own stage code, in memory or in a temporary folder (removed
at the end): decode (``video.frame_info``), faces (``faces.crop_video`` with the run's
``faces`` settings) into a face store, the fine-tuned MAE features (``mae_training.embed_crops``),
the 16 kHz wav (``video.extract_audio``) and its HuBERT / wav2vec2 / VGGish features
(``audio_features.extract``), every fold's temporal model (``temporal_training.predict_video``)
and the fold ensemble exactly as the submission does it (``submission.fold_weights``,
``average_folds``, ``interpolate_no_face``). Output: one CSV row per decoded frame —
``video, frame`` (1-based), ``timestamp`` (s, media clock), ``face_found``, the 12 AU
probabilities, the 8 EXPR probabilities, ``valence, arousal`` (columns of tasks the run did not
train are left out) — and optionally a timeline PNG.

Where the settings come from:
- models: ``{models}/mae/finetune_{T}.pt`` and ``{models}/models/{task}/fold{N}/dcl.pt`` (every
  ``fold{N}`` folder there is an ensemble member); each checkpoint carries its model config and
  the names + dims of the feature stores it was trained on;
- faces / audio / ensemble settings: the workflow config of the run: the repo's
  ``workflow_config.yaml`` with each ``--config`` file deep-merged over it (as snakemake's
  ``--configfile`` does), then ``demo.overrides`` while the data keys point at the demo;
  relative weight paths are resolved against ``--workdir`` (default: the parent of --models).
Honesty: every store a temporal model was trained on must be computable here with the same
dimension; when the run's own feature stores are still under ``{models}/features``, their
recorded checkpoint digests must equal the weights used here (else: wrong --config).
"""
from __future__ import annotations

import argparse
import copy
import logging
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import AU_NAMES, EXPR_NAMES, TASK_COLUMNS, VA_NAMES
from .runtime import PipelineError, atomic_path, progress, run_stage

log = logging.getLogger("affect_pipeline.predict")

REPO_CONFIG = Path(__file__).resolve().parents[1] / "workflow_config.yaml"
CSV_TASKS = ("AU", "EXPR", "VA")            # per-frame tasks (ERI is per video: not a CSV column)
AUDIO_STORES = ("hubert", "wav2vec2", "vggish")
FOLD_DIR = re.compile(r"^fold(\d+)$")


# ---------------------------------------------------------------- config
def deep_merge(base: dict, extra: dict) -> dict:
    """Merge ``extra`` into ``base`` recursively (nested dicts merge, anything else replaces)."""
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


def load_config(paths=()) -> dict:
    """The run's effective config: repo defaults + ``paths`` merged in order + demo overrides."""
    import yaml

    from .layout import demo_is_input

    files = ([REPO_CONFIG] if REPO_CONFIG.is_file() else []) + [Path(p) for p in paths or ()]
    if not files:
        raise PipelineError(f"{REPO_CONFIG}: workflow config not found; pass --config (the run's config)")
    cfg: dict = {}
    for f in files:
        if not f.is_file():
            raise PipelineError(f"{f}: workflow config not found")
        try:
            doc = yaml.safe_load(f.read_text()) or {}
        except yaml.YAMLError as e:
            raise PipelineError(f"{f}: not valid YAML ({str(e).splitlines()[0]})") from e
        if not isinstance(doc, dict):
            raise PipelineError(f"{f}: a workflow config must be a mapping, got {type(doc).__name__}")
        deep_merge(cfg, doc)
    if demo_is_input(cfg):
        deep_merge(cfg, cfg["demo"].get("overrides") or {})
    cfg["_files"] = [str(f) for f in files]
    return cfg


def local_path(value, workdir: Path) -> Path | None:
    """A weight path from the config; relative paths are relative to the run's working directory."""
    if value in (None, "", "None", "null"):
        return None
    p = Path(value).expanduser()
    return p if p.is_absolute() else workdir / p


def faces_params(cfg: dict, workdir: Path) -> dict:
    """The run's ``faces`` settings for detection (official crops do not exist for a new video)."""
    from .faces import DEFAULTS

    p = deep_merge(copy.deepcopy(DEFAULTS), cfg.get("faces") or {})
    if (cfg.get("affwild2") or {}).get("cropped_aligned") or p["backend"] == "cropped_aligned":
        p["backend"] = "mtcnn" if p["backend"] == "cropped_aligned" else p["backend"]
        log.warning("the run used the official cropped_aligned faces; a new video has none: detecting "
                    "faces with %s instead (crops the models did not train on)", p["backend"])
    fa = p.get("face_alignment") or {}
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


# ---------------------------------------------------------------- models of the run
@dataclass
class TaskModels:
    """One task's fold ensemble: predictors, their checkpoint paths and validation metrics."""
    task: str
    folds: list[str]
    paths: list[Path]
    models: list
    metrics: list[dict]


def find_fold_models(models_dir: Path, task: str, required: bool) -> list[Path] | None:
    """``models/{task}/fold{N}/dcl.pt`` of every fold folder; None if the run did not train ``task``."""
    root = models_dir / "models" / task
    if not root.is_dir():
        if required:
            raise PipelineError(f"{root / 'fold1' / 'dcl.pt'}: model not found (task {task} was not "
                                f"trained in this run; --models must be the run's results/ folder)")
        return None
    folds = sorted((d for d in root.iterdir() if d.is_dir() and FOLD_DIR.match(d.name)),
                   key=lambda d: int(FOLD_DIR.match(d.name)[1]))
    paths = [d / "dcl.pt" for d in folds] or [root / "fold1" / "dcl.pt"]
    for p in paths:
        if not p.is_file():
            raise PipelineError(f"{p}: model not found (train_dcl of this fold has not finished)")
    return paths


def load_task_models(models_dir: Path, task: str, paths: list[Path], device) -> TaskModels:
    from .runtime import read_json
    from .temporal_training import load_temporal

    models, metrics = [], []
    for p in paths:
        m = load_temporal(p, device)
        if m.task != task:
            raise PipelineError(f"{p}: a {m.task} model in the {task} folder")
        models.append(m)
        mp = p.with_name("dcl_metrics.json")
        metrics.append(read_json(mp) if mp.is_file() else {})
    return TaskModels(task, [p.parent.name for p in paths], paths, models, metrics)


# ---------------------------------------------------------------- feature sources
class VisualSource:
    """``mae_{T}`` store: the fine-tuned MAE's pooled features of the found face crops."""

    def __init__(self, name: str, path: Path, device, batch_size: int):
        from .mae_training import load_finetuned
        from .runtime import file_digest

        if not path.is_file():
            raise PipelineError(f"{path}: fine-tuned MAE not found (the temporal models use {name} features)")
        self.name, self.path, self.device, self.batch_size = name, path, device, batch_size
        self.model = load_finetuned(path, device)
        self.dim, self.digest, self.layer = int(self.model.config["embed_dim"]), file_digest(path), None

    def __call__(self, job: "VideoJob") -> tuple[np.ndarray, np.ndarray]:
        from .mae_training import embed_crops, resize_crops
        from .stores import FaceStore

        size = self.model.config["img_size"]
        with FaceStore(job.faces) as fs:
            found = fs.found.astype(bool)
            feats = np.zeros((fs.n_frames, self.dim), np.float32)
            idx = np.flatnonzero(found)
            for s in range(0, len(idx), self.batch_size):
                rows = idx[s:s + self.batch_size]
                crops = resize_crops(fs.read_crops(rows), size)
                feats[rows] = embed_crops(self.model, crops, self.batch_size, self.device)[0]
        # the workflow's stores keep float16 features: round the same way
        return feats.astype(np.float16).astype(np.float32), found


class AudioSource:
    """hubert / wav2vec2 / vggish store: audio features at the video's frame timestamps."""

    def __init__(self, name: str, cfg: dict, workdir: Path, device):
        from .audio_features import load_audio_model

        audio = cfg.get("audio") or {}
        key = f"audio.{name}.weights"
        weights = local_path((audio.get(name) or {}).get("weights"), workdir)
        if weights is not None and not weights.exists():
            raise PipelineError(f"{weights}: {name} weights not found (config key {key} of "
                                f"{', '.join(cfg['_files'])}, relative to --workdir {workdir})")
        self.name, self.params = name, audio
        self.model = load_audio_model(name, weights, audio, device, weights_key=key)
        self.dim, self.digest, self.layer = self.model.dim, self.model.digest, str(self.model.layer)

    def __call__(self, job: "VideoJob") -> tuple[np.ndarray, np.ndarray]:
        from .audio_features import extract

        n = len(job.timestamps)
        if not job.info["has_audio"]:
            return np.zeros((n, self.dim), np.float32), np.zeros(n, bool)
        p = self.params
        f, v = extract(self.model, job.wav, None, job.timestamps, chunk_seconds=float(p.get("chunk_seconds", 30)),
                       overlap_seconds=float(p.get("overlap_seconds", 1.0)), batch_size=int(p.get("batch_size", 2)))
        return f.astype(np.float16).astype(np.float32), v


def make_sources(tasks: dict[str, TaskModels], models_dir: Path, cfg: dict, workdir: Path, device) -> dict:
    """One source per feature store any model uses; dims checked against every checkpoint."""
    bs = int(((cfg.get("mae") or {}).get("features") or {}).get("batch_size", 128))
    sources: dict = {}
    for tm in tasks.values():
        for path, m in zip(tm.paths, tm.models):
            for name, dim in zip(m.feature_names, m.feature_dims):
                if name not in sources:
                    if re.fullmatch(r"mae_(AU|EXPR|VA)", name):
                        sources[name] = VisualSource(name, models_dir / "mae" / f"finetune_{name[4:]}.pt", device, bs)
                    elif name in AUDIO_STORES:
                        sources[name] = AudioSource(name, cfg, workdir, device)
                    else:
                        raise PipelineError(f"{path}: trained on feature store {name!r}, which affect-predict "
                                            f"cannot compute (known: mae_AU, mae_EXPR, mae_VA, {', '.join(AUDIO_STORES)})")
                if sources[name].dim != dim:
                    raise PipelineError(f"{path}: trained on {dim}-d {name!r} features, but "
                                        f"{getattr(sources[name], 'path', None) or 'the configured ' + name + ' weights'} "
                                        f"gives {sources[name].dim}-d (pass the --config the run used)")
    for name, src in sources.items():
        check_digest(models_dir / "features" / name, src)
    return sources


def check_digest(store_dir: Path, src) -> None:
    """The run's own feature stores (if kept) record which weights made them: ours must match."""
    import h5py

    first = next(iter(sorted(store_dir.glob("*.h5"))), None) if store_dir.is_dir() else None
    if first is None:
        log.info("%s: no feature stores of the run to compare the %s weights with", store_dir, src.name)
        return
    with h5py.File(first, "r") as f:
        digest, layer = str(f.attrs.get("checkpoint_digest", "")), f.attrs.get("layer")
    if digest and digest != src.digest:
        raise PipelineError(f"{first}: the run made its {src.name} features with weights of digest {digest}, "
                            f"but the weights configured here have digest {src.digest} (pass the --config "
                            f"and --workdir the run used)")
    if src.layer is not None and layer is not None and str(layer) != src.layer:
        raise PipelineError(f"{first}: the run took {src.name} layer {layer}, the config here says {src.layer}")


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


def prepare_video(path: Path, video_id: str, tmp: Path, cfg: dict, fparams: dict, need_audio: bool,
                  threads: int, device) -> VideoJob:
    """Decode once for the timestamps, then the face store and (if needed) the wav, in ``tmp``."""
    from .faces import crop_video
    from .video import extract_audio, frame_info

    info = frame_info(path, threads)
    job = VideoJob(path, video_id, info, tmp / "faces.h5", tmp / "audio.wav" if need_audio else None,
                   np.asarray(info["timestamps"], np.float64))
    crop_video(path, info, job.faces, video_id=video_id, params=fparams, side="none", threads=threads, device=device)
    if need_audio and info["has_audio"]:
        sr = int((cfg.get("audio") or {}).get("sample_rate", 16000))
        extract_audio(path, job.wav, sr, duration=float(info["duration"]), threads=threads)
    return job


def ensemble_task(tm: TaskModels, feats: dict, ens: dict, batch_size: int) -> np.ndarray:
    """Every fold's prediction, averaged and no-face filled exactly as the submission's ensemble."""
    from .clips import primary_stores
    from .submission import FoldPreds, average_folds, fold_weights, interpolate_no_face
    from .temporal_training import predict_video

    folds = []
    for fold, path, m in zip(tm.folds, tm.paths, tm.models):
        x = np.concatenate([feats[n][0] for n in m.feature_names], 1)
        valid = np.stack([feats[n][1] for n in m.feature_names], 1)
        pred = predict_video(m, x, valid, batch_size)
        face = valid[:, primary_stores(m.feature_names)].all(1)
        folds.append(FoldPreds(path, fold, float(m.meta.get("score") or np.nan), {"video": (pred, face)}))
    weights = fold_weights(ens.get("weighting", "uniform"), tm.metrics, folds)
    prob, valid = average_folds(folds, weights, "video", tm.task)
    policy = ens.get("no_face", "interpolate")
    if policy not in ("interpolate", "model"):
        raise PipelineError(f"ensemble.no_face: {policy!r} is not interpolate | model")
    if policy == "interpolate":
        prob = interpolate_no_face(prob, valid)     # no face at all: the models' (audio) outputs stay
    return np.clip(prob, -1.0, 1.0) if tm.task == "VA" else prob


def predict_video_file(path: Path, video_id: str, tasks: dict, sources: dict, cfg: dict, fparams: dict,
                       threads: int, device, batch_size: int, tmp_root: Path) -> VideoResult:
    with tempfile.TemporaryDirectory(prefix="video-", dir=tmp_root) as tmp:
        need_audio = any(isinstance(s, AudioSource) for s in sources.values())
        job = prepare_video(path, video_id, Path(tmp), cfg, fparams, need_audio, threads, device)
        feats = {name: src(job) for name, src in sources.items()}
        found = _found(job.faces)
        preds = {t: ensemble_task(tm, feats, cfg.get("ensemble") or {}, batch_size) for t, tm in tasks.items()}
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
                   help="a --configfile of the run, merged over the repo's workflow_config.yaml (repeatable)")
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


def select_tasks(models_dir: Path, requested) -> dict[str, list[Path]]:
    found = {}
    for t in requested or CSV_TASKS:
        paths = find_fold_models(models_dir, t, required=requested is not None)
        if paths is not None:
            found[t] = paths
    if not found:
        raise PipelineError(f"{models_dir / 'models'}: no trained AU / EXPR / VA models "
                            f"(expected {models_dir / 'models' / '{task}' / 'fold1' / 'dcl.pt'})")
    return found


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
    cfg = load_config(a.config)
    task_paths = select_tasks(models_dir, a.tasks)

    import cv2

    from .runtime import pick_device, setup_torch

    torch = setup_torch(a.threads, a.seed)
    cv2.setNumThreads(a.threads)
    device = pick_device(a.device)
    tasks = {t: load_task_models(models_dir, t, p, device) for t, p in task_paths.items()}
    sources = make_sources(tasks, models_dir, cfg, workdir, device)
    fparams = faces_params(cfg, workdir)
    check_faces(models_dir / "faces", fparams)
    log.info("tasks %s; folds %s; feature stores %s; faces %s (size %s); %d video(s); torch threads %d",
             list(tasks), {t: tm.folds for t, tm in tasks.items()}, list(sources), fparams["backend"],
             fparams["size"], len(videos), torch.get_num_threads())

    results = []
    with tempfile.TemporaryDirectory(prefix="affect-predict-", dir=a.tmpdir) as tmp_root, \
            atomic_path(a.out) as tmp_csv, open(tmp_csv, "w", encoding="utf-8") as fh:
        fh.write(",".join(csv_header(tasks)) + "\n")
        for path, vid in progress(list(zip(videos, video_ids(videos))), desc="videos", unit="video"):
            r = predict_video_file(path, vid, tasks, sources, cfg, fparams, a.threads, device, a.batch_size,
                                   Path(tmp_root))
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
