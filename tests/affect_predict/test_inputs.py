"""``affect-predict`` inputs besides videos: images, folders of frames (``--fps``), ``--stride``,
and the usage errors (exit 2) that must come before any model is read.

Fast tests: how arguments expand (a folder without videos is a folder of frames, in natural
order), that the temporary lossless video of kept frames decodes to the very pixels and
timestamps of its source, and each bad input's one line and exit code; they pass ``--models``
a folder that does not exist, so an error about the input proves it came before the models.
The slow test runs the trained demo run (``trained_run``) on a video, the same video as a folder
of PNG frames and one frame as an image, and with ``--stride``.
"""
import csv

import numpy as np
import pytest
from PIL import Image

from affect_pipeline.affect_predict.batches import expand_inputs, plan_batch, video_ids
from affect_pipeline.affect_predict.cli import main
from affect_pipeline.affect_predict.frame_inputs import (
    FrameOptions,
    check_inputs,
    frame_files,
    job_media,
    read_image,
    upright_size,
)
from affect_pipeline.affect_predict.outputs import NATIVE
from affect_pipeline.common.errors import PipelineError, UsageError
from affect_pipeline.data.video import iter_frames
from affect_pipeline.data.video_writer import write_video


def noise(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


def save_frames(folder, frames, names=None):
    folder.mkdir(parents=True, exist_ok=True)
    for i, rgb in enumerate(frames):
        Image.fromarray(rgb).save(folder / (names[i] if names else f"f{i + 1}.png"))
    return folder


# ---------------------------------------------------------------- fast: finding inputs
def test_a_folder_without_videos_is_frames_in_natural_order(tmp_path):
    """OpenFace -fdir: a folder of images (and a tree of them) is one input per folder, its
    images sorted as numbers (f2 < f10); hidden files and folders are skipped; a folder
    named like a file (seq.v1) keeps its whole name; a folder with videos stays a video folder;
    a glob takes images as one-frame inputs."""
    root = tmp_path / "frames"
    names = ["f10.png", "f2.png", "f1.png", "F3.PNG", ".f0.png"]
    save_frames(root / "seq.v1", [noise(8, 8, i) for i in range(5)], names)
    save_frames(root / "b" / "deep", [noise(8, 8, 9)])
    save_frames(root / ".cache", [noise(8, 8, 9)])
    (root / "b" / "notes.txt").write_text("not a frame")
    assert [p.name for p in frame_files(root / "seq.v1")] == ["f1.png", "f2.png", "F3.PNG", "f10.png"]

    inputs = expand_inputs([str(root)])
    assert [(v.rel.as_posix(), v.frames_dir) for v in inputs] == [("b/deep", True), ("seq.v1", True)]
    assert video_ids(inputs) == ["deep", "seq.v1"]
    batch = plan_batch(inputs, ["VA"], NATIVE, tmp_path / "out")
    assert [c.relative_to(tmp_path / "out").as_posix() for c in batch.csvs] == ["b/deep.csv", "seq.v1.csv"]
    (one,) = expand_inputs([str(root / "seq.v1")])              # the folder itself, named by its name
    assert (one.rel.as_posix(), one.frames_dir) == ("seq.v1", True)

    talks = tmp_path / "talks"
    save_frames(talks, [noise(8, 8, 1)], ["poster.jpg"])
    (talks / "a.mp4").write_bytes(b"\0")
    assert [v.rel.as_posix() for v in expand_inputs([str(talks)])] == ["a.mp4"]   # videos win
    globbed = expand_inputs([str(root / "seq.v1" / "f*.png"), str(talks / "poster.jpg")])
    assert [v.rel.as_posix() for v in globbed] == ["f1.png", "f10.png", "f2.png", "poster.jpg"]
    assert not any(v.frames_dir for v in globbed)


# ---------------------------------------------------------------- fast: the job's lossless video
@pytest.mark.parametrize("codec", ["rawvideo", "ffv1"])
def test_frames_folder_becomes_exact_pixels_at_fps_timestamps(tmp_path, monkeypatch, codec):
    """Odd-sized noise frames (nothing for a lossy codec to hide in) come back bit-exact,
    frame k at (k-1)/fps, in both temporary codecs (raw for small inputs, FFV1 above
    RAW_LIMIT); --stride keeps frames 1, 1+N, ... with their own numbers and times."""
    from affect_pipeline.affect_predict import frame_inputs
    from affect_pipeline.data.video import probe

    monkeypatch.setattr(frame_inputs, "RAW_LIMIT", 1 << 30 if codec == "rawvideo" else 0)
    frames = [noise(23, 37, i) for i in range(11)]
    folder = save_frames(tmp_path / "clip", frames)
    for stride, fps in ((1, 30.0), (3, 12.5)):
        tmp = tmp_path / f"job{stride}"
        tmp.mkdir()
        media = job_media(folder, tmp, FrameOptions(fps, stride))
        keep = np.arange(0, 11, stride)
        assert probe(media.video)["codec"] == codec
        got = list(iter_frames(media.video))
        assert list(media.frames) == list(keep + 1) and len(got) == len(keep)
        for (_, t, rgb), k in zip(got, keep):
            assert t == pytest.approx(k / fps, abs=1e-6)
            np.testing.assert_array_equal(rgb, frames[k])
        assert media.audio is None                              # frames have no soundtrack


def test_video_stride_keeps_the_decoded_frames_and_the_soundtrack(tmp_path):
    """A strided video is the original's decoded frames 1, 1+N, ... (pixels and media-clock
    timestamps as iter_frames gives them), its audio taken from the original file."""
    from affect_pipeline.data.video_writer import Soundtrack

    video = write_video(tmp_path / "v.mp4", [noise(48, 64, i) for i in range(20)], fps=25,
                        audio=Soundtrack(np.sin(np.arange(16000) / 10.0) * 0.3))
    full = list(iter_frames(video))
    media = job_media(video, tmp_path, FrameOptions(stride=4))
    got = list(iter_frames(media.video))
    assert list(media.frames) == [1, 5, 9, 13, 17] and media.audio == video
    assert media.duration == pytest.approx(0.8, abs=1e-6)
    for (_, t, rgb), k in zip(got, range(0, 20, 4), strict=True):
        assert t == full[k][1]
        np.testing.assert_array_equal(rgb, full[k][2])
    assert job_media(video, tmp_path, FrameOptions()).video == video          # stride 1: the file itself


def test_images_are_read_upright_and_as_rgb(tmp_path):
    """EXIF orientation 6 (a phone held upright) turns the stored 40x20 into a shown 20x40, as
    a viewer shows it; grey and RGBA images come as 3-channel RGB."""
    stored = noise(20, 40, 3)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif, quality=100)
    assert upright_size(tmp_path / "phone.jpg") == (20, 40)
    assert read_image(tmp_path / "phone.jpg").shape == (40, 20, 3)
    Image.fromarray(stored[..., 0]).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_image(tmp_path / "grey.png"), np.repeat(stored[..., :1], 3, 2))
    Image.fromarray(np.dstack([stored, np.full((20, 40), 7, np.uint8)])).save(tmp_path / "alpha.png")
    np.testing.assert_array_equal(read_image(tmp_path / "alpha.png"), stored)


