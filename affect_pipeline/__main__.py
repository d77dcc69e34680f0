"""``python -m affect_pipeline <stage> [args]``: one entry per workflow stage.

Stages are imported lazily so that ``--help`` and light stages do not pay for torch.
"""
from __future__ import annotations

import importlib
import sys

#: stage name -> "module:function"; each function takes argv (list[str]) and returns an exit code.
STAGES = {
    "make_demo": "affect_pipeline.demo.generate:main",
    "make_demo_audio_models": "affect_pipeline.demo.audio_models:main",
    "extract_frames": "affect_pipeline.extract_frames:main",
    "index_dataset": "affect_pipeline.index_dataset:main",
    "crop_faces": "affect_pipeline.crop_faces:main",
    "pretrain_mae": "affect_pipeline.pretrain_mae:main",
    "finetune_mae": "affect_pipeline.finetune_mae:main",
    "visual_features": "affect_pipeline.visual_features:main",
    "audio_features": "affect_pipeline.audio_features:main",
    "make_folds": "affect_pipeline.make_folds:main",
    "train_blb": "affect_pipeline.train_blb:main",
    "mine_hard_clips": "affect_pipeline.mine_hard_clips:main",
    "train_dcl": "affect_pipeline.train_dcl:main",
    "predict": "affect_pipeline.predict:main",
    "ensemble": "affect_pipeline.ensemble:main",
    "validate_submission": "affect_pipeline.submission:main",
    "summarize": "affect_pipeline.summarize:main",
    "report_plots": "affect_pipeline.report_plots:main",
    "seed_ablation": "affect_pipeline.seed_ablation:main",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m affect_pipeline <stage> [args]\n\nstages:\n  " + "\n  ".join(STAGES))
        return 0
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"affect_pipeline: unknown stage {stage!r}; known: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    module, func = STAGES[stage].split(":")
    fn = getattr(importlib.import_module(module), func)
    from affect_pipeline.runtime import run_stage

    return run_stage(stage, fn, rest)


if __name__ == "__main__":
    sys.exit(main())
