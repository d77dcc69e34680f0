"""Every face track of one prepared video through the run's fold ensembles, and what a frame
without the track's face gets (``--no-face``, :mod:`affect_pipeline.submit.no_face`).

The audio feature sources run once per video; the visual ones (each fold's MAE encoder) once per
face track, on that track's face store; each task's fold ensemble then averages the folds exactly
as the submission does (``ensemble.fold_weights``, ``average_folds``) and fills the frames
without the face:
- ``empty`` (default): NaN, the row says ``face_found`` / ``success`` 0 and nothing else;
- ``interpolate``: the linear interpolation between the track's face frames (as the submission's
  ``ensemble.no_face: interpolate``; edges copy the nearest face frame); a track without any face
  frame stays empty;
- ``prior``: the training labels' prior of the ensembled folds (AU presence rates, EXPR class
  frequencies, VA means; ``no_face.training_prior``, from the run's ``index/labels/{task}.h5``
  and ``folds/{task}.json``);
- ``audio``: the models' own outputs there, computed from the audio stream (and the clip's other
  frames) with the visual input zeroed; frames without audio either (a silent video) stay empty.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from affect_pipeline.affect_predict.outputs import VideoResult
from affect_pipeline.affect_predict.run_models import AudioSource, TaskModels
from affect_pipeline.common.errors import PipelineError
from affect_pipeline.submit.no_face import (
    PREDICT_NO_FACE,
    fill_no_face_rows,
    training_prior,
)

#: {task: prior} beside the models, for ``prior`` where the label stores are not (a bundle)
PRIORS = "no_face_prior.json"


@dataclass(frozen=True)
class NoFace:
    """The ``--no-face`` policy and, for ``prior``, each task's training prior."""
    policy: str = "empty"
    priors: dict = field(default_factory=dict)


def no_face_settings(policy: str, models_dir: Path, tasks: dict[str, TaskModels], sources: dict) -> NoFace:
    """Check that the run can give what ``policy`` asks for; read the priors it needs."""
    if policy not in PREDICT_NO_FACE:
        raise PipelineError(f"--no-face {policy!r} is not {' | '.join(PREDICT_NO_FACE)}")
    if policy == "audio":
        deaf = [t for t, tm in tasks.items() if not any(isinstance(sources[k], AudioSource) for ks in tm.keys for k in ks)]
        if deaf:
            raise PipelineError(f"--no-face audio: the run's {', '.join(deaf)} models use no audio features "
                                f"(temporal.features); choose empty, interpolate or prior")
    priors = {t: run_prior(models_dir, t, tm.folds) for t, tm in tasks.items()} if policy == "prior" else {}
    return NoFace(policy, priors)


def run_prior(models_dir: Path, task: str, folds: list[str]) -> np.ndarray:
    """The training prior of ``task``'s ensembled folds: from :data:`PRIORS` when the models folder
    has it (a bundle that leaves the label stores out records it there), else from the run's
    ``index/labels/{task}.h5`` and ``folds/{task}.json``."""
    import json

    recorded = Path(models_dir) / PRIORS
    if recorded.is_file():
        doc = json.loads(recorded.read_text(encoding="utf-8"))
        if task not in doc:
            raise PipelineError(f"{recorded}: no training prior for {task} (has {sorted(doc)})")
        return np.asarray(doc[task], np.float64)
    return training_prior(task, Path(models_dir) / "index" / "labels" / f"{task}.h5",
                          Path(models_dir) / "folds" / f"{task}.json", folds)


def ensemble_task(tm: TaskModels, feats: dict, no_face: NoFace, batch_size: int, weighting: str = "uniform",
                  audio_keys=()) -> np.ndarray:
    """Every fold's prediction (its stores from its own sources, ``tm.keys``), averaged as the
    submission's ensemble (``weighting``: ``ensemble.weighting``), the frames without a face
    filled as ``no_face`` says (``audio_keys``: the audio sources, for ``audio``)."""
    from affect_pipeline.submit.ensemble import FoldPreds, average_folds, fold_weights
    from affect_pipeline.temporal.checkpoint import predict_video
    from affect_pipeline.temporal.fold_data import primary_stores

    folds = []
    for fold, path, m, keys in zip(tm.folds, tm.paths, tm.models, tm.keys):
        x = np.concatenate([feats[k][0] for k in keys], 1)
        valid = np.stack([feats[k][1] for k in keys], 1)
        pred = predict_video(m, x, valid, batch_size)
        face = valid[:, primary_stores(m.feature_names)].all(1)
        score = m.meta["score"]
        folds.append(FoldPreds(path, fold, float(np.nan if score is None else score), {"video": (pred, face)}))
    weights = fold_weights(weighting, tm.metrics, folds)
    prob, valid = average_folds(folds, weights, "video", tm.task)
    prob = fill_no_face_rows(prob, valid, no_face.policy, no_face.priors.get(tm.task))
    if no_face.policy == "audio":
        used = {k for ks in tm.keys for k in ks if k in audio_keys}
        heard = np.any([feats[k][1] for k in used], axis=0) if used else np.zeros(len(prob), bool)
        prob = np.where((valid | heard)[:, None], prob, np.nan)
    return np.clip(prob, -1.0, 1.0) if tm.task == "VA" else prob


def predict_tracks(job, run, bar) -> list[VideoResult]:
    """One :class:`VideoResult` per face track of ``job`` (``run``: the command's Run: tasks,
    sources, ens, no_face, batch_size); ``bar`` advanced per source and task."""
    from affect_pipeline.common.stores import FaceStore

    audio = [k for k, s in run.sources.items() if isinstance(s, AudioSource)]
    visual = [k for k in run.sources if k not in audio]
    bar.total += (len(job.tracks) - 1) * (len(visual) + len(run.tasks))
    bar.refresh()
    heard = {}
    for k in audio:
        bar.set_postfix_str(k)
        heard[k] = run.sources[k](job)
        bar.update()
    out = []
    for track in job.tracks:
        tjob, feats = job.for_track(track), dict(heard)
        for k in visual:
            bar.set_postfix_str(f"face {track.face_id}: {k}")
            feats[k] = run.sources[k](tjob)
            bar.update()
        preds = {}
        for t, tm in run.tasks.items():
            bar.set_postfix_str(f"face {track.face_id}: {t}")
            preds[t] = ensemble_task(tm, feats, run.no_face, run.batch_size, run.ens.weighting, audio)
            bar.update()
        with FaceStore(track.path) as fs:
            found, f = fs.found.astype(bool), fs.f
            score, box, lmk = f["score"][:].astype(np.float64), f["box"][:].astype(np.float64), f["landmarks"][:]
        out.append(VideoResult(job.video_id, job.timestamps, found, preds, score, None, track.face_id, box,
                               lmk.astype(np.float64), str(job.path)))
    return out
