"""rules/data.smk: decode each video (frames index + audio) and index the dataset (ids, splits, labels)."""
