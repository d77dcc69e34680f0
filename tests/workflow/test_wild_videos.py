"""The wild-encodings matrix: every variant of tests/wild_media.py through extract_frames, faces
(real MTCNN) and the 16 kHz wav, compared with what a player shows of the file."""
from __future__ import annotations

import functools
import json
import logging

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import workflow_defaults
from scipy.signal import correlate
from wild_media import VARIANTS, demo_source, missing_encoders, truncated

from affect_pipeline.__main__ import main as cli
from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.stores import FaceStore
from affect_pipeline.data.video import frame_info, iter_frames
from affect_pipeline.faces.crop_faces import FaceJob, crop_faces
from affect_pipeline.faces.detection import FaceParams

torch.set_num_threads(1)
SR = 16000
SRC = functools.partial(demo_source, seconds=1.6)       # 40 frames: detection is the cost
FACES = FaceParams.from_config({**workflow_defaults()["faces"], "size": 112, "batch_size": 20})
BY_NAME = {v.name: v for v in VARIANTS}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``run(name)``: the variant written, its extract_frames stage run (once, cached)."""
    d = tmp_path_factory.mktemp("wild")

    @functools.lru_cache(maxsize=None)
    def go(name: str):
        var = BY_NAME[name]
        if miss := missing_encoders(var):
            pytest.skip(f"this PyAV/FFmpeg build has no encoder {miss} for variant {name}")
        video = var.write(d / f"{name}{var.suffix}", SRC())
        fj, wav = d / "frames" / f"{name}.json", d / "audio" / f"{name}.wav"
        assert cli(["extract_frames", "--video", str(video), "--out", str(fj), "--audio-out", str(wav),
                    "--sample-rate", str(SR)]) == 0, name
        return var, video, json.loads(fj.read_text()), wav

    return go


@pytest.fixture(scope="module")
def faces(run, tmp_path_factory):
    """``faces(name)``: crop_faces with the real detector on the variant, (store, result)."""
    d = tmp_path_factory.mktemp("wild_faces")

    @functools.lru_cache(maxsize=None)
    def go(name: str):
        _, video, info, _ = run(name)
        r = crop_faces(FaceJob(video, info, d / f"{name}.h5", name), FACES)
        with FaceStore(d / f"{name}.h5") as s:
            return {**r, "found": s.found, "landmarks": s.f["landmarks"][:], "timestamps": s.timestamps}

    return go


NAMES = [v.name for v in VARIANTS]


@pytest.mark.parametrize("name", NAMES)
def test_frames_are_what_a_player_shows(run, name):
    """Count, timestamps (the encoded pts), upright size and pixels of every shown frame."""
    import av

    var, video, info, _ = run(name)
    want = var.expect(SRC())
    with av.open(str(video)) as c:                 # what ffprobe -count_frames counts
        counted = sum(1 for _ in c.decode(c.streams.video[0]))
    assert info["n_frames"] == want["n_frames"] == counted == len(info["timestamps"])
    ts = np.asarray(info["timestamps"])
    assert (np.diff(ts) > 0).all()
    np.testing.assert_allclose(ts, want["timestamps"], atol=1e-3)
    assert (info["width"], info["height"], info["rotation"]) == (want["width"], want["height"], want["rotation"])
    assert info["vfr"] is var.vfr
    assert info["duration"] == pytest.approx(want["duration"], abs=0.07)
    shown = np.stack(var.shown(SRC())).astype(np.float32)
    got = np.stack([f for _, _, f in iter_frames(video)]).astype(np.float32)
    assert got.shape == shown.shape
    err = np.abs(got - shown).mean(axis=(1, 2, 3))
    assert err.max() < 8, err        # the right frame, upright, in RGB (a turned one is ~40 off)


def test_overdeclared_count_is_recorded_not_fatal(run, caplog):
    """MP4 edit list: 40 frames declared and stored, 37 shown; the decoded count wins, logged."""
    var, video, info, _ = run("overdeclared")
    with caplog.at_level(logging.WARNING, logger="affect_pipeline.data.video"):
        assert frame_info(video, show_progress=False)["n_frames"] == info["n_frames"]
    assert info["n_frames_declared"] == SRC().n and info["n_frames"] == SRC().n - var.lead
    assert info["n_packets"] == SRC().n
    assert any("declares" in r.getMessage() and video.name in r.getMessage() for r in caplog.records)


def test_truncated_file_that_opens_is_refused(tmp_path, capsys):
    """Index first, data cut: the container declares 40 frames but the file holds ~60 % of them."""
    bad = truncated(tmp_path / "cut.mp4", SRC())
    with pytest.raises(PipelineError, match=r"cut\.mp4: decoded only \d+ of the 40 frames"):
        frame_info(bad, show_progress=False)
    fj, wav = tmp_path / "cut.json", tmp_path / "cut.wav"
    assert cli(["extract_frames", "--video", str(bad), "--out", str(fj), "--audio-out", str(wav),
                "--sample-rate", str(SR)]) == 1
    assert "truncated" in capsys.readouterr().err and not fj.exists() and not wav.exists()


@pytest.mark.parametrize("name", NAMES)
def test_faces_found_upright(faces, run, name):
    """The detector finds the face as often as in the plain clip, eyes above the mouth."""
    r, plain = faces(name), faces("plain")
    n = run(name)[2]["n_frames"]
    assert r["n_frames"] == n == len(r["found"])
    assert plain["n_found"] >= 0.9 * plain["n_frames"]
    assert r["n_found"] >= 0.9 * n * plain["n_found"] / plain["n_frames"]
    lm = r["landmarks"][r["found"]]            # eyes (0, 1), nose (2), mouth corners (3, 4)
    assert (lm[:, :2, 1].mean(1) < lm[:, 2, 1]).all() and (lm[:, 2, 1] < lm[:, 3:, 1].mean(1)).all()
    np.testing.assert_allclose(r["timestamps"], run(name)[2]["timestamps"], atol=1e-6)


def _lag_and_match(x: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Where ``ref`` sits in ``x`` (seconds) and how well it matches there (normalised correlation)."""
    c = correlate(x, ref, mode="full", method="fft")
    k = int(c.argmax())
    lag = k - (len(ref) - 1)
    seg = x[max(lag, 0):max(lag, 0) + len(ref)]
    r = ref[max(-lag, 0):max(-lag, 0) + len(seg)]
    return lag / SR, float(seg @ r / (np.linalg.norm(seg) * np.linalg.norm(r) + 1e-12))


