"""crop_faces on real videos of a real face: detection rate, alignment, tracking, sides, errors."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import workflow_defaults
from skimage.data import astronaut
from skimage.transform import SimilarityTransform

from affect_pipeline.__main__ import main as cli
from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.runtime import write_json
from affect_pipeline.common.stores import FaceStore
from affect_pipeline.data.video import frame_info
from affect_pipeline.data.video_writer import write_video
from affect_pipeline.faces import detection as faces
from affect_pipeline.faces.crop_faces import FaceJob, crop_faces

torch.set_num_threads(1)
FPS = 25
#: the faces section a run gets by default (workflow_config.yaml), crops shrunk to 112 px
FACES = {**workflow_defaults()["faces"], "size": 112, "batch_size": 16}


def face_params(**kw) -> faces.FaceParams:
    return faces.FaceParams.from_config({**FACES, **kw})


def face_img(size):
    """The astronaut's head and shoulders, face centred, ``size`` px square."""
    return cv2.resize(astronaut()[0:400, 30:430], (size, size), interpolation=cv2.INTER_AREA)


def moving(img, n):
    """Frames of ``img`` drifting and zooming a little (the face moves, the detector must follow)."""
    h, w = img.shape[:2]
    for i in range(n):
        m = cv2.getRotationMatrix2D((w / 2, h / 2), 4 * np.sin(i / 6), 1 + 0.08 * np.sin(i / 5))
        m[:, 2] += (6 * np.sin(i / 4), 4 * np.cos(i / 7))
        yield cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)


def make(d: Path, name: str, frames, **kw):
    video = write_video(d / f"{name}.mp4", frames, FPS, "libx264", **kw)
    write_json(d / f"{name}.json", frame_info(video, show_progress=False))
    return video, d / f"{name}.json"


def crop(video, fj, out, *extra, params=None):
    args = ["crop_faces", "--video", str(video), "--frames", str(fj), "--out", str(out), "--threads", "1",
            "--device", "cpu", "--params", json.dumps({**FACES, **(params or {})})]
    return cli(args + list(extra))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("faces")
    m = {"dir": d}
    m["face"] = make(d, "face", moving(face_img(192), 30))
    half = face_img(128)
    pair = np.concatenate([half, half[:, ::-1] // 2 + 60], axis=1)  # two people side by side (256x128)
    m["pair"] = make(d, "pair", moving(pair, 12))
    rng = np.random.default_rng(0)
    noise = [cv2.GaussianBlur(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8), (9, 9), 3) for _ in range(8)]
    m["noface"] = make(d, "noface", noise)
    m["tiny"] = make(d, "tiny", [face_img(64)] * 3)
    return m


@pytest.fixture(scope="module")
def face_store(media):
    video, fj = media["face"]
    out = media["dir"] / "out" / "face.h5"
    assert crop(video, fj, out) == 0
    return out


# ---------------------------------------------------------------- geometry
def umeyama_reference(src, dst):
    """The package's former hand-written Umeyama (numpy), kept as an independent reference."""
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    e = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt))])
    scale = np.trace(np.diag(sig) @ e) / max((s ** 2).sum() / len(src), 1e-12)
    r = u @ e @ vt
    return np.hstack([scale * r, (md - scale * r @ ms)[:, None]])


def test_similarity_transform_matches_umeyama_reference():
    """skimage's estimate equals the former formula on random and face-like landmarks."""
    rng = np.random.default_rng(0)
    for i in range(200):
        src = rng.uniform(0, 400, (5, 2))
        if i % 2:  # a face: the template under a random similarity, with detector noise
            a = rng.uniform(-1, 1)
            rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
            src = rng.uniform(0.3, 4) * faces.ARCFACE_112 @ rot.T + rng.uniform(0, 300, 2) + rng.normal(0, 2, (5, 2))
        dst = faces.template(224, rng.uniform(0, 0.3))
        np.testing.assert_allclose(faces.similarity_transform(src, dst), umeyama_reference(src, dst), atol=1e-8)
    true = SimilarityTransform(scale=0.7, rotation=0.3, translation=(5, -8))
    np.testing.assert_allclose(faces.similarity_transform(src, true(src)), true.params[:2], atol=1e-9)


