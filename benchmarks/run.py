"""One benchmark entry point: stages against their model-only references, the DAG, the demo.

    python -m benchmarks.run [--quick] [--demo [--demo-cold]] [--threads N] [--out benchmarks/RESULTS.md]
    python -m benchmarks.run --paper [--threads 2] [--repeats 3] [--out benchmarks/RESULTS.md]

Each stage benchmark runs in a fresh process (so its peak RSS is its own) and reports the
stage's throughput next to a model-only reference measured on the same inputs in the same
run; the ratio is what the targets are about (>= 0.9 of the model-only limit, data loading
<= 5 % of a training step). Then: `snakemake -n submission` and a no-op rerun over an
Aff-Wild2-shaped tree of 600 videos (job count, dry-run and no-op times against a one-rule
workflow's), and (with --demo) the whole demo from empty results (wall time, jobs, CPU use;
--demo-cold: again without the warm launcher, as the reference).

``--paper`` instead measures every model stage at the paper's sizes against its model alone,
paired and repeated (benchmarks/paper_stages.py, one fresh process per group); with ``--out`` it
writes the page's ``paper-stages`` section and the rates the cost model reads
(``benchmarks/paper_throughputs.json``, next to the page).

``--out PAGE`` replaces this command's sections of the results page (``stages``, ``dag``, and
``demo`` with --demo) and keeps every other section as it is (benchmarks/results_page.py).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

_CHILD = """
import json, sys
sys.path.insert(0, {root!r})
import importlib
mod = importlib.import_module({module!r})
rows = mod.run(**{kwargs!r})
peak = 0
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        peak = int(line.split()[1]) / 1024
print("@@ROWS@@" + json.dumps({{"rows": rows, "peak_rss_mb": peak}}, default=str))
"""


def child(module: str, **kwargs) -> dict:
    """Run ``module.run(**kwargs)`` in a fresh interpreter; rows + that process's peak RSS."""
    code = _CHILD.format(root=str(ROOT), module=module, kwargs=kwargs)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    for line in p.stdout.splitlines():
        if line.startswith("@@ROWS@@"):
            return json.loads(line[8:])
    raise RuntimeError(f"{module} failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")


def row(stage, value, unit, ref=None, ref_name="", peak=None, note=""):
    ratio = value / ref if ref else None
    return {"stage": stage, "value": value, "unit": unit, "reference": ref, "ref_name": ref_name,
            "ratio": ratio, "peak_rss_mb": peak, "note": note}


def bench_stages(quick: bool, threads: int) -> list[dict]:
    out = []
    r = child("benchmarks.bench_faces", n_frames=100 if quick else 300, threads=threads)
    parts = {x["part"]: x for x in r["rows"]}
    dec, det, stage = parts["decode"], parts["detector"], parts["crop_faces stage"]
    out.append(row("decode (PyAV, RGB frames)", dec["fps"], "frames/s", peak=r["peak_rss_mb"]))
    out.append(row("crop_faces (decode+MTCNN+align+store)", stage["fps"], "frames/s", det["fps"],
                   "MTCNN alone, same frames", r["peak_rss_mb"]))
    r = child("benchmarks.bench_mae", frames=256 if quick else 1024, threads=threads)
    m = {x["name"]: x for x in r["rows"]}
    out.append(row("visual_features (tiny ViT)", m["features_stage"]["frames_per_s"], "frames/s",
                   m["model_forward"]["frames_per_s"], "ViT forward on random tensors", r["peak_rss_mb"]))
    for name in ("pretrain_step", "finetune_step"):
        out.append(row(f"MAE {name.replace('_', ' ')} (tiny)", m[name]["steps_per_s"], "steps/s", peak=r["peak_rss_mb"]))
    if "vit_base_bf16" in m:
        out.append(row("ViT-B/16 bf16 forward (GPU)", m["vit_base_bf16"]["frames_per_s"], "frames/s"))
    r = child("benchmarks.bench_audio", seconds=20.0 if quick else 60.0, threads=threads)
    for a in r["rows"]:
        out.append(row(f"audio_features {a['model']} (demo size)", a["stage_fps"], "frames/s", a["model_fps"],
                       "model forward on the same audio", r["peak_rss_mb"]))
    r = child("benchmarks.bench_temporal", steps=5 if quick else 10, threads=threads)
    t = {x["name"]: x for x in r["rows"]}
    blb, dcl = t["blb_step"], t["dcl_step"]
    out.append(row("clip loading (HDF5 read, per video)", t["read_hdf5 (per video)"]["ms"], "ms", peak=r["peak_rss_mb"]))
    out.append(row("BLB step", blb["steps_per_s"], "steps/s", t["blb_model_only"]["steps_per_s"],
                   "forward+backward on random tensors", r["peak_rss_mb"],
                   f"batch gather = {blb['load_pct']:.1f} % of the step"))
    out.append(row("DCL step", dcl["steps_per_s"], "steps/s", blb["steps_per_s"], "one BLB step",
                   r["peak_rss_mb"], f"batch gathers = {dcl['load_pct']:.1f} % of the step"))
    return out


