"""Throughput of crop_faces against its parts: decode only, detector only, the whole stage.

A synthetic H.264 video made from a real face (skimage.data.astronaut, slowly panning and
zooming) is decoded, detected on in a tight loop (pre-decoded frames, the same batch size), and
run through the full stage (decode + detect + track + align + JPEG + HDF5). The ratios say where
the stage's time goes: stage/detector near 1 means the detector dominates.

``run(n_frames, size)`` returns the rows (a master benchmark calls it); ``memory(...)`` measures
the stage's peak RSS in fresh processes for a short and a long video (streaming check).
``python benchmarks/bench_faces.py [--frames N] [--size S] [--threads T] [--memory]`` prints tables.
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


def face_frames(n: int, width: int, height: int | None = None):
    """``n`` RGB frames (height x width) of the astronaut's face panning, zooming, tilting (a generator)."""
    import cv2
    from skimage.data import astronaut

    img, h = astronaut(), height or width  # 512x512, face centred near (230, 120)
    k = min(width, h) / 320  # face about half the frame height
    for i in range(n):
        ph = 2 * np.pi * i / 100
        m = cv2.getRotationMatrix2D((230, 120), 5 * np.sin(ph / 2), k * (1 + 0.15 * np.sin(ph)))
        m[:, 2] += (width / 2 - 230 + 0.05 * width * np.cos(ph), h / 2 - 120 + 0.04 * h * np.sin(ph))
        yield cv2.warpAffine(img, m, (width, h), borderMode=cv2.BORDER_REFLECT)


def faces_config(**kw) -> dict:
    """The ``faces`` section of workflow_config.yaml (the one source of defaults), with ``kw`` over it."""
    import yaml

    return {**yaml.safe_load((ROOT / "workflow_config.yaml").read_text(encoding="utf-8"))["faces"], **kw}


def make_video(path, n_frames: int, size: int, height: int | None = None, fps: float = 25) -> dict:
    from affect_pipeline.common.runtime import write_json
    from affect_pipeline.data.video import frame_info
    from affect_pipeline.data.video_writer import write_video

    write_video(path, face_frames(n_frames, size, height), fps, "libx264")
    info = frame_info(path, show_progress=False)
    write_json(Path(path).with_suffix(".json"), info)
    return info


def run(n_frames: int = 200, size: int = 256, threads: int = 1, batch_size: int = 32) -> list[dict]:
    """Frames/s of decode, detector and the whole crop_faces stage on one synthetic video."""
    import torch

    from affect_pipeline.common.runtime import setup_torch
    from affect_pipeline.data.video import iter_frame_batches, iter_frames
    from affect_pipeline.faces import crop_faces
    from affect_pipeline.faces import detection as faces

    setup_torch(threads)
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "bench.mp4"
        info = make_video(video, n_frames, size)
        n = info["n_frames"]

        t = time.perf_counter()
        for _ in iter_frames(video, threads):
            pass
        t_dec = time.perf_counter() - t

        batches = [f for _, _, f in iter_frame_batches(video, batch_size, threads, prefetch=0)]
        params = faces_config(batch_size=batch_size)
        det = faces.make_backend(faces.FaceParams.from_config(params), torch.device("cpu"))
        det.detect(batches[0][:2])  # warm-up
        t = time.perf_counter()
        found = sum(len(b) > 0 for f in batches for b, _, _ in det.detect(f))
        t_det = time.perf_counter() - t
        del batches

        out = Path(tmp) / "faces" / "bench.h5"
        t = time.perf_counter()
        crop_faces.main(["--video", str(video), "--frames", str(video.with_suffix(".json")), "--out", str(out),
                         "--threads", str(threads), "--device", "cpu", "--params", json.dumps(params)])
        t_stage = time.perf_counter() - t

    rows = [{"part": "decode", "seconds": t_dec}, {"part": "detector", "seconds": t_det},
            {"part": "crop_faces stage", "seconds": t_stage}]
    for r in rows:
        r.update(frames=n, size=size, threads=threads, fps=n / r["seconds"],
                 stage_over_this=t_stage / r["seconds"])
    rows[1]["faces_found"] = found
    return rows


_MEM_SNIPPET = """
import json, resource, sys
from affect_pipeline import crop_faces
from affect_pipeline.common.runtime import run_stage
rc = run_stage("crop_faces", crop_faces.main, sys.argv[1:])
print(json.dumps({"rc": rc, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def memory(lengths=(100, 3000), width: int = 320, height: int = 240, threads: int = 1) -> list[dict]:
    """Peak RSS of crop_faces (fresh process each) on videos of the given frame counts."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in lengths:
            video = Path(tmp) / f"mem{n}.mp4"
            make_video(video, n, width, height)
            t = time.perf_counter()
            r = subprocess.run([sys.executable, "-c", _MEM_SNIPPET, "--video", str(video), "--frames",
                                str(video.with_suffix(".json")), "--out", str(Path(tmp) / f"mem{n}.h5"),
                                "--threads", str(threads), "--device", "cpu", "--params", json.dumps(faces_config())],
                               capture_output=True, text=True, cwd=ROOT)
            res = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append({"frames": n, "width": width, "height": height, "seconds": time.perf_counter() - t,
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
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--memory", action="store_true", help="also measure peak RSS, 100 vs 3000 frames")
    a = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    print(_table(run(a.frames, a.size, a.threads, a.batch_size)))
    if a.memory:
        print()
        print(_table(memory(threads=a.threads)))