@pytest.mark.parametrize("name", NAMES)
def test_wav_16k_mono_on_the_media_clock(run, name):
    """16 kHz mono PCM16 as long as the video; the voice at its media time (silence before a late start)."""
    var, _, info, wav = run(name)
    meta = sf.info(wav)
    assert (meta.samplerate, meta.channels, meta.subtype) == (SR, 1, "PCM_16")
    x, _ = sf.read(wav, dtype="float32")
    assert abs(len(x) / SR - info["duration"]) < 0.06
    assert info["has_audio"] is (var.audio is not None)
    if var.audio is None:
        assert not x.any()
        return
    start = var.audio.start
    ref = var.voice(SRC(), SR)
    lag, match = _lag_and_match(x, ref)
    assert lag == pytest.approx(start, abs=0.003) and match > 0.8, (lag, match)
    if start:
        assert np.abs(x[: int(start * SR) - 40]).max() < 1e-3           # silence before it


PEAK_RSS = """
import sys
from affect_pipeline.__main__ import main
from affect_pipeline.data.video import iter_frame_batches

def hwm():  # this process's peak RSS in MB (VmHWM: unlike ru_maxrss, not inherited over fork+exec)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) // 1024

video, out = sys.argv[1], sys.argv[2]
assert main(["extract_frames", "--video", video, "--out", out + ".json", "--audio-out", out + ".wav",
             "--sample-rate", "16000"]) == 0
stage = hwm()
n = sum(len(i) for i, _, _ in iter_frame_batches(video, 32))
print(stage, hwm(), n)
"""


@pytest.mark.slow
def test_long_video_memory_is_flat(tmp_path):
    """Peak RSS of extract_frames, then of streaming every frame in batches (crop_faces' decode),
    on 10 min of 64 px video is within a few MB of a 4 s one: nothing grows with length."""
    import subprocess
    import sys

    from wild_media import long_video

    peaks = {}
    for s in (4, 600):
        v = long_video(tmp_path / f"long{s}.mp4", s)
        p = subprocess.run([sys.executable, "-c", PEAK_RSS, str(v), str(tmp_path / f"out{s}")],
                           capture_output=True, text=True, check=True)
        stage, decode, n = map(int, p.stdout.split()[-3:])
        assert n == s * 25
        peaks[s] = (stage, decode)
    print(f"\npeak RSS MB (extract_frames, + batch decode): 4 s {peaks[4]}, 10 min {peaks[600]}")
    assert peaks[600][0] - peaks[4][0] < 25 and peaks[600][1] - peaks[4][1] < 25, peaks


def test_add_wild_variants_writes_an_affwild2_videos_folder(tmp_path):
    """The workflow hook: every playable variant as ``{prefix}{name}.{ext}``; the ids are the stems."""
    from wild_media import add_wild_variants

    from affect_pipeline.data.layout import VIDEO_EXTS
    from affect_pipeline.data.video import probe

    ids = add_wild_variants(tmp_path / "videos", names_prefix="w_")
    files = sorted((tmp_path / "videos").iterdir())
    assert sorted(f.stem for f in files) == sorted(ids) and len(ids) >= len(VARIANTS) - 2
    assert all(f.suffix in VIDEO_EXTS and probe(f)["width"] > 0 for f in files)
    assert "w_rotated" in ids and "w_overdeclared" in ids and not list(tmp_path.glob("videos/.*"))
