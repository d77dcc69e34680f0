"""extract_frames as a rule runs it (a fresh interpreter, the real stderr): a video cut short is one
clear error naming it, and neither the frames JSON nor the wav is written."""
from __future__ import annotations

import numpy as np
from stage_errors import assert_clean_error, stage


def test_corrupt_video_extract_frames(tmp_path):
    from affect_pipeline.data.video_writer import write_video

    rng = np.random.default_rng(0)
    good = write_video(tmp_path / "ok.mp4", [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(20)], 25)
    bad = tmp_path / "cut short.mp4"                     # a download that stopped at 30 %
    bad.write_bytes(good.read_bytes()[: good.stat().st_size * 3 // 10])
    out, wav = tmp_path / "frames" / "cut short.json", tmp_path / "audio" / "cut short.wav"
    assert_clean_error(stage("extract_frames", "--video", bad, "--out", out, "--audio-out", wav, "--sample-rate", 16000),
                       "extract_frames", bad)
    assert not out.exists() and not wav.exists()
