"""The GPU path, measured: the demo's model stages on CUDA, and ViT-B/16 bf16 feature extraction
end to end against the bare model, as one markdown table ready for benchmarks/RESULTS.md.

    python -m benchmarks.bench_gpu [--out FILE] [--page benchmarks/RESULTS.md]   # needs CUDA
    python -m benchmarks.bench_gpu --cpu-smoke          # the same code on CPU, tiny models and sizes

Checks (each through the stage modules the workflow runs, on the GPU):
- faces: ``crop_faces`` (decode + MTCNN + align + JPEG + HDF5) on a synthetic face video;
- face detection at the paper's frame sizes: ``crop_faces`` with the batched detector on the GPU
  on 640x360 and 1920x1080 videos, against facenet-pytorch's own MTCNN one frame a call (its
  README: 13 frames/s at 1080p, 25.5 at 540p on a P100) on the same frames in the same run;
- MAE: ``visual_features`` with a ViT-B/16 (bf16 autocast) on a real face store — crops read and
  decoded from the HDF5 store, resized, forward, shard written — against the same model's
  forward on random tensors of the same batch in the same run (``benchmarks/bench_mae.py``),
  plus a pretraining and a fine-tune optimizer step;
- audio: ``audio_features`` for HuBERT / wav2vec2 / VGGish (random models of the paper's shapes)
  against their forward on the same audio (``benchmarks/bench_audio.py``);
- BLB / DCL: a training step at the paper's sizes against forward+backward on random tensors
  (``benchmarks/bench_temporal.py``).
A check that fails is a table row saying why; the exit code is then 1. Targets (issue 17): end
to end >= 0.9 of model-only and >= 4,000 frames/s on an H100/H200-class GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


@dataclass(frozen=True)
class Sizes:
    """How much each check runs: the GPU sizes, or tiny ones for --cpu-smoke."""
    face_frames: int
    face_size: int
    mae_model: str          # benchmarks.bench_mae.CONFIGS key
    mae_frames: int
    mae_batch: int
    mae_steps: int
    audio_seconds: float
    audio_paper_size: bool
    temporal: dict          # benchmarks.bench_temporal.run keywords
    detect_sizes: tuple     # (width, height, frames) of the batched-detection check


GPU = Sizes(300, 256, "base", 8192, 256, 10, 120.0, True,
            dict(dims=(768, 768, 768, 128), n_videos=8, frames=600, clip_len=100, stride=50, batch_size=32,
                 d_model=512, nhead=8, layers=4, steps=20, warmup=3),
           ((640, 360, 256), (1920, 1080, 128)))
SMOKE = Sizes(8, 128, "tiny", 32, 8, 1, 3.0, False,
              dict(dims=(16, 8), n_videos=2, frames=60, clip_len=20, stride=10, batch_size=2,
                   d_model=16, nhead=2, layers=1, steps=1, warmup=1),
             ((160, 90, 4),))


def row(stage: str, value: float | None, unit: str, ref: float | None = None, ref_name: str = "",
        note: str = "") -> dict:
    return {"stage": stage, "value": value, "unit": unit, "ref": ref, "ref_name": ref_name,
            "ratio": value / ref if value and ref else None, "note": note}


#: what the checks import (requirements.txt names): absent -> a clear stop, another version -> a note
NEEDED = ("torch", "torchvision", "timm", "transformers", "facenet-pytorch", "torchvggish", "soundfile", "h5py",
          "numpy", "torchaudio", "av", "opencv-python", "scikit-image", "scipy", "pyyaml", "tqdm")


def check_pins(requirements: Path = REPO / "requirements.txt") -> list[str]:
    """Notes on pins this Python does not match; SystemExit naming the packages it lacks."""
    from importlib.metadata import PackageNotFoundError, version

    pins = dict(ln.split("#")[0].strip().split("==", 1) for ln in requirements.read_text(encoding="utf-8").splitlines()
                if "==" in ln.split("#")[0])
    missing, notes = [], []
    for name in NEEDED:
        try:
            got = version(name)
        except PackageNotFoundError:
            missing.append(f"{name}=={pins.get(name, '?')}")
            continue
        if name in pins and got.split("+")[0] != pins[name]:
            notes.append(f"{name} {got} (pinned {pins[name]})")
    if missing:
        raise SystemExit(f"{sys.executable} lacks {', '.join(missing)} (requirements.txt): run `make venv` "
                         f"(offline: pip install --no-index --find-links <wheels> -r requirements.txt) "
                         f"or set PYTHON to an interpreter that has them")
    return notes


def require_cuda():
    """The CUDA device, or SystemExit with the reason (this check measures the GPU path only)."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(f"no CUDA device: torch {torch.__version__} (built for CUDA {torch.version.cuda}) "
                         f"sees none (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); "
                         f"run with --cpu-smoke to test this script on CPU")
    return torch.device("cuda")


