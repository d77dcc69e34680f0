"""Throughput of audio_features against the bare model forward, for HuBERT, wav2vec2 and VGGish.

On the same synthetic audio (noise with a moving envelope and a sweeping tone) each model runs
(1) forward only: the stage's own chunks, pre-read into memory, the same batches, and
(2) the whole stage in-process: model load + weights digest, wav streaming, normalisation,
chunked forward, alignment to the video's frames, the feature-shard write.
Throughput is video frames per second (audio seconds x fps / wall time); ``stage_over_model``
= stage frames/s / forward frames/s (1 = the stage costs nothing beyond the model).

``run(...)`` returns the rows (a master benchmark calls it); ``memory(...)`` measures the
stage's peak RSS in fresh processes for short and long audio (the streaming check);
``frontends(...)`` times the VGGish log-mel front end: torchvggish's reference (numpy, CPU) against
the stage's torchaudio one on ``--device``, on the same audio in the same run.
Models are the demo-sized random ones by default; ``--paper-size`` uses random models with the
paper's shapes (HuBERT/wav2vec2 base configs, full VGGish: slow on CPU). Settings are the
``audio`` section of workflow_config.yaml (``params`` replaces keys of it).
``python benchmarks/bench_audio.py [--seconds S] [--fps F] [--threads T] [--memory] [--frontend]`` prints tables.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SR = 16000


def audio_config() -> dict:
    """The config's ``audio`` section: the one source of the stage's settings."""
    import yaml

    return yaml.safe_load((ROOT / "workflow_config.yaml").read_text(encoding="utf-8"))["audio"]


def synth_audio(seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 0.3 * t)
    rng = np.random.default_rng(seed)
    return (0.2 * env * rng.standard_normal(len(t)) + 0.3 * np.sin(2 * np.pi * (200 + 300 * env) * t)).astype(np.float32)


def write_inputs(tmp: Path, seconds: float, fps: float) -> tuple[Path, Path, int]:
    import soundfile as sf

    from affect_pipeline.common.runtime import write_json

    wav, frames = tmp / "bench.wav", tmp / "bench.json"
    sf.write(wav, synth_audio(seconds), SR, subtype="PCM_16")
    n = int(seconds * fps)
    write_json(frames, {"path": "bench.mp4", "n_frames": n, "fps": fps, "width": 0, "height": 0,
                        "duration": seconds, "has_audio": True, "audio_sample_rate": SR, "codec": "none",
                        "vfr": False, "timestamps": (np.arange(n) / fps).tolist()})
    return wav, frames, n


def make_models(out: Path, paper_size: bool = False) -> Path:
    """Demo models, or random ones with the paper's shapes (base HuBERT/wav2vec2, full VGGish)."""
    from affect_pipeline.audio.models import make_vggish
    from affect_pipeline.demo.make_demo_audio_models import make_demo_audio_models

    if not paper_size:
        return make_demo_audio_models(out, seed=0)
    import torch
    from transformers import HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2Model

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    HubertModel(HubertConfig()).save_pretrained(out / "hubert")
    Wav2Vec2Model(Wav2Vec2Config()).save_pretrained(out / "wav2vec2")
    torch.save(make_vggish().state_dict(), out / "vggish.pth")
    return out


def run(models=("hubert", "wav2vec2", "vggish"), seconds: float = 60.0, fps: float = 25.0,
        threads: int = 1, device: str = "cpu", params: dict | None = None, paper_size: bool = False,
        weights_dir: str | None = None) -> list[dict]:
    """Rows per model: forward-only and whole-stage frames/s on the same audio, and their ratio."""
    from affect_pipeline.audio import audio_features as af
    from affect_pipeline.audio.models import load_audio_model
    from affect_pipeline.common.runtime import pick_device, setup_torch

    setup_torch(threads)
    acfg = {**audio_config(), **(params or {})}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wdir = Path(weights_dir) if weights_dir else make_models(tmp / "models", paper_size)
        wav, frames, n = write_inputs(tmp, seconds, fps)
        audio = synth_audio(seconds)
        for name in models:
            prm = af.model_params(acfg, name)
            w = wdir / ("vggish.pth" if name == "vggish" else name)
            m = load_audio_model(name, w, prm[name], pick_device(device))
            plan, _ = af.chunk_plan(len(audio), m.stride, m.rf, int(prm["chunk_seconds"] * SR),
                                    int(prm["overlap_seconds"] * SR))
            groups = [np.stack([np.pad(audio[a:b], (0, max(0, b - len(audio))))[: b - a] for a, b, _, _ in g])
                      for g in af._batches(plan, prm["batch_size"])]
            m.forward(groups[-1][:, : m.rf * 2])           # warm-up
            t = time.perf_counter()
            for x in groups:
                m.forward(x)
            t_model = time.perf_counter() - t

            out = tmp / f"{name}.h5"
            t = time.perf_counter()
            rc = af.main(["--model", name, "--weights", str(w), "--videos", json.dumps({"bench": "bench"}),
                          "--audio", str(wav), "--frames", str(frames), "--out", str(out),
                          "--params", json.dumps(prm), "--threads", str(threads), "--device", device])
            t_stage = time.perf_counter() - t
            assert rc == 0 and out.exists()
            n_params = sum(p.numel() for p in m.net.parameters())
            rows.append({"model": name, "params_M": n_params / 1e6, "audio_s": seconds, "frames": n,
                         "threads": threads, "device": device, "model_s": t_model, "stage_s": t_stage,
                         "model_fps": n / t_model, "stage_fps": n / t_stage,
                         "stage_over_model": t_model / t_stage})
    return rows


