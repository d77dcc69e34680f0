"""The paper's model sizes end to end: each stage's time and peak memory in a finished run.

    python -m benchmarks.bench_paper_run --run DIR [--out benchmarks/RESULTS.md]

DIR is the working directory of a finished paper-size run: the one
tests/workflow/test_paper_size.py makes (``AFFECT_PAPER_RUN=DIR pytest
tests/workflow/test_paper_size.py`` keeps it), or ``snakemake submission --directory DIR
--configfile demo_config.yaml tests/workflow/paper_size.yaml``. The figures are the jobs' own
benchmark files (``results/benchmarks/{stage}/...tsv``, written by ``--benchmark``:
affect_pipeline/common/jobstats.py), grouped by stage: jobs, summed and longest job time, CPU
time, and the largest peak RSS / USS of any one job (a warm job's RSS counts the libraries its
server preloaded, shared with it; USS is the job's own memory). Nothing is re-run: the table
reads what the run recorded. ``--out PAGE`` replaces the ``paper-run`` section of the results
page (benchmarks/results_page.py) and nothing else.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

SECTION = "paper-run"
#: what each stage runs at the paper's sizes (tests/workflow/paper_size.yaml)
MODELS = {
    "make_paper_weights": "writes HuBERT-Large + wav2vec2-Base (save_pretrained) + VGGish (.pth), random",
    "extract_frames": "PyAV decode + 16 kHz audio",
    "crop_faces": "MTCNN + alignment, 224-px crops",
    "pretrain_mae": "MAE ViT-B/16 224 px + decoder 512 x 8, batch 8",
    "finetune_mae": "ViT-B/16 224 px fine-tune (drop path, layer decay, EMA), batch 8",
    "visual_features": "ViT-B/16 224 px forward, batch 128",
    "audio_features": "HuBERT-Large (1024 x 24) / wav2vec2-Base (768 x 12) / VGGish (72 M)",
    "train_blb": "BLB d512 x 4 (ERI: d256 x 2), 2688-d input",
    "mine_hard_clips": "BLB forward over the fold's clips",
    "train_dcl": "BLB + CLB d512 x 4 (ERI: d256 x 2)",
    "predict": "BLB + CLB forward over the test videos",
}
INTRO = """## The paper's model sizes end to end

One workflow run to `submission` at the paper's model shapes (tests/workflow/test_paper_size.py,
in `make test`): MAE ViT-B/16 on 224-px crops (pretrain, fine-tune, features), BLB d512 x 4 and
DCL on 100-frame clips, ERI's d256 x 2 model, HuBERT-Large- and wav2vec2-Base-shaped models and
the full VGGish, with random weights in their real formats (rule make_paper_weights). Counts and
schedules are cut: VA + ERI, 2 folds, one fine-tuned encoder (`per_fold: false`), 6 Aff-Wild2
ids and 4 Hume clips of 10-12 frames, one short epoch per model (tests/workflow/paper_size.yaml).
Per stage, from the jobs' own benchmark files: jobs, summed and longest job time, CPU time, and
the largest peak RSS / USS of one job (RSS of a warm job counts the libraries its server
preloaded; USS is the job's own). On a loaded machine a job's time is mostly waiting: compare
its CPU time."""


@dataclass
class Job:
    """One benchmark file: the stage, the job (its path below the stage) and its record."""
    stage: str
    job: str
    s: float
    cpu_s: float
    max_rss: float
    max_uss: float | None


def _number(v: str) -> float | None:
    try:
        return float(v)
    except ValueError:
        return None


def read_jobs(run) -> list[Job]:
    """Every benchmark file under ``run``/results/benchmarks, parsed (a file without a record is
    an error naming it: a job that wrote a half file must not pass unnoticed)."""
    root = Path(run) / "results" / "benchmarks"
    jobs = []
    for path in sorted(root.rglob("*.tsv")):
        lines = path.read_text(encoding="utf-8").splitlines()
        if len(lines) != 2:
            raise ValueError(f"{path}: not a benchmark record (expected a header and one row)")
        rec = dict(zip(lines[0].split("\t"), lines[1].split("\t")))
        rel = path.relative_to(root).with_suffix("")
        stage, job = rel.parts[0], "/".join(rel.parts[1:]) or "-"
        jobs.append(Job(stage, job, float(rec["s"]), float(rec["cpu_time"]), float(rec["max_rss"]),
                        _number(rec.get("max_uss", "NA"))))
    if not jobs:
        raise ValueError(f"{root}: no benchmark files (is {run} a finished run?)")
    return jobs


def stage_rows(jobs: list[Job]) -> list[dict]:
    """Per stage, in the order of :data:`MODELS` (others after): jobs, time, CPU, peak memory."""
    order = {s: i for i, s in enumerate(MODELS)}
    rows = []
    for stage in sorted({j.stage for j in jobs}, key=lambda s: (order.get(s, len(order)), s)):
        js = [j for j in jobs if j.stage == stage]
        longest = max(js, key=lambda j: j.s)
        uss = [j.max_uss for j in js if j.max_uss is not None]
        rows.append({"stage": stage, "jobs": len(js), "s": sum(j.s for j in js), "longest_s": longest.s,
                     "longest": longest.job, "cpu_s": sum(j.cpu_s for j in js),
                     "max_rss": max(j.max_rss for j in js), "max_uss": max(uss) if uss else None,
                     "model": MODELS.get(stage, "")})
    return rows


def table(rows: list[dict], run_info: dict | None = None) -> str:
    """The per-stage table (markdown), and the run's wall time and load when known."""
    out = ["| stage | what runs | jobs | time, sum (s) | longest job (s) | CPU (s) | peak RSS (MB) | peak USS (MB) |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        uss = "NA" if r["max_uss"] is None else f"{r['max_uss']:.0f}"
        out.append(f"| {r['stage']} | {r['model']} | {r['jobs']} | {r['s']:.1f} | {r['longest_s']:.1f}"
                   f" ({r['longest']}) | {r['cpu_s']:.1f} | {r['max_rss']:.0f} | {uss} |")
    total = sum(r["s"] for r in rows)
    text = "\n".join(out) + f"\n\nSum of the job times: {total:.0f} s (2 jobs run at once on 2 cores)."
    if run_info:
        text += (f" Wall time of the whole run (`snakemake submission`, Snakemake's start-up included):"
                 f" {run_info['wall_s']:.0f} s; 1-minute load average {run_info['load_before']:.1f} before it,"
                 f" {run_info['load_after']:.1f} after it (2 cores).")
    return text


def run_info(run) -> dict | None:
    """The run's wall time and load as the test recorded them (``paper_run.json`` beside ``run``)."""
    f = Path(run).parent / "paper_run.json"
    return json.loads(f.read_text(encoding="utf-8")) if f.exists() else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="working directory of a finished paper-size run")
    ap.add_argument("--out", type=Path, default=None, metavar="PAGE",
                    help="replace the `paper-run` section of this results page, e.g. benchmarks/RESULTS.md")
    a = ap.parse_args(argv)
    text = table(stage_rows(read_jobs(a.run)), run_info(a.run))
    print(text)
    if a.out:
        from benchmarks.results_page import machine, stamp, update_page

        cmd = "AFFECT_PAPER_RUN=DIR pytest tests/workflow/test_paper_size.py; python -m benchmarks.bench_paper_run --run DIR/run"
        update_page(a.out, {SECTION: f"{INTRO}\n\n{stamp(machine(), cmd)}\n\n{text}"})
        print(f"updated section {SECTION} of {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
