"""What a temporal stage is told: its ``temporal`` settings, its files and how it runs.

The ``temporal`` config section arrives complete through ``--params`` (workflow_config.yaml is
the one source of defaults); a missing key is a PipelineError naming it. :func:`stage_keys` is
the one list of which keys a stage receives: ``rules/common.smk`` builds ``--params`` from it
and :func:`temporal_hp` checks it, so a stage is never sent a section it does not read (a DCL
change does not rerun BLB training). The allowed values (:data:`POOLINGS`, :data:`CLB_INITS`,
:data:`INFERENCE`) are the schema's enums; tests hold the two equal.

Light on purpose: the Snakefile imports this module at parse time, so nothing here imports torch.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from affect_pipeline.common.config import settings
from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.runtime import pick_device, setup_torch, stage_parser
from affect_pipeline.common.tasks import TASK_OUTPUTS

#: the ``temporal`` keys every temporal stage receives
SHARED_KEYS = ("features", "clip_len", "stride", "au_pos_weight", "blb")
#: the sections only some stages receive (mining: mine_hard_clips; dcl: train_dcl, predict)
STAGE_SECTIONS = ("mining", "dcl")
#: the keys only ERI's stages receive (its visual stream and its model's overlay on ``blb``)
ERI_KEYS = ("eri_visual_task", "eri")
POOLINGS = ("attention", "mean")
CLB_INITS = ("blb", "fresh")
#: how DCL combines its branches at inference (``model.DualBranch``)
INFERENCE = ("mean", "blb_weighted", "blb", "clb")


def stage_keys(task: str, *sections: str) -> tuple[str, ...]:
    """The ``temporal`` keys a stage of ``task`` receives: the shared ones + its ``sections``."""
    unknown = sorted(set(sections) - set(STAGE_SECTIONS))
    if unknown:
        raise ValueError(f"temporal: unknown stage section(s) {unknown}; known: {list(STAGE_SECTIONS)}")
    return SHARED_KEYS + sections + (ERI_KEYS if task == "ERI" else ())


# ---------------------------------------------------------------- hyper-parameters
@dataclass(frozen=True)
class BranchHP:
    """One branch's model and optimiser (``temporal.blb``; ERI: ``blb`` overlaid with ``eri``)."""
    d_model: int
    nhead: int
    layers: int
    dropout: float
    lr: float
    weight_decay: float
    batch_size: int
    epochs: int
    warmup_epochs: int
    ema_decay: float
    clip_grad: float

    def schedule(self, epochs: int | None = None):
        """The ``training.Schedule`` of this branch (DCL keeps the optimiser, sets its own epochs)."""
        from affect_pipeline.common.training import Schedule

        return Schedule(epochs=int(self.epochs if epochs is None else epochs), lr=float(self.lr),
                        weight_decay=float(self.weight_decay), warmup_epochs=int(self.warmup_epochs),
                        ema_decay=float(self.ema_decay), clip_grad=float(self.clip_grad))


@dataclass(frozen=True)
class DclHP:
    """``temporal.dcl``: Beta(tau1, tau2) for α, how the CLB starts, how branches combine."""
    tau1: float
    tau2: float
    clb_init: str        # CLB_INITS
    inference: str       # INFERENCE
    epochs: int


@dataclass(frozen=True)
class MiningHP:
    """``temporal.mining``: share of D_CLB taken by the hardest clips."""
    hard_fraction: float


@dataclass(frozen=True)
class TemporalHP:
    clip_len: int
    stride: int
    au_pos_weight: bool                  # AU loss: + per-AU neg/pos positive weights (not in eq. 1)
    branch: BranchHP
    pooling: str | None = None           # ERI's clip pooling (POOLINGS); None: frame tasks
    mining: MiningHP | None = None       # the sections a stage asks for; None when it does not
    dcl: DclHP | None = None


def temporal_hp(params: dict, task: str, *sections: str) -> TemporalHP:
    """The settings of one task from the ``temporal`` section; ``sections``: "mining", "dcl"."""
    for key in stage_keys(task, *sections):
        if key not in params:
            raise PipelineError(f"temporal: missing key {key!r} in --params (see workflow_config.yaml)")
    pooling = None
    if task == "ERI":     # the ERI model: the BLB's settings overlaid with temporal.eri (+ its pooling)
        eri = dict(params["eri"])
        pooling = eri.pop("pooling", None)
        _check("eri.pooling", pooling, POOLINGS)
        branch = settings(BranchHP, {**params["blb"], **eri}, "temporal.blb + temporal.eri")
    else:
        branch = settings(BranchHP, params["blb"], "temporal.blb")
    mining = settings(MiningHP, params["mining"], "temporal.mining") if "mining" in sections else None
    dcl = settings(DclHP, params["dcl"], "temporal.dcl") if "dcl" in sections else None
    if dcl is not None:
        _check("dcl.clb_init", dcl.clb_init, CLB_INITS)
        _check("dcl.inference", dcl.inference, INFERENCE)
    return TemporalHP(int(params["clip_len"]), int(params["stride"]), bool(params["au_pos_weight"]), branch,
                      pooling, mining, dcl)


def _check(key: str, value, allowed) -> None:
    if value not in allowed:
        raise PipelineError(f"temporal.{key} in --params must be {' | '.join(allowed)}, not {value!r}")


# ---------------------------------------------------------------- command line
@dataclass(frozen=True)
class FoldInputs:
    """Where one task × fold's data lives."""
    task: str
    fold: str
    folds: Path
    labels: Path
    features: tuple[Path, ...]   # shards, in concatenation order

    @classmethod
    def from_args(cls, a) -> "FoldInputs":
        return cls(a.task, a.fold, Path(a.folds), Path(a.labels), tuple(Path(p) for p in a.features))


@dataclass(frozen=True)
class Job:
    """How a job runs: CPU threads, device, seed."""
    threads: int = 1
    device: str = "auto"
    seed: int = 0

    @classmethod
    def from_args(cls, a) -> "Job":
        return cls(a.threads, a.device, a.seed)

    def start(self):
        """Seed and thread torch; returns the torch device to run on."""
        setup_torch(self.threads, self.seed)
        return pick_device(self.device)


def fold_parser(stage: str, doc: str | None, train_outputs: bool = True) -> argparse.ArgumentParser:
    """The arguments every temporal stage shares (+ the trainers' --out/--metrics/--curve, read
    by ``checkpoint.TrainOutputs``)."""
    p = stage_parser(stage, doc)
    p.add_argument("--task", required=True, choices=list(TASK_OUTPUTS))
    p.add_argument("--fold", required=True)
    p.add_argument("--folds", required=True, help="results/folds/{task}.json")
    p.add_argument("--labels", required=True, help="results/index/labels/{task}.h5")
    p.add_argument("--features", required=True, nargs="+",
                   help="feature shards in concatenation order, e.g. features/mae/AU/fold1.h5 features/hubert.h5")
    if train_outputs:
        p.add_argument("--out", required=True)
        p.add_argument("--metrics", required=True)
        p.add_argument("--curve", required=True)
    return p