def test_similarity_transform_hand_computed():
    """Least squares by hand: a cross stretched 2x along x and 1x along y is, as a similarity,
    scale (2+2+1+1)/(1+1+1+1) = 1.5, no rotation (symmetry), translation md - 1.5 ms."""
    cross = np.array([[-1, 0], [1, 0], [0, -1], [0, 1], [0, 0]], float)
    src, dst = cross + (10, 20), cross * (2, 1) + (100, 50)
    np.testing.assert_allclose(faces.similarity_transform(src, dst), [[1.5, 0, 85], [0, 1.5, 20]], atol=1e-12)
    # exact: 90 degrees, scale 2, shift (3, 4): x' = -2y + 3, y' = 2x + 4
    np.testing.assert_allclose(faces.similarity_transform(cross, cross[:, ::-1] * (-2, 2) + (3, 4)),
                               [[0, -2, 3], [2, 0, 4]], atol=1e-12)
    # coincident points (skimage: no estimate): scale 0 onto the template's centre, as the former formula
    np.testing.assert_allclose(faces.similarity_transform(np.zeros((5, 2)), faces.template(112)),
                               umeyama_reference(np.zeros((5, 2)), faces.template(112)))
    np.testing.assert_allclose(faces.similarity_transform(np.zeros((5, 2)), faces.template(112)),
                               np.hstack([np.zeros((2, 2)), faces.template(112).mean(0)[:, None]]))


def test_box_iou_hand_computed():
    boxes = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30], [3, 3, 3, 3]], float)
    np.testing.assert_allclose(faces.box_iou(boxes, np.array([0, 0, 10, 10.0])), [1, 25 / 175, 0, 0])
    assert faces.box_iou(np.array([[4, 4, 4, 4.0]]), np.array([4, 4, 4, 4.0])).tolist() == [0.0]  # empty union


def test_template_and_margin():
    np.testing.assert_allclose(faces.template(224), faces.ARCFACE_112 * 2)
    t0, t1 = faces.template(112), faces.template(112, 0.25)
    c = np.array([56.0, 56.0])
    np.testing.assert_allclose(t1 - c, (t0 - c) / 1.5)


def test_align_face_puts_points_on_template():
    img = np.zeros((300, 400, 3), np.uint8)
    pts = faces.ARCFACE_112 * 1.7 + (120, 60)
    for x, y in pts:
        cv2.circle(img, (int(round(x)), int(round(y))), 4, (255, 255, 255), -1)
    out = faces.align_face(img, pts, 112)
    for x, y in faces.template(112):
        assert out[int(round(y)), int(round(x))].min() > 100


# ---------------------------------------------------------------- choosing a face
def test_select_face_tracks_and_sides():
    big_far = [200, 0, 300, 120]
    small_near = [10, 10, 50, 50]
    boxes = np.array([big_far, small_near], float)
    assert faces.select_face(boxes, None, "none", 320) == 0  # start: the largest
    assert faces.select_face(boxes, np.array([12, 12, 52, 52.0]), "none", 320) == 1  # then: the track
    assert faces.select_face(boxes, None, "left", 320) == 1
    assert faces.select_face(boxes, None, "right", 320) == 0
    one_right = np.array([big_far], float)
    assert faces.select_face(one_right, None, "left", 320) is None  # partner's face, ours is missed
    assert faces.select_face(one_right, None, "right", 320) == 0
    assert faces.select_face(one_right, np.array([195, 0, 295, 120.0]), "left", 320) == 0  # our track crossed
    assert faces.select_face(np.zeros((0, 4)), None, "none", 320) is None


# ---------------------------------------------------------------- the stage (mtcnn)
def test_store_rows_found_and_attrs(media, face_store):
    info = json.loads(media["face"][1].read_text())
    with FaceStore(face_store) as s:
        assert s.n_frames == info["n_frames"] == 30
        assert s.found.mean() >= 0.95
        np.testing.assert_allclose(s.timestamps, info["timestamps"])
        assert s.attrs["backend"] == "mtcnn" and s.attrs["video_id"] == "face" and s.size == 112
        assert s.f["landmarks"].shape == (30, 5, 2) and s.f["box"].shape == (30, 4)
        assert (s.f["score"][:][s.found] >= 0.9).all()
        crops = s.read_crops(np.arange(30))
    assert crops.shape == (30, 112, 112, 3) and crops[s.found].mean() > 40


