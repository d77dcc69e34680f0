"""The temporal checkpoint (``blb.pt`` / ``dcl.pt``) and inference from it.

A checkpoint is plain data (loaded with ``weights_only=True``): the model config, the branch
state dicts, the feature stores it was trained on (names + dims, in order), the training
frames' standardisation, the clip length and the settings. ``feature_sources`` records, per
store, where its features came from (``fold_data.shard_source``: name, fold, checkpoint_digest,
layer, shard), so affect-predict recomputes each store with the very weights that made it. :func:`load_temporal` turns it
into a :class:`TemporalPredictor`; :func:`predict_video` runs one video's raw feature rows
through it (what ``predict`` and ``affect-predict`` use).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from affect_pipeline.common.losses import activate
from affect_pipeline.common.runtime import PipelineError, load_checkpoint
from affect_pipeline.temporal.evaluation import infer_logits
from affect_pipeline.temporal.fold_data import (
    FeatureSet,
    FoldData,
    TemporalHP,
    primary_stores,
    shard_names,
)
from affect_pipeline.temporal.model import DualBranch, build_model

CKPT_FORMAT = "affect_pipeline.temporal.model/1"


def checkpoint_meta(data: FoldData, hp: TemporalHP) -> dict:
    """What every temporal checkpoint carries besides its weights."""
    return {"format": CKPT_FORMAT, "task": data.task, "fold": data.fold, "clip_len": data.K,
            "feature_names": list(data.fs.names), "feature_dims": list(data.fs.dims),
            "feature_sources": [dict(s) for s in data.fs.sources],
            "norm_mean": torch.from_numpy(data.fs.mean), "norm_std": torch.from_numpy(data.fs.std),
            "class_weights": data.weights, "params": dataclasses.asdict(hp)}


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
        # older checkpoints lack the record: None (affect-predict refuses them, naming the file)
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


def predict_video(model: TemporalPredictor, features, valid=None, batch_size: int = 32) -> np.ndarray:
    """Activated predictions of one video: features (n, D) raw concatenated store rows → (n, C)
    (ERI: (1, 7)). ``valid`` (n,) marks face frames (zeroes the visual stores' rows otherwise)
    or (n, S) per store, as training did."""
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
    lg = infer_logits(model, fs, ["_"], model.clip_len, batch_size, device, model.task == "ERI")["_"]
    return activate(model.task, lg).numpy()


def check_clip_len(ck: dict, hp: TemporalHP, path: Path) -> None:
    """A stage reusing a BLB must cut clips as it was trained (``temporal.clip_len``)."""
    if int(ck["clip_len"]) != hp.clip_len:
        raise PipelineError(f"{path}: trained with temporal.clip_len {ck['clip_len']} but --params "
                            f"gives {hp.clip_len}")
