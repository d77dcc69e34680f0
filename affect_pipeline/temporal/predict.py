"""``predict``: one fold's temporal model on its validation videos and the task's test videos.

Output ``predictions/{task}/{fold}.h5``: groups ``validation`` and ``test``, one group per video
with ``pred`` (activated: AU / EXPR probabilities, VA in [-1, 1]; (n_frames, C), ERI (1, 7))
and ``valid`` (face found per frame; ERI: any face in the video); root attrs task, fold, the
model's validation score and stage. Every test video must have as many feature rows as the
index says it has frames (the submission needs one row per frame). Clips go through the model
in the batches its validation used in training (``TemporalPredictor.batch_size``).

    python -m affect_pipeline predict --task T --fold F --folds folds/T.json
        --labels index/labels/T.h5 --features SHARD... --model dcl.pt --index index/videos.tsv
        --out predictions/T/F.h5 [--threads N --device D]
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.files import atomic_path
from affect_pipeline.common.folds import read_fold
from affect_pipeline.common.losses import activate
from affect_pipeline.common.runtime import log
from affect_pipeline.temporal.checkpoint import load_temporal
from affect_pipeline.temporal.evaluation import infer_logits
from affect_pipeline.temporal.fold_data import load_features
from affect_pipeline.temporal.settings import FoldInputs, Job, fold_parser


def predict(inp: FoldInputs, model_path: Path, index_path: Path, out: Path, job: Job = Job()) -> None:
    """Write the fold's validation + test predictions (see the module docstring)."""
    from affect_pipeline.data.index_dataset import read_index

    device = job.start()
    model = load_temporal(model_path, device, inp.features)
    if model.task != inp.task:
        raise PipelineError(f"{model_path}: a {model.task} model, but --task is {inp.task}")
    split = read_fold(inp.folds, inp.fold)
    index = read_index(index_path)
    missing = [v for v in split.test if v not in index]
    if missing:
        raise PipelineError(f"{index_path}: test videos {missing[:5]} of {inp.folds} are not in the index")
    fs = load_features(inp.features, split.val + split.test, norm=(model.mean.cpu().numpy(), model.std.cpu().numpy()),
                       expect_dims=model.feature_dims)
    for v in split.test:
        if fs.n_frames(v) != index[v]["n_frames"]:
            raise PipelineError(f"{inp.features[0]}: video {v} has {fs.n_frames(v)} feature rows but "
                                f"{index_path} says it has {index[v]['n_frames']} frames")
    per_video = model.task == "ERI"
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update({"task": model.task, "fold": inp.fold, "score": float(model.meta["score"] or float("nan")),
                        "stage": str(model.meta["stage"]), "model": str(model_path)})
        for name, vids in (("validation", split.val), ("test", split.test)):
            g = f.create_group(name)
            logits = infer_logits(model, fs, vids, model.clip_len, model.batch_size, device, per_video)
            for v in vids:
                gv = g.create_group(v)
                gv.create_dataset("pred", data=activate(model.task, logits[v]).numpy().astype(np.float32))
                gv.create_dataset("valid", data=fs.valid[v] if not per_video else np.array([fs.valid[v].any()]))
    log.info("predict %s/%s: %d validation + %d test videos → %s", model.task, inp.fold, len(split.val),
             len(split.test), out)


def main(argv: list[str]) -> int:
    p = fold_parser("predict", __doc__, train_outputs=False)
    p.add_argument("--model", required=True, help="dcl.pt (or blb.pt)")
    p.add_argument("--index", required=True, help="results/index/videos.tsv")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    predict(FoldInputs.from_args(a), Path(a.model), Path(a.index), Path(a.out), Job.from_args(a))
    return 0
