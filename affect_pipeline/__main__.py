"""``python -m affect_pipeline <stage> [args]``: one entry per workflow stage.

Stages are imported lazily so that ``--help`` and light stages do not pay for torch.
"""
from __future__ import annotations

import importlib
import sys

#: stage name -> "module:function"; each function takes argv (list[str]) and returns an exit code.
STAGES = {
    "make_demo": "affect_pipeline.demo.make_demo:main",
    "make_demo_audio_models": "affect_pipeline.demo.make_demo_audio_models:main",
    "make_paper_weights": "affect_pipeline.demo.make_paper_weights:main",
    "extract_frames": "affect_pipeline.data.extract_frames:main",
    "index_dataset": "affect_pipeline.data.index_dataset:main",
    "crop_faces": "affect_pipeline.faces.crop_faces:main",
    "pretrain_mae": "affect_pipeline.mae.pretrain_mae:main",
    "finetune_mae": "affect_pipeline.mae.finetune_mae:main",
    "visual_features": "affect_pipeline.mae.visual_features:main",
    "audio_features": "affect_pipeline.audio.audio_features:main",
    "make_folds": "affect_pipeline.temporal.make_folds:main",
    "train_blb": "affect_pipeline.temporal.train_blb:main",
    "mine_hard_clips": "affect_pipeline.temporal.mine_hard_clips:main",
    "train_dcl": "affect_pipeline.temporal.train_dcl:main",
    "predict": "affect_pipeline.temporal.predict:main",
    "ensemble": "affect_pipeline.submit.ensemble:main",
    "validate_submission": "affect_pipeline.submit.submission:main",
    "summarize": "affect_pipeline.submit.summarize:main",
    "report_plots": "affect_pipeline.submit.report_plots:main",
    "seed_ablation": "affect_pipeline.submit.seed_ablation:main",
    "export_models": "affect_pipeline.affect_predict.bundle:main",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m affect_pipeline [--version] <stage> [args]\n\nstages:\n  " + "\n  ".join(STAGES))
        return 0
    if argv[0] == "--version":
        from affect_pipeline.common.version import version_string

        print(version_string())
        return 0
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"affect_pipeline: unknown stage {stage!r}; known: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    module, func = STAGES[stage].split(":")
    fn = getattr(importlib.import_module(module), func)
    from affect_pipeline.common.runtime import run_stage

    return run_stage(stage, fn, rest)


if __name__ == "__main__":
    from affect_pipeline.common.files import ensure_utf8_mode

    ensure_utf8_mode()    # file names, argv and text as UTF-8 under any locale (restarts if need be)
    sys.exit(main())