def frontends(seconds: float = 60.0, device: str = "cpu", threads: int = 1, repeats: int = 3) -> list[dict]:
    """VGGish log-mel examples (0.96 s framing) of the same audio: torchvggish's
    ``vggish_input.waveform_to_examples`` (float64 numpy, the reference) and the stage's
    ``make_log_mel`` (torchaudio, float32, on ``device``, host-to-device copy and sync included).
    Best of ``repeats`` after a warm-up; ``vs_reference`` = reference seconds / these seconds."""
    import torch
    from torchvggish import vggish_input

    from affect_pipeline.audio.models import make_log_mel
    from affect_pipeline.common.runtime import pick_device, setup_torch

    setup_torch(threads)
    dev = pick_device(device)
    audio = synth_audio(seconds)
    fe = make_log_mel(96).to(dev)

    def ours():
        with torch.inference_mode():
            out = fe(torch.from_numpy(audio).to(dev)[None])
            if dev.type == "cuda":
                torch.cuda.synchronize()
        return out

    def best(fn):
        fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    t_ref = best(lambda: vggish_input.waveform_to_examples(audio.astype(np.float64), SR, return_tensor=False))
    t_ours = best(ours)
    ref = vggish_input.waveform_to_examples(audio.astype(np.float64), SR, return_tensor=False)
    err = float(np.abs(ours()[0].cpu().numpy() - ref).max())
    return [{"frontend": "torchvggish waveform_to_examples (numpy f64)", "device": "cpu", "audio_s": seconds,
             "threads": threads, "ms": 1e3 * t_ref, "x_realtime": seconds / t_ref, "vs_reference": 1.0,
             "max_abs_diff": "0"},
            {"frontend": "make_log_mel (torchaudio f32)", "device": str(dev), "audio_s": seconds, "threads": threads,
             "ms": 1e3 * t_ours, "x_realtime": seconds / t_ours, "vs_reference": t_ref / t_ours,
             "max_abs_diff": f"{err:.1e}"}]


_MEM_SNIPPET = """
import json, resource, sys
from affect_pipeline import audio_features as af
from affect_pipeline.common.runtime import run_stage
rc = run_stage("audio_features", af.main, sys.argv[1:])
try:  # VmHWM belongs to this image; ru_maxrss can carry the forking parent's high-water mark
    hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
except (OSError, StopIteration):
    hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"rc": rc, "peak_rss_mb": hwm / 1024}))
"""


def memory(lengths=(60.0, 600.0), model: str = "hubert", fps: float = 25.0, threads: int = 1) -> list[dict]:
    """Peak RSS of the stage (fresh process each) on audio of the given lengths (seconds)."""
    from affect_pipeline.audio.audio_features import model_params

    rows, prm = [], model_params(audio_config(), model)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wdir = make_models(tmp / "models")
        for s in lengths:
            d = tmp / f"m{int(s)}"
            d.mkdir()
            wav, frames, n = write_inputs(d, s, fps)
            w = wdir / ("vggish.pth" if model == "vggish" else model)
            t = time.perf_counter()
            r = subprocess.run([sys.executable, "-c", _MEM_SNIPPET, "--model", model, "--weights", str(w),
                                "--videos", json.dumps({"bench": "bench"}), "--audio", str(wav),
                                "--frames", str(frames), "--out", str(d / "o.h5"),
                                "--params", json.dumps(prm), "--threads", str(threads), "--device", "cpu"],
                               capture_output=True, text=True, cwd=ROOT)
            res = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append({"model": model, "audio_s": s, "frames": n, "seconds": time.perf_counter() - t,
                         "peak_rss_mb": res["peak_rss_mb"], "rc": res["rc"]})
    return rows


def _table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    cells = [[fmt(r.get(k, "")) for k in keys] for r in rows]
    wid = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    line = lambda xs: "  ".join(x.rjust(w) for x, w in zip(xs, wid))  # noqa: E731
    return "\n".join([line(keys), line(["-" * w for w in wid])] + [line(c) for c in cells])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["hubert", "wav2vec2", "vggish"])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--paper-size", action="store_true", help="random models with the paper's shapes")
    ap.add_argument("--weights-dir", default=None, help="folder with hubert/, wav2vec2/, vggish.pth")
    ap.add_argument("--memory", action="store_true", help="also measure peak RSS, 60 s vs 600 s audio")
    ap.add_argument("--frontend", action="store_true", help="only time the VGGish log-mel front ends")
    a = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    if a.frontend:
        print(_table(frontends(a.seconds, a.device, a.threads)))
        sys.exit(0)
    print(_table(run(a.models, a.seconds, a.fps, a.threads, a.device, paper_size=a.paper_size,
                     weights_dir=a.weights_dir)))
    if a.memory:
        print()
        print(_table(memory(threads=a.threads)))
