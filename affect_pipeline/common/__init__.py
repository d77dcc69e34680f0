"""Shared by every stage: config, runtime (logging, atomic writes, checkpoints), feature and face stores, training loops, losses, metrics, the task names, code digests."""
