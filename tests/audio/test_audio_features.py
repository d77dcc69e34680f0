"""audio_features / audio_models: offline loading, the feature grid, alignment, chunking, the
one-job-per-model shard (left/right pairs, resume, per-model params), the CLI end to end."""
from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import workflow_defaults
from demo_audio import _offline, models  # noqa: F401  (fixtures)

from affect_pipeline.__main__ import main as cli
from affect_pipeline.audio import audio_features as af
from affect_pipeline.audio import models as am
from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.feature_shards import FeatureShard
from affect_pipeline.demo.make_demo_audio_models import make_demo_audio_models

SR = 16000
#: the config's audio section (workflow_config.yaml: the one source of defaults)
AUDIO = workflow_defaults()["audio"]
CHUNKS = af.Chunking(AUDIO["chunk_seconds"], AUDIO["overlap_seconds"], AUDIO["batch_size"])


def settings(name, **over):
    """audio.<name> of the defaults, with ``over`` replacing keys."""
    return {**copy.deepcopy(AUDIO[name]), **over}


def weights(models, name):
    return models / ("vggish.pth" if name == "vggish" else name)


def noise(seconds, seed=0):
    """Noise with a slowly varying envelope and tones, so features change over time."""
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 0.7 * t)
    return (0.2 * env * rng.standard_normal(len(t)) + 0.3 * np.sin(2 * np.pi * (200 + 300 * env) * t)).astype(np.float32)


# ---------------------------------------------------------------- loading
@pytest.mark.parametrize("name", am.MODELS)
def test_demo_models_load_offline(models, name):
    m = am.load_audio_model(name, weights(models, name), settings(name))
    assert m.dim == (128 if name == "vggish" else 32) and len(m.digest) == 16
    if name == "vggish":   # 0.96 s windows every 0.24 s (default hop)
        assert (m.stride, m.rf) == (3840, 15600)
        np.testing.assert_allclose(m.centres([0, 1, 10]), [0.4875, 0.7275, 2.8875], atol=1e-4)
    else:                  # 20 ms frames, 25 ms receptive field
        assert (m.stride, m.rf, m.normalize) == (320, 400, True)
        np.testing.assert_allclose(m.centres([0, 1, 50]), [0.0125, 0.0325, 1.0125], atol=1e-4)


