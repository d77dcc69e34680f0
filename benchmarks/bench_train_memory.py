"""Peak memory of the temporal jobs at Aff-Wild2 size: does training fit a workstation?

A placeholder tree at the paper's sizes is written once (``--workdir``): ~598 videos with 2.8 M
frames in all, the four feature stores at the paper's dims (``mae_AU`` ViT-B 768 with its head's
logits, ``hubert`` HuBERT-Large 1024, ``wav2vec2`` Base 768, ``vggish`` 128) as the workflow's
shards (``FeatureShardWriter``, float16), AU labels, the index and one fold document per scale
(the first ``scale`` share of the videos; a few validation and test videos, so that validation
stays short). Each job — ``train_blb``, ``mine_hard_clips``, ``train_dcl``, ``predict`` — then
runs through the package's command line in a fresh process, at the paper's temporal settings
with one epoch cut to ``--steps`` optimizer steps (the D_init of the fold is a spread subset of
``steps × batch`` clips; everything else is the job as the workflow runs it), and its peak
resident memory is the child's ``ru_maxrss`` (``os.wait4``). A job over ``--limit-gb`` of
address space fails alone (``RLIMIT_AS``), not the machine.

    python -m benchmarks.bench_train_memory [--scales 0.125 1] [--jobs train_blb ...]
        [--workdir /tmp/mem_shards] [--code DIR --label NAME] [--write [--page-only]]

``--code DIR`` runs the jobs of another checkout's ``affect_pipeline`` (e.g. ``git archive`` of
an older commit): a before → after comparison on the same tree and machine. Every row measured
is kept in ``--workdir``/rows.json; ``--write`` puts them all in the ``train-memory`` section of
benchmarks/RESULTS.md, with a projection to the full size for a code measured only below it.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STORES = {"mae_AU": 768, "hubert": 1024, "wav2vec2": 768, "vggish": 128}   # the paper's encoders
N_VIDEOS, N_FRAMES = 598, 2_800_000       # Aff-Wild2
N_VAL, N_TEST = 6, 6                      # per fold document: short validation / prediction
JOBS = ("train_blb", "mine_hard_clips", "train_dcl", "predict")
AU = 12


def video_lengths(total: int = N_FRAMES, seed: int = 0) -> np.ndarray:
    """Frames per video: log-normal around Aff-Wild2's mean (~4,700), summing to ``total``."""
    n = np.random.default_rng(seed).lognormal(0.0, 0.6, N_VIDEOS)
    n = np.maximum(min(300, total // (4 * N_VIDEOS)), np.round(n / n.sum() * total)).astype(int)
    n[np.argmax(n)] += total - n.sum()
    return n


def shard_paths(work: Path) -> dict[str, Path]:
    return {name: work / "features" / ("mae/AU/fold1.h5" if name.startswith("mae") else f"{name}.h5")
            for name in STORES}


def write_shards(work: Path, videos: list[str], lengths, seed: int = 0) -> None:
    """The four placeholder shards (skipped when already written): random float16 rows, the
    visual store missing a face on ~8 % of frames, the audio stores valid throughout."""
    from affect_pipeline.common.feature_shards import FeatureShardWriter

    rng = np.random.default_rng(seed)
    for name, path in shard_paths(work).items():
        if path.exists():
            continue
        dim, visual = STORES[name], name.startswith("mae")
        block = rng.standard_normal((8192, dim), dtype=np.float32)     # rows cycled through, placeholder values
        attrs = dict(fold="1", task="AU") if visual else dict(layer="-1")
        w = FeatureShardWriter(path, extractor=name, fingerprint=f"bench-train-memory-{seed}",
                               checkpoint_digest=f"placeholder-{name}", **attrs)
        for k, (v, n) in enumerate(zip(videos, lengths)):
            if w.done(v):
                continue
            rows = np.resize(np.roll(block, k * 97, axis=0), (n, dim))
            valid = (np.arange(n) // 250 + k) % 12 != 0 if visual else np.ones(n, bool)
            extra = {"logits": rng.standard_normal((n, AU), dtype=np.float32)} if visual else None
            w.write(v, rows, valid, fps=30.0, extra=extra)
        w.close(videos)


def write_tree(work: Path, scales, total: int = N_FRAMES, seed: int = 0) -> dict:
    """Shards, labels, index and one fold document per scale under ``work``; returns the paths."""
    from affect_pipeline.common.runtime import write_json
    from affect_pipeline.common.stores import Labels, write_labels
    from affect_pipeline.data.index_dataset import write_index_tsv

    lengths = video_lengths(total, seed)
    videos = [f"v{i:03d}" for i in range(N_VIDEOS)]
    write_shards(work, videos, lengths, seed)
    labels_path, index_path = work / "labels" / "AU.h5", work / "videos.tsv"
    if not labels_path.exists():
        rng = np.random.default_rng(seed + 1)
        write_labels(labels_path, "AU", {v: Labels((rng.random((n, AU)) < 0.2).astype(np.float32), np.ones(n, bool),
                                                   "train") for v, n in zip(videos, lengths)})
        write_index_tsv(index_path, [{"video_id": v, "path": f"/v/{v}.mp4", "media": v, "side": "", "fps": 30.0,
                                      "n_frames": int(n), "width": 640, "height": 360, "duration": n / 30.0,
                                      "has_audio": True, "split_AU": "train", "split_EXPR": "", "split_VA": "",
                                      "split_ERI": ""} for v, n in zip(videos, lengths)])
    folds = {}
    for s in scales:
        k = max(N_VAL + N_TEST + 2, round(s * N_VIDEOS))
        picked = videos[:k]
        val, test = picked[:N_VAL], picked[N_VAL:N_VAL + N_TEST]
        folds[s] = work / "folds" / f"AU_{s:g}.json"
        write_json(folds[s], {"folds": {"1": {"train": picked[N_VAL + N_TEST:], "validation": val}}, "test": test})
    test_frames = int(lengths[N_VAL:N_VAL + N_TEST].sum())
    frames = {s: int(lengths[:max(N_VAL + N_TEST + 2, round(s * N_VIDEOS))].sum()) - test_frames for s in scales}
    return {"labels": labels_path, "index": index_path, "folds": folds, "frames": frames,
            "features": [str(p) for p in shard_paths(work).values()]}


def paper_params(epochs: int = 1) -> dict:
    """workflow_config.yaml's temporal section (the paper's BLB d512 × 4, clip 100, batch 32), one epoch."""
    import yaml

    t = yaml.safe_load((ROOT / "workflow_config.yaml").read_text())["temporal"]
    t["blb"]["epochs"], t["dcl"]["epochs"] = epochs, epochs
    return t


def job_argv(job: str, tree: dict, scale, out: Path, params: dict) -> list[str]:
    """The job's command line, as rules/temporal.smk gives it."""
    argv = [job, "--task", "AU", "--fold", "1", "--folds", str(tree["folds"][scale]), "--labels",
            str(tree["labels"]), "--features", *tree["features"], "--threads", "2", "--device", "cpu"]
    if job in ("train_blb", "train_dcl"):
        argv += ["--out", str(out / f"{job}.pt"), "--metrics", str(out / f"{job}.json"), "--curve", str(out / f"{job}.csv")]
    if job in ("mine_hard_clips", "train_dcl", "predict"):
        argv += ["--blb", str(out / "train_blb.pt")] if job != "predict" else ["--model", str(out / "train_dcl.pt")]
    if job == "mine_hard_clips":
        argv += ["--out", str(out / "clb.json")]
    if job == "train_dcl":
        argv += ["--clb-clips", str(out / "clb.json")]
    if job == "predict":
        argv += ["--index", str(tree["index"]), "--out", str(out / "pred.h5")]
    return argv + (["--params", json.dumps(params)] if job != "predict" else [])


def child(argv: list[str], n_clips: int) -> int:
    """Run one job with D_init cut to ``n_clips`` clips spread over the fold (a few steps)."""
    from affect_pipeline.__main__ import main
    from affect_pipeline.temporal import fold_data

    full = fold_data.FoldData.d_init

    def few(self):
        clips = full(self)
        return clips[:: max(1, len(clips) // n_clips)][:n_clips]

    fold_data.FoldData.d_init = few
    return main(argv)


def measure(argv: list[str], n_clips: int, code: Path | None, limit_gb: float) -> dict:
    """Run a job in a fresh process; its exit code, peak RSS (GB) and wall seconds."""
    env = dict(os.environ, PYTHONPATH=str(code) if code else os.environ.get("PYTHONPATH", ""))
    limit = int(limit_gb * 2**30)

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(n_clips), "--", *argv]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, preexec_fn=cap, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    rc = p.returncode
    last = next((ln for ln in reversed(err.splitlines()) if "ERROR" in ln or "Error" in ln), "")
    return {"rc": rc, "peak_gb": usage.ru_maxrss * 1024 / 1e9, "wall_s": time.perf_counter() - t0, "error": last}


def run(scales, jobs, work: Path, code: Path | None, steps: int, limit_gb: float, total: int = N_FRAMES) -> list[dict]:
    tree = write_tree(work, scales, total)
    params = paper_params()
    n_clips = steps * int(params["blb"]["batch_size"])
    rows = []
    for s in scales:
        out = work / "runs" / f"{'before' if code else 'now'}_{s:g}"
        out.mkdir(parents=True, exist_ok=True)
        for job in jobs:
            r = measure(job_argv(job, tree, s, out, params), n_clips, code, limit_gb)
            rows.append({"job": job, "scale": s, "frames": tree["frames"][s], **r})
            print(f"{job:16s} scale {s:<6g} frames {tree['frames'][s]:>9,d}  peak {r['peak_gb']:6.2f} GB  "
                  f"{r['wall_s']:6.0f} s  rc {r['rc']} {r['error']}", flush=True)
            if r["rc"] != 0:
                break
    return rows


def saved_rows(work: Path, new: list[dict]) -> list[dict]:
    """``work/rows.json`` with ``new`` in it (a row of the same code, job and scale replaced)."""
    path, key = work / "rows.json", (lambda r: (r["code"], r["job"], r["scale"]))
    old = json.loads(path.read_text()) if path.exists() else []
    rows = [r for r in old if key(r) not in {key(n) for n in new}] + new
    path.write_text(json.dumps(rows, indent=1))
    return rows


def projections(rows: list[dict], frames: int) -> list[str]:
    """Per code and job measured at two or more scales below the full one: the peak at ``frames``
    (the full tree) on the straight line through the two largest — labelled a projection, not a
    measurement (the two largest, since a job may change regime at small sizes)."""
    out = []
    for code, job in dict.fromkeys((r["code"], r["job"]) for r in rows):
        pts = sorted((r["frames"], r["peak_gb"]) for r in rows if (r["code"], r["job"]) == (code, job) and r["rc"] == 0)
        if len(pts) >= 2 and pts[-1][0] < frames:
            (f0, p0), (f1, p1) = pts[-2:]
            slope = (p1 - p0) / (f1 - f0)
            out.append(f"- {code}, {job}: the line through its peaks at {f0:,} and {f1:,} frames gives "
                       f"**{p1 + slope * (frames - f1):.1f} GB projected** at {frames:,} frames "
                       f"({slope * 1e6:.2f} GB per million frames)")
    return out


def table(rows: list[dict]) -> str:
    out = ["| code | job | scale | frames of the fold's train + val videos | peak RSS (GB) | wall (s) | exit |",
           "|---|---|---:|---:|---:|---:|---|"]
    rows = sorted(rows, key=lambda r: (r["code"], r["scale"], JOBS.index(r["job"])))
    out += [f"| {r['code']} | {r['job']} | {r['scale']:g} | {r['frames']:,} | {r['peak_gb']:.2f} | {r['wall_s']:.0f} | "
            f"{r['rc']}{' ' + r['error'][:80] if r['rc'] else ''} |" for r in rows]
    return "\n".join(out)


def section(rows: list[dict], frames: int, command: str) -> str:
    """The train-memory section of RESULTS.md from every row measured in the work folder."""
    from benchmarks.results_page import machine, stamp

    now = [r for r in rows if r["code"] == "this checkout" and r["scale"] == 1.0]
    worst = max((r["peak_gb"] for r in now), default=float("nan"))
    verdict = (f"Goal ≤ 24 GB for every temporal job at full size: **{'met' if worst <= 24 else 'not met'}** "
               f"(highest peak {worst:.2f} GB)." if now else "No full-size row of this checkout yet.")
    return (f"## Temporal jobs' peak memory at Aff-Wild2 size\n\n"
            f"Peak RSS (`ru_maxrss` of a fresh process) of each temporal job on a placeholder tree of "
            f"{N_VIDEOS} videos, {N_FRAMES:,} frames, the four stores at the paper's dims "
            f"({', '.join(f'{k} {v}' for k, v in STORES.items())}; float16 shards, ~15 GB on disk), at the "
            f"paper's temporal settings with {N_VAL} validation and {N_TEST} test videos; training cut to a few "
            f"optimizer steps (memory does not grow with steps). `scale`: the share of the videos in the fold "
            f"(`predict` reads its validation and test videos only). Wall times include the placeholder "
            f"validation and are not comparable across rows when other work shares the machine.\n\n"
            f"{stamp(machine(), command)}\n\n{table(rows)}\n\n" + "\n".join(projections(rows, frames))
            + f"\n\n{verdict}\n")


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child(sys.argv[4:], int(sys.argv[2]))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scales", type=float, nargs="+", default=[0.125, 1.0])
    p.add_argument("--jobs", nargs="+", default=list(JOBS), choices=JOBS)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/mem_shards"))
    p.add_argument("--code", type=Path, default=None, help="another checkout's root (its affect_pipeline runs)")
    p.add_argument("--frames", type=int, default=N_FRAMES, help="frames of the whole tree (smaller: a quick check)")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per training job")
    p.add_argument("--limit-gb", type=float, default=22.0, help="address-space limit per job (RLIMIT_AS)")
    p.add_argument("--label", default=None, help="the code column of the table (default: this checkout)")
    p.add_argument("--page-only", action="store_true", help="measure nothing: --write the rows measured before")
    p.add_argument("--write", action="store_true", help="write the train-memory section of RESULTS.md from every "
                                                        "row measured in --workdir (rows.json)")
    a = p.parse_args(argv)
    rows = [] if a.page_only else run(a.scales, a.jobs, a.workdir, a.code, a.steps, a.limit_gb, a.frames)
    code = a.label or (f"--code {a.code}" if a.code else "this checkout")
    rows = saved_rows(a.workdir, [{**r, "code": code} for r in rows])
    print(table(rows))
    if a.write:
        from benchmarks.results_page import PAGE, update_page

        cmd = "python -m benchmarks.bench_train_memory " + " ".join(sys.argv[1:] if argv is None else argv)
        full = write_tree(a.workdir, [1.0], a.frames)["frames"][1.0]
        update_page(PAGE, {"train-memory": section(rows, full, cmd)})
    return 0

if __name__ == "__main__":
    sys.exit(main())
