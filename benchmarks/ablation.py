"""Multi-seed ablation: rerun the seed-dependent stages of a finished run and tabulate them.

    python -m benchmarks.ablation --run DIR --seeds 0 1 2 [--configfile A.yaml ...] [--cores 2]
                                  [--tasks VA] [--dry-run]

DIR is a finished ``snakemake --directory DIR`` work dir (``results/``). Its own seed's scores are
read as they are. For every other seed S, ``DIR/ablation/seed{S}/`` becomes a work dir whose
upstream outputs (decoded frames and audio, face stores, index, folds, audio feature shards, the
pretrained MAE, and the data trees named by relative config paths, e.g. ``resources/demo``) are
hard links to DIR's, and the repo's Snakefile runs there with ``--config seed=S`` for the per-fold
metrics files only: the frame-wise fine-tune, MAE features, BLB, hard-clip mining and DCL. A dry
run checks that first: any other rule in the plan (a re-decode, a re-detection, a re-pretraining,
new folds) stops the command before anything runs, and so does a base run that is not finished
or not up to date with the code. Rerunning resumes: a seed's finished jobs are kept.

The configuration defaults to DIR's ``results/config.yaml`` (its effective settings), so every
seed runs exactly the base run's settings. The table (:mod:`affect_pipeline.submit.seed_ablation`) goes
to stdout and to DIR's ``results/metrics/ablation_seeds.{json,tsv,md}`` +
``results/report/ablation_seeds.png``; ``--page benchmarks/RESULTS.md`` also replaces the
``ablation`` section of the results page (its other sections are kept).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from affect_pipeline.common import results
from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.tasks import FRAME_TASKS
from affect_pipeline.data.layout import enabled_tasks

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
#: what a seed reuses from the base run (+ results/features/*.h5, the audio feature shards)
UPSTREAM = ("results/frames", "results/audio", "results/faces", "results/index", "results/folds",
            "results/mae/pretrain.pt", "results/mae/pretrain_curve.csv")
#: the only rules a seed may run
RERUN = frozenset({"finetune_mae", "visual_features", "visual_features_eri", "train_blb", "mine_hard_clips",
                   "train_dcl"})
DATA_KEYS = ("demo.root", "affwild2.videos", "affwild2.annotations", "affwild2.test_lists",
             "affwild2.cropped_aligned", "hume.root", "scoring.test_labels", "mae.checkpoint")


# ======================================================================== the run's settings
def load_config(configfiles) -> dict:
    """workflow_config.yaml overlaid by the config files, as Snakemake merges them."""
    from snakemake.utils import update_config

    cfg = yaml.safe_load((ROOT / "workflow_config.yaml").read_text(encoding="utf-8"))
    for f in configfiles:
        if not Path(f).is_file():
            raise PipelineError(f"{f}: config file not found")
        update_config(cfg, yaml.safe_load(Path(f).read_text(encoding="utf-8")) or {})
    return cfg


def folds_of(cfg: dict) -> list[str]:
    return ["official"] + [f"fold{i}" for i in range(1, cfg["folds"] + 1)]


def metric_targets(cfg: dict, tasks) -> list[str]:
    """The per-fold metrics files of the three stages the table compares."""
    folds = folds_of(cfg)
    ft_folds = folds if cfg["mae"]["finetune"]["per_fold"] else ["official"]
    out = [results.metrics(results.encoder(t, f)) for t in tasks if t in FRAME_TASKS for f in ft_folds]
    return out + [results.metrics(results.fold_model(t, f, st)) for t in tasks for f in folds
                  for st in ("blb", "dcl")]


def _get(cfg: dict, key: str):
    for part in key.split("."):
        cfg = cfg.get(part) if isinstance(cfg, dict) else None
    return cfg


def data_paths(cfg: dict) -> list[str]:
    """Relative data paths the config names (read inside the work dir), outermost only."""
    keys = DATA_KEYS + tuple(f"audio.{m}.weights" for m in cfg["audio"]["models"])
    rel = sorted({os.path.normpath(v) for v in map(lambda k: _get(cfg, k), keys)
                  if isinstance(v, str) and v and not os.path.isabs(v)})
    bad = [p for p in rel if p.split(os.sep)[0] == ".."]
    if bad:
        raise PipelineError(f"config data path(s) {bad} leave the work dir: give them as absolute paths")
    return [p for p in rel if not any(p.startswith(q + os.sep) for q in rel if q != p)]


# ======================================================================== a seed's work dir
def _link(src, dst) -> None:
    """A hard link (same inode, same mtime); a metadata-preserving copy across file systems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def link_tree(src: Path, dst: Path) -> None:
    """Replace ``dst`` by hard links to the file or tree ``src`` (which DIR's run must have)."""
    if not src.exists():
        raise PipelineError(f"{src}: missing in the base run (is it finished?)")
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    elif dst.exists() or dst.is_symlink():
        dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, symlinks=True, copy_function=_link)
    else:
        _link(src, dst)


