"""Decoding, frames JSON and audio extraction (the extract_frames stage writes both) on real
videos encoded here with PyAV/FFmpeg."""
from __future__ import annotations

import json
from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from skimage.data import astronaut

from affect_pipeline.__main__ import main as cli
from affect_pipeline.common.errors import PipelineError
from affect_pipeline.data.audio_track import extract_audio
from affect_pipeline.data.video import (
    frame_info,
    iter_frame_batches,
    iter_frames,
    probe,
    read_frames_json,
)
from affect_pipeline.data.video_writer import Soundtrack, write_video

torch.set_num_threads(1)
FPS, N, SR = 25, 24, 16000
TONE = 440.0


def frames(n=N, size=128):
    """Astronaut frames shifted by 4 px per frame: frame i is recognisable among its neighbours."""
    img = astronaut()[::4, ::4][:size, :size]
    return [np.roll(img, 4 * i, axis=1) for i in range(n)]


def tone(seconds, rate=SR):
    return 0.4 * np.sin(2 * np.pi * TONE * np.arange(int(seconds * rate)) / rate)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    v = {}
    v["mp4"] = write_video(d / "h264.mp4", frames(), FPS, "libx264", audio=Soundtrack(tone(N / FPS, 44100), 44100))
    v["avi"] = write_video(d / "mpeg4.avi", frames(), FPS, "mpeg4", audio=Soundtrack(tone(N / FPS)))
    v["mov"] = write_video(d / "hevc.mov", frames(), FPS, "libx265", audio=Soundtrack(tone(N / FPS)),
                           options={"x265-params": "log-level=none"})
    pts = np.round(np.cumsum([0.0] + list(np.random.default_rng(0).uniform(0.02, 0.09, N - 1))), 3)
    v["vfr"] = write_video(d / "vfr.mp4", frames(), FPS, "libx264", pts=pts)
    v["vfr_pts"] = pts
    v["noaudio"] = write_video(d / "noaudio.mp4", frames(10), FPS, "libx264")
    data = v["mp4"].read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    v["truncated"] = d / "truncated.mp4"
    (d / "garbage.mp4").write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    v["garbage"] = d / "garbage.mp4"
    v["empty"] = d / "empty.mp4"
    with av.open(str(v["empty"]), "w") as c:  # a video stream with no frames
        s = c.add_stream("libx264", rate=FPS)
        s.width = s.height = 64
        s.pix_fmt = "yuv420p"
        c.mux(s.encode())
    v["dir"] = d
    return v


@pytest.mark.parametrize("kind,codec", [("mp4", "h264"), ("avi", "mpeg4"), ("mov", "hevc")])
def test_count_timestamps_probe(media, kind, codec):
    info = frame_info(media[kind], show_progress=False)
    assert info["n_frames"] == N and info["codec"] == codec and not info["vfr"]
    assert (info["width"], info["height"]) == (128, 128)
    assert info["fps"] == pytest.approx(FPS)
    np.testing.assert_allclose(info["timestamps"], np.arange(N) / FPS, atol=1e-6)
    assert info["duration"] == pytest.approx(N / FPS, abs=1e-6)
    assert info["has_audio"] and info["audio_sample_rate"] in (16000, 44100)


@pytest.mark.parametrize("kind", ["mp4", "avi", "mov"])
def test_ith_decoded_frame_is_ith_source_frame(media, kind):
    src = np.stack(frames()).astype(np.float32)
    got = [(i, t, f) for i, t, f in iter_frames(media[kind])]
    assert [i for i, _, _ in got] == list(range(N))
    for i, _, f in got:
        assert f.dtype == np.uint8 and f.shape == (128, 128, 3)
        err = np.abs(src - f.astype(np.float32)).mean(axis=(1, 2, 3))
        assert err.argmin() == i and err[i] < 0.5 * np.delete(err, i).min(), (i, err)  # the right frame
        np.testing.assert_allclose(f.mean((0, 1)), src[i].mean((0, 1)), atol=6)  # RGB, not BGR


def test_vfr(media):
    info = frame_info(media["vfr"], show_progress=False)
    pts = media["vfr_pts"]
    assert info["vfr"] and info["n_frames"] == N
    np.testing.assert_allclose(info["timestamps"], pts, atol=1e-3)
    assert info["fps"] == pytest.approx((N - 1) / (pts[-1] - pts[0]), rel=1e-3)
    assert info["duration"] > pts[-1]


@pytest.mark.parametrize("prefetch", [0, 2])
def test_batches_match_single_frames(media, prefetch):
    ref = list(iter_frames(media["mp4"]))
    got = list(iter_frame_batches(media["mp4"], batch_size=5, prefetch=prefetch))
    assert [len(i) for i, _, _ in got] == [5, 5, 5, 5, 4]
    idx = np.concatenate([i for i, _, _ in got])
    assert (idx == np.arange(N)).all()
    np.testing.assert_array_equal(np.concatenate([f for _, _, f in got]), np.stack([f for _, _, f in ref]))
    np.testing.assert_allclose(np.concatenate([t for _, t, _ in got]), [t for _, t, _ in ref])


