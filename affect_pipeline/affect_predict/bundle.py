"""A model bundle: everything ``affect-predict`` needs from a finished run, in one folder.

    python -m affect_pipeline export_models --run results/ --out BUNDLE [--no-audio-weights]
                                            [--workdir DIR] [--tasks AU VA]

The bundle is laid out like the run's ``results/`` folder, so ``affect-predict --models`` reads
either through the same code (:func:`open_models` only says what relative weight paths are
relative to):

- ``models/{task}/fold{k}/dcl.pt`` (+ ``dcl_metrics.json``: fold weights, tuned AU thresholds)
  for every frame task and ensembled fold;
- ``mae/{task}/{fold}/finetune.pt``: the fine-tuned MAE encoders those models were trained on
  (the ones their ``feature_sources`` record);
- ``weights/``: the audio weights (and VGGish PCA, face-alignment weights) they need, the
  bundle's ``config.yaml`` pointing at them; with ``--no-audio-weights`` (HuBERT / wav2vec2 are
  large) only their digests and expected paths, in ``bundle.json``;
- ``config.yaml``: the run's effective config; ``training.json`` and ``MODEL_CARD.md``: the
  training data (demo or real, datasets, splits, validation and test scores), the code version;
- ``metrics/summary.json``, ``folds/{task}.json``, ``index/index_report.json``: the run's own
  records the card is written from;
- ``bundle.json``: the manifest (format, code version, source run, demo flag, weights, and the
  size and sha256 of every file).

The folder is written under a temporary name and renamed into place when complete.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from affect_pipeline.affect_predict.model_card import describe_training, model_card
from affect_pipeline.affect_predict.predict_tracks import PRIORS, run_prior
from affect_pipeline.affect_predict.run_models import (
    VISUAL_STORES,
    ensemble_folds,
    find_fold_models,
    local_path,
    setting,
    visual_encoder,
)
from affect_pipeline.audio.models import MODELS as AUDIO_STORES
from affect_pipeline.common import results
from affect_pipeline.common.config import RUN_CONFIG, load_run_config, write_run_config
from affect_pipeline.common.errors import PipelineError, UsageError
from affect_pipeline.common.files import atomic_dir
from affect_pipeline.common.runtime import (
    file_digest,
    read_json,
    write_json,
    write_text,
)
from affect_pipeline.common.tasks import FRAME_TASKS

log = logging.getLogger("affect_pipeline.temporal.predict")

MANIFEST = "bundle.json"
CARD = "MODEL_CARD.md"
TRAINING = "training.json"
FORMAT = "affect_pipeline.bundle/1"
#: the run's own records copied for the card (those present)
RECORDS = ("metrics/summary.json", "index/index_report.json")
DEMO_WARNING = ("the models in {root} were trained on the synthetic demo data (make_demo: one animated "
                "face, random audio models), not on real faces: their predictions on real videos mean "
                "nothing; train on Aff-Wild2 / Hume-Reaction for real use")


# ---------------------------------------------------------------- reading: a bundle or a run
@dataclass(frozen=True)
class ModelSource:
    """Where affect-predict reads models from: ``root`` is laid out like ``results/``."""
    root: Path
    kind: str                 # "bundle" | "run"
    workdir: Path             # relative weight paths in its config.yaml are relative to this
    demo: bool                # trained on the synthetic demo data
    manifest: dict | None


def open_models(path: Path, workdir: Path | None = None) -> ModelSource:
    """A bundle (it has ``bundle.json``; weights relative to itself) or a run's ``results/``
    (weights relative to its parent, the run's working directory); ``workdir`` overrides."""
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"{path}: models directory not found (--models must be a model bundle "
                            f"(export_models) or a finished run's results/)")
    if (path / MANIFEST).is_file():
        manifest = read_json(path / MANIFEST)
        check_manifest(path, manifest)
        return ModelSource(path, "bundle", Path(workdir or path), bool(manifest["demo"]), manifest)
    cfg = load_run_config(path / RUN_CONFIG)
    work = Path(workdir or path.resolve().parent)
    return ModelSource(path, "run", work, trained_on_demo(cfg, work), None)


def check_manifest(root: Path, manifest: dict) -> None:
    """Format known and every listed file present with its size (cheap: contents are checked by
    digest where they are used)."""
    if manifest.get("format") != FORMAT:
        raise PipelineError(f"{root / MANIFEST}: bundle format {manifest.get('format')!r}, this affect_pipeline "
                            f"reads {FORMAT!r}")
    for rel, meta in manifest.get("files", {}).items():
        p = root / rel
        if not p.is_file() or p.stat().st_size != meta["size"]:
            raise PipelineError(f"{p}: {'missing from' if not p.is_file() else 'changed in'} the bundle "
                                f"(bundle.json lists {meta['size']} bytes, sha256 {meta['sha256'][:16]}); "
                                f"export it again")
    for key, w in manifest.get("weights", {}).items():
        if not w["included"]:
            log.info("%s: the bundle does not include %s (digest %s; the run had %s): give its path with "
                     "--config or --workdir", root, key, w["digest"], w["expected"])