# ---------------------------------------------------------------- fast: usage errors, exit 2
def run_main(capsys, *args):
    """affect-predict in this process: (exit code, stderr lines that are not log lines)."""
    rc = main([*map(str, args)])
    err = capsys.readouterr().err
    return rc, [ln for ln in err.splitlines() if ln.startswith("ERROR") or "Traceback" in ln]


def bad_inputs(tmp_path) -> dict:
    """Each bad input -> (the path its message names, what the message says)."""
    d = tmp_path / "bad"
    d.mkdir()
    (d / "empty.mp4").write_bytes(b"")
    (d / "notes.txt").write_text("meeting notes, not a video\n")
    good = write_video(tmp_path / "good.mp4", [noise(32, 32, i) for i in range(10)], fps=25)
    (d / "cut.mp4").write_bytes(good.read_bytes()[:200])           # a download cut off in its header
    (d / "garbage.jpg").write_bytes(b"\xff\xd8 this is no JPEG" * 4)
    (d / "empty_dir").mkdir()
    save_frames(d / "mixed", [noise(24, 32, 1), noise(24, 30, 2)], ["a.png", "b.png"])
    save_frames(d / "one_bad_frame", [noise(24, 32, 1)], ["1.png"])
    (d / "one_bad_frame" / "2.png").write_bytes(b"\x89PNG broken")
    return {"empty.mp4": (d / "empty.mp4", "empty file (0 bytes)"),
            "notes.txt": (d / "notes.txt", "unreadable video (corrupt, truncated or not a media file"),
            "cut.mp4": (d / "cut.mp4", "unreadable video"),
            "garbage.jpg": (d / "garbage.jpg", "unreadable image (not an image, or corrupt"),
            "missing.mp4": (d / "missing.mp4", "video not found"),
            "empty_dir": (d / "empty_dir", "no videos (.mp4 / .avi / .mov / .mkv / .webm) and no frames"),
            "mixed": (d / "mixed", "frames of different sizes: a.png is 32x24, b.png is 30x24"),
            "one_bad_frame": (d / "one_bad_frame" / "2.png", "unreadable image")}


@pytest.mark.parametrize("case", ["empty.mp4", "notes.txt", "cut.mp4", "garbage.jpg", "missing.mp4",
                                  "empty_dir", "mixed", "one_bad_frame"])
def test_unreadable_input_is_one_line_exit_2_before_models(tmp_path, capsys, case):
    """Given with a good video and a --models folder that does not exist: the error names the
    bad input (so it came before the models were even looked for), one line, exit 2, no output."""
    path, says = bad_inputs(tmp_path)[case]
    arg = path.parent if case == "one_bad_frame" else path
    rc, lines = run_main(capsys, tmp_path / "good.mp4", arg, "--models", tmp_path / "no_such_run",
                         "--out", tmp_path / "o.csv")
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"ERROR [affect-predict]: {path}: ") and says in lines[0], lines[0]
    assert not (tmp_path / "o.csv").exists()


