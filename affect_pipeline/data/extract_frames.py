"""Stage ``extract_frames``: decode a media file once, for everything later stages need of it.

One job per media file (``X_left`` / ``X_right`` share media ``X``) writes the frames JSON
(probe + exact per-frame timestamps, :func:`video.frame_info`) and the 16 kHz mono wav on the
media clock (:func:`audio_track.extract_audio`; silence of the video's duration, ``has_audio: false``,
when there is no audio stream). One job instead of two halves the per-video job count at
Aff-Wild2 scale.
"""
from __future__ import annotations

import logging

from affect_pipeline.common.runtime import atomic_path, stage_parser, write_json
from affect_pipeline.data.audio_track import extract_audio
from affect_pipeline.data.video import frame_info

log = logging.getLogger("affect_pipeline.data.extract_frames")


def extract_frames(video, out, audio_out, sample_rate: int, threads: int = 1) -> dict:
    """One decode job per media file: the frames JSON and the wav, both written atomically.

    The wav follows :func:`extract_audio` (media clock; silence of the video's duration when
    there is no audio, and ``has_audio: false``). Neither file appears unless both are complete.
    """
    info = frame_info(video, threads)
    with atomic_path(audio_out) as wav_tmp, atomic_path(out) as json_tmp:
        r = extract_audio(video, wav_tmp, sample_rate, duration=float(info["duration"]), threads=threads)
        info["has_audio"] = info["has_audio"] and not r["silent"]   # a stream without samples is no audio
        write_json(json_tmp, info)
    log.info("%s: %d frames (container declares %d), %.3f fps%s, %dx%d shown (rotation %d), %s", video,
             info["n_frames"], info["n_frames_declared"], info["fps"], " (VFR)" if info["vfr"] else "",
             info["width"], info["height"], info["rotation"], info["codec"])
    if r["silent"]:
        log.warning("%s: no audio; wrote %.2f s of silence to %s", video, r["seconds"], audio_out)
    else:
        log.info("%s: %.2f s of audio at %d Hz -> %s", video, r["seconds"], sample_rate, audio_out)
    return {**info, "audio": r}


def main(argv: list[str]) -> int:
    p = stage_parser("extract_frames", "Decode a media file once: frame count, timestamps, probe, 16 kHz wav.")
    p.add_argument("--video", required=True)
    p.add_argument("--out", required=True, help="results/frames/{media}.json")
    p.add_argument("--audio-out", required=True, help="results/audio/{media}.wav")
    p.add_argument("--sample-rate", type=int, required=True, help="config audio.sample_rate")
    a = p.parse_args(argv)
    extract_frames(a.video, a.out, a.audio_out, a.sample_rate, a.threads)
    return 0
