"""affect-predict on a clip with two faces (the demo's side-by-side pair, left happy, right sad):
each face is tracked and gets its own face_id, box, detector score and rows, and its own
predictions: the happy face's valence and arousal above the sad one's."""
import numpy as np
import pandas as pd
import pytest
from two_face_video import two_face_video


@pytest.mark.slow
def test_two_faces_two_tracks_that_follow_their_faces(trained_run, tmp_path):
    """--format pyfeat (boxes and face_id in one file): rows = 2 x frames, frame by frame; face 0's
    boxes on the left half, face 1's on the right, on almost every frame; the left (happy) face's
    mean valence and arousal exceed the right (sad) one's, as the clip's labels do."""
    from test_affect_predict import PNG_MAGIC, decoded_frames, run_cli

    video = two_face_video(tmp_path / "pair.mp4", n=60)
    out = tmp_path / "out"
    p = run_cli(video, "--models", trained_run / "run" / "results", "--out-dir", out, "--format", "pyfeat",
                "--threads", "2")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "2 face track(s)" in p.stderr
    d = pd.read_csv(out / "pair.csv")
    n = decoded_frames(video)
    assert len(d) == 2 * n and list(d.face_id[:4]) == [0, 1, 0, 1] and list(d.frame[:4]) == [0, 0, 1, 1]
    left, right = d[d.face_id == 0], d[d.face_id == 1]
    for track, on_left in ((left, True), (right, False)):
        seen = track.dropna(subset=["FaceRectX"])
        assert len(seen) >= 0.9 * n and (seen.FaceScore > 0.9).all()
        cx = seen.FaceRectX + seen.FaceRectWidth / 2
        assert (cx < 160).all() if on_left else (cx > 160).all()
    assert left.valence.mean() > right.valence.mean() + 0.2
    assert left.arousal.mean() > right.arousal.mean() + 0.2
    assert not np.allclose(left.valence.to_numpy(), right.valence.to_numpy())
    assert (out / "pair.png").read_bytes()[:8] == PNG_MAGIC