# ---------------------------------------------------------------- checks
def check_faces(dev, s: Sizes, threads: int) -> list[dict]:
    from affect_pipeline.common.stores import FaceStore
    from affect_pipeline.faces import crop_faces
    from benchmarks.bench_faces import faces_config, make_video

    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "bench.mp4"
        n = make_video(video, s.face_frames, s.face_size)["n_frames"]
        out = Path(tmp) / "faces" / "bench.h5"
        t0 = time.perf_counter()
        rc = crop_faces.main(["--video", str(video), "--frames", str(video.with_suffix(".json")), "--out", str(out),
                              "--threads", str(threads), "--device", str(dev), "--params", json.dumps(faces_config())])
        dt = time.perf_counter() - t0
        with FaceStore(out) as fs:
            found = int(fs.found.sum())
    assert rc in (0, None), f"crop_faces returned {rc}"
    return [row("crop_faces (decode+MTCNN+align+store)", n / dt, "frames/s",
                note=f"{s.face_size}-px video, face in {found}/{n} frames")]


def check_detection(dev, s: Sizes, threads: int) -> list[dict]:
    """crop_faces with the batched detector on ``dev`` (decode + MTCNN + align + store), against
    facenet-pytorch's own MTCNN as its README runs it, one frame a call, on the same frames."""
    from affect_pipeline.data.video import iter_frame_batches
    from affect_pipeline.faces import crop_faces as C
    from affect_pipeline.faces import detection as D
    from benchmarks.bench_faces import faces_config, make_video

    try:
        from facenet_pytorch import MTCNN
    except ImportError:
        MTCNN = None
    params = D.FaceParams.from_config(faces_config())
    det, rows = D.make_backend(params, dev), []
    with tempfile.TemporaryDirectory() as tmp:
        for w, h, n in s.detect_sizes:
            video = Path(tmp) / f"v{w}.mp4"
            info = make_video(video, n, w, h)
            C.crop_faces(C.FaceJob(video, info, Path(tmp) / f"warm{w}.h5", "v"), params, threads=threads, backend=det)
            _sync(dev)
            t0 = time.perf_counter()
            C.crop_faces(C.FaceJob(video, info, Path(tmp) / f"f{w}.h5", "v"), params, threads=threads, backend=det)
            _sync(dev)
            stage = info["n_frames"] / (time.perf_counter() - t0)
            ref, name = None, "facenet-pytorch not installed"
            if MTCNN is not None:
                plain = MTCNN(keep_all=True, device=dev)
                frames = [f for _, _, b in iter_frame_batches(video, params.batch_size, threads, prefetch=0) for f in b]
                plain.detect(frames[0])
                _sync(dev)
                t0 = time.perf_counter()
                for f in frames:
                    plain.detect(f)
                _sync(dev)
                ref, name = len(frames) / (time.perf_counter() - t0), "facenet-pytorch MTCNN, a frame a call"
            rows.append(row(f"crop_faces batched {w}x{h} ({dev.type})", stage, "frames/s", ref, name,
                            f"{info['n_frames']} frames, batch {params.batch_size}; target >= the reference"))
    return rows


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def check_mae(dev, s: Sizes, threads: int) -> list[dict]:
    from benchmarks import bench_mae

    r = {x["name"]: x for x in bench_mae.run(s.mae_model, s.mae_frames, s.mae_batch, threads, str(dev),
                                             steps=s.mae_steps)}
    label = "ViT-B/16 bf16" if s.mae_model == "base" and dev.type == "cuda" else f"{s.mae_model} ViT"
    rows = [row(f"visual_features {label} (store read+decode+forward+HDF5)", r["features_stage"]["frames_per_s"],
                "frames/s", r["model_forward"]["frames_per_s"], "same model, random tensors, same run",
                f"{s.mae_frames} crops, batch {s.mae_batch}"),
            row(f"MAE pretrain step ({s.mae_model})", r["pretrain_step"]["steps_per_s"], "steps/s",
                note=f"batch {s.mae_batch}"),
            row(f"MAE finetune step ({s.mae_model})", r["finetune_step"]["steps_per_s"], "steps/s",
                note=f"batch {s.mae_batch}, augmentation on the device")]
    if "vit_base_bf16" in r:
        rows.append(row("ViT-B/16 bf16 forward, batch 256", r["vit_base_bf16"]["frames_per_s"], "frames/s",
                        note="random tensors"))
    return rows


def check_audio(dev, s: Sizes, threads: int) -> list[dict]:
    from benchmarks import bench_audio

    size = "paper size" if s.audio_paper_size else "demo size"
    rows = [row(f"audio_features {r['model']} ({size})", r["stage_fps"], "frames/s", r["model_fps"],
                "model forward on the same audio", f"{s.audio_seconds:g} s of audio")
            for r in bench_audio.run(seconds=s.audio_seconds, threads=threads, device=str(dev),
                                     paper_size=s.audio_paper_size)]
    ref, ours = bench_audio.frontends(seconds=s.audio_seconds, device=str(dev), threads=threads)
    rows.append(row(f"VGGish log-mel (torchaudio, {ours['device']})", ours["x_realtime"], "x real time",
                    ref["x_realtime"], "torchvggish numpy front end (CPU)", f"max abs diff {ours['max_abs_diff']}"))
    return rows


