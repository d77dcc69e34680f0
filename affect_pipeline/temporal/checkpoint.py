"""The temporal checkpoint (``blb.pt`` / ``dcl.pt``) and inference from it.

A checkpoint is plain data (loaded with ``weights_only=True``): the model config, the branch
state dicts, the feature stores it was trained on (names + dims, in order), the training
frames' standardisation, the clip length and the settings. ``feature_sources`` records, per
store, where its features came from (``fold_data.shard_source``: name, fold, checkpoint_digest,
layer, shard), so affect-predict recomputes each store with the very weights that made it.
:func:`load_temporal` turns it into a :class:`TemporalPredictor`; :func:`predict_video` runs one
video's raw feature rows through it (what ``predict`` and ``affect-predict`` use);
:func:`continue_from_blb` is the start of the stages that build on a trained BLB.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.losses import activate
from affect_pipeline.common.runtime import load_checkpoint, save_checkpoint, write_json, write_text
from affect_pipeline.common.training import FitResult, curve_csv
from affect_pipeline.temporal.clips import FeatureSet
from affect_pipeline.temporal.evaluation import infer_logits
from affect_pipeline.temporal.fold_data import (
    FoldData,
    load_fold,
    primary_stores,
    shard_names,
)
from affect_pipeline.temporal.model import DualBranch, build_model
from affect_pipeline.temporal.settings import FoldInputs, TemporalHP

CKPT_FORMAT = "affect_pipeline.temporal.model/1"


def checkpoint_meta(data: FoldData, hp: TemporalHP) -> dict:
    """What every temporal checkpoint carries besides its weights."""
    return {"format": CKPT_FORMAT, "task": data.task, "fold": data.fold, "clip_len": data.K,
            "feature_names": list(data.fs.names), "feature_dims": list(data.fs.dims),
            "feature_sources": [dict(s) for s in data.fs.sources],
            "norm_mean": torch.from_numpy(data.fs.mean), "norm_std": torch.from_numpy(data.fs.std),
            "class_weights": data.weights, "params": dataclasses.asdict(hp)}


@dataclass(frozen=True)
class TrainOutputs:
    """A trainer's files: the checkpoint, the metrics document, the per-epoch curve."""
    model: Path
    metrics: Path
    curve: Path

    @classmethod
    def from_args(cls, a) -> "TrainOutputs":
        return cls(Path(a.out), Path(a.metrics), Path(a.curve))


def save_trained(out: TrainOutputs, data: FoldData, hp: TemporalHP, res: FitResult, doc: dict,
                 **weights) -> None:
    """A trainer's outputs: the checkpoint (``weights``: its stage, config and state dicts), the
    metrics document ``doc`` and the per-epoch curve."""
    save_checkpoint({**checkpoint_meta(data, hp), **weights, "score": doc["score"], "best_epoch": res.best_epoch},
                    out.model)
    write_json(out.metrics, doc)
    write_text(out.curve, curve_csv(res.curve))


def read_temporal_checkpoint(path, features=None) -> dict:
    """Load a BLB / DCL checkpoint; with ``features`` (shard paths), check they are the stores
    it was trained on, in the same order."""
    ck = load_checkpoint(path)
    if not isinstance(ck, dict) or ck.get("format") != CKPT_FORMAT:
        got = ck.get("format") if isinstance(ck, dict) else type(ck)
        raise PipelineError(f"{path}: not a temporal-model checkpoint (format {got})")
    if features is not None:
        names = shard_names(features)
        if names != list(ck["feature_names"]):
            raise PipelineError(f"{path}: trained on feature stores {list(ck['feature_names'])} but "
                                f"--features gives {names} ({[str(p) for p in features]})")
    return ck


def norm_of(ck: dict) -> tuple[np.ndarray, np.ndarray]:
    return ck["norm_mean"].numpy(), ck["norm_std"].numpy()


