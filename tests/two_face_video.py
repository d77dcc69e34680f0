"""A demo clip with two faces side by side that differ in expression: the left one happy
(valence and arousal up, AU6 / AU12), the right one sad (valence and arousal down, AU1 / AU4 /
AU15), rendered by the demo generator as its ``_left`` / ``_right`` pair videos are (real H.264 +
AAC, the voices of both mixed). Used by the face-tracking and affect-predict tests."""
from pathlib import Path

LEFT, RIGHT = "Happiness", "Sadness"


def two_face_video(path: Path, n: int = 60, seed: int = 3) -> Path:
    from affect_pipeline.common.tasks import EXPR_NAMES
    from affect_pipeline.demo.labels import plan_track
    from affect_pipeline.demo.media import MediaJob, render_media

    plans = [plan_track(f"{Path(path).stem}_{side}", n, 25, seed + k, lambda c=c: EXPR_NAMES.index(c))
             for k, (side, c) in enumerate((("left", LEFT), ("right", RIGHT)))]
    render_media(MediaJob(Path(path), plans, 25, 160, True, False, seed))
    return Path(path)