def warn_if_demo(models: ModelSource) -> None:
    if models.demo:
        log.warning(DEMO_WARNING.format(root=models.root))


def trained_on_demo(cfg: dict, workdir: Path) -> bool:
    """The run's data is the demo's: its data keys point into the tree its ``demo:`` section
    generates (demo_config.yaml), or the videos' tree carries the demo generator's manifest."""
    data = [p for p in ((cfg.get("affwild2") or {}).get("videos"), (cfg.get("hume") or {}).get("root")) if p]
    root = (cfg.get("demo") or {}).get("root")
    if root and any(_inside(p, root) for p in data):
        return True
    for p in data:                  # {root}/affwild2/videos, {root}/hume beside {root}/manifest.json
        for manifest in (q / "manifest.json" for q in local_path(p, workdir).parents[:2]):
            if manifest.is_file() and str(read_json(manifest).get("generator", "")).startswith("affect_pipeline.demo"):
                return True
    return False


def _inside(path: str, root: str) -> bool:
    import os

    p, r = os.path.normpath(str(path)), os.path.normpath(str(root))
    return p == r or p.startswith(r.rstrip(os.sep) + os.sep)


# ---------------------------------------------------------------- writing
@dataclass
class Weight:
    """A weight file or folder the models need, by its config key."""
    key: str
    source: Path
    value: str                # the config's value (as the run wrote it)
    dest: str                 # its place in the bundle

    def describe(self, included: bool) -> dict:
        return {"included": included, "path": self.dest if included else None, "expected": self.value,
                "resolved": str(self.source), "digest": file_digest(self.source)}


def model_files(run: Path, cfg: dict, tasks) -> tuple[dict[str, list[Path]], list[Path], set[str]]:
    """Each task's fold models, the encoders they were trained on, the audio stores they need."""
    from affect_pipeline.common.runtime import load_checkpoint

    folds = ensemble_folds(cfg)
    task_paths = {t: find_fold_models(run, t, folds) for t in tasks}
    encoders, audio = [], set()
    for paths in task_paths.values():
        for p in paths:
            sources = load_checkpoint(p).get("feature_sources")
            if not sources:
                raise PipelineError(f"{p}: the checkpoint does not record the feature shards it was trained on "
                                    f"(feature_sources; made by an older affect_pipeline): rerun train_blb and train_dcl")
            for src in sources:
                if src["name"] in VISUAL_STORES:
                    enc = visual_encoder(run, src, p)
                    if not enc.is_file():
                        raise PipelineError(f"{enc}: fine-tuned MAE not found (the temporal model {p} was trained on it)")
                    if enc not in encoders:
                        encoders.append(enc)
                elif src["name"] in AUDIO_STORES:
                    audio.add(src["name"])
                else:
                    raise PipelineError(f"{p}: trained on feature store {src['name']!r}, which affect-predict cannot compute")
    return task_paths, encoders, audio


def weight_files(cfg: dict, audio: set[str], workdir: Path) -> list[Weight]:
    """The audio weights (+ VGGish PCA) of the stores in use, and face-alignment weights when the
    run detected faces with it; each must exist."""
    keys = [f"audio.{name}.weights" for name in sorted(audio)]
    if "vggish" in audio and setting(cfg, "audio.vggish.pca"):
        keys.append("audio.vggish.pca")
    if setting(cfg, "faces.backend") == "face_alignment":
        keys += [f"faces.face_alignment.{k}" for k, v in setting(cfg, "faces.face_alignment").items() if v]
    out = []
    for key in keys:
        value = str(setting(cfg, key))
        src = local_path(value, workdir)
        if src is None or not src.exists():
            raise PipelineError(f"{src}: {key} not found (relative to the run's working directory {workdir}; "
                                f"give it with --workdir)")
        name = key.split(".")[-2] if key.endswith(".weights") else "_".join(key.split(".")[1:])
        out.append(Weight(key, src, value, f"weights/{name}{''.join(src.suffixes) if src.is_file() else ''}"))
    return out


def bundle_config(cfg: dict, weights: list[Weight]) -> dict:
    """The run's config with each copied weight's key pointing into the bundle."""
    out = copy.deepcopy({k: v for k, v in cfg.items() if not str(k).startswith("_")})
    for w in weights:
        *parents, last = w.key.split(".")
        node = out
        for k in parents:
            node = node[k]
        node[last] = w.dest
    return out


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst)        # every file: a folder's digest covers them all
    else:
        shutil.copy2(src, dst)