def check_temporal(dev, s: Sizes, threads: int) -> list[dict]:
    from benchmarks import bench_temporal

    r = {x["name"]: x for x in bench_temporal.run(device=str(dev), threads=threads, **s.temporal)}
    shape = r["blb_step"]["shape"]
    return [row("BLB step", r["blb_step"]["steps_per_s"], "steps/s", r["blb_model_only"]["steps_per_s"],
                "forward+backward on random tensors", shape),
            row("DCL step", r["dcl_step"]["steps_per_s"], "steps/s", r["blb_step"]["steps_per_s"], "one BLB step",
                f"batch gathers = {r['dcl_step']['load_pct']:.1f} % of the step")]


CHECKS = (("faces", check_faces), ("face detection", check_detection), ("MAE", check_mae), ("audio", check_audio), ("BLB/DCL", check_temporal))


def run_checks(dev, s: Sizes, threads: int) -> tuple[list[dict], bool]:
    """Every check; one that fails becomes a row with its error, and the result says so."""
    rows, ok = [], True
    for name, fn in CHECKS:
        t0 = time.perf_counter()
        try:
            rows += fn(dev, s, threads)
            print(f"[gpu_check] {name}: ok ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        except Exception as e:  # noqa: BLE001 - reported in the table, exit code 1
            ok = False
            rows.append(row(name, None, "", note=f"FAILED: {type(e).__name__}: {str(e)[:300]}"))
            print(f"[gpu_check] {name}: FAILED ({type(e).__name__}: {e})", file=sys.stderr, flush=True)
    return rows, ok


# ---------------------------------------------------------------- the table
def _num(v) -> str:
    return "" if v is None else f"{v:.3f}" if v < 10 else f"{v:.1f}"


def machine(dev) -> str:
    import torch

    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "none (CPU smoke run)"
    return (f"Machine: GPU {gpu}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
            f"torch {torch.__version__} (CUDA {torch.version.cuda})")


def markdown(rows: list[dict], dev, command: str, notes: list[str] = ()) -> str:
    pins = [f"Versions that differ from requirements.txt: {', '.join(notes)}.", ""] if notes else []
    lines = [machine(dev), "", f"Command: `{command}`", "", *pins,
             "| stage | value | unit | model-only reference | ratio | note |", "|---|---:|---|---|---:|---|"]
    for r in rows:
        ref = f"{_num(r['ref'])} ({r['ref_name']})" if r["ref"] else ""
        ratio = f"{r['ratio']:.2f}" if r["ratio"] else ""
        lines.append(f"| {r['stage']} | {_num(r['value'])} | {r['unit']} | {ref} | {ratio} | {r['note']} |")
    vit = next((r for r in rows if r["stage"].startswith("visual_features") and r["value"]), None)
    if vit is not None:
        smoke = "" if dev.type == "cuda" else " (CPU smoke: not the target)"
        verdict = lambda ok: ("met" if ok else "missed") + smoke  # noqa: E731
        lines += ["", "| target (issue 17) | measured | verdict |", "|---|---|---|",
                  f"| end to end >= 0.9 of model-only | {vit['ratio']:.2f} | {verdict(vit['ratio'] >= 0.9)} |",
                  f"| >= 4,000 frames/s end to end | {vit['value']:.0f} | {verdict(vit['value'] >= 4000)} |"]
    return "\n".join(lines) + "\n"


#: the results page's GPU section: its heading and what its figures are
PAGE_INTRO = """## The GPU path

The demo's model stages on one CUDA device, through the stage code the workflow runs: faces,
batched face detection on 640x360 and 1920x1080 frames against facenet-pytorch's MTCNN a frame a
call (target: at least as fast), MAE pretrain and fine-tune steps, ViT-B/16 bf16 `visual_features` end to end (face-store read +
JPEG decode + forward + shard write), the audio stages, BLB / DCL steps. Reference: each stage's
model alone on random tensors (or the same audio) of the same batch, in the same run; ratio =
stage / reference. Targets: end to end >= 0.9 of model-only and >= 4,000 frames/s on an
H100/H200-class GPU."""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="the same code on CPU, tiny models and sizes")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores; smoke: 1)")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    ap.add_argument("--page", type=Path, default=None,
                    help="also replace the gpu section of this results page (e.g. benchmarks/RESULTS.md)")
    a = ap.parse_args(argv)
    notes = check_pins()
    import torch

    dev = torch.device("cpu") if a.cpu_smoke else require_cuda()
    threads = a.threads or (1 if a.cpu_smoke else os.cpu_count() or 1)
    rows, ok = run_checks(dev, SMOKE if a.cpu_smoke else GPU, threads)
    table = markdown(rows, dev, "benchmarks/gpu_check.sh" + (" --cpu-smoke" if a.cpu_smoke else ""), notes)
    print(table)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(table, encoding="utf-8")
    if a.page:
        from benchmarks.results_page import dated, update_page

        update_page(a.page, {"gpu": f"{PAGE_INTRO}\n\n{table}\n{dated()}"})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