def test_batches_can_stop_early(media):
    it = iter_frame_batches(media["mp4"], batch_size=2, prefetch=1)
    first = next(it)
    it.close()  # the decoding thread must stop, not hang
    assert len(first[0]) == 2


def extract_frames(video, out, wav, *extra):
    """The stage as a rule runs it: frames JSON + 16 kHz wav of one media file."""
    return cli(["extract_frames", "--video", str(video), "--out", str(out), "--audio-out", str(wav),
                "--sample-rate", str(SR), *extra])


def test_extract_frames_cli(media, tmp_path):
    """One job writes both outputs: the frames JSON and the 16 kHz mono wav on the media clock."""
    out, wav = tmp_path / "frames" / "h264.json", tmp_path / "audio" / "h264.wav"
    assert extract_frames(media["mp4"], out, wav, "--threads", "2") == 0
    info = json.loads(out.read_text())
    for key in ("path", "n_frames", "fps", "width", "height", "duration", "has_audio",
                "audio_sample_rate", "codec", "vfr", "timestamps"):
        assert key in info
    assert info["n_frames"] == len(info["timestamps"]) == N and info["has_audio"]
    assert not list(tmp_path.glob("frames/.*tmp*")) and not list(tmp_path.glob("audio/.*tmp*"))  # atomic
    assert read_frames_json(out)["n_frames"] == N
    x, rate = sf.read(wav, dtype="float32")
    assert rate == SR and x.ndim == 1 and sf.info(wav).subtype == "PCM_16"
    assert abs(len(x) - info["duration"] * SR) < 0.1 * SR
    assert _peak_hz(x[: int(0.9 * SR)], SR) == pytest.approx(TONE, abs=3)   # 44.1 kHz source resampled


def _peak_hz(x, rate):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / rate)[spec.argmax()]


@pytest.mark.parametrize("kind", ["mp4", "avi", "mov"])
def test_audio_16k_mono(media, kind, tmp_path):
    out = tmp_path / f"{kind}.wav"
    r = extract_audio(media[kind], out, SR, duration=N / FPS)
    x, rate = sf.read(out, dtype="float32")
    info = sf.info(out)
    assert rate == SR and info.channels == 1 and info.subtype == "PCM_16" and not r["silent"]
    assert abs(len(x) - N / FPS * SR) < 0.1 * SR  # encoder padding only
    assert _peak_hz(x[: int(0.9 * SR)], SR) == pytest.approx(TONE, abs=3)
    assert 0.3 < np.abs(x).max() < 0.5  # amplitude survives resampling (44.1 kHz -> 16 kHz for mp4)


def test_no_audio_gives_silence_and_flag(media, tmp_path):
    fj, out = tmp_path / "noaudio.json", tmp_path / "audio" / "noaudio.wav"
    assert extract_frames(media["noaudio"], fj, out) == 0
    info = json.loads(fj.read_text())
    assert info["has_audio"] is False and info["audio_sample_rate"] == 0
    x, rate = sf.read(out, dtype="int16")
    assert rate == SR and x.ndim == 1 and len(x) == round(info["duration"] * SR) == round(10 / FPS * SR)
    assert not x.any()


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty"])
def test_bad_video_errors_name_the_file(media, kind, tmp_path, capsys):
    with pytest.raises(PipelineError, match=media[kind].name):
        frame_info(media[kind], show_progress=False)
    out, wav = tmp_path / "x.json", tmp_path / "x.wav"
    assert extract_frames(media[kind], out, wav) == 1
    err = capsys.readouterr().err
    assert str(media[kind]) in err and "Traceback" not in err
    assert not out.exists() and not wav.exists() and not list(tmp_path.glob(".*tmp*"))


def test_missing_video_and_audio_error(media, tmp_path):
    with pytest.raises(PipelineError, match="not found"):
        probe(tmp_path / "nope.mp4")
    with pytest.raises(PipelineError, match="garbage.mp4"):
        extract_audio(media["garbage"], tmp_path / "a.wav", SR, duration=1.0)
    assert not (tmp_path / "a.wav").exists()