def prepare_seed_dir(run: Path, work: Path, cfg: dict) -> Path:
    """``work`` with the base run's upstream outputs and relative data trees linked in (fresh each time)."""
    shards = sorted(p.relative_to(run).as_posix() for p in (run / "results" / "features").glob("*.h5"))
    for rel in (*UPSTREAM, *shards, *data_paths(cfg)):
        link_tree(run / rel, work / rel)
    return work


# ======================================================================== snakemake
def snakemake_cmd(work: Path, configfiles, targets, seed: int | None, cores: int) -> list[str]:
    seed_cfg = ["--config", f"seed={seed}"] if seed is not None else []
    return [SNAKEMAKE, *targets, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(work),
            "--configfile", *map(str, configfiles), *seed_cfg, "--cores", str(cores)]


def planned_jobs(cmd: list[str]) -> dict[str, int]:
    """rule -> job count of a dry run of ``cmd`` (empty: nothing to do)."""
    p = subprocess.run([*cmd, "-n", "--quiet", "rules"], capture_output=True, text=True)
    out = p.stdout + p.stderr
    if p.returncode != 0:
        raise PipelineError(f"dry run failed: {' '.join(cmd)}\n{out[-3000:]}")
    rows = [ln.split() for ln in out.splitlines()]
    return {r[0]: int(r[1]) for r in rows if len(r) == 2 and r[1].isdigit() and r[0] != "total"}


def check_plan(plan: dict[str, int], where: Path) -> None:
    """A seed may rerun only the seed-dependent stages; anything else means upstream work redone."""
    extra = {r: n for r, n in plan.items() if r not in RERUN}
    if extra:
        raise PipelineError(f"{where}: the seed would also run {extra}: upstream outputs are missing or out "
                            f"of date in the base run; finish it (snakemake --directory {where.parent.parent}) first")


def run_logged(cmd: list[str], log: Path, tag: str) -> None:
    """Run snakemake, its whole output to ``log``, its progress lines to stdout."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as fh, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                text=True) as p:
        for line in p.stdout:
            fh.write(line)
            if re.match(r"\d+ of \d+ steps", line) or line.startswith("Error"):
                print(f"{tag} {line.strip()}", flush=True)
    if p.returncode != 0:
        raise PipelineError(f"{tag} snakemake failed ({p.returncode}); see {log}")


# ======================================================================== the command
def seed_results(a, run: Path, cfg: dict, configfiles, tasks) -> dict[int, Path]:
    """Every seed's results/ folder, running the missing seeds (or only planning, with --dry-run)."""
    targets = metric_targets(cfg, tasks)
    base_plan = planned_jobs(snakemake_cmd(run, configfiles, targets, None, 1))
    if base_plan:
        raise PipelineError(f"{run}: the base run is not finished or not up to date with the code / "
                            f"config: snakemake would run {base_plan} there; finish it first")
    plans, out = {}, {}
    for s in a.seeds:
        if s == cfg["seed"]:
            out[s] = run / "results"
            continue
        work = prepare_seed_dir(run, run / "ablation" / f"seed{s}", cfg)
        plans[s] = (work, planned_jobs(snakemake_cmd(work, configfiles, targets, s, a.cores)))
        check_plan(plans[s][1], work)
        print(f"seed {s}: {sum(plans[s][1].values())} jobs in {work} "
              f"({', '.join(f'{r} {n}' for r, n in plans[s][1].items()) or 'done'})", flush=True)
        out[s] = work / "results"
    for i, (s, (work, plan)) in enumerate(plans.items(), 1):
        if plan and not a.dry_run:
            t0 = time.time()
            print(f"seed {s} ({i}/{len(plans)}): running ...", flush=True)
            run_logged(snakemake_cmd(work, configfiles, targets, s, a.cores), work / "ablation.log", f"[seed {s}]")
            print(f"seed {s}: done in {time.time() - t0:.0f} s", flush=True)
    return out


