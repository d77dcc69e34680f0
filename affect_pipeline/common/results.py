"""Where a run's results tree keeps the files that outlive the run: the rules write them here
(rules/*.smk) and ``affect-predict --models`` reads a finished run from the same places.

Each function returns a path below ``root`` (``results``, relative to the working directory,
as the rules write it; a finished run's folder for affect-predict). Given wildcards
(``encoder("{task}", "{fold}")``) it returns the rule's output pattern.
"""
from __future__ import annotations

ROOT = "results"


def frames_batch(batch: str, root=ROOT) -> str:
    """The frames JSONs of a batch's media files, ``{media}.json`` (extract_frames)."""
    return f"{root}/frames/{batch}"


def audio_batch(batch: str, root=ROOT) -> str:
    """The 16 kHz wavs of a batch's media files, ``{media}.wav`` (extract_frames)."""
    return f"{root}/audio/{batch}"


def job_list(stage: str, name: str, root=ROOT) -> str:
    """A job's list of media files / video ids (``name``: its batch, task, ...), written by the
    rules (rules/common.smk list_file) and handed to the stage as ``--opt=@PATH``."""
    return f"{root}/lists/{stage}/{name}.json"


def faces(root=ROOT) -> str:
    """The face stores: ``{batch}/{video}.h5``, one folder per crop_faces batch."""
    return f"{root}/faces"


def faces_batch(batch: str, root=ROOT) -> str:
    return f"{faces(root)}/{batch}"


def encoder(task: str, fold: str, root=ROOT) -> str:
    """A fine-tuned MAE (finetune_mae)."""
    return f"{root}/mae/{task}/{fold}/finetune.pt"


def visual_shard(task: str, fold: str, root=ROOT) -> str:
    """The features of ``task``'s videos by ``encoder(task, fold)`` (visual_features)."""
    return f"{root}/features/mae/{task}/{fold}.h5"


def audio_shard(model: str, root=ROOT) -> str:
    """The features of every video by one audio model (audio_features)."""
    return f"{root}/features/{model}.h5"


def fold_model(task: str, fold: str, stage: str, root=ROOT) -> str:
    """A temporal model: ``stage`` ``blb`` (train_blb) or ``dcl`` (train_dcl, the one predicted with)."""
    return f"{root}/models/{task}/{fold}/{stage}.pt"


def metrics(model: str) -> str:
    """The validation metrics written beside a model checkpoint: ``{name}.pt`` -> ``{name}_metrics.json``."""
    return model.removesuffix(".pt") + "_metrics.json"
