# Shared by all the rules files — config validation, the dataset layout (scanned once, nothing
# decoded), per-stage code digests, path helpers. Settings come from workflow_config.yaml
# (the paper's) overlaid by --configfile files (demo_config.yaml for the embedded demo).
import json
import os
import shlex
import sys
from pathlib import Path

from snakemake.utils import validate

from affect_pipeline.__main__ import STAGES
from affect_pipeline.common import results
from affect_pipeline.common.digests import ImportGraph
from affect_pipeline.common.tasks import FRAME_TASKS as ABAW_FRAME_TASKS
from affect_pipeline.common.tasks import TASKS as ABAW_TASKS
from affect_pipeline.data.layout import LayoutError, enabled_tasks, scan_dataset
from affect_pipeline.temporal.settings import stage_keys

validate(config, os.path.join(workflow.basedir, "workflow_config.schema.yaml"))

# ABAW_TASKS: every task of the challenge; TASKS: the configured ones whose data is given
TASKS = list(enabled_tasks(config))
FRAME_TASKS = [t for t in TASKS if t in ABAW_FRAME_TASKS]
FOLDS = ["official"] + [f"fold{i}" for i in range(1, config["folds"] + 1)]
ENSEMBLE_FOLDS = FOLDS[1:]
PER_FOLD = config["mae"]["finetune"]["per_fold"]
ERI_VISUAL = config["temporal"]["eri_visual_task"]
THREADS = config["resources"]["threads"]
CONDA_ENV = "../envs/affect.yaml"

# Jobs run the package with the interpreter running Snakemake (the project venv) first on PATH;
# under --sdm conda the activated env's python comes first instead.
# A stage runs as `affect <stage> ...`, the warm launcher (affect_pipeline/warm.py): a local job
# forks from a process that has imported torch & co. once, instead of paying 5-10 s of imports;
# inside a Slurm job, or with AFFECT_WARM=0, it is a plain `python -m affect_pipeline`.
_PATH = (
    ""
    if "conda" in str(workflow.deployment_settings.deployment_method).lower()
    else f'export PATH={shlex.quote(os.path.dirname(sys.executable))}:"$PATH"; '
)
shell.prefix(f'{_PATH}affect() {{{{ python -m affect_pipeline.warm "$@"; }}}}; ')


_LAYOUT = []


def layout():
    """The dataset as the scanner sees it. The demo tree is made by the `make_demo` checkpoint,
    so with a `demo:` section the scan waits for it; any other tree is scanned at once.
    """
    if not _LAYOUT:
        if "demo" in config:
            checkpoints.make_demo.get()
        try:
            _LAYOUT.append(scan_dataset(config))
        except LayoutError as e:
            raise WorkflowError(f"dataset layout: {e}")
    return _LAYOUT[0]


def as_json(obj):
    return json.dumps(obj, sort_keys=True)


# ---------------------------------------------------------------- code digests
# parsed imports cached by source digest: a dry run re-parses only the modules edited since
_IMPORT_GRAPH = ImportGraph(cache=Path(".snakemake", "affect_pipeline_imports.json"))


def code_digest(stage):
    """Digest of the stage's module and every package module it imports (affect_pipeline.common.digests):
    editing a module reruns exactly the stages that run it, through `--rerun-triggers params`.
    """
    return _IMPORT_GRAPH.digest(STAGES[stage].split(":")[0])


# ---------------------------------------------------------------- paths
def task_videos(task, splits=("train", "validation", "test")):
    return layout().ids(task, splits)


def frames_json(video):
    return f"results/frames/{layout().videos[video].media}.json"


def face_batches(videos):
    """The crop_faces batch directories holding these videos' face stores."""
    n = config["resources"]["face_batches"]
    return sorted({results.faces_batch(layout().face_batch(v, n)) for v in videos})


def batch_videos(batch):
    return layout().face_batches(config["resources"]["face_batches"]).get(batch, [])


def visual_task(task):
    """Whose fine-tuned MAE encodes a task's videos (ERI has no frame labels to fine-tune on)."""
    return ERI_VISUAL if task == "ERI" else task


def encoder(task, fold):
    """The fine-tuned encoder behind a task x fold: the fold's own (per_fold), else the official
    one. ERI's videos (Hume) are outside every Aff-Wild2 fold: the official EXPR encoder.
    """
    if task == "ERI":
        return results.encoder(ERI_VISUAL, "official")
    return results.encoder(task, fold if PER_FOLD else "official")


def visual_shard(task, fold):
    shared = task == "ERI" or not PER_FOLD
    return results.visual_shard(task, "official" if shared else fold)


