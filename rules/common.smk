# Shared by all the rules files — config validation, the dataset layout (scanned once, nothing
# decoded), per-stage code digests, path helpers. Settings come from workflow_config.yaml
# (the paper's) overlaid by --configfile files (demo_config.yaml for the embedded demo).
import hashlib
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
# extract_frames and crop_faces run one job per stable batch of media files, per dataset
MEDIA_BATCHES = config["resources"]["media_batches"]
CONDA_ENV = "../envs/affect.yaml"

# Jobs run the package with the interpreter running Snakemake (the project venv) first on PATH;
# under --sdm conda the activated env's python comes first instead, and the package is imported
# from the workflow's folder (envs/affect.yaml installs its dependencies, not the package).
# A stage runs as `affect <stage> ...`, the warm launcher (affect_pipeline/warm.py): a local job
# forks from a process that has imported torch & co. once, instead of paying 5-10 s of imports;
# inside a Slurm job, or with AFFECT_WARM=0, it is a plain `python -m affect_pipeline`.
_PATH = (
    f"export PYTHONPATH={shlex.quote(workflow.basedir)}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
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
    """The frames JSON of a video's media file, in its extract_frames batch folder."""
    e = layout().videos[video]
    return f"{results.frames_batch(layout().batch_of(video, MEDIA_BATCHES))}/{e.media}.json"


def face_batches(videos):
    """The crop_faces batch directories holding these videos' face stores."""
    return sorted(
        {results.faces_batch(layout().batch_of(v, MEDIA_BATCHES)) for v in videos}
    )


def batch_videos(batch):
    return layout().batches(MEDIA_BATCHES).get(batch, [])


def batch_media(batch):
    return layout().media_batches(MEDIA_BATCHES).get(batch, [])


def decoded_dirs(folder, videos=None):
    """The extract_frames batch folders (folder: results.frames_batch or results.audio_batch) of
    these videos' media files (default: of every used media file)."""
    if videos is None:
        return [folder(b) for b in layout().media_batches(MEDIA_BATCHES)]
    return sorted({folder(layout().batch_of(v, MEDIA_BATCHES)) for v in videos})


# ---------------------------------------------------------------- list files
_LISTS = {}  # path -> the content written in this process
_STAGE_LISTS = {}  # stage -> {name: path}


def list_files(stage, make):
    """{name: path} of a stage's list files, ``results/lists/{stage}/{name}.json``, each holding
    ``make()[name]`` as JSON, for the jobs that declare them as inputs: a per-video list travels
    in a file, never on a command line (one shell argument holds at most 128 KiB, and an id such
    as ``-8XbT1X7Lq0`` would read as an option).

    Written at DAG-building time, atomically, and only where the content changed; all of a
    stage's lists at its first request, so that each exists before Snakemake lists its folder
    (Snakemake caches a folder's listing: a file written after it would count as missing). A rule
    declares its list ``ancient`` and the list's digest (list_digest) as a param: a changed list
    reruns the job (params trigger), a list written again with the same content (a fresh
    results/lists) reruns nothing."""
    if stage not in _STAGE_LISTS:
        paths = {}
        for name, items in make().items():
            path = results.job_list(stage, name)
            text = json.dumps(items, separators=(",", ":"), sort_keys=True) + "\n"
            try:
                same = Path(path).read_text(encoding="utf-8") == text
            except (OSError, UnicodeDecodeError):
                same = False
            if not same:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                tmp = os.path.join(
                    os.path.dirname(path), f".{os.path.basename(path)}.tmp{os.getpid()}"
                )
                Path(tmp).write_text(text, encoding="utf-8")
                os.replace(tmp, path)
            _LISTS[path], paths[name] = text, path
        _STAGE_LISTS[stage] = paths
    return _STAGE_LISTS[stage]


def list_digest(path):
    """The digest of the content list_files wrote at ``path`` in this process."""
    return hashlib.sha256(_LISTS[path].encode()).hexdigest()[:16]


def id_lists(stage, ids_of):
    """{name: path} of a stage's video-id lists (list_files); ``ids_of()``: {name: ids}, e.g.
    {task: task_videos(task)} for a per-task stage."""
    return list_files(stage, lambda: {n: sorted(ids) for n, ids in ids_of().items()})


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


def batch_list(stage, make, batch):
    lists = list_files(stage, make)
    if batch not in lists:
        raise WorkflowError(
            f"{stage} {batch}: no media file of the dataset falls in this batch "
            f"(resources.media_batches = {MEDIA_BATCHES}; batches: {', '.join(lists)})"
        )
    return lists[batch]


def extract_list(wc):
    """The batch's media files for `extract_frames --batch=@FILE`: stem and path."""

    def make():
        paths = layout().media_paths()
        return {
            b: [dict(media=m, video=paths[m]) for m in ms]
            for b, ms in layout().media_batches(MEDIA_BATCHES).items()
        }

    return batch_list("extract_frames", make, wc.batch)


def crop_list(wc):
    """The batch's videos for `crop_faces --batch=@FILE`: media, frames JSON, side, official crops."""

    def make():
        return {
            b: [
                dict(
                    id=v,
                    video=layout().videos[v].path,
                    frames=frames_json(v),
                    side=layout().videos[v].side or "none",
                    cropped_dir=cropped_dir(v),
                )
                for v in vs
            ]
            for b, vs in layout().batches(MEDIA_BATCHES).items()
        }

    return batch_list("crop_faces", make, wc.batch)


def faces_params(wc):
    """faces config; a batch whose (Aff-Wild2) videos all have official crops uses them instead of
    detecting."""
    official = all(cropped_dir(v) for v in batch_videos(wc.batch))
    backend = "cropped_aligned" if official else config["faces"]["backend"]
    return as_json({**config["faces"], "backend": backend})


def pretrain_videos(wc=None):
    """Videos the MAE learns from: every training video of every enabled frame task."""
    return sorted({v for t in FRAME_TASKS for v in task_videos(t, ("train",))})


def audio_list(wc=None):
    """{video id: media stem} of every video (X_left / X_right share X's audio), for
    `audio_features --videos=@FILE`."""
    return list_files(
        "audio_features",
        lambda: {"videos": {v: layout().videos[v].media for v in layout().ids()}},
    )["videos"]


def pretrain_list(wc=None):
    """The ids pretrain_mae learns from, for `pretrain_mae --videos=@FILE`."""
    return id_lists("pretrain_mae", lambda: {"train": pretrain_videos()})["train"]


def visual_list(task):
    """A task's ids, for `visual_features --videos=@FILE` (ERI's: visual_features_eri)."""
    return id_lists("visual_features", lambda: {t: task_videos(t) for t in TASKS})[task]


def report_videos(wc=None):
    """A few test videos for the faces contact sheet."""
    return sorted({v for t in TASKS for v in task_videos(t, ("test",))})[:4]
