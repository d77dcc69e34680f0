"""torchaudio in the audio stage: HuBERT / wav2vec2 weights as save_pretrained folders, torchaudio
bundle state dicts (.pth + sidecar, or a bundle's shapes) and fairseq checkpoints give the same
features; fairseq pickles load without running code; the VGGish log-mel front end (torchaudio)
matches torchvggish's reference.

Tolerances: features of one set of weights in any format, max abs diff < 1e-4 (float32; features
are O(1)); VGGish log-mel (values in about [-4.6, 4]) vs torchvggish's float64 numpy: mean abs diff
< 1e-5 and max < 5e-4 (float32 FFT: its error is relative to a frame's loudest bin, so bins 40 dB
below it carry ~1e-4), on the CPU and on a GPU."""
from __future__ import annotations

import dataclasses
import json
import sys
import types

import numpy as np
import pytest
import torch

from affect_pipeline.__main__ import main as cli
from affect_pipeline.audio import audio_features as af
from affect_pipeline.audio import models as am
from affect_pipeline.audio.checkpoints import bundle_spec
from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.feature_shards import FeatureShard
from affect_pipeline.demo.make_demo_audio_models import (
    demo_configs,
    export_fairseq,
    export_torchaudio,
)

SR = 16000
TOL = 1e-4
MEL_MEAN_TOL, MEL_MAX_TOL = 1e-5, 5e-4
LAYERS = (-1, 0, 1, "mean")
#: hubert: the demo's layout (LayerNorm conv stack, post-norm encoder, input normalised);
#: wav2vec2: the other layout (GroupNorm conv stack with biases, pre-norm "stable" encoder, raw input)
VARIANTS = {"hubert": ({}, True),
            "wav2vec2": (dict(feat_extract_norm="group", do_stable_layer_norm=True, conv_bias=True), False)}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def noise(seconds, seed=0):
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 0.7 * t)
    tone = 0.3 * np.sin(2 * np.pi * (200 + 300 * env) * t)
    return (0.2 * env * rng.standard_normal(len(t)) + tone).astype(np.float32)


def hf_folder(out, name):
    """A small HF model with *every* parameter perturbed (norm gains and biases too, which a fresh
    init leaves at 1 / 0 where a misplaced LayerNorm would go unseen), saved with save_pretrained."""
    from transformers import (
        HubertConfig,
        HubertModel,
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2Model,
    )

    over, normalize = VARIANTS[name]
    torch.manual_seed(0)
    cfg = (HubertConfig if name == "hubert" else Wav2Vec2Config)(**{**demo_configs()[name].to_dict(), **over})
    net = (HubertModel if name == "hubert" else Wav2Vec2Model)(cfg).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    net.save_pretrained(out)
    Wav2Vec2FeatureExtractor(do_normalize=normalize, return_attention_mask=False).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    """{model: {format: weights path}}: one set of weights per model, saved four ways."""
    torch.set_num_threads(1)
    root, out = tmp_path_factory.mktemp("ckpt"), {}
    for name in VARIANTS:
        hf = hf_folder(root / name, name)
        out[name] = {"hf": hf, "torchaudio": export_torchaudio(hf, root / f"{name}.pth"),
                     "fairseq_cfg": export_fairseq(hf, root / f"{name}.pt", name),
                     "fairseq_args": export_fairseq(hf, root / f"{name}_args.pt", name, use_args=True)}
    return out


