"""What affect-predict takes from a finished run: its face settings, each task's fold models
(and the AU threshold the submission decodes with), and the feature sources they were trained
on (every fold's own MAE encoder, the run's audio weights), checked against the digests the run
recorded so new videos are encoded exactly as the run's were."""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from affect_pipeline.affect_predict.video_job import VideoJob
from affect_pipeline.audio.models import MODELS as AUDIO_STORES
from affect_pipeline.common import results
from affect_pipeline.common.config import need
from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.tasks import FRAME_TASKS

log = logging.getLogger(__name__)

VISUAL_STORES = tuple(f"mae_{t}" for t in FRAME_TASKS)


def setting(cfg: dict, key: str):
    """A setting of the run's config; absent -> PipelineError naming the key and the files read."""
    return need(cfg, key, " + ".join(cfg.get("_files") or ["config"]))


def local_path(value, workdir: Path) -> Path | None:
    """A weight path from the config; relative paths are relative to the run's working directory."""
    if value in (None, "", "None", "null"):
        return None
    p = Path(value).expanduser()
    return p if p.is_absolute() else workdir / p


# ---------------------------------------------------------------- faces
def faces_params(cfg: dict, workdir: Path) -> dict:
    """The run's ``faces`` settings for detection (official crops do not exist for a new video)."""
    from affect_pipeline.faces.detection import FaceParams

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

    # faces/{batch}/{video}.h5; an unbatched run's are faces/{video}.h5
    stores = sorted(faces_dir.glob("*/*.h5")) + sorted(faces_dir.glob("*.h5")) if faces_dir.is_dir() else []
    first = next(iter(stores), None)
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
    """One task's fold ensemble: predictors, their checkpoint paths, validation metrics and, per
    model, the keys of the feature sources (``make_sources``) its stores come from, in order."""
    task: str
    folds: list[str]
    paths: list[Path]
    models: list
    metrics: list[dict]
    keys: list[list[str]] = field(default_factory=list)


def ensemble_folds(cfg: dict) -> list[str]:
    """The folds the submission ensembles: fold1 ... fold{k}, k = config ``folds``."""
    k = int(setting(cfg, "folds"))
    return [f"fold{i}" for i in range(1, k + 1)]


def find_fold_models(models_dir: Path, task: str, folds: list[str]) -> list[Path]:
    """The ``dcl`` model of every ensembled fold; each must exist."""
    paths = [Path(results.fold_model(task, f, "dcl", root=models_dir)) for f in folds]
    for p in paths:
        if not p.is_file():
            raise PipelineError(f"{p}: model not found (train_dcl of this fold has not finished; "
                                f"--models must be a finished run's results/ folder)")
    return paths


def load_task_models(models_dir: Path, task: str, paths: list[Path], device) -> TaskModels:
    from affect_pipeline.temporal.checkpoint import load_temporal

    models = []
    for p in paths:
        m = load_temporal(p, device)
        if m.task != task:
            raise PipelineError(f"{p}: a {m.task} model in the {task} folder")
        if m.feature_sources is None or len(m.feature_sources) != len(m.feature_names):
            raise PipelineError(f"{p}: the checkpoint does not record the feature shards it was trained on "
                                f"(feature_sources; made by an older affect_pipeline): affect-predict cannot "
                                f"tell which encoder made its features; rerun train_blb and train_dcl")
        models.append(m)
    metrics = [m for _, m in fold_metrics(paths)]
    return TaskModels(task, [p.parent.name for p in paths], paths, models, metrics)


def fold_metrics(paths: list[Path]) -> list[tuple[str, dict]]:
    """(file, metrics) of each fold model: the metrics written beside it ({} when absent), as the
    submission's ensemble reads them (fold weights, tuned AU thresholds)."""
    from affect_pipeline.common.runtime import read_json

    return [(str(mp), read_json(mp) if mp.is_file() else {})
            for mp in (Path(results.metrics(str(p))) for p in paths)]


def au_threshold(cfg: dict, paths: list[Path]) -> tuple[float, ...]:
    """The per-AU presence threshold the submission decodes with (``ensemble.au_threshold``)."""
    from affect_pipeline.submit.ensemble import resolve_au_threshold

    return tuple(float(t) for t in resolve_au_threshold(setting(cfg, "ensemble.au_threshold"), fold_metrics(paths)))


