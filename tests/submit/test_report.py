"""report_plots writes every listed PNG from a small but complete set of named input files, and
placeholders (never missing files) when a task is switched off or its inputs are absent."""
import json
import re
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import REPO, workflow_defaults

from affect_pipeline.__main__ import main as cli
from affect_pipeline.common.stores import Labels, write_face_store, write_labels
from affect_pipeline.common.tasks import TASK_OUTPUTS, TASKS
from affect_pipeline.submit import ensemble as ens
from affect_pipeline.submit import figures, report, report_plots
from affect_pipeline.submit import summarize as summ

TEST = {"t_a": 12, "t_b": 9}
VAL = {"v_a": 10, "v_b": 8}


def _curve(path, epochs=4, seed=0):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["epoch,train_loss,val_loss,val_score,lr"]
    lines += [f"{e},{1 / (e + 1):.4f},{1.2 / (e + 1):.4f},{0.3 + 0.05 * e + 0.01 * rng.random():.4f},0.0001"
              for e in range(1, epochs + 1)]
    path.write_text("\n".join(lines) + "\n")
    return path


def build_results(res: Path, folds) -> dict:
    """A results/ tree at the rule paths for ``folds``; returns the named inputs of report_plots."""
    rng = np.random.default_rng(0)
    cols = ("video_id", "path", "media", "side", "fps", "n_frames", "width", "height", "duration", "has_audio",
            "split_AU", "split_EXPR", "split_VA", "split_ERI")
    (res / "index").mkdir(parents=True)
    with open(res / "index" / "videos.tsv", "w") as fh:
        fh.write("\t".join(cols) + "\n")
        for vid, n in TEST.items():
            fh.write("\t".join(map(str, [vid, "x.mp4", vid, "", 25, n, 64, 64, 1, "true", "test", "test", "test", ""])) + "\n")
        for vid, n in VAL.items():
            fh.write("\t".join(map(str, [vid, "x.mp4", vid, "", 25, n, 64, 64, 1, "true", "train", "train", "train", ""])) + "\n")
    labels = res / "index" / "labels" / "VA.h5"
    write_labels(labels, "VA", {v: Labels(rng.uniform(-1, 1, (n, 2)), np.r_[np.ones(n - 1, bool), False], "train")
                                for v, n in VAL.items()})
    pre = res / "mae" / "pretrain_curve.csv"
    pre.parent.mkdir(parents=True)
    pre.write_text("epoch,step,loss,lr\n" + "".join(f"{e},{10 * e},{1 / e:.4f},0.001\n" for e in range(1, 5)))
    curves, ft, st, preds, ensembles = [pre], [], [], [], []
    for task in TASKS:
        for k, fold in enumerate(folds):
            if task != "ERI":
                curves.append(_curve(res / "mae" / task / fold / "finetune_curve.csv", seed=k))
                ft.append(res / "mae" / task / fold / "finetune_metrics.json")
                ft[-1].write_text(json.dumps({"task": task, "fold": fold, "stage": "finetune_mae", "score": 0.3}))
            d = res / "models" / task / fold
            for stage in ("blb", "dcl"):
                curves.append(_curve(d / f"{stage}_curve.csv", seed=k))
                m = {"task": task, "fold": fold, "stage": stage, "score": 0.4 + 0.01 * k}
                if task in ("AU", "ERI"):
                    m["per_class"] = rng.random(TASK_OUTPUTS[task]).tolist()
                if task == "EXPR":
                    m["confusion"] = rng.integers(0, 20, (8, 8)).tolist()
                (d / f"{stage}_metrics.json").write_text(json.dumps(m))
                st.append(d / f"{stage}_metrics.json")
        if task == "ERI":
            continue
        task_preds = []
        for fold in folds[1:]:
            p = res / "predictions" / task / f"{fold}.h5"
            p.parent.mkdir(parents=True, exist_ok=True)
            with h5py.File(p, "w") as f:
                f.attrs.update(task=task, fold=fold, score=0.5)
                for split, vids in (("test", TEST), ("validation", VAL)):
                    for vid, n in vids.items():
                        x = rng.random((n, TASK_OUTPUTS[task]))
                        x = x / x.sum(1, keepdims=True) if task == "EXPR" else 2 * x - 1 if task == "VA" else x
                        f[f"{split}/{vid}/pred"] = x.astype(np.float32)
                        f[f"{split}/{vid}/valid"] = np.r_[np.ones(n - 3, bool), np.zeros(3, bool)]
            task_preds.append(p)
        preds += task_preds if task == "VA" else []
        out = res / "submission" / task / "predictions.txt"
        ens.ensemble(task, ens.EnsembleInputs(tuple(task_preds), (), res / "index" / "videos.tsv"),
                     ens.EnsembleSettings.from_params(workflow_defaults()["ensemble"]), out)
        ensembles.append(out.with_name("ensemble.h5"))
    faces = []
    for vid, n in TEST.items():          # a few frames without a face
        faces.append(res / "faces" / f"{vid}.h5")
        with write_face_store(faces[-1], video_id=vid, size=32, backend="test", fps=25) as w:
            crops = [None if i % 4 == 0 else rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for i in range(n)]
            w.append(crops, [c is not None for c in crops], np.ones(n), np.zeros((n, 4)), np.zeros((n, 5, 2)),
                     np.arange(n) / 25)
    summary = res / "metrics" / "summary.json"
    summ.summarize(summ.SummaryInputs(tuple(TASKS), tuple(folds), tuple(ft), tuple(st)), summary,
                   res / "metrics" / "ablation.tsv")
    return {"summary": summary, "curves": tuple(curves), "predictions": tuple(preds), "labels": (labels,),
            "ensembles": tuple(ensembles), "faces": tuple(faces)}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    res = tmp_path_factory.mktemp("results")
    return res, build_results(res, ["official", "fold1", "fold2", "fold3", "fold4", "fold5"])


