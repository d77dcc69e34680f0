"""rules/mae.smk: the face MAE (pretrain or import), its frame-wise fine-tune per task and fold, per-frame visual features."""