PAPER_GROUPS = ("vit", "audio", "temporal", "faces")


def bench_paper(threads: int, repeats: int) -> list[dict]:
    """The paper-size rows of benchmarks/paper_stages.py, each group in a fresh process."""
    out = []
    for group in PAPER_GROUPS:
        t = time.perf_counter()
        r = child("benchmarks.paper_stages", group=group, threads=threads, repeats=repeats)
        print(f"[paper] {group}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        out += [{**x, "peak_rss_mb": r["peak_rss_mb"], "note": f"{x['note']}; paired ratios {x['spread']}"}
                for x in r["rows"]]
    return out


def throughputs_json(rows: list[dict], where: str, command: str) -> dict:
    """What benchmarks/cost.py reads: each stage's measured rate on this machine (GPU: none yet)."""
    from benchmarks.results_page import commit

    return {"machine": where, "command": command, "date": time.strftime("%Y-%m-%d"), "commit": commit(),
            "stages": {r["key"]: {"unit": r["unit"], "cpu": r["value"], "cpu_model_only": r["reference"],
                                  "ratio": r["ratio"], "batch": r["batch"], "gpu": None, "what": r["stage"],
                                  "note": r["note"]}
                       for r in rows}}


def _job_counts(text: str) -> dict[str, int]:
    rows = [ln.split() for ln in text.splitlines()]
    return {r[0]: int(r[1]) for r in rows if len(r) == 2 and r[1].isdigit()}


def bench_dag(n_videos: int = 600) -> list[dict]:
    """Job count, dry run and no-op rerun of `submission` over an Aff-Wild2-shaped tree."""
    sys.path.insert(0, str(ROOT / "tests"))
    import yaml
    from aff_tree import make_tree

    from affect_pipeline.common.tasks import FRAME_TASKS

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_tree(tmp / "aff", n_videos, pair_every=50)
        data["tasks"] = list(FRAME_TASKS)
        data["temporal"] = {"features": ["mae", "vggish"]}
        (tmp / "vggish.pth").write_bytes(b"")
        data["audio"] = {"models": ["vggish"], "vggish": {"weights": str(tmp / "vggish.pth")}}
        cfg = tmp / "data.yaml"
        cfg.write_text(yaml.safe_dump(data), encoding="utf-8")
        base = [SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--configfile", str(cfg),
                "--directory", str(tmp / "run"), "--cores", "1"]
        # the floor: Snakemake's own start-up (imports, one rule), on this machine in this run
        (tmp / "floor").mkdir()
        (tmp / "floor" / "Snakefile").write_text('rule a:\n    output: "x"\n    shell: "touch x"\n', encoding="utf-8")
        t = time.perf_counter()
        subprocess.run([SNAKEMAKE, "-n", "--cores", "1", "-q", "rules"], cwd=tmp / "floor", capture_output=True)
        floor = time.perf_counter() - t
        t = time.perf_counter()
        p = subprocess.run(base + ["-n", "submission", "--quiet", "rules"], capture_output=True, text=True)
        dry = time.perf_counter() - t
        counts = _job_counts(p.stdout + p.stderr)
        rows.append(row(f"jobs for submission ({n_videos} videos, per-fold CV)", float(counts.get("total", 0)), "jobs",
                        note=", ".join(f"{k} {v}" for k, v in counts.items() if k != "total" and v > 1)))
        rows.append(row(f"snakemake -n submission ({n_videos} videos)", dry, "s", floor, "one-rule workflow",
                        note="ok" if p.returncode == 0 else p.stderr[-300:]))
        # mark every output as done (--touch creates nothing, so first create the files)
        p = subprocess.run(base + ["-n", "submission", "--summary"], capture_output=True, text=True)
        for line in p.stdout.splitlines()[1:]:
            if line.count("\t") < 2:           # Snakemake's own messages
                continue
            out, _, rule = line.split("\t")[:3]
            f = tmp / "run" / out
            f.parent.mkdir(parents=True, exist_ok=True)
            f.mkdir() if rule == "crop_faces" else f.touch()   # a face batch is a directory output
        subprocess.run(base + ["--touch", "submission", "--quiet", "all"], capture_output=True, text=True)
        t = time.perf_counter()
        p = subprocess.run(base + ["submission", "--quiet", "rules"], capture_output=True, text=True)
        noop = p.returncode == 0 and "Nothing to be done" in p.stdout + p.stderr   # (--quiet all hides it)
        rows.append(row(f"no-op rerun of submission ({n_videos} videos)", time.perf_counter() - t, "s",
                        floor, "one-rule workflow", note="nothing ran" if noop else p.stderr[-300:]))
    return rows