def test_demo_models_deterministic(models, tmp_path):
    again = make_demo_audio_models(tmp_path / "m", seed=0)
    for name in ("hubert/model.safetensors", "wav2vec2/model.safetensors"):
        assert (again / name).read_bytes() == (models / name).read_bytes()
    a, b = torch.load(again / "vggish.pth"), torch.load(models / "vggish.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["hubert", "wav2vec2"])
def test_grid_matches_model_output_length(models, name):
    """The closed-form feature count (stride, rf) equals what the real conv stack produces."""
    m = am.load_audio_model(name, weights(models, name), settings(name))
    for n in (400, 719, 720, 16000, 16321):
        assert m.forward(np.zeros((1, n), np.float32)).shape[1] == m.n_features(n)


def test_hf_layer_selection(models):
    x = noise(1.0)[None]
    net = am.load_audio_model("hubert", weights(models, "hubert"), settings("hubert")).net
    with torch.inference_mode():
        ref = net(torch.from_numpy(x), output_hidden_states=True)
    last = am.load_audio_model("hubert", weights(models, "hubert"), settings("hubert", layer=-1)).forward(x)
    first = am.load_audio_model("hubert", weights(models, "hubert"), settings("hubert", layer=0)).forward(x)
    mean = am.load_audio_model("hubert", weights(models, "hubert"), settings("hubert", layer="mean")).forward(x)
    np.testing.assert_allclose(last, ref.last_hidden_state.numpy(), atol=1e-5)
    np.testing.assert_allclose(first, ref.hidden_states[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(mean, torch.stack(ref.hidden_states).mean(0).numpy(), atol=1e-5)
    with pytest.raises(PipelineError, match="audio.hubert.layer"):
        am.load_audio_model("hubert", weights(models, "hubert"), settings("hubert", layer=7))


def test_missing_or_wrong_weights_name_the_key(models, tmp_path):
    with pytest.raises(PipelineError, match=r"nope.*audio\.hubert\.weights"):
        am.load_audio_model("hubert", tmp_path / "nope", settings("hubert"))
    with pytest.raises(PipelineError, match=r"model_type is 'wav2vec2'.*audio\.hubert\.weights"):
        am.load_audio_model("hubert", models / "wav2vec2", settings("hubert"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match=r"no config.json.*my\.key"):
        am.load_audio_model("wav2vec2", tmp_path / "empty", settings("wav2vec2"), weights_key="my.key")
    with pytest.raises(PipelineError, match=r"vggish\.pth.*audio\.vggish\.weights"):
        am.load_audio_model("vggish", tmp_path / "vggish.pth", settings("vggish"))
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "bad.pth")
    with pytest.raises(PipelineError, match=r"bad\.pth: not a VGGish state dict"):
        am.load_audio_model("vggish", tmp_path / "bad.pth", settings("vggish"))
    with pytest.raises(PipelineError, match=r"audio\.vggish\.weights is not set"):
        am.load_audio_model("vggish", None, settings("vggish"))


# ---------------------------------------------------------------- VGGish against torchvggish
def test_vggish_matches_torchvggish_reference():
    from torchvggish import torchvggish as tv
    from torchvggish import vggish_input

    torch.manual_seed(0)
    ref = tv._vgg(postprocess=False).eval()       # the package's own class, random weights
    ours = am.vggish_from_state_dict(ref.state_dict(), "ref")
    wav = noise(2.5)
    ex_ref = vggish_input.waveform_to_examples(wav.astype(np.float64), SR, return_tensor=True).detach()
    ex = am.vggish_examples(wav, hop_frames=96)     # torchaudio, float32: see test_audio_checkpoints
    err = np.abs(ex - ex_ref[:, 0].numpy())
    assert ex.shape == ex_ref[:, 0].shape and err.mean() < 1e-5 and err.max() < 5e-4
    with torch.inference_mode():
        np.testing.assert_allclose(ours(ex_ref).numpy(), ref(ex_ref).numpy(), rtol=1e-4, atol=1e-5)


def test_vggish_pca(models, tmp_path):
    wav = noise(2.0)
    plain = am.load_audio_model("vggish", weights(models, "vggish"), settings("vggish")).forward(wav[None])
    rng = np.random.default_rng(1)
    E, m = rng.standard_normal((128, 128)).astype(np.float32), rng.standard_normal(128).astype(np.float32)
    np.savez(tmp_path / "pca.npz", pca_eigen_vectors=E, pca_means=m)
    got = am.load_audio_model("vggish", weights(models, "vggish"),
                              settings("vggish", pca=str(tmp_path / "pca.npz"))).forward(wav[None])
    np.testing.assert_allclose(got, np.clip((plain - m) @ E.T, -2, 2), atol=1e-4)


# ---------------------------------------------------------------- alignment + chunking
def test_alignment_hand_computed():
    """Features = their centre time: interpolation must return the video time (held at edges)."""
    c0, step, G = 0.0125, 0.02, 5
    centres = c0 + step * np.arange(G)
    feats = np.stack([centres, 10 * centres], 1).astype(np.float32)
    t = np.array([0.0, 0.0125, 0.0225, 0.04, 0.0925, 0.2, 0.05])
    want = np.array([0.0125, 0.0125, 0.0225, 0.04, 0.0925, 0.0925, 0.05])
    for pieces in ([5], [2, 3], [1, 1, 1, 1, 1]):
        al, g = af.Aligner(t, c0, step, G, 2), 0
        for n in pieces:
            al.push(g, feats[g:g + n])
            g += n
        np.testing.assert_allclose(al.out[:, 0], want, atol=1e-6)
        np.testing.assert_allclose(al.out[:, 1], 10 * want, atol=1e-5)
    one = af.Aligner(t, c0, step, 1, 2)
    one.push(0, feats[:1])
    np.testing.assert_allclose(one.out, np.repeat(feats[:1], len(t), 0))


@pytest.mark.parametrize("n", [400, 15600, 16000 * 7 + 123, 16000 * 61])
def test_chunk_plan_partitions_the_grid(n):
    for stride, rf in ((320, 400), (3840, 15600)):
        plan, G = af.chunk_plan(n, stride, rf, chunk=2 * SR, overlap=SR // 2)
        assert G == max(0, (max(n, rf) - rf) // stride + 1)
        assert plan[0][2] == 0 and plan[-1][3] == G
        for (a, b, lo, hi), nxt in zip(plan, plan[1:] + [None]):
            assert a % stride == 0 and lo <= hi
            if hi > lo:   # every kept feature's window lies inside its chunk
                assert lo * stride >= a and (hi - 1) * stride + rf <= b
            if nxt:
                assert nxt[2] == hi


@pytest.mark.parametrize("name", am.MODELS)
def test_chunked_equals_single_pass_in_interior(models, name):
    m = am.load_audio_model(name, weights(models, name), settings(name))
    wav, t = noise(9.0, seed=3), np.arange(0, 9.0, 1 / 25)
    single, v1 = af.extract(m, wav, SR, t, af.Chunking(100, 1.0, 2))
    chunked, v2 = af.extract(m, wav, SR, t, af.Chunking(2.5, 1.0, 2))
    assert v1.all() and (v1 == v2).all() and single.shape == (len(t), m.dim)
    scale = np.abs(single).mean()
    err = np.abs(chunked - single).mean(1) / scale
    if name == "vggish":   # examples are independent: stitching is exact
        assert err.max() < 1e-5
    else:                  # attention context differs near boundaries only a little
        assert err.mean() < 0.02 and np.median(err) < 0.02
    # the check can fail: a one-frame misalignment is far larger
    assert np.abs(single[1:] - single[:-1]).mean() / scale > 20 * max(err.mean(), 1e-7)


def test_extract_streams_file_like_array(models, tmp_path):
    wav = noise(3.0, seed=5)
    sf.write(tmp_path / "a.wav", wav, SR, subtype="FLOAT")
    m = am.load_audio_model("wav2vec2", weights(models, "wav2vec2"), settings("wav2vec2"))
    t = np.arange(0, 3.0, 1 / 30)
    a, va = af.extract(m, wav, SR, t, af.Chunking(1.5, 0.5, 2))
    b, vb = af.extract(m, tmp_path / "a.wav", None, t, af.Chunking(1.5, 0.5, 2))
    np.testing.assert_allclose(a, b, atol=1e-5)
    sf.write(tmp_path / "b.wav", wav, 8000)
    with pytest.raises(PipelineError, match="b.wav: sample rate 8000"):
        af.extract(m, tmp_path / "b.wav", None, t, CHUNKS)


# ---------------------------------------------------------------- the stage: one job per model
def write_frames(path, fps, n, has_audio):
    ts = (np.arange(n) / fps).tolist()
    path.write_text(json.dumps({"path": "v.mp4", "n_frames": n, "fps": fps, "width": 64, "height": 64,
                                "duration": n / fps, "has_audio": has_audio, "audio_sample_rate": SR,
                                "codec": "h264", "vfr": False, "timestamps": ts}))
    return path


def stage_params(name, **over):
    """The rule's --params: the shared audio keys + this model's section, chunks shrunk to 2 s."""
    return {**af.model_params(copy.deepcopy(AUDIO), name), "chunk_seconds": 2.0, "overlap_seconds": 1.0, **over}


def run_cli(models, name, videos, wavs, frames, out, params=None):
    """One audio_features job over ``videos`` ({video id: media stem}); returns the exit code."""
    return cli(["audio_features", "--model", name, "--weights", str(weights(models, name)),
                "--weights-key", f"audio.{name}.weights", "--videos", json.dumps(videos),
                "--audio", *map(str, wavs), "--frames", *map(str, frames), "--out", str(out),
                "--params", json.dumps(params or stage_params(name)), "--threads", "1", "--device", "cpu"])


def read(out, video):
    with FeatureShard(out) as sh:
        f = sh.read(video)
    return f.features, f.valid, f.attrs


def test_cli_missing_weights_is_one_line_error(models, tmp_path, capsys):
    frames = write_frames(tmp_path / "v.json", 25, 10, True)
    rc = cli(["audio_features", "--model", "hubert", "--weights", str(tmp_path / "absent"),
              "--weights-key", "audio.hubert.weights", "--videos", '{"v": "v"}', "--audio", str(tmp_path / "v.wav"),
              "--frames", str(frames), "--out", str(tmp_path / "o.h5"), "--params", json.dumps(stage_params("hubert"))])
    err = capsys.readouterr().err
    assert rc == 1 and "audio.hubert.weights" in err and "absent" in err and "Traceback" not in err
    assert not (tmp_path / "o.h5").exists() and not (tmp_path / "o.h5.partial").exists()


@pytest.mark.parametrize("fps", [25, 30])
@pytest.mark.parametrize("name", ["hubert", "vggish"])
def test_cli_end_to_end(models, tmp_path, fps, name):
    """A 4 s video with 3.5 s of PCM16 audio: (n_frames, D), valid ends with the audio."""
    sf.write(tmp_path / f"v{fps}.wav", noise(3.5), SR, subtype="PCM_16")
    n = 4 * fps
    frames = write_frames(tmp_path / f"v{fps}.json", fps, n, True)
    out = tmp_path / f"{name}.h5"
    assert run_cli(models, name, {"v": f"v{fps}"}, [tmp_path / f"v{fps}.wav"], [frames], out) == 0
    feats, valid, attrs = read(out, "v")
    t = np.arange(n) / fps
    assert feats.shape == (n, 128 if name == "vggish" else 32) and valid.shape == (n,)
    np.testing.assert_array_equal(valid, t < 3.5)
    assert np.all(feats[~valid] == 0) and np.abs(feats[valid]).sum(1).min() > 0
    assert attrs["extractor"] == name and attrs["fps"] == fps and attrs["n_frames"] == n
    assert len(np.unique(feats[valid].round(2), axis=0)) > n // 8   # varies over time


def test_cli_no_audio_gives_zeros(models, tmp_path):
    frames = write_frames(tmp_path / "v.json", 30, 45, False)
    out = tmp_path / "wav2vec2.h5"         # the wav is never opened: it need not exist
    assert run_cli(models, "wav2vec2", {"v": "v"}, [tmp_path / "v.wav"], [frames], out) == 0
    feats, valid, attrs = read(out, "v")
    assert feats.shape == (45, 32) and not valid.any() and not feats.any() and not attrs["has_audio"]


def test_one_job_many_videos_left_right_share_media(models, tmp_path, caplog):
    """3 video ids, 2 media files: one group per id, the pair's groups identical (computed once),
    frame counts those of the frames JSONs, features those of extract() on each wav."""
    caplog.set_level(logging.INFO, logger="affect_pipeline.audio.audio_features")
    sf.write(tmp_path / "a.wav", noise(2.0, seed=1), SR, subtype="PCM_16")
    sf.write(tmp_path / "b.wav", noise(3.0, seed=2), SR, subtype="PCM_16")
    frames = [write_frames(tmp_path / "a.json", 25, 50, True), write_frames(tmp_path / "b.json", 30, 90, True)]
    videos = {"a": "a", "b_left": "b", "b_right": "b"}
    out = tmp_path / "features" / "hubert.h5"
    assert run_cli(models, "hubert", videos, [tmp_path / "a.wav", tmp_path / "b.wav"], frames, out) == 0
    m = am.load_audio_model("hubert", weights(models, "hubert"), settings("hubert"))
    with FeatureShard(out) as sh:
        assert sorted(sh.videos()) == sorted(videos) and sh.name == "hubert" and sh.dim() == 32
        assert sh.attrs["checkpoint_digest"] == m.digest and sh.attrs["layer"] == "-1"
        got = {v: sh.read(v) for v in videos}
        assert {v: sh.n_frames(v) for v in videos} == {"a": 50, "b_left": 90, "b_right": 90}
    np.testing.assert_array_equal(got["b_left"].features, got["b_right"].features)
    np.testing.assert_array_equal(got["b_left"].valid, got["b_right"].valid)
    assert got["b_left"].attrs["media"] == "b" and got["a"].attrs["fps"] == 25
    for vid, media, fps, n in (("a", "a", 25, 50), ("b_left", "b", 30, 90)):
        ref, valid = af.extract(m, tmp_path / f"{media}.wav", None, np.arange(n) / fps,
                                af.Chunking.from_params(stage_params("hubert")))
        np.testing.assert_array_equal(got[vid].valid, valid)
        np.testing.assert_allclose(got[vid].features, ref, atol=2e-3 * np.abs(ref).max())   # float16 store
    assert np.abs(got["a"].features[:50] - got["b_left"].features[:50]).mean() > 0.1 * np.abs(ref).mean()
    computed = [r.getMessage() for r in caplog.records if "] computed " in r.getMessage()]
    assert len(computed) == 2 and any("b_left / b_right" in c for c in computed)
    with pytest.raises(PipelineError, match=r"video c: no --audio file for its media 'c'"):
        af.media_inputs({"c": "c"}, [tmp_path / "a.wav"], [tmp_path / "c.json"])


def test_failing_wav_names_it_and_the_rerun_resumes(models, tmp_path, capsys, caplog):
    """c.wav is corrupt: the job fails naming video c and its file, a and b stay in the partial
    shard; with c fixed the rerun computes c only (a, b's inputs unchanged: tests/audio/
    test_audio_resume.py redoes a video whose inputs changed)."""
    caplog.set_level(logging.INFO, logger="affect_pipeline.audio.audio_features")
    good = {m: noise(2.0, seed=k) for k, m in enumerate("abc")}
    for m in "ab":
        sf.write(tmp_path / f"{m}.wav", good[m], SR, subtype="PCM_16")
    garbage = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    (tmp_path / "c.wav").write_bytes(garbage)
    frames = [write_frames(tmp_path / f"{m}.json", 25, 50, True) for m in "abc"]
    wavs = [tmp_path / f"{m}.wav" for m in "abc"]
    videos = {m: m for m in "abc"}
    out = tmp_path / "vggish.h5"
    assert run_cli(models, "vggish", videos, wavs, frames, out) == 1
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if ln.startswith("ERROR [audio_features]:"))
    assert "video c:" in line and str(tmp_path / "c.wav") in line and "unreadable audio" in line
    assert "Traceback" not in err and not out.exists()
    with FeatureShard(f"{out}.partial") as sh:
        assert sorted(sh.videos()) == ["a", "b"]

    sf.write(tmp_path / "c.wav", good["c"], SR, subtype="PCM_16")
    caplog.clear()
    assert run_cli(models, "vggish", videos, wavs, frames, out) == 0
    assert not (tmp_path / "vggish.h5.partial").exists()
    computed = [r.getMessage() for r in caplog.records if "] computed " in r.getMessage()]
    assert len(computed) == 1 and "computed c:" in computed[0]
    m = am.load_audio_model("vggish", weights(models, "vggish"), settings("vggish"))
    for v in "abc":
        ref, valid = af.extract(m, good[v], SR, np.arange(50) / 25, af.Chunking.from_params(stage_params("vggish")))
        feats, got_valid, _ = read(out, v)
        np.testing.assert_array_equal(got_valid, valid)
        np.testing.assert_allclose(feats, ref, atol=2e-3 * np.abs(ref).max())


def test_params_are_per_model_and_complete(models, tmp_path, capsys):
    hub = af.model_params(AUDIO, "hubert")
    assert set(hub) == {"sample_rate", "chunk_seconds", "overlap_seconds", "batch_size", "hubert"}
    other = copy.deepcopy(AUDIO)
    other["vggish"]["hop_seconds"] = 0.48
    assert af.model_params(other, "hubert") == hub          # a VGGish change leaves HuBERT's job alone
    fp = lambda audio: af.fingerprint("digest", af.model_params(audio, "vggish"))  # noqa: E731
    assert fp(other) != fp(AUDIO)                           # ... and restarts a VGGish partial shard
    moved = copy.deepcopy(AUDIO)
    moved["vggish"]["weights"] = "/elsewhere/vggish.pth"     # same file elsewhere: its digest decides
    assert fp(moved) == fp(AUDIO)
    with pytest.raises(PipelineError, match="audio: missing key 'batch_size'"):
        af.model_params({k: v for k, v in AUDIO.items() if k != "batch_size"}, "hubert")

    # the model's own settings reach it: the VGGish hop sets the feature grid
    sf.write(tmp_path / "v.wav", noise(3.0), SR, subtype="PCM_16")
    frames = write_frames(tmp_path / "v.json", 25, 75, True)
    strides = {}
    for hop in (0.24, 0.48):
        out = tmp_path / f"hop{hop}.h5"
        prm = stage_params("vggish", vggish=settings("vggish", hop_seconds=hop))
        assert run_cli(models, "vggish", {"v": "v"}, [tmp_path / "v.wav"], [frames], out, prm) == 0
        strides[hop] = read(out, "v")[2]["feature_stride_s"]
    assert strides == {0.24: pytest.approx(0.24), 0.48: pytest.approx(0.48)}

    # a missing key is named, nothing is written
    for drop, needle in (("chunk_seconds", "audio: missing key 'chunk_seconds'"),
                         ("vggish.hop_seconds", "audio.vggish: missing key 'hop_seconds'")):
        prm = stage_params("vggish")
        section, _, key = drop.rpartition(".")
        del (prm[section] if section else prm)[key]
        out = tmp_path / f"no_{key}.h5"
        assert run_cli(models, "vggish", {"v": "v"}, [tmp_path / "v.wav"], [frames], out, prm) == 1
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err and not out.exists()


def test_cli_make_demo_audio_models(tmp_path):
    assert cli(["make_demo_audio_models", "--out-dir", str(tmp_path / "m"), "--seed", "0"]) == 0
    names = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert {"hubert", "wav2vec2", "vggish.pth"} <= set(names)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no tmp leftovers
