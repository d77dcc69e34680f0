"""Model bundles (affect_predict/bundle.py, model_card.py): ``export_models`` writes what
affect-predict needs from a run into one folder with a manifest and a model card, and
``affect-predict --models`` reads a bundle or a run's results/ alike.

Fast tests: how a demo run is recognised, the card's demo banner, a damaged bundle refused. The
slow ones export the trained demo run (`trained_run`), check every file against the manifest and
the card against the run's summary.json, and predict a new clip from the bundle: the same CSV as
from results/, with or without the audio weights in the bundle.
"""
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from affect_pipeline.affect_predict.bundle import (
    FORMAT,
    ModelSource,
    open_models,
    trained_on_demo,
)
from affect_pipeline.affect_predict.model_card import describe_training, model_card
from affect_pipeline.affect_predict.provenance import read_record
from affect_pipeline.common.errors import PipelineError

CLI = str(Path(sys.executable).with_name("affect-predict"))
REPO = Path(__file__).resolve().parents[2]


def demo_config() -> dict:
    return yaml.safe_load((REPO / "demo_config.yaml").read_text())


def test_a_demo_run_is_recognised_from_its_config(tmp_path):
    """demo_config.yaml's data keys point into the tree its demo: section generates; a real run's
    do not (even with a demo: section left in); a copied demo tree is known by its manifest."""
    cfg = demo_config()
    assert trained_on_demo(cfg, tmp_path)
    real = {**cfg, "affwild2": {"videos": "/data/aff-wild2/videos"}, "hume": {"root": "/data/hume"}}
    assert not trained_on_demo(real, tmp_path)
    assert not trained_on_demo({k: v for k, v in real.items() if k != "demo"}, tmp_path)
    copied = tmp_path / "elsewhere" / "affwild2" / "videos"
    copied.mkdir(parents=True)
    (tmp_path / "elsewhere" / "manifest.json").write_text(json.dumps({"generator": "affect_pipeline.demo v4"}))
    assert trained_on_demo({"affwild2": {"videos": "elsewhere/affwild2/videos"}, "hume": {"root": None}}, tmp_path)


def card(demo: bool, tmp_path) -> str:
    manifest = {"source": {"run": "/r/results", "kind": "run"}, "tasks": ["VA"], "folds": ["fold1", "fold2"],
                "code": {"version": "0.1.0", "commit": None}, "weights": {}, "files": {}}
    training = describe_training(demo_config(), tmp_path, ["VA"], ModelSource(tmp_path, "run", tmp_path, demo, None))
    return model_card(manifest, training)


def test_the_card_says_demo_first_when_it_is(tmp_path):
    demo, real = card(True, tmp_path), card(False, tmp_path)
    assert "DEMO MODELS: trained on the synthetic demo data" in demo.splitlines()[2]
    assert "Trained on **the synthetic demo (make_demo)**" in demo
    assert "DEMO" not in real and "Trained on **real data" in real


def test_a_damaged_bundle_is_refused_naming_the_file(tmp_path):
    b = tmp_path / "bundle"
    (b / "models").mkdir(parents=True)
    (b / "models" / "x.pt").write_bytes(b"12345")
    manifest = {"format": FORMAT, "demo": False, "weights": {}, "files": {"models/x.pt": {"size": 5, "sha256": "0" * 64}}}
    (b / "bundle.json").write_text(json.dumps(manifest))
    assert open_models(b).kind == "bundle" and open_models(b).workdir == b
    (b / "models" / "x.pt").write_bytes(b"1234")
    with pytest.raises(PipelineError, match=r"models/x\.pt: changed in the bundle \(bundle\.json lists 5 bytes"):
        open_models(b)
    (b / "models" / "x.pt").unlink()
    with pytest.raises(PipelineError, match=r"models/x\.pt: missing from the bundle"):
        open_models(b)
    (b / "bundle.json").write_text(json.dumps({**manifest, "format": "other/9"}))
    with pytest.raises(PipelineError, match=r"bundle\.json: bundle format 'other/9'"):
        open_models(b)


def test_export_never_replaces_a_folder_that_is_not_a_bundle(tmp_path):
    """--out is replaced whole: a non-empty folder without bundle.json (a typo, a home folder) is
    refused before anything is read or written."""
    from affect_pipeline.affect_predict.bundle import export_models

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(PipelineError, match=r"mine: exists and is not a model bundle \(no bundle\.json\)"):
        export_models(tmp_path / "no_results", out)
    assert (out / "notes.txt").read_text() == "keep me"


