"""audio_features resumes only what is still true (issue 32, item 3): each video's group in the
``{out}.partial`` shard records the content digests of the wav and frames JSON it was computed
from; a rerun redoes a video whose inputs changed (saying which), reuses one whose inputs are
byte-identical (even if rewritten: mtime is not trusted either way), and redoes groups of a
partial shard that recorded no input digests. Real demo models, real files, the stage's own CLI.
"""
from __future__ import annotations

import copy
import json
import logging
import os

import numpy as np
import soundfile as sf
from conftest import workflow_defaults
from demo_audio import _offline, models  # noqa: F401  (fixtures)

from affect_pipeline.__main__ import main as cli
from affect_pipeline.audio import audio_features as af
from affect_pipeline.common.feature_shards import FeatureShard

SR = 16000
AUDIO = workflow_defaults()["audio"]
MODEL = "hubert"


def tone(seconds, seed=0):
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    return (0.2 * rng.standard_normal(len(t)) + 0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def write_media(folder, media, fps, n, has_audio, seed=0):
    """What extract_frames writes for one media file: the wav (silence of the video's duration
    when it has no audio) and the frames JSON (``has_audio`` false then)."""
    sf.write(folder / f"{media}.wav", tone(n / fps, seed) if has_audio else np.zeros(int(n / fps * SR), np.float32),
             SR, subtype="PCM_16")
    (folder / f"{media}.json").write_text(json.dumps(
        {"path": f"{media}.mp4", "n_frames": n, "fps": fps, "width": 64, "height": 64, "duration": n / fps,
         "has_audio": has_audio, "audio_sample_rate": SR, "codec": "h264", "vfr": False,
         "timestamps": (np.arange(n) / fps).tolist()}))


def run(models, folder, videos, out):
    media = sorted(set(videos.values()))
    params = {**af.model_params(copy.deepcopy(AUDIO), MODEL), "chunk_seconds": 2.0, "overlap_seconds": 1.0}
    return cli(["audio_features", "--model", MODEL, "--weights", str(models / MODEL),
                "--weights-key", f"audio.{MODEL}.weights", "--videos", json.dumps(videos),
                "--audio", *(str(folder / f"{m}.wav") for m in media),
                "--frames", *(str(folder / f"{m}.json") for m in media),
                "--out", str(out), "--params", json.dumps(params), "--threads", "1", "--device", "cpu"])


def read(out, video):
    with FeatureShard(out) as sh:
        return sh.read(video)


def computed(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "] computed " in r.getMessage()]


def _partial_with_a_done(models, tmp_path, capsys):
    """Video a (1 s with audio, 30 frames) finished in the partial shard; b's wav is corrupt, so
    the job fails and keeps the partial for the next attempt."""
    write_media(tmp_path, "a", 30, 30, True)
    write_media(tmp_path, "b", 25, 25, True, seed=1)
    good_b = (tmp_path / "b.wav").read_bytes()
    (tmp_path / "b.wav").write_bytes(b"RIFF" + bytes(range(256)) * 8)
    out = tmp_path / "hubert.h5"
    assert run(models, tmp_path, {"a": "a", "b": "b"}, out) == 1
    assert "ERROR [audio_features]: video b:" in capsys.readouterr().err
    with FeatureShard(f"{out}.partial") as sh:
        assert sh.videos() == ["a"]
        assert int(sh.read("a").valid.sum()) == 30 and bool(sh.read("a").attrs["has_audio"])
    (tmp_path / "b.wav").write_bytes(good_b)
    return out


def test_a_video_whose_wav_and_frames_changed_is_redone(models, tmp_path, capsys, caplog):
    """The issue's case: a's media replaced by one without audio and extract_frames rerun (a
    silent wav, has_audio false). The resumed shard says 0 valid frames and has_audio false, as
    a fresh run does; the log names the video and what changed."""
    out = _partial_with_a_done(models, tmp_path, capsys)
    write_media(tmp_path, "a", 30, 30, False)
    caplog.set_level(logging.INFO, logger="affect_pipeline")
    assert run(models, tmp_path, {"a": "a", "b": "b"}, out) == 0
    assert [c.split("computed ")[1].split(":")[0] for c in computed(caplog)] == ["a", "b"]
    said = [r.getMessage() for r in caplog.records if "changed since" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("video a: its frames and wav changed since")
    got = read(out, "a")
    assert int(got.valid.sum()) == 0 and not got.attrs["has_audio"] and not got.features.any()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    for m in "ab":
        for ext in ("wav", "json"):
            (fresh / f"{m}.{ext}").write_bytes((tmp_path / f"{m}.{ext}").read_bytes())
    assert run(models, fresh, {"a": "a", "b": "b"}, fresh / "hubert.h5") == 0
    for v in "ab":
        ref = read(fresh / "hubert.h5", v)
        np.testing.assert_array_equal(read(out, v).valid, ref.valid)
        np.testing.assert_array_equal(read(out, v).features, ref.features)


def test_only_the_frames_json_changed(models, tmp_path, capsys, caplog):
    """The same wav, frames JSON rewritten with another frame count: a is redone, the log says
    its frames changed (not its wav), and its group has the new frame count."""
    out = _partial_with_a_done(models, tmp_path, capsys)
    wav = (tmp_path / "a.wav").read_bytes()
    write_media(tmp_path, "a", 30, 24, True)
    (tmp_path / "a.wav").write_bytes(wav)
    caplog.set_level(logging.INFO, logger="affect_pipeline")
    assert run(models, tmp_path, {"a": "a", "b": "b"}, out) == 0
    said = [r.getMessage() for r in caplog.records if "changed since" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("video a: its frames changed since")
    assert read(out, "a").features.shape[0] == 24


def test_identical_inputs_rewritten_are_reused(models, tmp_path, capsys, caplog):
    """extract_frames rerun on the same media writes the same bytes (new mtime): a is not
    recomputed, b is."""
    out = _partial_with_a_done(models, tmp_path, capsys)
    for ext in ("wav", "json"):
        p = tmp_path / f"a.{ext}"
        data = p.read_bytes()
        p.unlink()
        p.write_bytes(data)
        os.utime(p, (1e9, 1e9))
    caplog.set_level(logging.INFO, logger="affect_pipeline")
    assert run(models, tmp_path, {"a": "a", "b": "b"}, out) == 0
    assert [c.split("computed ")[1].split(":")[0] for c in computed(caplog)] == ["b"]
    assert not any("changed since" in r.getMessage() for r in caplog.records)


def test_a_group_without_input_digests_is_redone(models, tmp_path, capsys, caplog):
    """A partial shard written before groups recorded their inputs (same settings fingerprint):
    its groups cannot be trusted, so they are recomputed."""
    import h5py

    out = _partial_with_a_done(models, tmp_path, capsys)
    with h5py.File(f"{out}.partial", "a") as f:
        del f["a"].attrs["input_wav"], f["a"].attrs["input_frames"]
    caplog.set_level(logging.INFO, logger="affect_pipeline")
    assert run(models, tmp_path, {"a": "a", "b": "b"}, out) == 0
    assert sorted(c.split("computed ")[1].split(":")[0] for c in computed(caplog)) == ["a", "b"]
