"""The multi-seed ablation's maths: MAE finetune / BLB / DCL over folds x seeds, and DCL - BLB paired.

One run's fold scores are noise as much as method: a single seed cannot say whether DCL beats BLB.
``benchmarks/ablation.py`` reruns the seed-dependent stages per seed; this module turns the
per-fold metrics files of every seed into one table: per task, each stage's mean ± sd over the
(fold, seed) cells, the per-cell difference DCL - BLB (same fold, same seed: DCL starts from that
very BLB), how many cells DCL wins, and an exact two-sided sign test. The cells share training
videos across folds, so they are not independent: the p-value is optimistic, the table says so.

``python -m affect_pipeline seed_ablation --table ablation_seeds.json --png fig.png`` redraws the
report figure from the table the benchmark wrote.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from affect_pipeline.common import results
from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.runtime import read_json, stage_parser, write_json, write_text
from affect_pipeline.submit.summarize import METHOD_NAMES, STAGES, load_metrics, task_scores

TIE = 1e-9          # |DCL - BLB| below this is a tie (neither wins)
ALPHA = 0.05
NOTE = ("cells (fold, seed) share training videos across folds, so they are not independent: the "
        "sign test's p-value is optimistic. Folds, MAE pretraining, decoding, faces and audio features "
        "are those of the base run; each seed reruns the frame-wise fine-tune, MAE features, BLB, "
        "mining and DCL.")


# ======================================================================== reading scores
def scores_from_summary(path) -> dict:
    """``tasks`` of a summary.json: task -> {"metric", "folds": {fold: {stage: score}}}."""
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("tasks"), dict):
        raise PipelineError(f"{path}: not a summary.json (no 'tasks' object)")
    return doc["tasks"]


def _existing(paths) -> list[str]:
    return [p for p in paths if Path(p).exists()]


def scores_from_results(root, tasks, folds) -> dict:
    """The same shape (+ "baseline": the constant predictor's mean score), read from a results/
    folder's per-fold metrics files, so a seed run needs no predict / ensemble / summarize."""
    finetune = _existing(results.metrics(results.encoder(t, f, root=root)) for t in tasks for f in folds)
    temporal = _existing(results.metrics(results.fold_model(t, f, st, root=root)) for t in tasks for f in folds
                         for st in ("blb", "dcl"))
    metrics = load_metrics(finetune, temporal, tasks, folds)
    out = {t: task_scores(t, metrics, folds) for t in tasks}
    for t in tasks:
        bases = [_num(m.doc.get("baseline")) for (task, _, st), m in metrics.items() if task == t and st == "blb"]
        out[t]["baseline"] = _mean([b for b in bases if b is not None])
    return out


# ======================================================================== cells and statistics
def cells(by_seed: dict[int, dict], folds=None) -> list[dict]:
    """One row per (task, fold, seed): {"task", "fold", "seed", "finetune", "blb", "dcl"}."""
    rows = []
    for seed, tasks in sorted(by_seed.items()):
        for task, t in tasks.items():
            for fold, sc in t["folds"].items():
                if folds is None or fold in folds:
                    rows.append({"task": task, "fold": fold, "seed": seed,
                                 **{st: _num(sc.get(st)) for st in STAGES}})
    return rows


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _mean(vals) -> float | None:
    return float(np.mean(vals)) if len(vals) else None


def stat(vals) -> dict:
    """mean ± sample sd (ddof 1; None for fewer than 2 values) over the non-missing values."""
    v = [x for x in vals if x is not None]
    return {"mean": _mean(v), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else None, "n": len(v)}


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test of wins vs losses (ties dropped), p = 1 with no untied pair."""
    if wins + losses == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(wins, wins + losses, 0.5).pvalue)


def paired(rows: list[dict], a: str = "blb", b: str = "dcl") -> dict:
    """b - a per cell where both exist: mean ± sd, wins / losses / ties of b, sign-test p."""
    d = [r[b] - r[a] for r in rows if r[a] is not None and r[b] is not None]
    wins, losses = sum(x > TIE for x in d), sum(x < -TIE for x in d)
    return {**stat(d), "wins": wins, "losses": losses, "ties": len(d) - wins - losses,
            "p_sign": sign_test(wins, losses)}


def verdict(p: dict) -> str:
    """The plain-words reading of a paired comparison."""
    if not p["n"]:
        return "no cell has both BLB and DCL"
    tally = f"DCL wins {p['wins']}/{p['n']} cells, mean DCL - BLB {p['mean']:+.4f}, sign test p={p['p_sign']:.3g}"
    if p["p_sign"] < ALPHA:
        return f"DCL {'better' if p['mean'] > 0 else 'worse'} than BLB ({tally})"
    return f"no significant difference between DCL and BLB ({tally})"


def task_table(task: str, rows: list[dict], metric: str, baseline: float | None) -> dict:
    rows = [r for r in rows if r["task"] == task]
    seeds, folds = sorted({r["seed"] for r in rows}), list(dict.fromkeys(r["fold"] for r in rows))
    p = paired(rows)
    return {"task": task, "metric": metric, "baseline": baseline, "seeds": seeds, "folds": folds,
            "n_cells": len(rows), "stages": {st: stat([r[st] for r in rows]) for st in STAGES},
            "dcl_minus_blb": p, "verdict": verdict(p),
            "per_seed": {str(s): {st: stat([r[st] for r in rows if r["seed"] == s])["mean"] for st in STAGES}
                         for s in seeds},
            "cells": rows}


def ablation_table(by_seed: dict[int, dict], folds=None) -> dict:
    """The whole table: per task (in the first seed's order) + every task's cells pooled."""
    rows = cells(by_seed, folds)
    first = next(iter(by_seed.values()), {})
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    out = {"seeds": sorted(by_seed), "note": NOTE,
           "tasks": {t: task_table(t, rows, first.get(t, {}).get("metric", "score"),
                                   _num(first.get(t, {}).get("baseline"))) for t in tasks}}
    p = paired(rows)
    out["all"] = {"n_cells": len(rows), "dcl_minus_blb": p, "verdict": verdict(p)}
    return out


# ======================================================================== rendering
def _pm(s: dict, signed: bool = False) -> str:
    if s["mean"] is None:
        return "—"
    m = f"{s['mean']:+.3f}" if signed else f"{s['mean']:.3f}"
    return m + (f" ± {s['sd']:.3f}" if s["sd"] is not None else "")


HEADER = ["task", "metric", "cells (folds × seeds)", "constant baseline", *(METHOD_NAMES[s] for s in STAGES),
          "DCL − BLB", "DCL wins", "sign test p"]


def markdown(table: dict) -> str:
    """A markdown table (mean ± sd over cells) + one verdict line per task and for all tasks."""
    def line(cells) -> str:
        return "| " + " | ".join(cells) + " |"

    lines = [line(HEADER), "|" + "---|" * len(HEADER)]
    for t in table["tasks"].values():
        p = t["dcl_minus_blb"]
        base = "—" if t["baseline"] is None else f"{t['baseline']:.3f}"
        lines.append(line([t["task"], t["metric"], f"{len(t['folds'])} × {len(t['seeds'])} = {t['n_cells']}", base,
                           *(_pm(t["stages"][s]) for s in STAGES), _pm(p, True), f"{p['wins']}/{p['n']}",
                           f"{p['p_sign']:.3g}"]))
    a = table["all"]["dcl_minus_blb"]
    lines.append(line(["all", "", str(table["all"]["n_cells"]), "", "", "", "", _pm(a, True),
                       f"{a['wins']}/{a['n']}", f"{a['p_sign']:.3g}"]))
    lines += ["", f"Seeds {', '.join(map(str, table['seeds']))}; mean ± sd over (fold, seed) cells."]
    lines += [f"- {t['task']}: {t['verdict']}" for t in table["tasks"].values()]
    lines += [f"- all tasks: {table['all']['verdict']}", f"- note: {table['note']}"]
    return "\n".join(lines) + "\n"


def tsv_rows(table: dict) -> list[list[str]]:
    """Machine-readable: one row per task (+ all), means and sds in their own columns."""
    def c(v):
        return "" if v is None else (f"{v:.6f}" if isinstance(v, float) else str(v))

    head = ["task", "metric", "n_cells", "seeds", "baseline"]
    head += [f"{s}_{k}" for s in STAGES for k in ("mean", "sd")]
    head += ["dcl_minus_blb_mean", "dcl_minus_blb_sd", "dcl_wins", "dcl_losses", "ties", "p_sign"]
    rows = [head]
    for t in [*table["tasks"].values(), {"task": "all", "metric": "", "seeds": table["seeds"], "baseline": None,
                                         "stages": {}, **table["all"]}]:
        p = t["dcl_minus_blb"]
        rows.append([t["task"], t["metric"], c(t["n_cells"]), " ".join(map(str, t["seeds"])), c(t["baseline"]),
                     *(c(t["stages"].get(s, {}).get(k)) for s in STAGES for k in ("mean", "sd")),
                     c(p["mean"]), c(p["sd"]), c(p["wins"]), c(p["losses"]), c(p["ties"]), c(p["p_sign"])])
    return rows


def write_figure(table: dict, png) -> None:
    from affect_pipeline.submit import figures

    figures.save(figures.seed_ablation(table), Path(png))


def write_outputs(table: dict, stem, png=None) -> list[Path]:
    """``{stem}.json`` / ``.tsv`` / ``.md`` (+ the figure at ``png``), each written atomically."""
    stem = Path(stem)
    paths = [stem.with_suffix(s) for s in (".json", ".tsv", ".md")]
    write_json(paths[0], table)
    write_text(paths[1], "\n".join("\t".join(r) for r in tsv_rows(table)) + "\n")
    write_text(paths[2], markdown(table))
    if png:
        write_figure(table, png)
        paths.append(Path(png))
    return paths


def main(argv: list[str]) -> int:
    p = stage_parser("seed_ablation", "Redraw the multi-seed ablation figure from its table")
    p.add_argument("--table", required=True, help="metrics/ablation_seeds.json (python -m benchmarks.ablation)")
    p.add_argument("--png", required=True, help="report/ablation_seeds.png")
    a = p.parse_args(argv)
    table = read_json(a.table)
    if not isinstance(table, dict) or "tasks" not in table or "all" not in table:
        raise PipelineError(f"{a.table}: not a seed-ablation table (needs 'tasks' and 'all')")
    write_figure(table, a.png)
    return 0


if __name__ == "__main__":
    import sys

    from affect_pipeline.common.runtime import run_stage

    sys.exit(run_stage("seed_ablation", main, sys.argv[1:]))