#: the results page's ablation section: its heading and what its figures are
PAGE_INTRO = """## Multi-seed ablation: DCL against BLB

The seed-dependent stages of one finished run (frame-wise MAE fine-tune, MAE features, BLB,
hard-clip mining, DCL) rerun with each seed on the run's folds, faces, pretraining and audio
features. Validation scores, mean ± sd over the (fold, seed) cells (official + fold1..k). The
reference of DCL is the BLB of the same cell (DCL starts from it): DCL − BLB per cell, how many
cells DCL wins and an exact two-sided sign test. The cells share training videos across folds, so
the p-values are optimistic."""


def page_section(a, table: dict, run: Path) -> str:
    """The ``ablation`` section of the results page: intro, where and how measured, the table."""
    from affect_pipeline.submit import seed_ablation as sa
    from benchmarks.results_page import machine, stamp

    cmd = f"python -m benchmarks.ablation --run DIR --seeds {' '.join(map(str, a.seeds))}"
    cmd += f" --tasks {' '.join(a.tasks)}" if a.tasks else ""
    return f"{PAGE_INTRO}\n\n{stamp(machine(), cmd)}\n- DIR: `{run}`\n\n{sa.markdown(table)}"


def main(argv=None) -> int:
    from affect_pipeline.common.tasks import TASKS
    from affect_pipeline.submit import seed_ablation as sa

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a finished snakemake --directory work dir")
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--configfile", type=Path, nargs="+", default=None,
                    help="the run's config files (default: DIR/results/config.yaml, its effective settings)")
    ap.add_argument("--tasks", nargs="+", choices=TASKS, default=None, help="a subset of the run's tasks")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--dry-run", action="store_true", help="prepare and plan the seeds, run nothing")
    ap.add_argument("--out", type=Path, default=None, help="output stem (default DIR/results/metrics/ablation_seeds)")
    ap.add_argument("--page", type=Path, default=None,
                    help="also replace the ablation section of this results page (e.g. benchmarks/RESULTS.md)")
    a = ap.parse_args(argv)
    try:
        run = a.run.resolve()
        configfiles = [p.resolve() for p in (a.configfile or [run / "results" / "config.yaml"])]
        cfg = load_config(configfiles)
        tasks = [t for t in enabled_tasks(cfg) if a.tasks is None or t in a.tasks]
        if not tasks:
            raise PipelineError(f"no task of {a.tasks} is enabled in the run ({list(enabled_tasks(cfg))})")
        results = seed_results(a, run, cfg, configfiles, tasks)
        if a.dry_run:
            return 0
        table = sa.ablation_table({s: sa.scores_from_results(r, tasks, folds_of(cfg)) for s, r in results.items()})
        stem = a.out or run / "results" / "metrics" / "ablation_seeds"
        paths = sa.write_outputs(table, stem, run / "results" / "report" / "ablation_seeds.png" if not a.out
                                 else stem.with_suffix(".png"))
    except PipelineError as e:
        print(f"ablation: {e}", file=sys.stderr)
        return 1
    print(sa.markdown(table))
    if a.page:
        from benchmarks.results_page import update_page

        update_page(a.page, {"ablation": page_section(a, table, run)})
        paths = [*paths, f"{a.page} (section ablation)"]
    print("written: " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
