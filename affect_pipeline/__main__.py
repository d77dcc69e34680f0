"""``python -m affect_pipeline <stage> [args]``: one entry per workflow stage.

Stages are imported lazily so that ``--help`` and light stages do not pay for torch.
"""
from __future__ import annotations

import importlib
import sys

#: stage name -> "module:function"; each function takes argv (list[str]) and returns an exit code.
STAGES = {
    "make_demo": "affect_pipeline.demo:main",
    "make_demo_audio_models": "affect_pipeline.audio_features:make_demo_models_main",
    "extract_frames": "affect_pipeline.video:extract_frames_main",
    "extract_audio": "affect_pipeline.video:extract_audio_main",
    "index_dataset": "affect_pipeline.dataset:main",
    "crop_faces": "affect_pipeline.faces:main",
    "pretrain_mae": "affect_pipeline.mae_training:pretrain_main",
    "finetune_mae": "affect_pipeline.mae_training:finetune_main",
    "visual_features": "affect_pipeline.mae_training:features_main",
    "audio_features": "affect_pipeline.audio_features:main",
    "gather_features": "affect_pipeline.stores:gather_features_main",
    "make_folds": "affect_pipeline.folds:main",
    "train_blb": "affect_pipeline.temporal_training:train_blb_main",
    "mine_hard_clips": "affect_pipeline.mining:main",
    "train_dcl": "affect_pipeline.temporal_training:train_dcl_main",
    "predict": "affect_pipeline.temporal_training:predict_main",
    "ensemble": "affect_pipeline.submission:ensemble_main",
    "validate_submission": "affect_pipeline.submission:validate_main",
    "summarize": "affect_pipeline.submission:summarize_main",
    "report_plots": "affect_pipeline.report:main",
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
