"""A bundle's description of its models: ``training.json`` (what they were trained on and how
they scored, from the run's own records) and ``MODEL_CARD.md`` (the same, for a reader).

Sources, all copied into the bundle: ``metrics/summary.json`` (summarize: validation score per
fold and stage, test scores where the truth is known), ``folds/{task}.json`` (make_folds: the
videos of each fold), ``index/index_report.json`` (index_dataset: videos per task and split),
the run's config (datasets) and, for a demo run, the demo generator's ``manifest.json``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from affect_pipeline.affect_predict.run_models import local_path
from affect_pipeline.common.runtime import read_json

DATASET_KEYS = {"Aff-Wild2": ("affwild2", ("videos", "annotations", "test_lists", "cropped_aligned")),
                "Hume-Reaction": ("hume", ("root",))}


ENCODERS = {"per_fold": "one fine-tuned MAE per task and fold (each fold's models use their own)",
            "shared": "one fine-tuned MAE per task, shared by the folds (fold validation scores are optimistic)"}


def _read(path: Path) -> dict:
    return read_json(path) if path.is_file() else {}


def demo_generator(cfg: dict, workdir: Path) -> dict | None:
    """The demo generator's record (generator, seed, params) of a demo run, when its tree is still there."""
    root = (cfg.get("demo") or {}).get("root")
    manifest = local_path(root, workdir) / "manifest.json" if root else None
    if manifest is None or not manifest.is_file():
        return None
    m = read_json(manifest)
    return {k: m.get(k) for k in ("generator", "seed", "params", "source_image")}


def fold_sizes(folds_doc: dict) -> dict:
    """Videos per fold and part (train / validation), and the held-out test videos."""
    return {"k": folds_doc.get("k"), "seed": folds_doc.get("seed"), "test": len(folds_doc.get("test", [])),
            "folds": {f: {part: len(v) for part, v in parts.items()} for f, parts in folds_doc.get("folds", {}).items()}}


def task_scores(summary: dict, task: str) -> dict:
    """The DCL models' validation score per ensembled fold and their mean; the test score if scored."""
    doc = summary.get("tasks", {}).get(task, {})
    ens = summary.get("ensemble_folds") or [f for f in doc.get("folds", {}) if f != "official"]
    val = {f: doc.get("folds", {}).get(f, {}).get("dcl") for f in ens}
    vals = [v for v in val.values() if v is not None]
    return {"metric": doc.get("metric"), "validation": val,
            "validation_mean": float(np.mean(vals)) if vals else None,
            "test": summary.get("test", {}).get(task)}


def describe_training(cfg: dict, root: Path, tasks: list[str], source) -> dict:
    """training.json: demo or real, datasets, splits, folds, scores (``source``: bundle.ModelSource)."""
    summary = _read(root / "metrics" / "summary.json")
    report = _read(root / "index" / "index_report.json")
    datasets = {name: {k: (cfg.get(sec) or {}).get(k) for k in keys} for name, (sec, keys) in DATASET_KEYS.items()}
    return {
        "demo": source.demo,
        "data": "the synthetic demo (make_demo)" if source.demo else "real data (the config's datasets)",
        "demo_generator": demo_generator(cfg, source.workdir) if source.demo else None,
        "datasets": datasets,
        "tasks": tasks,
        "splits": {t: report.get(t) for t in tasks},
        "folds": {t: fold_sizes(_read(root / "folds" / f"{t}.json")) for t in tasks},
        "encoder": summary.get("encoder"),
        "leaky_folds": summary.get("leaky_folds", []),
        "note": summary.get("note", ""),
        "scores": {t: task_scores(summary, t) for t in tasks},
    }


