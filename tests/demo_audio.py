"""Fixtures shared by the audio tests: no hub access, and the demo's small audio models (one set a
test module). A test module takes them with ``from demo_audio import _offline, models``."""
import pytest
import torch

from affect_pipeline.demo.make_demo_audio_models import make_demo_audio_models


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.set_num_threads(1)
    return make_demo_audio_models(tmp_path_factory.mktemp("audio") / "models", seed=0)
