"""crop_faces on a face lost mid-video: the frames without it are masked (found=False, black crops),
and every frame stays at its index (nothing shifts)."""
from __future__ import annotations

import numpy as np


def test_face_lost_mid_video_is_masked_not_shifted(tmp_path):
    """Handled result: frames without a face get found=False; the store keeps every frame in place."""
    import cv2
    from test_faces import crop, face_img, make, moving

    from affect_pipeline.common.stores import FaceStore

    rng = np.random.default_rng(0)
    noise = [cv2.GaussianBlur(rng.integers(0, 256, (160, 160, 3), dtype=np.uint8), (9, 9), 3) for _ in range(5)]
    frames = list(moving(face_img(160), 6)) + noise + list(moving(face_img(160), 5))
    video, fj = make(tmp_path, "lost", frames)
    out = tmp_path / "lost.h5"
    assert crop(video, fj, out) == 0
    with FaceStore(out) as fs:
        assert fs.n_frames == 16
        assert fs.found[:6].all() and not fs.found[6:11].any() and fs.found[11:].all(), fs.found
        crops = fs.read_crops(np.arange(16))
    assert not crops[6:11].any() and crops[:6].any(axis=(1, 2, 3)).all()