# ---------------------------------------------------------------- the card
def _num(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def _version(code: dict) -> str:
    commit = code.get("commit")
    return f"affect_pipeline {code['version']}" + (f", git commit `{commit}`" + (" (with uncommitted changes)"
                                                   if code.get("dirty") else "") if commit else " (no git commit known)")


def model_card(manifest: dict, training: dict) -> str:
    """MODEL_CARD.md: a demo banner first when it applies, then data, scores, files, use."""
    lines = ["# Model card: affect_pipeline models", ""]
    if training["demo"]:
        lines += ["> **DEMO MODELS: trained on the synthetic demo data** (`make_demo`: one animated face,",
                  "> randomly initialised audio models, a few seconds of video). They only show that the",
                  "> workflow runs end to end; their predictions on real faces mean nothing. Every",
                  "> `affect-predict` run with them logs a warning and records `\"demo\": true`.", ""]
    src = manifest["source"]
    lines += [(f"- Tasks: {', '.join(manifest['tasks'])}, each an ensemble of the fold models "
               f"{', '.join(manifest['folds'])} (fold weights as the submission's ensemble)."),
              f"- Code: {_version(manifest['code'])}.",
              f"- Exported from: `{src['run']}` (a {src['kind']}).",
              f"- Visual encoders: {ENCODERS.get(training.get('encoder'), 'the fine-tuned MAEs in mae/')}.",
              "", "## Training data", "",
              f"Trained on **{training['data']}**."]
    gen = training.get("demo_generator")
    if gen:
        lines.append(f"Demo generator: {gen.get('generator')}, seed {gen.get('seed')}, face from {gen.get('source_image')}.")
    lines.append("")
    for name, keys in training["datasets"].items():
        set_keys = {k: v for k, v in keys.items() if v}
        lines.append(f"- {name}: " + (", ".join(f"{k} `{v}`" for k, v in set_keys.items()) if set_keys else "not used"))
    lines.append("")
    for t in training["tasks"]:
        sp, fo = training["splits"].get(t) or {}, training["folds"].get(t) or {}
        per_fold = "; ".join(f"{f}: {d.get('train', 0)} train / {d.get('validation', 0)} validation"
                             for f, d in fo.get("folds", {}).items())
        lines.append(f"- {t}: {', '.join(f'{k} {v}' for k, v in sp.items()) or 'split sizes not recorded'} videos; "
                     f"{fo.get('k')} folds (seed {fo.get('seed')}): {per_fold or 'not recorded'}")
    if training.get("leaky_folds"):
        lines += ["", f"Note: {training.get('note')}"]
    lines += ["", "## Scores", "", ("Validation scores of the DCL model of each ensembled fold (its own validation "
                                    "videos), and the ensemble's test score where the run knew the test truth "
                                    "(a demo run does)."), "",
              "| task | metric | " + " | ".join(manifest["folds"]) + " | mean | test |",
              "|---|---|" + "---|" * (len(manifest["folds"]) + 2)]
    for t, s in training["scores"].items():
        test = (s.get("test") or {}).get("score")
        lines.append(f"| {t} | {s.get('metric') or '–'} | " + " | ".join(_num(s["validation"].get(f)) for f in manifest["folds"])
                     + f" | {_num(s.get('validation_mean'))} | {_num(test)} |")
    lines += ["", "## Weights", "", "| config key | in the bundle | digest | the run's path |", "|---|---|---|---|"]
    for key, w in manifest["weights"].items():
        lines.append(f"| `{key}` | {'`' + w['path'] + '`' if w['included'] else 'no'} | `{w['digest']}` | `{w['expected']}` |")
    lines += ["", "A weight not in the bundle must be given with `affect-predict --config` (its key) or `--workdir`;",
              "its digest is checked against the one the models recorded.", "",
              "## Use", "", "```", "affect-predict VIDEO|FOLDER --models THIS_FOLDER --out-dir preds/", "```", "",
              "Each output gets a `.provenance.json` sidecar (models digest, config digest, code version, input",
              "digest, arguments); a rerun redoes a video whose record differs.", "",
              f"## Files ({len(manifest['files'])}, sha256 in `bundle.json`)", ""]
    lines += [f"- `{rel}` ({meta['size']:,} bytes)" for rel, meta in manifest["files"].items()]
    return "\n".join(lines) + "\n"