def load_line() -> str:
    """The machine's load when the figures were written (other jobs running shift absolute rates,
    not the paired ratios)."""
    one, five, _ = os.getloadavg()
    return f"\n- Load average (1 / 5 min) at the end: {one:.1f} / {five:.1f} on {os.cpu_count()} cores"


def _cpu_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine: what every process used, the forked jobs of
    the warm server included (they are not Snakemake's children, so rusage would miss them)."""
    f = [float(x) for x in open("/proc/stat").readline().split()[1:]]
    idle = f[3] + f[4]
    return sum(f) - idle, sum(f)


def bench_demo(cold: bool = False) -> list[dict]:
    """The demo from empty results, warm launcher on (the default) and, with cold, off."""
    out = []
    for warm in ([True, False] if cold else [True]):
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "AFFECT_WARM": "1" if warm else "0"}
            b0, t0 = _cpu_busy()
            t = time.perf_counter()
            p = subprocess.run([SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", tmp,
                                "--cores", "2", "submission"], capture_output=True, text=True, env=env)
            wall = time.perf_counter() - t
            b1, t1 = _cpu_busy()
            jobs = (p.stdout + p.stderr).count("Finished job")
            use = 100 * (b1 - b0) / max(1.0, t1 - t0) * (os.cpu_count() or 1)
            out.append(row(f"demo from empty: --cores 2 submission ({'warm' if warm else 'AFFECT_WARM=0'})",
                           wall, "s", ref=out[0]["value"] if out else None, ref_name="warm run" if out else "",
                           note=(f"{jobs} jobs, CPU {use:.0f} % of {100 * (os.cpu_count() or 1)} %"
                                 if p.returncode == 0 else p.stderr[-300:])))
    return out


def table(rows: list[dict]) -> str:
    fmt = lambda v, d=1: "" if v is None else (  # noqa: E731 - rates under 1 (paper sizes on a CPU) keep 3 digits
        (f"{v:.3g}" if d == 1 and abs(v) < 1 else f"{v:.{d}f}") if isinstance(v, float) else str(v))
    lines = ["| stage | value | unit | model-only reference | ratio | peak RSS (MB) | note |",
             "|---|---:|---|---|---:|---:|---|"]
    for r in rows:
        ref = f"{fmt(r['reference'])} ({r['ref_name']})" if r["reference"] else ""
        lines.append(f"| {r['stage']} | {fmt(r['value'])} | {r['unit']} | {ref} | {fmt(r['ratio'], 2)} | "
                     f"{fmt(r['peak_rss_mb'], 0)} | {r['note']} |")
    return "\n".join(lines)


#: each section of the results page this command writes: its heading and what its figures are
INTROS = {
    "stages": """## Stage throughput against the model alone

Each stage on demo-size inputs, in a fresh process, next to a model-only reference measured on
the same inputs in the same run: ratio = stage / reference (1 = the stage costs nothing beyond
its model). Targets: ratio >= 0.9, and batch gathering <= 5 % of a training step. The DCL step's
reference is one BLB step: a DCL step also runs the frozen BLB and a second batch, so its ratio
is the method's cost, not overhead. Ratios are measured within one run, so they survive a loaded
machine better than the absolute rates do.""",
    "dag-600": """## The DAG of an Aff-Wild2-only run: dry run and no-op rerun

`submission` over an Aff-Wild2-shaped tree of 600 placeholder videos (100 with --quick; per-fold
CV, tasks AU, EXPR, VA; tests/aff_tree.py): job count, `snakemake -n submission`, and a rerun with
every output in place. Reference: `snakemake -n` of a one-rule workflow on the same machine in the
same run (Snakemake's own start-up, the floor). Targets: <= 1,500 jobs, dry run and no-op rerun
<= 5 s. The real sizes (Aff-Wild2 + Hume-Reaction) are `python -m benchmarks.bench_dag`'s section.""",
    "paper-stages": """## Every model stage at the paper's sizes against its model alone

ViT-B/16 at 224 px (visual_features, a pretraining and a fine-tune epoch), HuBERT-Large- and
wav2vec2-Base-shaped models with random weights and the full VGGish, BLB d512 x 4 and DCL at
clip 100, batch 32, the paper's feature dims, and face detection on 640x360 and 1920x1080
frames: each through the stage's own code (benchmarks/paper_stages.py says which) with its model
loaded once as a job does (its start, amortised over a real job, is in the note), against the
model alone on the same inputs; stage and reference alternate, `repeats` times after a warm-up,
and the ratio is the median of the paired ratios (1 = the stage costs nothing beyond its model).
Target: >= 0.9. The rates feed the cost model (`python -m benchmarks.cost`, via
benchmarks/paper_throughputs.json).""",
    "demo": """## The demo from empty

`snakemake --cores 2 submission` in a fresh directory (the embedded demo, seed 0), wall clock;
CPU is every process's (from /proc/stat), as a share of all cores. With --demo-cold the same
run again with the warm launcher off (`AFFECT_WARM=0`), against the warm run. Target: <= 300 s
on a 2-core machine. Compare times only between runs made back to back on one machine: the
development VMs' speed drifted by up to a fifth within an hour.""",
}