def model_from_checkpoint(ck: dict, path, device) -> torch.nn.Module:
    """The inference model: the BLB, or BLB + CLB combined per ``dcl.inference``."""
    try:
        blb = build_model(ck["config"])
        blb.load_state_dict(ck["blb_state"])
        model = blb
        if ck["stage"] == "dcl":
            clb = build_model(ck["config"])
            clb.load_state_dict(ck["clb_state"])
            model = DualBranch(blb, clb, ck["inference"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise PipelineError(f"{path}: checkpoint does not match the model it describes: {e}") from e
    return model.to(device).eval()


class TemporalPredictor(torch.nn.Module):
    """A trained temporal model plus what it needs at inference: normalisation, clip length."""

    def __init__(self, net, ck: dict):
        super().__init__()
        self.net, self.task, self.clip_len = net, ck["task"], int(ck["clip_len"])
        self.feature_names, self.feature_dims = list(ck["feature_names"]), list(ck["feature_dims"])
        #: clips per model call: the batch size validation ran at in training (temporal.blb /
        #: temporal.eri batch_size); inference needs less memory than training, so it fits there
        self.batch_size = int(ck["params"]["branch"]["batch_size"])
        # a checkpoint without the record gives None (affect-predict refuses it, naming the file)
        self.feature_sources = [dict(s) for s in ck["feature_sources"]] if "feature_sources" in ck else None
        self.register_buffer("mean", ck["norm_mean"].float())
        self.register_buffer("std", ck["norm_std"].float())
        self.meta = {k: ck.get(k) for k in ("stage", "fold", "score", "best_epoch", "inference")}

    def forward(self, x, real=None):
        return self.net(x, real)


def load_temporal(path, device="cpu", features=None) -> TemporalPredictor:
    """A BLB or DCL checkpoint as an eval-mode predictor (checks the ``features`` shards if given)."""
    device = torch.device(device)
    ck = read_temporal_checkpoint(path, features)
    return TemporalPredictor(model_from_checkpoint(ck, path, device), ck).to(device).eval()


def predict_video(model: TemporalPredictor, features, valid=None, batch_size: int | None = None) -> np.ndarray:
    """Activated predictions of one video: features (n, D) raw concatenated store rows → (n, C)
    (ERI: (1, 7)). ``valid`` (n,) marks face frames (zeroes the visual stores' rows otherwise)
    or (n, S) per store, as training did. ``batch_size``: clips per call (None: the model's)."""
    x = np.asarray(features, np.float32)
    if x.ndim != 2 or x.shape[1] != sum(model.feature_dims):
        raise PipelineError(f"features of shape {x.shape} but the model expects (n, {sum(model.feature_dims)}) "
                            f"= stores {model.feature_names} {model.feature_dims}")
    mean, std = model.mean.cpu().numpy(), model.std.cpu().numpy()
    x = (x - mean) / std
    if valid is not None:
        v = np.asarray(valid, bool)
        cols = np.repeat(np.arange(len(model.feature_dims)), model.feature_dims)
        if v.ndim == 1:
            x[np.ix_(~v, np.isin(cols, primary_stores(model.feature_names)))] = 0.0
        else:
            x[~v[:, cols]] = 0.0
    fs = FeatureSet({"_": torch.from_numpy(x)}, {"_": np.ones(len(x), bool)}, model.feature_names,
                    model.feature_dims, mean, std)
    device = next(model.parameters()).device
    lg = infer_logits(model, fs, ["_"], model.clip_len, batch_size or model.batch_size, device,
                      model.task == "ERI")["_"]
    return activate(model.task, lg).numpy()


def check_clip_len(ck: dict, hp: TemporalHP, path: Path) -> None:
    """A stage reusing a BLB must cut clips as it was trained (``temporal.clip_len``)."""
    if int(ck["clip_len"]) != hp.clip_len:
        raise PipelineError(f"{path}: trained with temporal.clip_len {ck['clip_len']} but --params "
                            f"gives {hp.clip_len}")


def continue_from_blb(inp: FoldInputs, hp: TemporalHP, blb_path: Path, device):
    """What a stage building on a trained BLB starts from: (checkpoint, the fold's data read as
    the BLB was trained — same stores, standardisation and clip length —, the BLB in eval mode);
    the caller closes the data (``FoldData.close``)."""
    ck = read_temporal_checkpoint(blb_path, inp.features)
    check_clip_len(ck, hp, blb_path)
    model = model_from_checkpoint(ck, blb_path, device)
    return ck, load_fold(inp, hp, norm=norm_of(ck), expect_dims=ck["feature_dims"]), model