# ---------------------------------------------------------------- same weights, same features
@pytest.mark.parametrize("name", VARIANTS)
def test_same_features_from_every_format(formats, name):
    """The stage's code path (whole-file normalisation, 2 s chunks, alignment to 25 fps frames) on
    the same audio: every format and layer within TOL of the transformers folder."""
    wav, t, ch = noise(4.0, seed=2), np.arange(0, 4.0, 1 / 25), af.Chunking(2.0, 1.0, 2)
    loaded = {f: am.load_audio_model(name, p, {"layer": -1}) for f, p in formats[name].items()}
    ref = loaded["hf"]
    assert ref.backend == "transformers" and loaded["fairseq_cfg"].backend == "torchaudio"
    assert ref.normalize is VARIANTS[name][1]
    by_layer = {}
    for layer in LAYERS:
        feats = {f: af.extract(dataclasses.replace(m, layer=layer), wav, SR, t, ch)[0] for f, m in loaded.items()}
        for f, m in loaded.items():
            assert (m.stride, m.rf, m.dim, m.sample_rate, m.normalize) == (ref.stride, ref.rf, ref.dim, 16000,
                                                                          ref.normalize), f
            assert np.abs(feats[f] - feats["hf"]).max() < TOL, (f, layer)
        by_layer[layer] = feats["hf"]
    # the check can fail: neighbouring layers differ by far more than TOL
    assert min(np.abs(by_layer[a] - by_layer[b]).mean() for a, b in ((-1, 1), (0, 1), (0, "mean"))) > 1000 * TOL
    assert len({m.digest for m in loaded.values()}) == 4          # the weights file is the identity


def test_hidden_states_stop_early(formats):
    """Only the states a layer needs are computed, and they equal the full pass."""
    m = am.load_audio_model("hubert", formats["hubert"]["torchaudio"], {"layer": 0})
    x = torch.from_numpy(noise(1.0)[None])
    with torch.inference_mode():
        full, part = am.torchaudio_hidden_states(m.net, x), am.torchaudio_hidden_states(m.net, x, 1)
    assert part[2] is None and torch.equal(part[1], full[1]) and len(full) == len(part) == 3


def test_stage_runs_a_fairseq_checkpoint(formats, tmp_path):
    """audio_features end to end from a fairseq .pt: the shard equals the one from the folder."""
    import soundfile as sf

    from affect_pipeline.common.runtime import write_json

    sf.write(tmp_path / "a.wav", noise(3.0), SR, subtype="FLOAT")
    n = 75
    write_json(tmp_path / "a.json", {"path": "a.mp4", "n_frames": n, "fps": 25.0, "has_audio": True,
                                     "timestamps": (np.arange(n) / 25).tolist()})
    params = {"sample_rate": SR, "chunk_seconds": 2.0, "overlap_seconds": 1.0, "batch_size": 2,
              "hubert": {"weights": None, "layer": -1}}
    got = {}
    for f in ("hf", "fairseq_cfg"):
        out = tmp_path / f"{f}.h5"
        assert cli(["audio_features", "--model", "hubert", "--weights", str(formats["hubert"][f]),
                    "--videos", json.dumps({"a": "a"}), "--audio", str(tmp_path / "a.wav"),
                    "--frames", str(tmp_path / "a.json"), "--out", str(out), "--params", json.dumps(params),
                    "--threads", "1", "--device", "cpu"]) == 0
        with FeatureShard(out) as sh:
            got[f] = sh.read("a")
    np.testing.assert_array_equal(got["hf"].valid, got["fairseq_cfg"].valid)
    np.testing.assert_allclose(got["fairseq_cfg"].features, got["hf"].features, atol=1e-3)   # float16 store
    assert got["hf"].attrs["feature_stride_s"] == got["fairseq_cfg"].attrs["feature_stride_s"]


# ---------------------------------------------------------------- bundle files without a sidecar
@pytest.mark.parametrize("bundle", ["HUBERT_BASE", "HUBERT_LARGE", "WAV2VEC2_BASE", "WAV2VEC2_LARGE_LV60K"])
def test_bundle_state_dict_gets_its_bundles_config(bundle, tmp_path):
    """A released bundle file's keys and shapes (old weight_g / weight_v spelling; shapes only, on
    the meta device) are recognised as that bundle: its arguments and its input normalisation."""
    import torchaudio.pipelines as tp
    from torchaudio.models import wav2vec2_model

    from affect_pipeline.demo.make_demo_audio_models import _old_weight_norm_keys

    b = getattr(tp, bundle)
    with torch.device("meta"):
        sd = _old_weight_norm_keys(wav2vec2_model(**b._params).state_dict())
    spec = bundle_spec(sd, tmp_path / "w.pth", bundle.split("_")[0].lower())
    same = lambda p: {k: v for k, v in p.items() if "drop" not in k and k != "aux_num_out"}  # noqa: E731
    assert same(spec.params) == same(b._params)       # dropouts differ among fits (ASR bundles): unused
    assert spec.normalize == b._normalize_waveform and spec.sample_rate == 16000


