"""What a run costs: jobs, work units and hours per stage, from a tree's index and measured rates.

    python -m benchmarks.cost --configfile my.yaml [--configfile more.yaml ...] [--directory RUN]
                              [--throughputs benchmarks/paper_throughputs.json] [--no-pretrain]
    python -m benchmarks.cost --real-size-tree /tmp/real [--no-pretrain]    # Aff-Wild2 + Hume-Reaction

``--no-pretrain`` costs the run with an imported encoder (``mae.checkpoint``: MAE-Face's weights)
instead of the 800-epoch pretraining (``mae.pretrain.epochs``).

Jobs are the workflow's own: ``snakemake -n submission`` over the same config files (so they are
the jobs a run would start). Work units come from the tree the config's data keys name, scanned
as the workflow scans it (:func:`affect_pipeline.data.layout.scan_dataset`): frames per media
file from its frames JSON when ``extract_frames`` has written it under ``--directory``, else the
rows of its annotation files (Aff-Wild2 writes one a frame), else the mean of the dataset's known
videos (or, with none known, the dataset's published mean); each row says how many it had to
assume. Optimiser steps follow the config's schedules (epochs, batch sizes, folds, clip length
and stride). Hours = units / the rate ``python -m benchmarks.run --paper`` measured on this
machine (``paper_throughputs.json``); a GPU column says ``unmeasured`` until a GPU rate is stored.
Stages without a paper-size rate (decode, indexing, inference and bookkeeping jobs) show their
jobs only.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
THROUGHPUTS = ROOT / "benchmarks" / "paper_throughputs.json"
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
#: published means, used only when a dataset has no video of known length: Aff-Wild2 (~2.8 M
#: frames over its ~594 media files, 30 fps) and Hume-Reaction (25,067 clips, ~75 h)
PUBLISHED_MEAN = {"affwild2": (4700, 30.0), "hume": (323, 30.0)}   # (frames, fps)


# ---------------------------------------------------------------- inputs
def load_config(files: list[Path]) -> dict:
    """workflow_config.yaml updated by each file in turn, nested keys merged (as --configfile)."""
    def merge(a: dict, b: dict) -> dict:
        for k, v in b.items():
            a[k] = merge(dict(a[k]), v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return a
    cfg = yaml.safe_load((ROOT / "workflow_config.yaml").read_text(encoding="utf-8"))
    for f in files:
        cfg = merge(cfg, yaml.safe_load(Path(f).read_text(encoding="utf-8")) or {})
    return cfg


def dry_run_jobs(files: list[Path], directory: Path) -> dict[str, int]:
    """rule -> jobs of ``snakemake -n submission`` over these config files."""
    cmd = [SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(directory), "-n", "submission",
           "--quiet", "rules", "--configfile", *map(str, files)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    rows = [ln.split() for ln in (p.stdout + p.stderr).splitlines()]
    jobs = {r[0]: int(r[1]) for r in rows if len(r) == 2 and r[1].isdigit()}
    if p.returncode != 0 or "total" not in jobs:
        raise SystemExit(f"snakemake -n submission failed:\n{(p.stdout + p.stderr)[-2000:]}")
    return jobs


def imported_encoder(folder: Path) -> Path:
    """A config file that imports an encoder instead of pretraining (``mae.checkpoint``, as with
    MAE-Face's weights); the file it names is an empty stand-in: a dry run only needs it to exist."""
    weights = folder / "mae_face_pretrain_vit_base.pth"
    weights.write_bytes(b"")
    f = folder / "imported_encoder.yaml"
    f.write_text(yaml.safe_dump({"mae": {"checkpoint": str(weights)}}), encoding="utf-8")
    return f


@dataclass
class Lengths:
    """Frames and seconds of every used video, and how many had to be assumed."""
    frames: dict[str, int] = field(default_factory=dict)      # video id -> frames
    seconds: dict[str, float] = field(default_factory=dict)   # media stem -> audio seconds
    assumed: int = 0


def _annotation_rows(path: str) -> int:
    with open(path, "rb") as f:
        return max(0, sum(1 for _ in f) - 1)


def video_lengths(cfg: dict, directory: Path) -> tuple[object, Lengths]:
    """(the layout, the lengths of its videos): frames JSON > annotation rows > a dataset mean."""
    from affect_pipeline.common import results
    from affect_pipeline.data.layout import scan_dataset

    lay = scan_dataset(cfg)
    n_batches = int(cfg["resources"]["media_batches"])
    known: dict[str, tuple[int, float]] = {}                 # media -> (frames, fps)
    for vid in lay.ids():
        e = lay.videos[vid]
        probe = directory / results.frames_batch(lay.batch_of(vid, n_batches)) / f"{e.media}.json"
        if probe.exists():
            info = json.loads(probe.read_text(encoding="utf-8"))
            known[e.media] = (int(info["n_frames"]), float(info.get("fps") or 30.0))
        elif e.annotations and e.media not in known:
            rows = max(_annotation_rows(a) for a in e.annotations.values())
            if rows:                     # a header alone (a placeholder tree) says nothing
                known[e.media] = (rows, 30.0)
    dataset = {v: "hume" if "ERI" in lay.videos[v].splits else "affwild2" for v in lay.ids()}
    mean = {}
    for name, published in PUBLISHED_MEAN.items():
        lengths = [known[m][0] for m in {lay.videos[v].media for v in lay.ids() if dataset[v] == name} if m in known]
        mean[name] = (round(sum(lengths) / len(lengths)), 30.0) if lengths else published
    out = Lengths()
    for vid in lay.ids():
        media = lay.videos[vid].media
        if media not in known:
            known[media] = mean[dataset[vid]]
            out.assumed += 1
        frames, fps = known[media]
        out.frames[vid], out.seconds[media] = frames, frames / fps
    return lay, out


# ---------------------------------------------------------------- work units
@dataclass
class Row:
    stage: str
    jobs: int
    units: float = 0.0
    unit: str = ""
    rate_key: str = ""            # paper_throughputs.json stage
    per_rate_unit: float = 1.0    # work units per unit of the measured rate (e.g. crops per step)
    note: str = ""
    extra_hours: float = 0.0      # another measured rate's share (fine-tune validation forwards)


def clips(n: int, clip_len: int, stride: int) -> int:
    """Training clips of a video of ``n`` frames (the last one padded)."""
    return 1 if n <= clip_len else math.ceil((n - clip_len) / stride) + 1


def fold_share(cfg: dict, fold: str, frames_train: int, frames_val: int) -> int:
    """Training frames of a task's fold: the official split's train videos, or (k-1)/k of all."""
    if fold == "official":
        return frames_train
    k = int(cfg["folds"])
    return round((frames_train + frames_val) * (k - 1) / k)


def work(cfg: dict, lay, lengths: Lengths, jobs: dict[str, int], rates: dict) -> list[Row]:
    from affect_pipeline.common.tasks import FRAME_TASKS

    tasks = [t for t in lay.tasks if t in FRAME_TASKS]
    mae, tmp = cfg["mae"], cfg["temporal"]
    folds = ["official"] + [f"fold{i}" for i in range(1, int(cfg["folds"]) + 1)]
    encoders = folds if mae["finetune"]["per_fold"] else ["official"]
    split_frames = {t: {s: sum(lengths.frames[v] for v in lay.ids(t, (s,))) for s in ("train", "validation", "test")}
                    for t in lay.tasks}
    batch = lambda key: float(rates.get(key, {}).get("batch", 1))  # noqa: E731
    rows = [Row("crop_faces", jobs.get("crop_faces", 0), sum(lengths.frames.values()), "frames", "crop_faces_360p",
                note="at the 640x360 rate (1920x1080: the crop_faces_1080p rate)")]
    rows += [Row(f"audio_features {m}", 1 if jobs.get("audio_features") else 0, sum(lengths.seconds.values()),
                 "audio s", f"audio_{m}") for m in cfg["audio"]["models"]]
    ep = int(mae["pretrain"]["epochs"])
    pre_frames = sum(lengths.frames[v] for v in {v for t in tasks for v in lay.ids(t, ("train",))})
    rows.append(Row("pretrain_mae", jobs.get("pretrain_mae", 0), 0 if mae["checkpoint"] else ep * pre_frames,
                    "crops", "pretrain_mae", batch("pretrain_mae"),
                    "imported (mae.checkpoint): no pretraining" if mae["checkpoint"] else
                    f"{ep} epochs x {pre_frames:,} crops (every train frame; found faces are fewer)"))
    ft = mae["finetune"]
    ft_train = sum(int(ft["epochs"]) * fold_share(cfg, f, split_frames[t]["train"], split_frames[t]["validation"])
                   for t in tasks for f in encoders)
    ft_val = sum(int(ft["epochs"]) * (split_frames[t]["validation"] if f == "official" else
                                      round((split_frames[t]["train"] + split_frames[t]["validation"]) / int(cfg["folds"])))
                 for t in tasks for f in encoders)
    ft_row = Row("finetune_mae", jobs.get("finetune_mae", 0), ft_train, "crops", "finetune_mae", batch("finetune_mae"),
                 f"{ft['epochs']} epochs; + {ft_val:,} validation forwards at the visual_features rate")
    ft_row.extra_hours = hours(ft_val, rates.get("visual_features"), 1.0) or 0.0
    rows.append(ft_row)
    vf = sum(len(encoders) * sum(split_frames[t].values()) for t in tasks)
    vf += sum(split_frames["ERI"].values()) if "ERI" in lay.tasks else 0
    rows.append(Row("visual_features", jobs.get("visual_features", 0) + jobs.get("visual_features_eri", 0), vf,
                    "frames x encoders", "visual_features", note=f"{len(encoders)} encoders a frame task, 1 for ERI"))
    for key, rule, epochs in (("train_blb", "train_blb", None), ("train_dcl", "train_dcl", tmp["dcl"]["epochs"])):
        steps = 0
        for t in lay.tasks:
            hp = tmp["eri"] if t == "ERI" else tmp["blb"]
            per_video = {v: clips(lengths.frames[v], int(tmp["clip_len"]), int(tmp["stride"])) for v in lay.ids(t)}
            for f in folds:
                n = fold_share(cfg, f, sum(per_video[v] for v in lay.ids(t, ("train",))),
                               sum(per_video[v] for v in lay.ids(t, ("validation",))))
                steps += int(epochs or hp["epochs"]) * math.ceil(n / int(hp["batch_size"]))
        rows.append(Row(rule, jobs.get(rule, 0), steps, "steps", key,
                        note=f"clip {tmp['clip_len']}, stride {tmp['stride']}; ERI's steps at the BLB d512 rate"))
    modelled = {"crop_faces", "audio_features", "pretrain_mae", "finetune_mae", "visual_features",
                "visual_features_eri", "train_blb", "train_dcl", "total"}
    rest = {r: n for r, n in jobs.items() if r not in modelled}
    rows.append(Row("other jobs", sum(rest.values()), note=", ".join(f"{r} {n}" for r, n in rest.items())
                    + ": decode, indexing, inference and bookkeeping, no paper-size rate"))
    return rows


def hours(units: float, rate: dict | None, per_rate_unit: float, device: str = "cpu") -> float | None:
    """Hours for ``units`` at a stored rate (units per second = rate x per_rate_unit), None unmeasured."""
    value = (rate or {}).get(device)
    return None if not value else units / (value * per_rate_unit) / 3600


# ---------------------------------------------------------------- the table
def table(rows: list[Row], rates: dict, assumed: int) -> str:
    lines = ["| stage | jobs | work units | hours on this machine (measured rate) | hours on a GPU | note |",
             "|---|---:|---:|---:|---|---|"]
    total = 0.0
    for r in rows:
        h = hours(r.units, rates.get(r.rate_key), r.per_rate_unit) if r.rate_key else None
        h = None if h is None else h + r.extra_hours
        total += h or 0.0
        gpu = "" if not r.rate_key else "unmeasured" if hours(r.units, rates.get(r.rate_key), 1, "gpu") is None else \
            f"{hours(r.units, rates.get(r.rate_key), r.per_rate_unit, 'gpu'):,.1f}"
        shown = "" if not r.rate_key else "no rate stored" if h is None else f"{h:,.1f}"
        units = f"{r.units:,.0f} {r.unit}" if r.unit else ""
        lines.append(f"| {r.stage} | {r.jobs} | {units} | {shown} | {gpu} | {r.note} |")
    lines.append(f"| **total** | {sum(r.jobs for r in rows)} | | **{total:,.0f}** ({total / 24:,.1f} days) | "
                 f"unmeasured | {assumed} video(s) of assumed length |")
    return "\n".join(lines)


def real_size_tree(root: Path) -> Path:
    """The placeholder tree of benchmarks/bench_dag.py's real sizes (tests/aff_tree.py), annotation
    files without rows (so every length is the published mean), and its config file."""
    sys.path.insert(0, str(ROOT / "tests"))
    from aff_tree import make_hume_tree, make_tree, placeholder_audio_weights

    cfg = root / "data.yaml"
    if not cfg.exists():
        data = make_tree(root / "affwild2", 600, rows=0, pair_every=50)
        data.update(make_hume_tree(root / "hume"))
        data["audio"] = placeholder_audio_weights(root / "weights")
        cfg.write_text(yaml.safe_dump(data), encoding="utf-8")
    return cfg


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configfile", type=Path, nargs="+", action="extend", default=[])
    ap.add_argument("--directory", type=Path, default=Path("."), help="the run's folder (its results/frames)")
    ap.add_argument("--throughputs", type=Path, default=THROUGHPUTS)
    ap.add_argument("--real-size-tree", type=Path, default=None, metavar="DIR",
                    help="first write a placeholder tree of the real sizes here (600 Aff-Wild2 videos, 12 "
                         "split into _left / _right, and Hume-Reaction's 25,067 clips; lengths: the "
                         "published means) with its config DIR/data.yaml, and cost that")
    ap.add_argument("--no-pretrain", action="store_true",
                    help="cost with an imported encoder instead (mae.checkpoint set, e.g. MAE-Face)")
    a = ap.parse_args(argv)
    if a.real_size_tree:
        a.configfile = [real_size_tree(a.real_size_tree), *a.configfile]
        a.directory = a.directory if a.directory != Path(".") else a.real_size_tree / "run"
    if not a.configfile:
        ap.error("give --configfile (the data keys of a tree) or --real-size-tree")
    stored = json.loads(a.throughputs.read_text(encoding="utf-8")) if a.throughputs.exists() else {"stages": {}}
    with tempfile.TemporaryDirectory() as tmp:
        files = a.configfile + ([imported_encoder(Path(tmp))] if a.no_pretrain else [])
        cfg = load_config(files)
        jobs = dry_run_jobs(files, a.directory)
    lay, lengths = video_lengths(cfg, a.directory)
    print(f"Rates: {a.throughputs} ({stored.get('machine', 'none stored')}, {stored.get('date', '?')}, "
          f"commit {stored.get('commit', '?')}); GPU rates: none measured")
    print(table(work(cfg, lay, lengths, jobs, stored["stages"]), stored["stages"], lengths.assumed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
