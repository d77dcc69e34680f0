"""One new video made ready for the feature sources: its frames' timestamps, a face store per
face track (:mod:`affect_pipeline.faces.tracking`: every face, not the workflow's one) and its
wav, written by the workflow's own stage code into a temporary folder."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np


@dataclass
class VideoJob:
    path: Path
    video_id: str
    info: dict                     # the frames JSON of extract_frames (data.video.frame_info)
    faces: Path                    # the face store the visual sources read (one track's)
    wav: Path | None               # its audio on the media clock; None when no audio source runs
    timestamps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    tracks: list = field(default_factory=list)   # faces.tracking.FaceTrack, face_id 0, 1, ...

    def for_track(self, track) -> VideoJob:
        """The same job seen through one face track's store."""
        return replace(self, faces=track.path)


def prepare_video(path: Path, video_id: str, tmp: Path, fparams: dict, sample_rate: int | None,
                  threads: int, device) -> VideoJob:
    """Decode once for the timestamps, then a face store per face track and (``sample_rate``
    given) the wav, in ``tmp``."""
    from affect_pipeline.data.audio_track import extract_audio
    from affect_pipeline.data.video import frame_info
    from affect_pipeline.faces.detection import FaceParams
    from affect_pipeline.faces.tracking import track_faces

    info = frame_info(path, threads)
    (tmp / "faces").mkdir(parents=True, exist_ok=True)
    tracks = track_faces(path, info, tmp / "faces", video_id, FaceParams.from_config(fparams),
                         threads=threads, device=device)
    job = VideoJob(path, video_id, info, tracks[0].path, tmp / "audio.wav" if sample_rate else None,
                   np.asarray(info["timestamps"], np.float64), tracks)
    if sample_rate and info["has_audio"]:
        extract_audio(path, job.wav, sample_rate, duration=float(info["duration"]), threads=threads)
    return job