def test_torchaudio_file_errors_name_the_file(formats, tmp_path):
    src = formats["hubert"]["torchaudio"]
    lone = tmp_path / "lone.pth"
    lone.write_bytes(src.read_bytes())                   # no sidecar, and no bundle has these shapes
    with pytest.raises(PipelineError, match=r"lone\.pth: .*no torchaudio.pipelines HUBERT_\* bundle.*lone\.json"):
        am.load_audio_model("hubert", lone, {"layer": -1})
    cfg = json.loads(src.with_suffix(".json").read_text())
    (tmp_path / "lone.json").write_text(json.dumps({**cfg, "encoder_heads": 2}))
    with pytest.raises(PipelineError, match=r"lone\.json: .*unknown: \['encoder_heads'\]"):
        am.load_audio_model("hubert", lone, {"layer": -1})
    (tmp_path / "lone.json").write_text(json.dumps({**cfg, "encoder_embed_dim": 48}))
    with pytest.raises(PipelineError, match=r"lone\.pth: weights do not fit torchaudio wav2vec2_model"):
        am.load_audio_model("hubert", lone, {"layer": -1})
    torch.save({"fc.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(PipelineError, match=r"other\.pt: neither a torchaudio .* nor a fairseq"):
        am.load_audio_model("hubert", tmp_path / "other.pt", {"layer": -1})
    with pytest.raises(PipelineError, match=r"audio\.hubert\.layer = 3"):
        am.load_audio_model("hubert", src, {"layer": 3})


# ---------------------------------------------------------------- fairseq checkpoints
def test_fairseq_checkpoint_errors(formats, tmp_path):
    with pytest.raises(PipelineError, match=r"wav2vec2\.pt: a fairseq 'wav2vec2' checkpoint, expected 'hubert'"):
        am.load_audio_model("hubert", formats["wav2vec2"]["fairseq_cfg"], {"layer": -1})
    ck = torch.load(formats["hubert"]["fairseq_cfg"], weights_only=False)
    ck["cfg"]["model"]["w2v_args"] = {"model": {}}
    torch.save(ck, tmp_path / "ft.pt")
    with pytest.raises(PipelineError, match=r"ft\.pt: a fine-tuned fairseq checkpoint"):
        am.load_audio_model("hubert", tmp_path / "ft.pt", {"layer": -1})
    del ck["cfg"]["model"]["w2v_args"]
    ck["cfg"]["model"]["conv_feature_layers"] = "__import__('os').getcwd()"
    torch.save(ck, tmp_path / "expr.pt")
    with pytest.raises(PipelineError, match=r"expr\.pt: unreadable conv_feature_layers"):
        am.load_audio_model("hubert", tmp_path / "expr.pt", {"layer": -1})


class _Canary:
    """Unpickling this would delete ``path``: a stand-in for code a checkpoint could carry."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os

        return os.remove, (str(self.path),)


def _fake_module(monkeypatch, dotted, **attrs):
    """Register ``dotted`` (and its parents) in sys.modules so pickle can name a class there."""
    parts = dotted.split(".")
    for i in range(1, len(parts) + 1):
        monkeypatch.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    for k, v in attrs.items():
        v.__module__, v.__qualname__ = dotted, k
        setattr(sys.modules[dotted], k, v)


def test_fairseq_pickles_load_inert_and_code_is_refused(formats, tmp_path, monkeypatch):
    """Real fairseq checkpoints pickle fairseq classes (task dictionaries): they load as inert stubs
    without fairseq installed; any other global (here: os.remove) is refused and never runs."""
    hf = formats["hubert"]["hf"]
    with monkeypatch.context() as mp:
        class Dictionary:
            def __init__(self):
                self.symbols, self.indices = ["<s>", "<pad>", "0", "1"], {"0": 2, "1": 3}
        _fake_module(mp, "fairseq.data.dictionary", Dictionary=Dictionary)
        real = export_fairseq(hf, tmp_path / "real.pt", "hubert",
                              extra={"task_state": {"dictionaries": [Dictionary()]}})
    assert "fairseq" not in sys.modules
    m = am.load_audio_model("hubert", real, {"layer": -1})
    ref = am.load_audio_model("hubert", hf, {"layer": -1})
    x = noise(1.0)[None]
    assert np.abs(m.forward(x) - ref.forward(x)).max() < TOL

    canary = tmp_path / "canary"
    canary.write_text("alive")
    export_fairseq(hf, tmp_path / "evil.pt", "hubert", extra={"extra_state": {"x": _Canary(canary)}})
    with pytest.raises(PipelineError, match=r"evil\.pt: refused to load.*(posix|os)\.remove"):
        am.load_audio_model("hubert", tmp_path / "evil.pt", {"layer": -1})
    assert canary.read_text() == "alive"


# ---------------------------------------------------------------- VGGish front end vs torchvggish
def _reference_examples(wav: np.ndarray, hop: int) -> np.ndarray:
    """torchvggish's own front end (numpy, float64): waveform_to_examples at its 0.96 s framing, and
    its log_mel_spectrogram + frame for other hops."""
    from torchvggish import mel_features, vggish_input
    from torchvggish import vggish_params as vp

    if hop == 96:
        return vggish_input.waveform_to_examples(wav.astype(np.float64), SR, return_tensor=False)
    log_mel = mel_features.log_mel_spectrogram(
        wav.astype(np.float64), audio_sample_rate=SR, log_offset=vp.LOG_OFFSET,
        window_length_secs=vp.STFT_WINDOW_LENGTH_SECONDS, hop_length_secs=vp.STFT_HOP_LENGTH_SECONDS,
        num_mel_bins=vp.NUM_MEL_BINS, lower_edge_hertz=vp.MEL_MIN_HZ, upper_edge_hertz=vp.MEL_MAX_HZ)
    return mel_features.frame(log_mel, 96, hop)


def _frontend_check(device):
    waves = np.stack([noise(4.5, seed=1), noise(4.5, seed=2) * 0.01])    # loud and near-silent
    for hop in (96, 24):
        fe = am.make_log_mel(hop).to(device)
        with torch.inference_mode():
            got = fe(torch.from_numpy(waves).to(device)).cpu().numpy()
        for w, g in zip(waves, got):
            ref = _reference_examples(w, hop)
            assert g.shape == ref.shape == (((len(w) - 400) // 160 + 1 - 96) // hop + 1, 96, 64)
            err = np.abs(g - ref)
            assert err.mean() < MEL_MEAN_TOL and err.max() < MEL_MAX_TOL, (device, hop, err.mean(), err.max())
        assert np.abs(got[0] - got[1]).mean() > 1000 * MEL_MAX_TOL     # the check can fail
    with torch.inference_mode():
        assert am.make_log_mel(24).to(device)(torch.zeros(1, 15599, device=device)).shape == (1, 0, 96, 64)


def test_vggish_frontend_matches_torchvggish_on_cpu():
    _frontend_check("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the stage's GPU path)")
def test_vggish_frontend_matches_torchvggish_on_gpu():
    _frontend_check("cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):                  # the stage runs under bf16 autocast
        _frontend_check("cuda")


def test_stage_vggish_uses_the_torch_frontend():
    """AudioModel.forward (front end on the model's device, then the VGG) = the same VGG on
    torchvggish's reference examples (hop 0.96 s)."""
    from affect_pipeline.demo.make_demo_audio_models import DEMO_VGGISH

    torch.manual_seed(0)
    net = am.make_vggish(**DEMO_VGGISH).eval()
    m = am.AudioModel("vggish", net, torch.device("cpu"), SR, 160 * 96, 15600, 128, "d", hop_frames=96,
                      backend="vggish", frontend=am.make_log_mel(96))
    wav = noise(3.0)
    with torch.inference_mode():
        want = net(torch.from_numpy(_reference_examples(wav, 96)).float()[:, None]).numpy()
    got = m.forward(np.stack([wav, wav]))
    assert got.shape == (2, 3, 128)
    err = np.abs(got[1] - want).max()
    assert err < 1e-5 and np.abs(want[1:] - want[:-1]).mean() > 20 * err      # the check can fail