def verdict(name: str, rows: list[dict]) -> str:
    """One line: the section's figures against its targets (see INTROS)."""
    if name == "stages":
        low = [f"{r['stage']} {r['ratio']:.2f}" for r in rows
               if r["ratio"] is not None and r["ratio"] < 0.9 and r["ref_name"] != "one BLB step"]
        return f"Under the 0.9 target: {', '.join(low)}." if low else "Every stage is at >= 0.9 of its reference."
    if name == "paper-stages":
        low = [f"{r['stage'].split(' (')[0]} {r['ratio']:.2f}" for r in rows if r["ratio"] < 0.9]
        return f"Under the 0.9 target: {', '.join(low)}." if low else "Every stage is at >= 0.9 of its model alone."
    if name == "dag-600":
        jobs, times = rows[0], rows[1:]
        missed = ([f"{jobs['value']:.0f} jobs > 1,500"] if jobs["value"] > 1500 else []) + \
                 [f"{r['stage']} {r['value']:.1f} s > 5 s" for r in times if r["value"] > 5]
        return f"Missed: {'; '.join(missed)}." if missed else "Targets met."
    wall = rows[0]["value"]
    return f"Target {'met' if wall <= 300 else 'missed'}: {wall:.0f} s."


def command_line(a) -> str:
    """The command that reproduces the figures (without --out)."""
    if a.paper:
        return f"python -m benchmarks.run --paper --threads {a.threads} --repeats {a.repeats}"
    flags = [" --quick" if a.quick else "", " --demo" if a.demo else "", " --demo-cold" if a.demo_cold else ""]
    return f"python -m benchmarks.run{''.join(flags)} --threads {a.threads}"


def main(argv=None) -> int:
    from benchmarks.results_page import machine, stamp, update_page

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller inputs (a smoke run)")
    ap.add_argument("--demo", action="store_true", help="also time the whole demo from empty results")
    ap.add_argument("--demo-cold", action="store_true", help="and once more with the warm launcher off")
    ap.add_argument("--paper", action="store_true", help="only the model stages at the paper's sizes")
    ap.add_argument("--repeats", type=int, default=3, help="--paper: paired repeats per stage")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default 1; --paper: 2)")
    ap.add_argument("--out", type=Path, default=None, metavar="PAGE",
                    help="replace this command's sections (stages, dag-600, demo) of this results page, "
                         "e.g. benchmarks/RESULTS.md, keeping its other sections")
    a = ap.parse_args(argv)
    a.demo = a.demo or a.demo_cold
    a.threads = a.threads or (2 if a.paper else 1)
    if a.paper:
        parts = {"paper-stages": bench_paper(a.threads, a.repeats)}
    else:
        parts = {"stages": bench_stages(a.quick, a.threads), "dag-600": bench_dag(100 if a.quick else 600)}
    if a.demo and not a.paper:
        parts["demo"] = bench_demo(a.demo_cold)
    where = machine()
    print(where)
    print(table([r for rows in parts.values() for r in rows]))
    if a.out:
        head = stamp(where, command_line(a)) + load_line()
        if a.paper:
            from affect_pipeline.common.runtime import write_json

            write_json(a.out.parent / "paper_throughputs.json",
                       throughputs_json(parts["paper-stages"], where, command_line(a)))
        update_page(a.out, {name: f"{INTROS[name]}\n\n{head}\n\n{table(rows)}\n\n{verdict(name, rows)}"
                            for name, rows in parts.items()})
        print(f"updated sections {', '.join(parts)} of {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