def test_read_crops_in_any_order(face_store):
    """Dense, sparse, shuffled and repeated rows give each row's own JPEG, decoded here by hand."""
    with FaceStore(face_store) as s:
        raw = [s.f["jpeg"][i] for i in range(s.n_frames)]
        one = np.stack([cv2.imdecode(b, cv2.IMREAD_COLOR)[..., ::-1] if b.size else
                        np.zeros((s.size, s.size, 3), np.uint8) for b in raw])
        rng = np.random.default_rng(0)
        for idx in (np.arange(s.n_frames), rng.permutation(s.n_frames), np.array([0, s.n_frames - 1]),
                    np.array([3, 3, 1])):
            np.testing.assert_array_equal(s.read_crops(idx), one[idx])
        assert s.read_crops([]).shape == (0, s.size, s.size, 3)


def test_crops_are_aligned(face_store):
    """MTCNN run again on the stored crops finds the eyes where the template puts them.

    Per-frame MTCNN landmarks jitter by a few pixels (a smile also fits the average template
    loosely), so the check is on the median and on most frames, not every one.
    """
    with FaceStore(face_store) as s:
        crops = s.read_crops(np.flatnonzero(s.found))
    det = faces.MTCNNBackend(face_params(min_face_size=30), "cpu").detect(crops)
    assert all(len(b) >= 1 for b, _, _ in det)
    err = np.stack([np.linalg.norm(p[0] - faces.template(112), axis=1) for _, _, p in det]) / 112
    eyes = err[:, :2].max(1)
    assert np.median(eyes) < 0.04 and np.mean(eyes < 0.08) >= 0.85, eyes
    assert np.median(err.max(1)) < 0.1, err


def test_channels_last_mtcnn_finds_what_facenet_finds(media):
    """The backend's channels-last nets (for speed) give facenet-pytorch's own boxes, scores and
    landmarks on the same frames: only the memory layout changed, not the detector."""
    from facenet_pytorch import MTCNN

    frames = np.stack(list(moving(face_img(160), 8)))
    ours = faces.MTCNNBackend(face_params(min_face_size=30, score_threshold=0.0), "cpu")
    assert ours.net.rnet.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    ref = MTCNN(keep_all=True, select_largest=False, post_process=False, min_face_size=30, device="cpu")
    with torch.inference_mode():
        boxes, probs, points = ref.detect(frames, landmarks=True)
    for (b, p, pt), rb, rp, rpt in zip(ours.detect(frames), boxes, probs, points):
        rb, rp, rpt = (np.asarray(a, np.float64) for a in (rb, rp, rpt))
        assert b.shape == rb.shape and len(b) >= 1
        np.testing.assert_allclose(b, rb, atol=1e-2)
        np.testing.assert_allclose(p, rp, atol=1e-4)
        np.testing.assert_allclose(pt, rpt, atol=1e-2)


def test_margin_shrinks_the_face(media, tmp_path):
    video, fj = media["tiny"]
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    assert crop(video, fj, a) == 0 and crop(video, fj, b, params={"margin": 0.25}) == 0
    det = faces.MTCNNBackend(face_params(min_face_size=15), "cpu")
    eyes = []
    for p in (a, b):
        with FaceStore(p) as s:
            pts = det.detect(s.read_crops([0]))[0][2][0]
        eyes.append(np.linalg.norm(pts[1] - pts[0]))
    assert eyes[1] / eyes[0] == pytest.approx(1 / 1.5, rel=0.1)


def test_sides_take_left_and_right_faces(media, tmp_path):
    video, fj = media["pair"]
    cx = {}
    for side in ("left", "right", "none"):
        out = tmp_path / f"pair_{side}.h5"
        assert crop(video, fj, out, "--side", side) == 0
        with FaceStore(out) as s:
            assert s.found.mean() >= 0.9 and s.attrs["side"] == side
            box = s.f["box"][:][s.found]
        cx[side] = (box[:, 0] + box[:, 2]) / 2
    assert (cx["left"] < 128).all() and (cx["right"] > 128).all()
    assert (cx["none"] < 128).all() or (cx["none"] > 128).all()  # one track, no jumping


def test_no_face_video_gives_valid_empty_store(media, tmp_path, caplog):
    video, fj = media["noface"]
    out = tmp_path / "noface.h5"
    with caplog.at_level(logging.WARNING):
        assert crop(video, fj, out) == 0
    assert "no face found" in caplog.text
    with FaceStore(out) as s:
        assert s.n_frames == 8 and not s.found.any()
        assert not s.read_crops(np.arange(8)).any()  # fill: zeros


