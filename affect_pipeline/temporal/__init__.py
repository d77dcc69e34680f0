"""rules/temporal.smk: folds, the Basic Learning Branch, hard-clip mining, Dual-branch Collaboration Learning, per-fold prediction."""