# ---------------------------------------------------------------- feature sources
class VisualSource:
    """``mae_{T}`` store: one fine-tuned MAE encoder's pooled features of the found face crops."""

    def __init__(self, name: str, path: Path, device, batch_size: int):
        from affect_pipeline.mae.visual_features import load_finetuned

        self.name, self.path, self.device, self.batch_size = name, path, device, batch_size
        self.model = load_finetuned(path, device)
        if f"mae_{self.model.task}" != name:
            raise PipelineError(f"{path}: a finetune_mae checkpoint of task {self.model.task}, "
                                f"but the temporal models need {name} features")
        self.dim, self.layer = int(self.model.config["embed_dim"]), None

    def __call__(self, job: VideoJob) -> tuple[np.ndarray, np.ndarray]:
        from affect_pipeline.common.stores import FaceStore
        from affect_pipeline.mae.face_reader import resize_crops
        from affect_pipeline.mae.visual_features import embed_crops

        size = self.model.config["img_size"]
        with FaceStore(job.faces) as fs:
            found = fs.found.astype(bool)
            feats = np.zeros((fs.n_frames, self.dim), np.float32)
            idx = np.flatnonzero(found)
            for s in range(0, len(idx), self.batch_size):
                rows = idx[s:s + self.batch_size]
                crops = resize_crops(fs.read_crops(rows), size)
                feats[rows] = embed_crops(self.model, crops, self.batch_size, self.device)[0]
        # the workflow's shards keep float16 features: round the same way
        return feats.astype(np.float16).astype(np.float32), found


class AudioSource:
    """hubert / wav2vec2 / vggish store: audio features at the video's frame timestamps."""

    def __init__(self, name: str, cfg: dict, workdir: Path, device):
        from affect_pipeline.audio.audio_features import model_params
        from affect_pipeline.audio.models import load_audio_model

        key = f"audio.{name}.weights"
        self.params = copy.deepcopy(model_params(setting(cfg, "audio"), name))
        section = self.params[name]
        weights = local_path(need(section, "weights", f"audio.{name}"), workdir)
        if weights is not None and not weights.exists():
            raise PipelineError(f"{weights}: {name} weights not found (config key {key} of "
                                f"{', '.join(cfg['_files'])}, relative to --workdir {workdir})")
        if name == "vggish" and need(section, "pca", "audio.vggish"):
            section["pca"] = str(local_path(section["pca"], workdir))
        self.name, self.sample_rate = name, int(self.params["sample_rate"])
        self.model = load_audio_model(name, weights, section, device, weights_key=key)
        if self.sample_rate != self.model.sample_rate:
            raise PipelineError(f"audio.sample_rate = {self.sample_rate}, but {name} ({weights}) expects "
                                f"{self.model.sample_rate} Hz")
        self.dim, self.digest, self.layer = self.model.dim, self.model.digest, str(self.model.layer)

    def __call__(self, job: VideoJob) -> tuple[np.ndarray, np.ndarray]:
        from affect_pipeline.audio.audio_features import Chunking, extract

        n = len(job.timestamps)
        if not job.info["has_audio"]:
            return np.zeros((n, self.dim), np.float32), np.zeros(n, bool)
        f, v = extract(self.model, job.wav, None, job.timestamps, Chunking.from_params(self.params))
        return f.astype(np.float16).astype(np.float32), v


def visual_encoder(models_dir: Path, src: dict, ckpt: Path) -> Path:
    """The encoder that made a visual store ``mae_X``: X's fine-tuned MAE of the fold the shard
    recorded (the model's own fold, or ``official`` when the run did not fine-tune per fold, and
    for ERI)."""
    name, fold = src["name"], src.get("fold")
    if not fold:
        raise PipelineError(f"{ckpt}: its {name} store (shard {src.get('shard')}) records no encoder fold; "
                            f"affect-predict cannot tell which fine-tuned MAE made it (rerun visual_features)")
    return Path(results.encoder(name.removeprefix("mae_"), fold, root=models_dir))


def _mismatch(ckpt: Path, src: dict, what: str, got: str, hint: str) -> PipelineError:
    return PipelineError(f"{ckpt}: the run made its {src['name']} features (shard {src.get('shard')}) with weights "
                         f"of digest {src.get('checkpoint_digest')}, but {what} has digest {got} ({hint})")


