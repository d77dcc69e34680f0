"""audio_features as rules/audio.smk runs it: ``--videos=@FILE`` (the {video id: media stem} list the
rule writes), ``--audio`` / ``--frames`` given extract_frames' batch folders. An id that looks like
an option (``-8XbT1X7Lq0``) is read as an id; a video whose media file did not decode (its frames
JSON records ``error``, it has no wav) is left out and named in the log, while its batch mates get
their features."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from affect_pipeline.__main__ import main as cli
from affect_pipeline.audio import audio_features as af
from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.feature_shards import FeatureShard
from affect_pipeline.demo.make_demo_audio_models import make_demo_audio_models

SR = 16000
DASHED = "-8XbT1X7Lq0"       # a YouTube id: argparse would read it as an option


@pytest.fixture(scope="module")
def vggish(tmp_path_factory):
    torch.set_num_threads(1)
    return make_demo_audio_models(tmp_path_factory.mktemp("audio") / "models", seed=0) / "vggish.pth"


def batch(root, media: dict[str, bool]):
    """extract_frames' batch folders (frames/b0, audio/b0): per media stem, a decode (True: 1 s of
    noise, 25 frames) or a failed decode (False: the error record, no wav)."""
    frames, audio = root / "frames" / "b0", root / "audio" / "b0"
    frames.mkdir(parents=True)
    audio.mkdir(parents=True)
    for i, (m, ok) in enumerate(media.items()):
        if not ok:
            (frames / f"{m}.json").write_text(json.dumps({"error": "InvalidDataError: moov atom not found",
                                                          "media": m, "video": f"/data/{m}.mp4"}))
            continue
        x = (0.2 * np.random.default_rng(i).standard_normal(SR)).astype(np.float32)
        sf.write(audio / f"{m}.wav", x, SR, subtype="PCM_16")
        (frames / f"{m}.json").write_text(json.dumps({"n_frames": 25, "fps": 25.0, "has_audio": True,
                                                      "timestamps": [k / 25 for k in range(25)]}))
    return frames, audio


def run(vggish, root, videos: dict[str, str], frames, audio):
    from conftest import workflow_defaults

    listed = root / "videos.json"
    listed.write_text(json.dumps(videos))
    params = {**af.model_params(workflow_defaults()["audio"], "vggish"), "chunk_seconds": 2.0, "overlap_seconds": 1.0}
    out = root / "vggish.h5"
    rc = cli(["audio_features", "--model", "vggish", "--weights", str(vggish), f"--videos=@{listed}",
              "--audio", str(audio), "--frames", str(frames), "--out", str(out), "--params", json.dumps(params),
              "--threads", "1", "--device", "cpu"])
    return rc, out


def groups(out) -> set[str]:
    import h5py

    with h5py.File(out) as f:
        return set(f)


def test_option_like_id_from_a_list_file_and_batch_folders(vggish, tmp_path):
    frames, audio = batch(tmp_path, {DASHED: True, "b": True})
    rc, out = run(vggish, tmp_path, {DASHED: DASHED, f"{DASHED}_left": DASHED, "b": "b"}, frames, audio)
    assert rc == 0
    assert groups(out) == {DASHED, f"{DASHED}_left", "b"}
    with FeatureShard(out) as sh:
        f = sh.read(DASHED)
        assert f.features.shape[0] == 25 and f.valid.all() and f.features.std() > 0


def test_failed_decode_is_left_out_and_its_batch_mates_get_features(vggish, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="affect_pipeline.audio.audio_features")
    frames, audio = batch(tmp_path, {"a": True, "bad": False, "c": True})
    rc, out = run(vggish, tmp_path, {"a": "a", "bad": "bad", "bad_right": "bad", "c": "c"}, frames, audio)
    assert rc == 0
    assert groups(out) == {"a", "c"}
    left_out = [r.getMessage() for r in caplog.records if "did not decode" in r.getMessage()]
    assert len(left_out) == 2 and all(str(frames / "bad.json") in m and "moov atom not found" in m
                                      for m in left_out), left_out
    assert any(m.startswith("video bad_right:") for m in left_out)


def test_media_inputs_expand_folders_and_still_refuse_a_missing_wav(tmp_path):
    frames, audio = batch(tmp_path, {"a": True, "bad": False})
    got = af.media_inputs({"a": "a", "bad": "bad"}, [audio], [frames])
    assert got == {"a": af.Media("a", audio / "a.wav", frames / "a.json")}
    (audio / "a.wav").unlink()              # decoded, but its wav is gone: an error, not a skip
    with pytest.raises(PipelineError, match="video a: no --audio file for its media 'a'"):
        af.media_inputs({"a": "a"}, [audio], [frames])