@pytest.mark.parametrize("delta", [-1, 1])
def test_frame_count_mismatch_fails(media, tmp_path, delta, capsys):
    video, fj = media["tiny"]
    info = json.loads(fj.read_text())
    info["n_frames"] += delta
    info["timestamps"] = list(np.arange(info["n_frames"]) / FPS)
    bad = tmp_path / "bad.json"
    write_json(bad, info)
    out = tmp_path / "tiny.h5"
    assert crop(video, bad, out) == 1
    err = capsys.readouterr().err
    assert str(video) in err and "frames JSON" in err
    assert not out.exists() and not list(tmp_path.glob(".*tmp*"))


def test_other_video_with_same_count_fails(media, tmp_path, capsys):
    video, fj = media["tiny"]
    info = json.loads(fj.read_text())
    info["timestamps"] = [t * 2 for t in info["timestamps"]]  # frames JSON of a 12.5 fps video
    bad = tmp_path / "bad.json"
    write_json(bad, info)
    assert crop(video, bad, tmp_path / "x.h5") == 1
    assert "timestamps differ" in capsys.readouterr().err


def test_corrupt_video_fails_naming_it(media, tmp_path, capsys):
    video, fj = media["tiny"]
    bad = tmp_path / "tiny.mp4"
    bad.write_bytes(video.read_bytes()[:300])
    assert crop(bad, fj, tmp_path / "x.h5") == 1
    assert str(bad) in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


# ---------------------------------------------------------------- batches
def crop_batch_cli(videos: list[dict], out, cache, params=None):
    args = ["crop_faces", "--batch", json.dumps(videos), "--out", str(out), "--cache", str(cache), "--code-digest",
            "c0de", "--threads", "1", "--device", "cpu", "--params", json.dumps({**FACES, **(params or {})})]
    return cli(args)


def test_batch_keeps_its_videos_when_one_fails(media, tmp_path, capsys, caplog):
    """A batch job: one failing video fails it, naming the video, with no batch directory; the
    rerun reuses the stores its batch-mates finished (hard links of the cache, not copies) and a
    params change recomputes them, leaving one cached store per video."""
    info = json.loads(media["tiny"][1].read_text())
    info["n_frames"] += 1
    info["timestamps"] = list(np.arange(info["n_frames"]) / FPS)
    bad = tmp_path / "bad.json"
    write_json(bad, info)
    spec = [{"id": n, "video": str(media[n][0]), "frames": str(media[n][1]), "side": "none", "cropped_dir": ""}
            for n in ("face", "tiny", "noface")]
    spec[1]["frames"] = str(bad)
    out, cache = tmp_path / "affwild2_0", tmp_path / ".cache"
    assert crop_batch_cli(spec, out, cache) == 1
    err = capsys.readouterr().err
    assert "1 of 3 video(s) failed" in err and f"tiny: {media['tiny'][0]}" in err and "frames JSON" in err
    assert not out.exists() and not list(tmp_path.glob(".*tmp*"))
    kept = {p.name.split(".")[0]: p for p in cache.glob("*.h5")}
    assert sorted(kept) == ["face", "noface"]
    stamp = {v: p.stat().st_mtime_ns for v, p in kept.items()}

    spec[1]["frames"] = str(media["tiny"][1])                          # the fix
    with caplog.at_level(logging.INFO):
        assert crop_batch_cli(spec, out, cache) == 0
    assert "face: store kept from an earlier run" in caplog.text and "noface: store kept" in caplog.text
    assert "tiny: store kept" not in caplog.text
    assert {v: p.stat().st_mtime_ns for v, p in kept.items()} == stamp   # not recomputed
    assert sorted(p.name for p in out.iterdir()) == ["face.h5", "noface.h5", "tiny.h5"]
    for v in ("face", "noface"):
        assert (out / f"{v}.h5").samefile(kept[v])
    with FaceStore(out / "tiny.h5") as fs, FaceStore(out / "face.h5") as ff:
        assert fs.n_frames == 3 and ff.n_frames == 30 and ff.found.all()

    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert crop_batch_cli(spec, out, cache, params={"margin": 0.1}) == 0   # other params: recomputed
    assert "store kept" not in caplog.text
    assert sorted(p.name.split(".")[0] for p in cache.glob("*.h5")) == ["face", "noface", "tiny"]  # old pruned
    with FaceStore(out / "face.h5") as ff:
        assert ff.attrs["margin"] == 0.1


