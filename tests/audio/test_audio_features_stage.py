"""audio_features as a rule runs it (a fresh interpreter): two runs give byte-identical shards (CPU,
one seed and thread count); a weights folder that is not there is one clear error naming it and
its config key, and no shard (nor ``.partial``) is written."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import torch
from conftest import REPO
from stage_errors import assert_clean_error, stage
from stage_inputs import sha, stage_cmd

from affect_pipeline.common.runtime import write_json

torch.set_num_threads(1)


ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1"}


def test_audio_features_twice_are_byte_identical(tmp_path):
    import soundfile as sf
    from conftest import workflow_defaults

    from affect_pipeline.audio.audio_features import model_params
    from affect_pipeline.common.feature_shards import FeatureShard
    from affect_pipeline.common.runtime import write_json
    from affect_pipeline.demo.make_demo_audio_models import make_demo_audio_models

    models = make_demo_audio_models(tmp_path / "models", seed=0)
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "a.wav", (0.2 * rng.standard_normal(3 * 16000)).astype(np.float32), 16000, subtype="PCM_16")
    write_json(tmp_path / "a.json", {"n_frames": 75, "fps": 25.0, "has_audio": True,
                                     "timestamps": [i / 25 for i in range(75)]})
    outs = []
    for rep in ("a", "b"):
        out = tmp_path / rep / "vggish.h5"
        p = subprocess.run(stage_cmd("audio_features", "--model", "vggish", "--weights", models / "vggish.pth",
                                     "--videos", json.dumps({"v": "a"}), "--audio", tmp_path / "a.wav",
                                     "--frames", tmp_path / "a.json", "--out", out,
                                     "--params", json.dumps(model_params(workflow_defaults()["audio"], "vggish"))),
                           env=ENV, capture_output=True, text=True, timeout=180)
        assert p.returncode == 0, p.stderr[-3000:]
        outs.append(out)
    assert sha(outs[0]) == sha(outs[1])
    with FeatureShard(outs[0]) as sh:
        assert sh.read("v").features.std() > 0


def test_missing_audio_weights_folder(tmp_path):
    frames = tmp_path / "v.json"
    write_json(frames, {"n_frames": 5, "fps": 25.0, "has_audio": True, "timestamps": [i / 25 for i in range(5)]})
    from conftest import workflow_defaults

    from affect_pipeline.audio.audio_features import model_params

    absent = tmp_path / "models" / "hubert"
    out = tmp_path / "features" / "hubert.h5"
    p = stage("audio_features", "--model", "hubert", "--weights", absent, "--weights-key", "audio.hubert.weights",
              "--videos", json.dumps({"v": "v"}), "--audio", tmp_path / "v.wav", "--frames", frames, "--out", out,
              "--params", json.dumps(model_params(workflow_defaults()["audio"], "hubert")))
    assert_clean_error(p, "audio_features", absent, "audio.hubert.weights")
    assert not out.exists() and not Path(f"{out}.partial").exists()
