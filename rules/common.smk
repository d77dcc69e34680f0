# Helpers shared by every rule file — config validation, demo overrides, the dataset layout
# (listed once at parse time, nothing decoded), per-stage code digests, path helpers.
import copy
import hashlib
import json
import shlex
import os
import sys
from pathlib import Path

from snakemake.utils import validate

from affect_pipeline.layout import LayoutError, demo_is_input, scan_dataset


validate(config, os.path.join(workflow.basedir, "workflow_config.schema.yaml"), set_default=True)


def _deep_merge(base, extra):
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


DEMO = demo_is_input(config)
# what the demo dataset is made of (its `overrides` only shape the models trained on it)
DEMO_SPEC = {k: v for k, v in config["demo"].items() if k != "overrides"}
if DEMO:
    _deep_merge(config, config["demo"]["overrides"])

try:
    LAYOUT = scan_dataset(config)
except LayoutError as e:
    raise WorkflowError(f"dataset layout: {e}")

TASKS = list(LAYOUT.tasks)
FRAME_TASKS = [t for t in TASKS if t != "ERI"]
FOLDS = ["official"] + [f"fold{i}" for i in range(1, config["folds"] + 1)]
ENSEMBLE_FOLDS = FOLDS[1:]
VIDEOS = LAYOUT.ids()
MEDIA = LAYOUT.media_paths()
ERI_VISUAL = config["temporal"]["eri_visual_task"]
AUDIO_MODELS = list(config["audio"]["models"])

# Jobs run `python -m affect_pipeline` with the interpreter running Snakemake (the project venv)
# first on PATH; under --sdm conda the activated env's python comes first instead.
if "conda" not in str(workflow.deployment_settings.deployment_method).lower():
    shell.prefix(f"export PATH={shlex.quote(os.path.dirname(sys.executable))}:\"$PATH\"; ")


def _check_weights():
    """Every local weight the run will load must exist (the demo makes its own by a rule)."""
    keys = [f"audio.{m}.weights" for m in AUDIO_MODELS if m in config["temporal"]["features"]]
    keys += ["mae.checkpoint"] if config["mae"]["checkpoint"] else []
    keys += [f"faces.face_alignment.{k}" for k in ("s3fd", "fan") if config["faces"]["backend"] == "face_alignment"
             and config["faces"]["face_alignment"][k]]
    for key in keys:
        node = config
        for part in key.split("."):
            node = node[part]
        if not node:
            raise WorkflowError(f"config {key} is not set: give the local path of the weights "
                                f"(nothing is downloaded at run time)")
        if not (DEMO and str(node).startswith(config["demo"]["root"])) and not os.path.exists(node):
            raise WorkflowError(f"config {key}: {node} does not exist")


_check_weights()



def video_path(video):
    return LAYOUT.videos[video].path


def frames_json(video):
    return f"results/frames/{LAYOUT.videos[video].media}.json"


def task_videos(task, splits=("train", "validation", "test")):
    return LAYOUT.ids(task, splits)


def visual_task(task):
    """Whose fine-tuned MAE encodes a task's videos (ERI has no frame labels to fine-tune on)."""
    return ERI_VISUAL if task == "ERI" else task


def feature_dirs(task):
    dirs = []
    for name in config["temporal"]["features"]:
        dirs.append(f"results/features/mae_{visual_task(task)}" if name == "mae" else f"results/features/{name}")
    return dirs


def feature_files(task, splits=("train", "validation", "test")):
    return [f"{d}/{v}.h5" for d in feature_dirs(task) for v in task_videos(task, splits)]


def as_json(obj):
    return json.dumps(obj, sort_keys=True)


_DIGESTS = {}


def code_digest(*modules):
    """Digest of the package modules that a stage runs, so that a code change reruns the stage.

    Snakemake tracks a rule's own code, not the package it imports; passing this as a param
    makes `--rerun-triggers params` (on by default) catch edits to the stage's modules."""
    h = hashlib.sha256()
    for m in ("runtime", "stores") + modules:
        if m not in _DIGESTS:
            src = Path(workflow.basedir, "affect_pipeline", f"{m}.py")
            _DIGESTS[m] = hashlib.sha256(src.read_bytes()).hexdigest() if src.exists() else "missing"
        h.update(_DIGESTS[m].encode())
    return h.hexdigest()[:16]


def res(rule_name):
    gpu = config["resources"]["gpu"] if rule_name in config["resources"]["gpu_rules"] else 0
    if rule_name in ("pretrain_mae", "finetune_mae") and gpu:
        gpu = max(gpu, config["mae"]["gpus"])   # DDP: one process per GPU inside the job
    return dict(gpu=gpu, mem_mb=config["resources"]["mem_mb"])


def cropped_dir(wc):
    """The official crops of this video, when the cropped_aligned backend is chosen."""
    base = config["affwild2"].get("cropped_aligned")
    return os.path.join(base, wc.video) if base and "ERI" not in LAYOUT.videos[wc.video].splits else ""


def faces_params(wc):
    """faces config; Aff-Wild2 videos with official crops use them instead of detecting."""
    backend = "cropped_aligned" if cropped_dir(wc) else config["faces"]["backend"]
    return as_json({**config["faces"], "backend": backend})


def pretrain_faces(wc=None):
    """Faces the MAE learns from: every training video of every enabled task."""
    vids = sorted({v for t in TASKS for v in task_videos(t, ("train",))})
    return [f"results/faces/{v}.h5" for v in vids]


def torch_launcher(gpus):
    """One process, or torchrun with one process per GPU (DDP) inside the same job."""
    return "python -m affect_pipeline" if gpus <= 1 else f"python -m torch.distributed.run --standalone --nproc_per_node {gpus} -m affect_pipeline"


def audio_weights(model):
    w = config["audio"][model]["weights"]
    if not w:
        raise WorkflowError(f"config audio.{model}.weights is not set: give the local path of the "
                            f"{model} weights (a save_pretrained folder / state dict), or remove "
                            f"{model!r} from audio.models and temporal.features")
    return w


def fold_inputs(wc):
    return dict(
        folds=f"results/folds/{wc.task}.json",
        labels=f"results/index/labels/{wc.task}.h5",
        features=f"results/features/{wc.task}.manifest.json",
    )


def features_arg(wc):
    return " ".join(shlex.quote(d) for d in feature_dirs(wc.task))



def demo_test_labels_arg(wc):
    """The demo's held-back test labels (outside the pipeline's inputs) score its submission."""
    return f"--test-labels {shlex.quote(os.path.join(config['demo']['root'], 'test_labels'))}" if DEMO else ""



def temporal_params(*sections):
    """The temporal settings a stage needs: the shared ones + its own sections, so that e.g. a DCL
    change does not rerun BLB training."""
    keep = ("features", "eri_visual_task", "clip_len", "stride", "blb", "eri") + sections
    return as_json({k: config["temporal"][k] for k in keep})



def mae_params(*sections):
    """The model config + a stage's own MAE sections (a fine-tune change keeps the pretraining)."""
    return as_json({k: config["mae"][k] for k in ("model",) + sections})


THREADS = config["resources"]["threads"]
CONDA_ENV = "../envs/affect.yaml"