def test_check_inputs_raises_usage_errors(tmp_path):
    """The check itself: UsageError (a PipelineError: run_stage's one line, with exit code 2)."""
    for path, says in bad_inputs(tmp_path).values():
        with pytest.raises(UsageError) as e:
            check_inputs([path])
        assert str(path) in str(e.value) and isinstance(e.value, PipelineError)
    check_inputs([tmp_path / "good.mp4"])


def test_cuda_without_cuda_is_exit_2(tmp_path, capsys):
    """--device cuda:N past the visible GPUs (everywhere), and --device cuda where torch sees no
    CUDA: one line, exit 2, before inputs or models are read; not a silent CPU run."""
    import torch

    video = tmp_path / "v.mp4"                      # not even read: the device is checked first
    n = torch.cuda.device_count()
    cases = [f"cuda:{n}", "tpu"] + ([] if torch.cuda.is_available() else ["cuda"])
    for dev in cases:
        rc, lines = run_main(capsys, video, "--models", tmp_path / "r", "--out", tmp_path / "o.csv", "--device", dev)
        assert rc == 2 and len(lines) == 1, (dev, lines)
        assert lines[0].startswith(f"ERROR [affect-predict]: --device {dev}: "), lines[0]
    if not torch.cuda.is_available():
        assert "CUDA is not available here" in lines[0] and "use --device cpu" in lines[0]


def test_argument_errors_are_argparse_exit_2(tmp_path, capsys):
    for bad in (["--stride", "0"], ["--fps", "0"], ["--stride", "x"]):
        with pytest.raises(SystemExit) as e:
            main(["v.mp4", "--models", "r", "--out", "o.csv", *bad])
        assert e.value.code == 2
        assert "--stride" in capsys.readouterr().err


# ---------------------------------------------------------------- slow: a trained run
def read_rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def values(rows, cols=("valence", "arousal")):
    return np.array([[float(r[c]) if r[c] != "" else np.nan for c in cols] for r in rows])


@pytest.mark.slow
def test_frames_folder_image_and_stride_predict(trained_run, tmp_path):
    """A silent demo clip, the same clip as a folder of PNG frames (--fps 25, its rate) and its
    first frame as an image: the folder's rows equal the video's (same pixels, same timestamps,
    no audio either way: one code path); the image is one row at t=0. With --stride 3 the rows
    are frames 1, 4, 7, ... with the full run's timestamps, for the video and the folder alike."""
    from test_affect_predict import make_video, run_cli

    run = trained_run / "run"
    clip = make_video(tmp_path / "clip.mp4", 30, audio=False, seed=21)
    decoded = list(iter_frames(clip))
    folder = save_frames(tmp_path / "inputs" / "clip_frames", [rgb for _, _, rgb in decoded],
                         [f"img{i + 1}.png" for i in range(len(decoded))])
    Image.fromarray(decoded[0][2]).save(tmp_path / "inputs" / "still.png")
    base = ["--models", run / "results", "--threads", "2", "--device", "cpu", "--no-timeline"]
    out = tmp_path / "all"
    p = run_cli(clip, folder, tmp_path / "inputs" / "still.png", *base, "--out-dir", out, "--fps", 25)
    assert p.returncode == 0, p.stderr[-3000:]
    video, frames, still = (read_rows(out / n) for n in ("clip.csv", "clip_frames.csv", "still.csv"))
    assert len(video) == len(frames) == len(decoded) and len(still) == 1
    assert [r["frame"] for r in frames] == [str(i) for i in range(1, len(decoded) + 1)]
    np.testing.assert_allclose([float(r["timestamp"]) for r in frames], np.arange(len(decoded)) / 25, atol=1e-6)
    np.testing.assert_allclose([float(r["timestamp"]) for r in video], [t for _, t, _ in decoded], atol=1e-6)
    assert [r["face_found"] for r in frames] == [r["face_found"] for r in video]
    assert np.mean([r["face_found"] == "1" for r in frames]) > 0.9
    np.testing.assert_allclose(values(frames), values(video), atol=1e-5)
    assert (still[0]["frame"], float(still[0]["timestamp"])) == ("1", 0.0)

    strided = tmp_path / "strided"
    p = run_cli(clip, folder, *base, "--out-dir", strided, "--fps", 25, "--stride", 3)
    assert p.returncode == 0, p.stderr[-3000:]
    for name, full in (("clip.csv", video), ("clip_frames.csv", frames)):
        rows = read_rows(strided / name)
        assert [int(r["frame"]) for r in rows] == list(range(1, len(decoded) + 1, 3))
        assert [r["timestamp"] for r in rows] == [r["timestamp"] for r in full[::3]]
        assert [r["face_found"] for r in rows] == [r["face_found"] for r in full[::3]]
        v = values(rows)
        assert np.isfinite(v[[r["face_found"] == "1" for r in rows]]).all() and np.nanmax(np.abs(v)) <= 1
    np.testing.assert_allclose(values(read_rows(strided / "clip.csv")), values(read_rows(strided / "clip_frames.csv")),
                               atol=1e-5)