def export_models(run: Path, out: Path, audio_weights: bool = True, workdir: Path | None = None,
                  tasks=None) -> dict:
    """Write the bundle of ``run`` (a results/ folder, or a bundle) to ``out`` (new, empty or an
    earlier bundle, which it replaces); returns its manifest."""
    from affect_pipeline.common.version import code_version

    out = Path(out)
    if out.exists() and not (out / MANIFEST).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise PipelineError(f"{out}: exists and is not a model bundle (no {MANIFEST}): not replaced; "
                            f"name a new folder or an earlier bundle")
    source = open_models(run, workdir)
    cfg = load_run_config(Path(run) / RUN_CONFIG)
    trained = [t for t in FRAME_TASKS if t in setting(cfg, "tasks")]
    for t in tasks or ():
        if t not in trained:
            raise PipelineError(f"{run / RUN_CONFIG}: task {t} was not trained in this run (its frame tasks: {trained})")
    tasks = list(tasks or trained)
    if not tasks:
        raise PipelineError(f"{run / RUN_CONFIG}: the run trained no {' / '.join(FRAME_TASKS)} models")
    task_paths, encoders, audio = model_files(Path(run), cfg, tasks)
    weights = weight_files(cfg, audio, source.workdir)
    copied = [w for w in weights if audio_weights or not w.key.startswith("audio.")]
    files = [p for ps in task_paths.values() for p in ps]
    files += [Path(results.metrics(str(p))) for p in files if Path(results.metrics(str(p))).is_file()]
    files += encoders + [Path(run) / r for r in RECORDS if (Path(run) / r).is_file()]
    files += [Path(run) / "folds" / f"{t}.json" for t in tasks if (Path(run) / "folds" / f"{t}.json").is_file()]
    manifest = {"format": FORMAT, "code": code_version(), "source": {"run": str(Path(run).resolve()),
                "kind": source.kind, "workdir": str(source.workdir.resolve())},
                "demo": source.demo, "tasks": tasks, "folds": ensemble_folds(cfg),
                "weights": {w.key: w.describe(w in copied) for w in weights}}
    with atomic_dir(out) as tmp:
        for f in files:
            _copy(f, tmp / f.relative_to(run))
        for w in copied:
            _copy(w.source, tmp / w.dest)
        write_run_config(bundle_config(cfg, copied), tmp / RUN_CONFIG)
        write_json(tmp / PRIORS, training_priors(Path(run), task_paths, ensemble_folds(cfg)))
        training = describe_training(cfg, tmp, tasks, source)
        write_json(tmp / TRAINING, training)
        manifest["files"] = listing(tmp)
        write_text(tmp / CARD, model_card(manifest, training))
        write_json(tmp / MANIFEST, manifest)
    log.info("wrote %s: %s, %d files (%s)", out, ", ".join(tasks), len(manifest["files"]),
             "trained on the DEMO data" if source.demo else "trained on real data")
    if source.demo:
        log.warning(DEMO_WARNING.format(root=out))
    return manifest


def training_priors(run: Path, task_paths: dict, folds: list[str]) -> dict[str, list[float]]:
    """Each task's training prior over the ensembled folds (``--no-face prior``), recorded so that
    the bundle needs no label stores (a bundle exported again passes its own on); tasks whose
    labels the run no longer has are left out."""
    have = [t for t in task_paths if (run / "index" / "labels" / f"{t}.h5").is_file() or (run / PRIORS).is_file()]
    return {t: run_prior(run, t, folds).tolist() for t in have}


def listing(root: Path) -> dict[str, dict]:
    """Every file below ``root`` (the manifest and card aside): its size and sha256 (of its bytes,
    as ``sha256sum`` prints it)."""
    out = {}
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        rel = PurePosixPath(p.relative_to(root).as_posix())
        if str(rel) not in (MANIFEST, CARD):
            with open(p, "rb") as fh:
                out[str(rel)] = {"size": p.stat().st_size, "sha256": hashlib.file_digest(fh, "sha256").hexdigest()}
    return out


# ---------------------------------------------------------------- the command
def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m affect_pipeline export_models",
                                description="Write a finished run's models (and what they need) into one folder "
                                            "that affect-predict --models reads, with a model card.")
    p.add_argument("--run", required=True, type=Path, metavar="RESULTS", help="the results/ folder of a finished run")
    p.add_argument("--out", required=True, type=Path, metavar="BUNDLE", help="the bundle folder to write (replaced)")
    p.add_argument("--no-audio-weights", action="store_true",
                   help="record the audio weights' digests and expected paths instead of copying them")
    p.add_argument("--workdir", type=Path, default=None, metavar="DIR",
                   help="the run's working directory, for relative weight paths (default: parent of --run)")
    p.add_argument("--tasks", nargs="+", choices=FRAME_TASKS, default=None,
                   help="tasks to export (default: every frame task the run trained)")
    a = p.parse_args(argv)
    if a.out.resolve() == a.run.resolve() or a.run.resolve() in a.out.resolve().parents:
        p.error("--out must not be --run or inside it")
    export_models(a.run, a.out, not a.no_audio_weights, a.workdir, a.tasks)
    return 0