def test_batch_skips_a_video_that_did_not_decode(media, tmp_path, caplog):
    """A video whose media file extract_frames could not decode (its frames JSON records the error)
    is skipped, named in the log and in failed.json; its batch mates' stores are written and the
    job succeeds. The list comes in a file (``--batch=@FILE``), and an id that looks like an
    option (a YouTube id) is just an id."""
    bad = tmp_path / "broken.json"
    write_json(bad, {"error": "broken.mp4: unreadable video (corrupt)", "media": "broken", "video": "broken.mp4"})
    spec = [{"id": "face", "video": str(media["face"][0]), "frames": str(media["face"][1]), "side": "none",
             "cropped_dir": ""},
            {"id": "-8XbT1X7Lq0", "video": str(media["tiny"][0]), "frames": str(media["tiny"][1]), "side": "none",
             "cropped_dir": ""},
            {"id": "broken", "video": str(tmp_path / "broken.mp4"), "frames": str(bad), "side": "none",
             "cropped_dir": ""}]
    listed = tmp_path / "lists" / "hume_0.json"
    write_json(listed, spec)
    out = tmp_path / "hume_0"
    args = ["crop_faces", f"--batch=@{listed}", "--out", str(out), "--cache", str(tmp_path / ".cache"),
            "--code-digest", "c0de", "--threads", "1", "--device", "cpu", "--params", json.dumps(FACES)]
    with caplog.at_level(logging.INFO):
        assert cli(args) == 0
    assert "broken: skipped, its media file did not decode" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == ["-8XbT1X7Lq0.h5", "face.h5", "failed.json"]
    assert json.loads((out / "failed.json").read_text())["broken"]["error"].startswith("extract_frames: broken.mp4")
    with FaceStore(out / "-8XbT1X7Lq0.h5") as fs:
        assert fs.attrs["video_id"] == "-8XbT1X7Lq0" and fs.n_frames == 3


# ---------------------------------------------------------------- other backends
def test_cropped_aligned_backend(media, tmp_path):
    video, fj = media["tiny"]  # 3 frames
    d = tmp_path / "cropped_aligned" / "tiny"
    d.mkdir(parents=True)
    img = face_img(100)
    for i in (1, 3):  # frame 2 has no official crop
        cv2.imwrite(str(d / f"{i:05d}.jpg"), img[..., ::-1])
    out = tmp_path / "tiny.h5"
    assert crop(video, fj, out, "--cropped-dir", str(tmp_path / "cropped_aligned")) == 0
    with FaceStore(out) as s:
        assert s.found.tolist() == [True, False, True] and s.attrs["backend"] == "cropped_aligned"
        c = s.read_crops([0, 1])
    ref = cv2.resize(img, (112, 112), interpolation=cv2.INTER_AREA)
    assert np.abs(c[0].astype(float) - ref).mean() < 6 and not c[1].any()
    (d / "00001.jpg").write_bytes(b"not a jpeg")
    info = json.loads(fj.read_text())
    job = FaceJob(video, info, tmp_path / "y.h5", "tiny", cropped_dir=tmp_path / "cropped_aligned")
    with pytest.raises(PipelineError, match="00001.jpg"):
        crop_faces(job, face_params(backend="cropped_aligned"))
    with pytest.raises(PipelineError, match="needs --cropped-dir"):
        crop_faces(FaceJob(video, job.info, tmp_path / "y.h5", "tiny"), face_params(backend="cropped_aligned"))
    assert not (tmp_path / "y.h5").exists()