def _is_png(path):
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _args(inputs: dict) -> list[str]:
    argv = ["--summary", str(inputs["summary"])]
    for key in ("curves", "predictions", "labels", "ensembles", "faces"):
        argv += [f"--{key}", *map(str, inputs[key])]
    return argv


def test_every_listed_png_is_a_real_plot(results, tmp_path):
    _, inputs = results
    out = tmp_path / "report"
    status = report_plots.make_report(report_plots.ReportInputs(**inputs), out)
    assert status == {n: "plot" for n in report.REPORT_FILES}, status
    assert sorted(p.name for p in out.iterdir()) == sorted(report.REPORT_FILES)
    assert all(_is_png(out / n) for n in report.REPORT_FILES)


def test_disabled_tasks_get_placeholders(results, tmp_path, caplog):
    _, inputs = results
    caplog.set_level("INFO", logger="affect_pipeline")
    out = tmp_path / "r"
    assert cli(["report_plots", *_args(inputs), "--out-dir", str(out), "--tasks", "AU"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(report.REPORT_FILES)
    assert all(_is_png(out / n) for n in report.REPORT_FILES)
    status = {n: ("placeholder: " + r.split("placeholder (", 1)[1].rstrip(")")) if "placeholder (" in r else "plot"
              for n in report.REPORT_FILES for r in [next((m for m in caplog.messages if m.startswith(n + ":")), "")]}
    for name in ("curves_EXPR.png", "curves_VA.png", "curves_ERI.png", "confusion_EXPR.png", "va_scatter.png",
                 "eri_pcc.png"):
        assert status[name].startswith("placeholder: task") and "disabled" in status[name]
    assert status["curves_AU.png"] == status["au_f1.png"] == status["timelines.png"] == "plot"


def test_empty_inputs_still_write_every_file(tmp_path):
    status = report_plots.make_report(report_plots.ReportInputs(), tmp_path / "r")
    assert all(s.startswith("placeholder") for s in status.values())
    assert all(_is_png(tmp_path / "r" / n) for n in report.REPORT_FILES)


def test_three_folds_say_fold1_3(tmp_path, monkeypatch):
    """folds: 3 -> the summary, the figures' data and titles speak of fold1-3, never fold1-5."""
    res = tmp_path / "results"
    inputs = build_results(res, ["official", "fold1", "fold2", "fold3"])
    s = json.loads(inputs["summary"].read_text())
    assert s["ensemble_folds"] == ["fold1", "fold2", "fold3"] and s["fold_span"] == "fold1-3"
    assert (res / "metrics" / "ablation.tsv").read_text().splitlines()[0].endswith("fold3\tmean(fold1-3)")
    seen = {}
    monkeypatch.setattr(figures, "ablation", lambda rows, test, title, note="": seen.update(rows=rows, title=title)
                        or figures.placeholder("x", "y"))
    monkeypatch.setattr(figures, "va_scatter", lambda p, y, where: seen.update(where=where, n=len(y))
                        or figures.placeholder("x", "y"))
    monkeypatch.setattr(figures, "per_class_bars", lambda t, names, series, yl: seen.setdefault("series", {})
                        .update({t: series}) or figures.placeholder("x", "y"))
    status = report_plots.make_report(report_plots.ReportInputs(**inputs), tmp_path / "r")
    assert status["ablation.png"] == status["va_scatter.png"] == status["au_f1.png"] == "plot"
    assert "fold1-3" in seen["title"] and seen["rows"][0][-1] == "mean(fold1-3)" and seen["where"] == "fold1-3"
    assert seen["n"] == 3 * sum(n - 1 for n in VAL.values())           # 3 folds x labelled frames
    assert list(seen["series"]["AU"]) == ["BLB (validation, 3 folds)", "DCL (validation, 3 folds)"]


def test_shared_encoder_report_says_leaky(results, tmp_path, monkeypatch):
    res, inputs = results
    s = json.loads(inputs["summary"].read_text())
    s.update(encoder="shared", leaky_folds=s["ensemble_folds"], note=summ.LEAKY_NOTE.format(span="fold1-5"))
    leaky = tmp_path / "summary.json"
    leaky.write_text(json.dumps(s))
    seen = {}
    monkeypatch.setattr(figures, "ablation", lambda rows, test, title, note="": seen.update(note=note)
                        or figures.placeholder("x", "y"))
    status = report_plots.make_report(report_plots.ReportInputs(summary=leaky), tmp_path / "r")
    assert status["ablation.png"] == "plot"
    assert "fold1-5 rows" in seen["note"] and "optimistic" in seen["note"]


def test_curve_reader_keys_and_no_face_bands(results):
    res, _ = results
    c = report_plots.read_curve(res / "models" / "AU" / "fold1" / "blb_curve.csv")
    np.testing.assert_allclose(c["epoch"], [1, 2, 3, 4])
    np.testing.assert_allclose(c["train_loss"], [0.5, 0.3333, 0.25, 0.2])
    assert report_plots.curve_key(res / "mae" / "VA" / "fold2" / "finetune_curve.csv") == ("finetune", "VA", "fold2")
    assert report_plots.curve_key(res / "mae" / "pretrain_curve.csv") == ("pretrain", None, None)
    with pytest.raises(report_plots.PipelineError, match="other.csv: not a curve path"):
        report_plots.curve_key(res / "other.csv")

    class Ax:
        spans = []

        def axvspan(self, a, b, **kw):
            self.spans.append((a, b))

    ax = Ax()
    figures.shade_no_face(ax, np.array([False, True, True, False, False, True, False]))
    assert ax.spans == [(0.5, 1.5), (3.5, 5.5), (6.5, 7.5)]     # frames 1, 4-5, 7 (1-based)


def test_every_figure_has_a_category_and_a_caption_and_no_matplotlib_at_import():
    for f in report.FIGURES:
        assert f.category and (REPO / "report" / f"{f.caption}.rst").is_file(), f
        assert report.caption_file(f.name) == f"../report/{f.caption}.rst"
    import subprocess

    code = ("import sys, affect_pipeline.submit.report, affect_pipeline.submit.report_plots, affect_pipeline.submit.summarize, "
            "affect_pipeline.submit.ensemble; bad = {'matplotlib', 'torch', 'h5py'} & set(sys.modules); "
            "print(sorted(bad)); sys.exit(bool(bad))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stdout + p.stderr
    for rst in (REPO / "report").glob("*.rst"):
        assert not re.search(r"fold1\s*[–-]\s*fold5|5-fold", rst.read_text()), rst     # fold count from config


@pytest.mark.parametrize("per_fold", [True, False])
def test_captions_render_with_the_run_config(per_fold):
    """Captions are Jinja templates (as Snakemake renders them) over the run's config, then rst."""
    from types import SimpleNamespace

    from docutils.core import publish_parts
    from jinja2 import Environment

    cfg = workflow_defaults()
    cfg["folds"], cfg["mae"]["finetune"]["per_fold"] = 3, per_fold
    env = Environment(trim_blocks=True, lstrip_blocks=True)
    for f in report.FIGURES:
        text = env.from_string((REPO / "report" / f"{f.caption}.rst").read_text()).render(
            snakemake=SimpleNamespace(config=cfg))
        html = publish_parts(text, writer="html", settings_overrides={"report_level": 2,
                                                                           "halt_level": 2})["body"]
        assert "{{" not in html and "fold5" not in html and "5-fold" not in html, f.caption
        if f.caption in ("ablation", "au_f1", "confusion", "curves", "eri_pcc", "va_scatter"):
            assert "fold1–fold3" in html, f.caption
        assert ("leaky" in html) == (f.caption == "ablation" and not per_fold), f.caption


def test_face_videos_as_one_json_value_take_an_id_that_looks_like_an_option(results, tmp_path, caplog):
    """`--face-videos=JSON`: a YouTube id such as -8XbT1X7Lq0 is an id, not an option."""
    import shutil

    _, inputs = results
    faces = tmp_path / "faces" / "affwild2_0"
    faces.mkdir(parents=True)
    shutil.copy(inputs["faces"][0], faces / "-8XbT1X7Lq0.h5")
    shutil.copy(inputs["faces"][1], faces / "other.h5")
    caplog.set_level("INFO", logger="affect_pipeline")
    out = tmp_path / "r"
    argv = _args({**inputs, "faces": (faces,)})
    assert cli(["report_plots", *argv, '--face-videos=["-8XbT1X7Lq0"]', "--out-dir", str(out), "--tasks", "AU"]) == 0
    assert re.search(r"faces_contact_sheet\.png\s+plot", caplog.text), caplog.text[-2000:]
    assert _is_png(out / "faces_contact_sheet.png")


def test_ensemble_order_reads_both_layouts(tmp_path):
    """ensemble.h5 keeps the videos' order as a dataset; files written before kept it as an attr."""
    import h5py

    from affect_pipeline.submit.ensemble import video_order

    with h5py.File(tmp_path / "old.h5", "w") as f:
        f.attrs["videos"] = ["b", "a"]
        f.create_group("a"), f.create_group("b")
    with h5py.File(tmp_path / "new.h5", "w") as f:
        f.create_dataset("videos", data=["b", "-8XbT1X7Lq0"], dtype=h5py.string_dtype("utf-8"))
        f.create_group("b"), f.create_group("-8XbT1X7Lq0")
    with h5py.File(tmp_path / "old.h5") as old, h5py.File(tmp_path / "new.h5") as new:
        assert video_order(old) == ["b", "a"] and video_order(new) == ["b", "-8XbT1X7Lq0"]
