"""Every face of a video tracked across frames (``faces.tracking``, used by affect-predict):
the IoU / centre-distance tracker on hand-made boxes, then the real detector on a two-face demo
clip, which must give two tracks, each one's boxes staying on its own face."""
import numpy as np
from conftest import workflow_defaults
from two_face_video import two_face_video

from affect_pipeline.common.stores import FaceStore
from affect_pipeline.data.video import frame_info
from affect_pipeline.faces.detection import FaceParams
from affect_pipeline.faces.tracking import MIN_FRAMES, IouTracker, match_cost, track_faces


def box(x, y=20.0, w=60.0):
    return [x, y, x + w, y + w * 1.2]


def test_match_cost_is_distance_over_diagonal_minus_iou():
    """Same box: -1; a box moved by its own diagonal with no overlap: +1."""
    b = np.array([box(0.0)])
    diag = np.hypot(60, 72)
    moved = b + np.array([0.6, 0.8, 0.6, 0.8]) * diag
    np.testing.assert_allclose(match_cost(np.concatenate([b, moved]), b)[:, 0], [-1.0, 1.0], atol=1e-9)


def test_tracker_keeps_ids_through_motion_and_short_gaps():
    """Two faces drifting apart keep their ids, in whatever order the detector lists them; one
    missed for fewer than max_gap frames keeps its id, one gone longer comes back as a new track."""
    t = IouTracker(max_gap=5)
    ids = [t.update(0, np.array([box(10), box(200)]))]
    for f in range(1, 10):
        boxes = [box(10 - 2 * f), box(200 + 2 * f)]
        ids.append(t.update(f, np.array(boxes[::-1] if f % 2 else boxes)))      # detector order varies
    assert all(i == ([1, 0] if f % 2 else [0, 1]) for f, i in enumerate(ids))
    assert t.update(13, np.array([box(220)])) == [1]          # left face missed: right still 1
    assert t.update(14, np.array([box(-10), box(222)])) == [0, 1]   # 5 frames unseen: still 0
    assert t.update(25, np.array([box(-10)])) == [2]          # 11 frames unseen: a new face
    assert t.update(26, np.zeros((0, 4))) == []


def test_two_faces_give_two_tracks_that_stay_on_their_faces(tmp_path):
    """The demo's side-by-side clip (320 x 160): two tracks, face 0 the left one (first seen,
    then left to right), each found on almost every frame, its boxes on its own half; every store
    has a row per frame."""
    video = two_face_video(tmp_path / "pair.mp4", n=40)
    info = frame_info(video, show_progress=False)
    params = FaceParams.from_config({**workflow_defaults()["faces"], "size": 112, "batch_size": 16})
    tracks = track_faces(video, info, tmp_path / "tracks", "pair", params)
    assert [t.face_id for t in tracks] == [0, 1]
    for t, side in zip(tracks, ("left", "right")):
        with FaceStore(t.path) as fs:
            found, boxes = fs.found.astype(bool), fs.f["box"][:]
            assert fs.n_frames == info["n_frames"] and fs.read_crops(np.flatnonzero(found)[:1]).shape[1:] == (112, 112, 3)
        cx = (boxes[found, 0] + boxes[found, 2]) / 2
        assert t.n_found == found.sum() >= 36 >= MIN_FRAMES
        assert (cx < 160).all() if side == "left" else (cx > 160).all()
        assert np.abs(np.diff(cx)).max() < 15                   # one face, followed frame to frame