def test_official_crops_need_no_torch(media, tmp_path):
    """The stage imports torch / the detectors only when it detects."""
    import subprocess
    import sys

    video, fj = media["tiny"]
    d = tmp_path / "ca" / "tiny"
    d.mkdir(parents=True)
    cv2.imwrite(str(d / "00001.jpg"), face_img(112))
    argv = ["crop_faces", "--video", str(video), "--frames", str(fj), "--out", str(tmp_path / "tiny.h5"),
            "--cropped-dir", str(tmp_path / "ca"), "--params", json.dumps(FACES)]
    code = ("import sys; from affect_pipeline.__main__ import main; "
            f"rc = main({argv!r}); "
            "heavy = [m for m in ('torch', 'torchvision', 'facenet_pytorch', 'face_alignment') if m in sys.modules]; "
            "print('HEAVY', heavy); sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert p.returncode == 0, p.stderr
    assert "HEAVY []" in p.stdout, p.stdout
    with FaceStore(tmp_path / "tiny.h5") as s:
        assert s.found.tolist() == [True, False, False]


def test_faces_config_must_be_complete(media, tmp_path, capsys):
    """No defaults in the package: a missing or unknown key of the faces section names itself."""
    video, fj = media["tiny"]
    args = ["crop_faces", "--video", str(video), "--frames", str(fj), "--out", str(tmp_path / "x.h5"), "--params"]
    partial = {k: v for k, v in FACES.items() if k != "margin"}
    assert cli(args + [json.dumps(partial)]) == 1
    assert "faces.margin" in capsys.readouterr().err
    no_fan = {**FACES, "face_alignment": {"s3fd": None}}
    assert cli(args + [json.dumps(no_fan)]) == 1
    assert "faces.face_alignment.fan" in capsys.readouterr().err
    assert cli(args + [json.dumps({**FACES, "backend": "dlib"})]) == 1
    assert "unknown backend 'dlib'" in capsys.readouterr().err
    assert cli(args + [json.dumps({**FACES, "marign": 0.1})]) == 1
    assert "marign" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


@pytest.fixture(scope="module")
def fa_weights(tmp_path_factory):
    """Randomly initialised S3FD and 2D-FAN-4, saved (fp16, to keep the files small) like real ones."""
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    d = tmp_path_factory.mktemp("fa")
    torch.manual_seed(0)
    for name, net in (("s3fd.pth", s3fd()), ("fan.pth", FAN(4))):
        torch.save({k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}, d / name)
    return {"s3fd": str(d / "s3fd.pth"), "fan": str(d / "fan.pth")}


def test_face_alignment_backend_plumbing(media, tmp_path, fa_weights):
    """Random weights: garbage faces, but real classes, real loading, right shapes and rows."""
    video, fj = media["tiny"]
    out = tmp_path / "fa.h5"
    params = {"backend": "face_alignment", "score_threshold": 0.0, "face_alignment": fa_weights}
    assert crop(video, fj, out, params=params) == 0
    with FaceStore(out) as s:
        assert s.n_frames == 3 and s.attrs["backend"] == "face_alignment"
        assert s.found.all()  # threshold 0: some box is always kept
        assert s.f["landmarks"].shape == (3, 5, 2) and np.isfinite(s.f["landmarks"][:]).all()
        assert s.read_crops([0]).shape == (1, 112, 112, 3)


def test_face_alignment_weights_errors(media, tmp_path, fa_weights, monkeypatch, capsys):
    video, fj = media["tiny"]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_cache"))
    assert crop(video, fj, tmp_path / "a.h5", params={"backend": "face_alignment"}) == 1
    err = capsys.readouterr().err
    assert "s3fd-619a316812.pth" in err and "never downloaded" in err
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00" * 100)
    params = {"backend": "face_alignment", "face_alignment": {**fa_weights, "fan": str(junk)}}
    assert crop(video, fj, tmp_path / "b.h5", params=params) == 1
    assert str(junk) in capsys.readouterr().err
    assert not (tmp_path / "a.h5").exists() and not (tmp_path / "b.h5").exists()


def test_heatmap_decoding_matches_face_alignment(monkeypatch):
    import face_alignment.utils as fu

    for name in ("_get_preds_fromhm", "transform_np"):  # the package's code, minus numba compile time
        monkeypatch.setattr(fu, name, getattr(fu, name).py_func)

    rng = np.random.default_rng(0)
    hm = rng.random((2, 68, 64, 64)).astype(np.float32)
    centers, scales = np.array([[120.0, 90.0], [300.0, 200.0]]), np.array([0.8, 1.9])
    ours = faces.heatmap_points(hm, centers, scales)
    for k in range(2):
        _, ref, _ = fu.get_preds_fromhm(hm[k:k + 1], centers[k], scales[k])
        np.testing.assert_allclose(ours[k], ref[0], atol=1.0)  # the package rounds down to int
