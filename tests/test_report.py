"""report_plots writes every listed PNG from a small but complete results/ tree, and
placeholders (never missing files) when a task is switched off or its inputs are absent."""
import json

import h5py
import numpy as np
import pytest

from affect_pipeline import TASKS, TASK_OUTPUTS
from affect_pipeline.__main__ import main as cli
from affect_pipeline import report
from affect_pipeline.stores import Labels, write_face_store, write_labels
from affect_pipeline import submission as sub

FOLDS = ("official", "fold1", "fold2", "fold3", "fold4", "fold5")
TEST = {"t_a": 12, "t_b": 9}
VAL = {"v_a": 10, "v_b": 8}


def _curve(path, epochs=4, seed=0):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["epoch,train_loss,val_loss,val_score,lr"]
    lines += [f"{e},{1 / (e + 1):.4f},{1.2 / (e + 1):.4f},{0.3 + 0.05 * e + 0.01 * rng.random():.4f},0.0001"
              for e in range(1, epochs + 1)]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    res = tmp_path_factory.mktemp("results")
    rng = np.random.default_rng(0)
    # index + labels
    cols = ("video_id", "path", "media", "side", "fps", "n_frames", "width", "height", "duration", "has_audio",
            "split_AU", "split_EXPR", "split_VA", "split_ERI")
    (res / "index").mkdir()
    with open(res / "index" / "videos.tsv", "w") as fh:
        fh.write("\t".join(cols) + "\n")
        for vid, n in TEST.items():
            fh.write("\t".join(map(str, [vid, "x.mp4", vid, "", 25, n, 64, 64, 1, "true", "test", "test", "test", ""])) + "\n")
        for vid, n in VAL.items():
            fh.write("\t".join(map(str, [vid, "x.mp4", vid, "", 25, n, 64, 64, 1, "true", "train", "train", "train", ""])) + "\n")
    write_labels(res / "index" / "labels" / "VA.h5", "VA",
                 {v: Labels(rng.uniform(-1, 1, (n, 2)), np.r_[np.ones(n - 1, bool), False], "train")
                  for v, n in VAL.items()})
    for task in TASKS:
        _curve(res / "mae" / f"finetune_{task}_curve.csv")
        for k, fold in enumerate(FOLDS):
            d = res / "models" / task / fold
            for st in ("blb", "dcl"):
                _curve(d / f"{st}_curve.csv", seed=k)
                m = {"task": task, "fold": fold, "stage": st, "score": 0.4 + 0.01 * k, "framewise_score": 0.35}
                if task in ("AU", "ERI"):
                    m["per_class"] = rng.random(TASK_OUTPUTS[task]).tolist()
                if task == "EXPR":
                    m["confusion"] = rng.integers(0, 20, (8, 8)).tolist()
                (d / f"{st}_metrics.json").write_text(json.dumps(m))
        if task == "ERI":
            continue
        preds = []
        for fold in FOLDS[1:]:
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
            preds.append(p)
        sub.ensemble(task, preds, [], res / "index" / "videos.tsv", res / "submission" / task / "predictions.txt", {})
    # face stores: one with a few frames without a face
    for vid, n in TEST.items():
        with write_face_store(res / "faces" / f"{vid}.h5", video_id=vid, size=32, backend="test", fps=25) as w:
            crops = [None if i % 4 == 0 else rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for i in range(n)]
            w.append(crops, [c is not None for c in crops], np.ones(n), np.zeros((n, 4)), np.zeros((n, 5, 2)),
                     np.arange(n) / 25)
    sub.summarize(res, list(TASKS), list(FOLDS), res / "metrics" / "summary.json", res / "metrics" / "ablation.tsv")
    return res


def _is_png(path):
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_listed_png_is_a_real_plot(results, tmp_path):
    out = tmp_path / "report"
    status = report.make_report(results, out)
    assert status == {n: "plot" for n in report.REPORT_FILES}, status
    assert sorted(p.name for p in out.iterdir()) == sorted(report.REPORT_FILES)
    assert all(_is_png(out / n) for n in report.REPORT_FILES)


def test_disabled_tasks_get_placeholders(results, tmp_path, caplog):
    caplog.set_level("INFO", logger="affect_pipeline")
    out = tmp_path / "r"
    assert cli(["report_plots", "--results", str(results), "--out-dir", str(out), "--tasks", "AU"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(report.REPORT_FILES)
    assert all(_is_png(out / n) for n in report.REPORT_FILES)
    status = {n: ("placeholder: " + r.split("placeholder (", 1)[1].rstrip(")")) if "placeholder (" in r else "plot"
              for n in report.REPORT_FILES for r in [next((m for m in caplog.messages if m.startswith(n + ":")), "")]}
    for name in ("curves_EXPR.png", "curves_VA.png", "curves_ERI.png", "confusion_EXPR.png", "va_scatter.png",
                 "eri_pcc.png"):
        assert status[name].startswith("placeholder: task") and "disabled" in status[name]
    assert status["curves_AU.png"] == status["au_f1.png"] == status["timelines.png"] == "plot"


def test_empty_results_still_write_every_file(tmp_path):
    status = report.make_report(tmp_path / "nothing", tmp_path / "r")
    assert all(s.startswith("placeholder") for s in status.values())
    assert all(_is_png(tmp_path / "r" / n) for n in report.REPORT_FILES)


def test_curve_reader_and_no_face_bands(results):
    c = report.read_curve(results / "models" / "AU" / "fold1" / "blb_curve.csv")
    np.testing.assert_allclose(c["epoch"], [1, 2, 3, 4])
    np.testing.assert_allclose(c["train_loss"], [0.5, 0.3333, 0.25, 0.2])

    class Ax:
        spans = []

        def axvspan(self, a, b, **kw):
            self.spans.append((a, b))

    ax = Ax()
    report._shade_no_face(ax, np.array([False, True, True, False, False, True, False]))
    assert ax.spans == [(0.5, 1.5), (3.5, 5.5), (6.5, 7.5)]     # frames 1, 4-5, 7 (1-based)