def make_sources(tasks: dict[str, TaskModels], models_dir: Path, cfg: dict, workdir: Path, device,
                 batch_size: int | None = None) -> dict:
    """One source per distinct weight file any model's stores come from (each loaded once), the
    models' ``keys`` filled in; digests and dims checked against every checkpoint's record.
    ``batch_size``: face crops per MAE forward (default: the run's ``mae.features.batch_size``)."""
    from affect_pipeline.common.runtime import file_digest

    bs = int(batch_size or setting(cfg, "mae.features.batch_size"))
    sources: dict = {}
    digests: dict[Path, str] = {}
    for tm in tasks.values():
        tm.keys = []
        for path, m in zip(tm.paths, tm.models):
            keys = []
            for src, name, dim in zip(m.feature_sources, m.feature_names, m.feature_dims):
                if src.get("name") != name:
                    raise PipelineError(f"{path}: feature_sources {src.get('name')!r} does not match store {name!r}")
                if name in VISUAL_STORES:
                    enc = visual_encoder(models_dir, src, path)
                    key = f"{name}@{src['fold']}"
                    if not enc.is_file():
                        raise PipelineError(f"{enc}: fine-tuned MAE not found (the temporal model {path} was "
                                            f"trained on {name} features of the shard {src.get('shard')})")
                    if enc not in digests:
                        digests[enc] = file_digest(enc)
                    if src.get("checkpoint_digest") != digests[enc]:
                        raise _mismatch(path, src, enc, digests[enc],
                                        "the encoder changed after the model was trained: rerun the workflow, "
                                        "or --models is not the run that trained it")
                    if key not in sources:
                        sources[key] = VisualSource(name, enc, device, bs)
                        if sources[key].model.fold != src["fold"]:
                            raise PipelineError(f"{enc}: the encoder of fold {sources[key].model.fold}, but "
                                                f"{path} was trained on features of the fold {src['fold']} encoder")
                elif name in AUDIO_STORES:
                    key = name
                    if key not in sources:
                        sources[key] = AudioSource(name, cfg, workdir, device)
                        check_digest(Path(results.audio_shard(name, root=models_dir)), sources[key])
                    a = sources[key]
                    if src.get("checkpoint_digest") and src["checkpoint_digest"] != a.digest:
                        raise _mismatch(path, src, "the weights configured here", a.digest,
                                        "pass the --config and --workdir the run used")
                    if src.get("layer") is not None and str(src["layer"]) != a.layer:
                        raise PipelineError(f"{path}: the run took {name} layer {src['layer']} (shard "
                                            f"{src.get('shard')}), the config here says {a.layer}")
                else:
                    raise PipelineError(f"{path}: trained on feature store {name!r}, which affect-predict "
                                        f"cannot compute (known: {', '.join(VISUAL_STORES + AUDIO_STORES)})")
                if sources[key].dim != dim:
                    raise PipelineError(f"{path}: trained on {dim}-d {name!r} features, but "
                                        f"{getattr(sources[key], 'path', None) or 'the configured ' + name + ' weights'} "
                                        f"gives {sources[key].dim}-d (pass the --config the run used)")
                keys.append(key)
            tm.keys.append(keys)
    return sources


def check_digest(shard_path: Path, src: AudioSource) -> None:
    """The run's own audio shard (if kept) records which weights made it: ours must match."""
    from affect_pipeline.common.feature_shards import FeatureShard

    if not shard_path.is_file():            # a bundle holds none; a run may have deleted its features
        log.debug("%s: no %s shard; the weights are checked against the checkpoints' record only",
                  shard_path, src.name)
        return
    with FeatureShard(shard_path) as s:
        digest, layer = s.attrs.get("checkpoint_digest"), s.attrs.get("layer")
    if digest is not None and str(digest) != src.digest:
        raise PipelineError(f"{shard_path}: the run made its {src.name} features with weights of digest {digest}, "
                            f"but the weights configured here have digest {src.digest} (pass the --config "
                            f"and --workdir the run used)")
    if layer is not None and str(layer) != src.layer:
        raise PipelineError(f"{shard_path}: the run took {src.name} layer {layer}, the config here says {src.layer}")
