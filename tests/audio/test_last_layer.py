"""``audio.<model>.layer: -1`` is the model's output (transformers' ``last_hidden_state``, fairseq's
features) for pre-norm ("stable layer norm": HuBERT-Large/XL, wav2vec2-large-lv60) and post-norm
(Base) encoders, in every weights format. transformers 5's ``hidden_states[-1]`` of a pre-norm
encoder is the last layer's output *before* the encoder's final LayerNorm: the check would fail
on it (asserted below). Small random models: 2 layers, hidden 32, every parameter perturbed."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from affect_pipeline.audio import models as am
from affect_pipeline.demo.make_demo_audio_models import export_fairseq, export_torchaudio

SR = 16000
TOL = 1e-4     # float32, the same weights run by transformers and by torchaudio


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def small_model(out, name: str, pre_norm: bool):
    """A save_pretrained folder of a 2-layer, 32-d HuBERT / wav2vec2; pre_norm: do_stable_layer_norm
    with the large models' LayerNorm conv stack, else the Base models' GroupNorm one."""
    from transformers import (
        HubertConfig,
        HubertModel,
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2Model,
    )

    kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16,) * 7,
              num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, do_stable_layer_norm=pre_norm,
              feat_extract_norm="layer" if pre_norm else "group", conv_bias=pre_norm)
    cfg = HubertConfig(**kw) if name == "hubert" else Wav2Vec2Config(**kw, codevector_dim=16, proj_codevector_dim=16)
    torch.manual_seed(0)
    net = (HubertModel if name == "hubert" else Wav2Vec2Model)(cfg).eval()
    with torch.no_grad():
        for p in net.parameters():            # norm gains and biases too: a fresh LayerNorm is ~identity
            p.add_(0.1 * torch.randn_like(p))
    net.save_pretrained(out)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False).save_pretrained(out)
    return out, net


def audio(seconds=1.0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.2 * rng.standard_normal(len(t)) + 0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)[None]


@pytest.mark.parametrize("pre_norm", [True, False], ids=["pre-norm", "post-norm"])
@pytest.mark.parametrize("name", ["hubert", "wav2vec2"])
def test_last_layer_is_the_models_output(tmp_path, name, pre_norm):
    torch.set_num_threads(1)
    folder, net = small_model(tmp_path / name, name, pre_norm)
    x = audio()
    with torch.inference_mode():
        ref = net(torch.from_numpy(x), output_hidden_states=True)
    final, raw = ref.last_hidden_state.numpy(), [h.numpy() for h in ref.hidden_states]
    gap = np.abs(raw[-1] - final).max()
    assert (gap > 0.1) if pre_norm else (gap == 0), gap      # what the last state would be without the fix
    formats = {"hf": folder, "torchaudio": export_torchaudio(folder, tmp_path / f"{name}.pth"),
               "fairseq": export_fairseq(folder, tmp_path / f"{name}.pt", name)}
    for fmt, weights in formats.items():
        m = {layer: am.load_audio_model(name, weights, {"layer": layer}) for layer in (-1, 2, 1, 0, "mean")}
        assert m[-1].backend == ("transformers" if fmt == "hf" else "torchaudio")
        out = {layer: a.forward(x) for layer, a in m.items()}
        for layer, want in ((-1, final), (2, final), (1, raw[1]), (0, raw[0]),
                            ("mean", np.mean([raw[0], raw[1], final], 0))):
            assert np.abs(out[layer] - want).max() < TOL, (fmt, layer)
        if fmt != "hf":      # fairseq's / torchaudio's own forward: the encoder's output
            with torch.inference_mode():
                own, _ = m[-1].net(torch.from_numpy(x))
            assert np.abs(out[-1] - own.numpy()).max() < TOL, fmt


def test_early_stop_keeps_intermediate_layers_raw(tmp_path):
    """Asking for a middle layer stops there; that state has no final norm (only the last gets it)."""
    folder, net = small_model(tmp_path / "w", "wav2vec2", True)
    ta = am.load_audio_model("wav2vec2", export_torchaudio(folder, tmp_path / "w.pth"), {"layer": 1})
    x = torch.from_numpy(audio())
    with torch.inference_mode():
        part, full = am.torchaudio_hidden_states(ta.net, x, 1), am.torchaudio_hidden_states(ta.net, x)
        ref = net(x, output_hidden_states=True)
    assert part[2] is None and torch.equal(part[1], full[1])
    assert (part[1] - ref.hidden_states[1]).abs().max() < TOL
    assert (full[2] - ref.last_hidden_state).abs().max() < TOL