def feature_shards(task, fold):
    """The feature shards a task x fold's temporal models read, in concatenation order."""
    return [
        visual_shard(task, fold) if name == "mae" else results.audio_shard(name)
        for name in config["temporal"]["features"]
    ]


def fold_inputs(wc):
    return dict(
        folds=f"results/folds/{wc.task}.json",
        labels=f"results/index/labels/{wc.task}.h5",
        features=feature_shards(wc.task, wc.fold),
    )


def weights(key):
    """A local weight file the job loads: checked where a job needs it, not at parse time."""
    node = config
    for part in key.split("."):
        node = node[part]
    if not node:
        raise WorkflowError(
            f"config {key} is not set: give the local path of the weights "
            f"(nothing is downloaded at run time)"
        )
    return node


def res(rule_name):
    gpu = (
        config["resources"]["gpu"]
        if rule_name in config["resources"]["gpu_rules"]
        else 0
    )
    if rule_name in ("pretrain_mae", "finetune_mae") and gpu:
        gpu = max(gpu, config["mae"]["gpus"])  # DDP: one process per GPU inside the job
    return dict(gpu=gpu, mem_mb=config["resources"]["mem_mb"])


def torch_launcher(gpus):
    """One process, or torchrun with one process per GPU (DDP) inside the same job."""
    return (
        "affect"
        if gpus <= 1
        else f"python -m torch.distributed.run --standalone --nproc_per_node {gpus} -m affect_pipeline"
    )


def temporal_params(*sections):
    """The temporal settings a stage needs, per task (affect_pipeline.temporal.settings.stage_keys):
    the shared ones + its own sections (a DCL change does not rerun BLB training), and temporal.eri
    only for ERI (tuning ERI's model does not retrain the frame tasks' BLBs)."""

    def params(wildcards):
        keys = stage_keys(wildcards.task, *sections)
        return as_json({k: config["temporal"][k] for k in keys})

    return params


def mae_params(*sections):
    """The model config + a stage's own MAE sections (a fine-tune change keeps the pretraining)."""
    return as_json({k: config["mae"][k] for k in ("model",) + sections})


def test_labels_arg(wc=None):
    """Held-back test labels (the demo's), used only for scoring."""
    d = config["scoring"]["test_labels"]
    return f"--test-labels {shlex.quote(d)}" if d else ""


# ---------------------------------------------------------------- per-rule inputs and params
FINETUNE_FOLDS = (
    FOLDS if PER_FOLD else ["official"]
)  # per_fold false: one (official) encoder per task


def cropped_dir(video):
    """The official crops of this video, when the cropped_aligned backend is chosen."""
    base = config["affwild2"]["cropped_aligned"]
    return (
        os.path.join(base, video)
        if base and "ERI" not in layout().videos[video].splits
        else ""
    )


def crop_batch(wc):
    """The batch's videos for `crop_faces --batch`: media, frames JSON, side, official crops.
    One shell argument: Linux refuses one over 128 KiB, so a too-large batch stops the parse.
    """
    arg = as_json(
        [
            dict(
                id=v,
                video=layout().videos[v].path,
                frames=frames_json(v),
                side=layout().videos[v].side or "none",
                cropped_dir=cropped_dir(v),
            )
            for v in batch_videos(wc.batch)
        ]
    )
    if len(arg.encode()) > 100_000:
        raise WorkflowError(
            f"crop_faces {wc.batch}: {len(batch_videos(wc.batch))} videos make a "
            f"{len(arg.encode()) // 1024} KiB --batch argument (the limit is 128 KiB): raise "
            f"resources.face_batches (now {config['resources']['face_batches']})"
        )
    return arg


def faces_params(wc):
    """faces config; a batch whose (Aff-Wild2) videos all have official crops uses them instead of
    detecting."""
    official = all(cropped_dir(v) for v in batch_videos(wc.batch))
    backend = "cropped_aligned" if official else config["faces"]["backend"]
    return as_json({**config["faces"], "backend": backend})


def pretrain_videos(wc=None):
    """Videos the MAE learns from: every training video of every enabled frame task."""
    return sorted({v for t in FRAME_TASKS for v in task_videos(t, ("train",))})


def audio_media(wc=None):
    """media stem of every video that has features (X_left / X_right share X's audio)."""
    return sorted({layout().videos[v].media for v in layout().ids()})


def report_videos(wc=None):
    """A few test videos for the faces contact sheet."""
    return sorted({v for t in TASKS for v in task_videos(t, ("test",))})[:4]
