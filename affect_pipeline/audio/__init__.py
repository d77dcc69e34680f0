"""rules/audio.smk: per-frame HuBERT / wav2vec2 / VGGish features from each video's audio."""