def test_audio_starting_late_is_padded_onto_the_media_clock(tmp_path):
    """An audio stream that starts 0.5 s in: the wav keeps 0.5 s of leading silence."""
    path = tmp_path / "late.mkv"
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=FPS)
        vs.width = vs.height = 64
        vs.pix_fmt = "yuv420p"
        a = c.add_stream("pcm_s16le", rate=SR, layout="mono")
        for i in range(25):
            c.mux(vs.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")))
        c.mux(vs.encode())
        s16 = (tone(0.5) * 32767).astype(np.int16)
        for k in range(0, len(s16), 800):
            f = av.AudioFrame.from_ndarray(s16[None, k:k + 800], format="s16", layout="mono")
            f.sample_rate, f.time_base, f.pts = SR, Fraction(1, SR), SR // 2 + k
            c.mux(a.encode(f))
        c.mux(a.encode())
    extract_audio(path, tmp_path / "late.wav", SR)
    x, _ = sf.read(tmp_path / "late.wav", dtype="float32")
    onset = np.flatnonzero(np.abs(x) > 0.05)[0]
    assert abs(onset - SR // 2) < 40 and len(x) == pytest.approx(SR, abs=40)


def _pattern(h=24, w=40):
    """An asymmetric picture: every turn and mirror of it is a different array."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :, 0] = np.linspace(0, 250, w, dtype=np.uint8)[None]      # red grows to the right
    img[:, :, 1] = np.linspace(0, 250, h, dtype=np.uint8)[:, None]   # green grows downwards
    img[:6, :10, 2] = 255                                              # blue block top left
    return img


# set_display_rotation(degrees ccw, hflip, vflip) -> what a player (ffmpeg's autorotate) shows
TURNS = {(0, False, False): lambda a: a, (90, False, False): lambda a: np.rot90(a, 1),
         (180, False, False): lambda a: np.rot90(a, 2), (-90, False, False): lambda a: np.rot90(a, -1),
         (0, True, False): lambda a: a[:, ::-1], (0, False, True): lambda a: a[::-1]}


@pytest.mark.parametrize("turn", list(TURNS), ids=lambda t: f"{t[0]}{'h' * t[1]}{'v' * t[2]}")
def test_display_rotation_applied_in_every_decode_path(tmp_path, turn):
    """A phone's rotation tag: frames come out as a player shows them, in iter_frames, the
    batches crop_faces reads and the frames JSON's size."""
    path = tmp_path / "turned.mp4"
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = 40, 24, "yuv444p"
        vs.set_display_rotation(*turn)
        for i in range(3):
            f = av.VideoFrame.from_ndarray(_pattern(), format="rgb24")
            f.pts, f.time_base = i, Fraction(1, FPS)
            c.mux(vs.encode(f))
        c.mux(vs.encode())
    want = TURNS[turn](_pattern()).astype(np.float32)
    got = [f for _, _, f in iter_frames(path)]
    batches = np.concatenate([f for _, _, f in iter_frame_batches(path, batch_size=2)])
    assert got[0].shape == want.shape and np.abs(got[0] - want).mean() < 4
    np.testing.assert_array_equal(batches, np.stack(got))
    info = frame_info(path, show_progress=False)
    assert (info["height"], info["width"]) == want.shape[:2]
    assert info["rotation"] % 360 == (180 if turn[1] else turn[0]) % 360


def test_anamorphic_pixels_are_shown_square(tmp_path):
    """A sample aspect ratio of 4:3 (DVD-style): 96x64 stored is shown 128x64, as a player does."""
    path = tmp_path / "sar.mp4"
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = 96, 64, "yuv420p"
        vs.codec_context.sample_aspect_ratio = Fraction(4, 3)
        for i in range(2):
            f = av.VideoFrame.from_ndarray(_pattern(64, 96), format="rgb24")
            f.pts, f.time_base = i, Fraction(1, FPS)
            c.mux(vs.encode(f))
        c.mux(vs.encode())
    assert next(iter_frames(path))[2].shape == (64, 128, 3)
    assert (frame_info(path, show_progress=False)["width"]) == 128


def test_audio_shorter_than_the_video_is_padded_to_its_duration(media, tmp_path):
    """The wav covers the whole video: silence after an audio stream that ends early."""
    r = extract_audio(media["mp4"], tmp_path / "a.wav", SR, duration=3.0)
    x, _ = sf.read(tmp_path / "a.wav", dtype="float32")
    assert len(x) == r["samples"] == 3 * SR and not r["silent"]
    assert np.abs(x[int(N / FPS * SR) + 200:]).max() == 0 and np.abs(x[: SR // 2]).max() > 0.3


@pytest.fixture(scope="module")
def indexed_first(tmp_path_factory):
    """An MP4 of 50 noise frames with its index first (faststart): cut anywhere, it still opens."""
    path = tmp_path_factory.mktemp("faststart") / "fast.mp4"
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:
        vs = c.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        for i in range(50):
            f = av.VideoFrame.from_ndarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), format="rgb24")
            f.pts, f.time_base = i, Fraction(1, FPS)
            c.mux(vs.encode(f))
        c.mux(vs.encode())
    return path


def test_file_cut_mid_packet_is_reported_as_truncated(indexed_first, tmp_path):
    """Cut at 60 %, inside a packet the decoder refuses: the damaged packet is skipped (as a
    player does) and the file is refused for what it is, a truncated one, naming the counts."""
    bad = tmp_path / "cut.mp4"
    bad.write_bytes(indexed_first.read_bytes()[: indexed_first.stat().st_size * 6 // 10])
    with pytest.raises(PipelineError, match=r"cut\.mp4: decoded only \d+ of the 50 frames .*truncated"):
        frame_info(bad, show_progress=False)


def test_file_missing_the_end_of_its_last_frame_plays(indexed_first, tmp_path, caplog):
    """The last packet cut short: 49 frames play; decoded frames are the truth, logged."""
    short = tmp_path / "short.mp4"
    short.write_bytes(indexed_first.read_bytes()[:-200])
    info = frame_info(short, show_progress=False)
    assert info["n_frames"] == 49 and info["n_frames_declared"] == 50 and info["skipped_packets"] <= 1
    assert "declares 50" in caplog.text
