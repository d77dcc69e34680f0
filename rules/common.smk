# Shared by all the rules files — config validation, the dataset layout (scanned once, nothing
# decoded), per-stage code digests, path helpers. Settings come from workflow_config.yaml
# (the paper's) overlaid by --configfile files (demo_config.yaml for the embedded demo).
import ast
import hashlib
import json
import os
import shlex
import sys
from pathlib import Path

from snakemake.utils import validate

from affect_pipeline.__main__ import STAGES
from affect_pipeline.layout import LayoutError, enabled_tasks, scan_dataset

validate(config, os.path.join(workflow.basedir, "workflow_config.schema.yaml"))

TASKS = list(enabled_tasks(config))
FRAME_TASKS = [t for t in TASKS if t != "ERI"]
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
_PKG = Path(workflow.basedir, "affect_pipeline")
_DIGESTS, _IMPORTS = {}, {}
# parsed imports by module source digest: parsing 38 modules' ASTs was a tenth of a 600-video
# dry run; a module's imports change only with its source, so a parse re-parses only edited ones
_IMPORT_CACHE = Path(".snakemake", "affect_pipeline_imports.json")


def _module_file(module):
    path = _PKG.joinpath(*module.split(".")[1:])
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _read_import_cache():
    try:
        entries = json.loads(_IMPORT_CACHE.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(entries, dict):
        return {}
    return {
        k: v
        for k, v in entries.items()
        if k
        and isinstance(v, list)
        and len(v) == 2
        and all(isinstance(x, list) for x in v)
    }


def _write_import_cache(entries):
    """Atomic (jobs on a cluster parse the Snakefile concurrently); a read-only dir keeps none."""
    try:
        _IMPORT_CACHE.parent.mkdir(parents=True, exist_ok=True)
        tmp = _IMPORT_CACHE.with_name(f"{_IMPORT_CACHE.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries, sort_keys=True))
        os.replace(tmp, _IMPORT_CACHE)
    except OSError:
        pass


# cache key -> [sure, maybe]: the cache file's entries + what this parse parsed itself
_PARSED = _read_import_cache()
_UNSAVED = set()  # keys this parse parsed and has not written yet


def _package_imports(module):
    """(file, source or None, affect_pipeline modules that `module` imports anywhere in its
    source, lazily or not); read once per Snakefile parse, parsed only when its source changed.
    """
    if module not in _IMPORTS:
        path = _module_file(module)
        src = path.read_bytes() if path.exists() else None
        key = f"{module}:{hashlib.sha256(src or b'').hexdigest()}"
        if key not in _PARSED:
            _PARSED[key] = _parse_imports(module, path, src)
            _UNSAVED.add(key)
        sure, maybe = _PARSED[key]
        found = set(sure) | {m for m in maybe if _module_file(m).exists()}
        _IMPORTS[module] = (path, src, found, key)
    return _IMPORTS[module][:3]


def _save_import_cache():
    """Keep only the entries of the modules this parse read (edited modules' old ones go)."""
    if _UNSAVED:
        _write_import_cache({k: _PARSED[k] for *_, k in _IMPORTS.values()})
        _UNSAVED.clear()


def _parse_imports(module, path, src):
    """[modules imported by name, `from X import y` names that are modules if their file exists]"""
    sure, maybe = set(), set()
    if src is None:
        return [], []
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            sure.update(
                a.name for a in node.names if a.name.startswith("affect_pipeline")
            )
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            if base.startswith("affect_pipeline"):
                sure.add(base)
                maybe.update(f"{base}.{a.name}" for a in node.names)
    return sorted(sure), sorted(maybe)


def code_digest(stage):
    """Digest of every package module the stage's code imports, followed transitively, so that
    editing a module reruns exactly the stages that run it (Snakemake tracks a rule's own code,
    not the package it calls; this param makes `--rerun-triggers params` catch the rest).
    """
    if stage not in _DIGESTS:
        todo, seen, h = [STAGES[stage].split(":")[0]], set(), hashlib.sha256()
        while todo:
            m = todo.pop()
            if m in seen or m == "affect_pipeline.warm":
                continue
            seen.add(m)
            path, src, deps = _package_imports(m)
            h.update(m.encode() + (src if src is not None else b"missing"))
            todo.extend(sorted(deps))
        _DIGESTS[stage] = h.hexdigest()[:16]
        _save_import_cache()
    return _DIGESTS[stage]


# ---------------------------------------------------------------- paths
def task_videos(task, splits=("train", "validation", "test")):
    return layout().ids(task, splits)


def frames_json(video):
    return f"results/frames/{layout().videos[video].media}.json"


def face_batches(videos):
    """The crop_faces batch directories holding these videos' face stores."""
    n = config["resources"]["face_batches"]
    return sorted({f"results/faces/{layout().face_batch(v, n)}" for v in videos})


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
        return f"results/mae/{ERI_VISUAL}/official/finetune.pt"
    return f"results/mae/{task}/{fold if PER_FOLD else 'official'}/finetune.pt"


def visual_shard(task, fold):
    shared = task == "ERI" or not PER_FOLD
    return f"results/features/mae/{task}/{'official' if shared else fold}.h5"


def feature_shards(task, fold):
    """The feature shards a task x fold's temporal models read, in concatenation order."""
    return [
        visual_shard(task, fold) if name == "mae" else f"results/features/{name}.h5"
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
    """The temporal settings a stage needs, per task: the shared ones + its own sections (a DCL
    change does not rerun BLB training), and temporal.eri only for ERI (tuning ERI's model does
    not retrain the frame tasks' BLBs)."""
    shared = ("features", "clip_len", "stride", "au_pos_weight", "blb") + sections
    eri = ("eri_visual_task", "eri")

    def params(wildcards):
        keep = shared + (eri if wildcards.task == "ERI" else ())
        return as_json({k: config["temporal"][k] for k in keep})

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