# ---------------------------------------------------------------- slow: the trained demo run
def export(res, out, *extra):
    p = subprocess.run([sys.executable, "-m", "affect_pipeline", "export_models", "--run", str(res), "--out", str(out),
                        *map(str, extra)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def predict(models, video, out, *extra):
    p = subprocess.run([CLI, str(video), "--models", str(models), "--out", str(out), "--threads", "2", *map(str, extra)],
                       capture_output=True, text=True, timeout=300)
    return p


@pytest.mark.slow
def test_export_a_bundle_and_predict_from_it_as_from_the_run(trained_run, tmp_path):
    from test_affect_predict import make_video

    from affect_pipeline.affect_predict.predict_tracks import run_prior

    run = trained_run / "run"
    res = run / "results"
    bundle = tmp_path / "bundle"
    p = export(res, bundle)
    assert "trained on the synthetic demo data" in p.stderr

    manifest = json.loads((bundle / "bundle.json").read_text())
    files = {q.relative_to(bundle).as_posix() for q in bundle.rglob("*") if q.is_file()}
    assert files == set(manifest["files"]) | {"bundle.json", "MODEL_CARD.md"}
    for rel, meta in manifest["files"].items():
        data = (bundle / rel).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (meta["size"], meta["sha256"]), rel
    folds = ["fold1", "fold2", "fold3"]                          # the cut-down demo: 3 folds, per-fold encoders, VA
    assert {f"models/VA/{f}/dcl.pt" for f in folds} | {f"mae/VA/{f}/finetune.pt" for f in folds} <= files
    assert not any(r.startswith(("models/VA/official", "mae/VA/official", "features/", "faces/")) for r in files)
    assert manifest["demo"] is True and manifest["code"]["version"] and manifest["tasks"] == ["VA"]
    w = manifest["weights"]["audio.vggish.weights"]
    assert w["included"] and w["path"] == "weights/vggish.pth" and (bundle / w["path"]).is_file()
    assert yaml.safe_load((bundle / "config.yaml").read_text())["audio"]["vggish"]["weights"] == "weights/vggish.pth"
    prior = json.loads((bundle / "no_face_prior.json").read_text())      # --no-face prior without label stores
    assert prior == {"VA": run_prior(res, "VA", folds).tolist()} and len(prior["VA"]) == 2

    summary = json.loads((res / "metrics" / "summary.json").read_text())
    training = json.loads((bundle / "training.json").read_text())
    report = json.loads((res / "index" / "index_report.json").read_text())
    assert training["demo"] is True and training["splits"]["VA"] == report["VA"] and report["VA"]["train"] > 0
    assert training["scores"]["VA"]["validation"] == {f: summary["tasks"]["VA"]["folds"][f]["dcl"] for f in folds}
    assert training["scores"]["VA"]["test"] == summary["test"]["VA"]
    text = (bundle / "MODEL_CARD.md").read_text()
    assert "DEMO MODELS: trained on the synthetic demo data" in text
    assert f"| VA | mean CCC | {summary['tasks']['VA']['folds']['fold1']['dcl']:.3f} |" in text
    print("\n" + text)

    video = make_video(tmp_path / "clip.mp4", 30, seed=31)
    from_run, from_bundle = tmp_path / "run.csv", tmp_path / "bundle.csv"
    for models, out in ((res, from_run), (bundle, from_bundle)):
        p = predict(models, video, out, "--no-timeline")
        assert p.returncode == 0, p.stderr[-3000:]
        assert "WARNING" in p.stderr and "trained on the synthetic demo data" in p.stderr
    assert from_bundle.read_bytes() == from_run.read_bytes()
    rb, rr = read_record(from_bundle), read_record(from_run)
    assert (rb["models"]["kind"], rr["models"]["kind"]) == ("bundle", "run")
    assert rb["models"]["digest"] == rr["models"]["digest"] and rb["config"]["digest"] == rr["config"]["digest"]
    assert rb["models"]["demo"] is True and rb["models"]["trained_on"] == "the synthetic demo data"

    moved = tmp_path / "moved"                                   # a bundle stands alone: moved, it still predicts
    shutil.move(bundle, moved)
    lean = tmp_path / "lean"                                     # without the audio weights: digests + paths only
    export(moved, lean, "--no-audio-weights")
    lw = json.loads((lean / "bundle.json").read_text())["weights"]["audio.vggish.weights"]
    assert (lw["included"], lw["path"], lw["digest"]) == (False, None, w["digest"]) and not (lean / "weights").exists()
    assert json.loads((lean / "no_face_prior.json").read_text()) == prior    # passed on by a bundle's export
    p = predict(lean, video, tmp_path / "lean.csv")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert f"{lean / 'weights/vggish.pth'}: vggish weights not found (config key audio.vggish.weights" in p.stderr, \
        p.stderr[-2000:]
    overlay = tmp_path / "weights.yaml"                          # given back by --config: the same numbers
    overlay.write_text(yaml.safe_dump({"audio": {"vggish": {"weights": str(run / "resources/demo/models/vggish.pth")}}}))
    p = predict(lean, video, tmp_path / "lean.csv", "--config", overlay, "--no-timeline")
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / "lean.csv").read_bytes() == from_run.read_bytes()


@pytest.mark.slow
def test_export_refuses_to_write_into_the_run(trained_run, tmp_path):
    res = trained_run / "run" / "results"
    p = subprocess.run([sys.executable, "-m", "affect_pipeline", "export_models", "--run", str(res),
                        "--out", str(res / "bundle")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "--out must not be --run or inside it" in p.stderr
    assert not (res / "bundle").exists()
