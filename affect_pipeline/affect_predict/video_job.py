"""One new video made ready for the feature sources: its frames' timestamps, face store and wav,
written by the workflow's own stage code into a temporary folder."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class VideoJob:
    path: Path
    video_id: str
    info: dict                     # the frames JSON of extract_frames (data.video.frame_info)
    faces: Path                    # its face store (crop_faces)
    wav: Path | None               # its audio on the media clock; None when no audio source runs
    timestamps: np.ndarray = field(default_factory=lambda: np.zeros(0))


def prepare_video(path: Path, video_id: str, tmp: Path, fparams: dict, sample_rate: int | None,
                  threads: int, device) -> VideoJob:
    """Decode once for the timestamps, then the face store and (``sample_rate`` given) the wav, in ``tmp``."""
    from affect_pipeline.data.audio_track import extract_audio
    from affect_pipeline.data.video import frame_info
    from affect_pipeline.faces.crop_faces import FaceJob, crop_faces
    from affect_pipeline.faces.detection import FaceParams

    info = frame_info(path, threads)
    job = VideoJob(path, video_id, info, tmp / "faces.h5", tmp / "audio.wav" if sample_rate else None,
                   np.asarray(info["timestamps"], np.float64))
    crop_faces(FaceJob(path, info, job.faces, video_id), FaceParams.from_config(fparams), threads=threads, device=device)
    if sample_rate and info["has_audio"]:
        extract_audio(path, job.wav, sample_rate, duration=float(info["duration"]), threads=threads)
    return job
