"""The stages that take every video of a dataset, run at Hume-Reaction's real size (25,067 clips:
15,806 train / 4,657 validation / 4,604 test, three of them YouTube-style ids that start with '-')
on small stand-in inputs, each through its own CLI with its per-video lists in files
(``--videos=@FILE``, as rules/*.smk write them): index_dataset -> audio_features -> make_folds ->
predict (two folds) -> ensemble -> summarize -> report_plots, the outputs of one feeding the next;
visual_features_eri (the visual_features stage with ERI's one encoder) on the same ids. The
frame tasks' visual_features (same function, one shard per fold encoder) sees Aff-Wild2's 600
videos, not 25,067: its two-encoder run at this size costs ~8 min of CPU today, so it is not here.

Stand-ins: every clip decodes to 1-3 frames; one clip in 25 has a 0.5 s audio track (the model
runs on those; the others are ``has_audio: false``, written as zeros, as extract_frames writes a
silent clip); the wavs and face stores are hard links to a few real files (a store's ``video_id``
attribute is its template's, which no stage reads). Each stage must write its outputs covering
all 25,067 ids (or the 4,604 test ids where it covers only those), with no per-video list in argv
nor in an HDF5 attribute. Per-stage wall and CPU times are printed (``-s``); they are not asserted.
"""
from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
from aff_tree import HUME_COLUMNS, HUME_SIZES, make_hume_tree
from conftest import workflow_defaults

from affect_pipeline.__main__ import main as cli

#: each stage takes seconds to minutes of CPU at this size (printed): the whole module is slow
pytestmark = pytest.mark.slow

N_CLIPS = sum(HUME_SIZES.values())
#: one option-like id per split, appended to data_info.csv after the generated ids
ODD = {"Train": "-8XbT1X7Lq0", "Val": "-Va1X7Lq0ab", "Test": "-Te1X7Lq0cd"}
BATCHES = 32            # resources.media_batches: extract_frames' batch folders
AUDIO_EVERY = 25        # one clip in 25 has an audio track
SR = 16000
#: a stage's argv never holds a per-video list: well under one id list's size
ARGV_MAX = 4096


def stage(name: str, *args, params=None) -> float:
    """Run one stage through its CLI (``python -m affect_pipeline``'s entry point); its CPU time
    (this VM is shared: wall time says more about the neighbours)."""
    argv = [name, *map(str, args), "--threads", "1", "--device", "cpu"]
    if params is not None:
        argv += ["--params", json.dumps(params)]
    size = sum(len(a.encode()) + 1 for a in argv)
    assert size < ARGV_MAX, (name, size)
    assert not any(v in a for a in argv for v in ODD.values()), argv
    t0, c0 = time.perf_counter(), time.process_time()
    assert cli(argv) == 0, name
    took, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"\n{name}: {took:.1f} s wall, {cpu:.1f} s CPU for {N_CLIPS} clips")
    return cpu


def no_list_attrs(path) -> None:
    """No attribute of any object in the HDF5 file holds a per-video list (a list of ids would
    overflow the 64 KiB object header long before 25,067 of them)."""
    def check(name, obj):
        for k, v in obj.attrs.items():
            assert np.size(v) < 64 and len(str(v)) < 4096, (path, name, k)
    with h5py.File(path) as f:
        check("/", f)
        f.visititems(check)


def write_wav(path: Path, seconds: float, loud: bool) -> Path:
    """A 16 kHz PCM wav as extract_frames writes it: noise, or silence for a clip with no audio."""
    x = (0.2 * np.random.default_rng(0).standard_normal(int(seconds * SR))).astype(np.float32)
    sf.write(path, x if loud else 0 * x, SR, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def hume(tmp_path_factory):
    """The Hume tree, extract_frames' batch folders (frames JSON + wav per clip) and the index."""
    work = tmp_path_factory.mktemp("scale")
    root = work / "hume"
    make_hume_tree(root, {s: n - 1 for s, n in HUME_SIZES.items()})
    with open(root / "data_info.csv", "a") as fh:
        for split, vid in ODD.items():
            vals = ",".join("" if split == "Test" else "0.5" for _ in HUME_COLUMNS)
            fh.write(f"[{vid}],{split},{vals}\n")
            (root / split.lower() / f"{vid}.mp4").write_bytes(b"")
    with open(root / "data_info.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    ids = [r["File_ID"].strip("[]") for r in rows]
    splits = {i: r["Split"] for i, r in zip(ids, rows)}
    assert len(ids) == N_CLIPS and sum(s == "Test" for s in splits.values()) == HUME_SIZES["Test"]
    templates = {audio: write_wav(work / f"template_{audio}.wav", 0.5, audio) for audio in (0, 1)}
    frames, audio = work / "frames", work / "audio"
    for k, vid in enumerate(ids):
        b = f"hume_{k % BATCHES:02d}"
        (frames / b).mkdir(parents=True, exist_ok=True)
        (audio / b).mkdir(parents=True, exist_ok=True)
        n, has_audio = 1 + k % 3, k % AUDIO_EVERY == 0
        (frames / b / f"{vid}.json").write_text(json.dumps(
            {"n_frames": n, "fps": 30.0, "width": 64, "height": 64, "duration": n / 30, "has_audio": has_audio,
             "timestamps": [i / 30 for i in range(n)]}))
        os.link(templates[int(has_audio)], audio / b / f"{vid}.wav")
    batches = sorted(p.name for p in frames.iterdir())
    index = work / "index"
    data = {"affwild2": {"videos": None}, "hume": {"root": str(root)}, "tasks": ["ERI"]}
    took = stage("index_dataset", "--data", json.dumps(data), "--frames", *(frames / b for b in batches),
                 "--out-dir", index)
    lists = work / "lists"
    lists.mkdir()
    (lists / "audio.json").write_text(json.dumps({v: v for v in ids}))      # rules/common.smk audio_list
    return {"work": work, "ids": ids, "test": [v for v in ids if splits[v] == "Test"], "index": index,
            "frames": [frames / b for b in batches], "audio": [audio / b for b in batches],
            "lists": lists, "times": {"index_dataset": took}}


@pytest.fixture(scope="module")
def vggish(hume):
    """audio_features with the demo's VGGish: the shard of every clip."""
    from affect_pipeline.audio.audio_features import model_params
    from affect_pipeline.demo.make_demo_audio_models import make_demo_audio_models

    models = make_demo_audio_models(hume["work"] / "models", seed=0)
    out = hume["work"] / "features" / "vggish.h5"
    hume["times"]["audio_features"] = stage(
        "audio_features", "--model", "vggish", "--weights", models / "vggish.pth",
        "--weights-key", "audio.vggish.weights", f"--videos=@{hume['lists'] / 'audio.json'}",
        "--audio", *hume["audio"], "--frames", *hume["frames"], "--out", out,
        params=model_params(workflow_defaults()["audio"], "vggish"))
    return out


def test_audio_features_writes_every_clip(hume, vggish):
    from affect_pipeline.common.feature_shards import FeatureShard

    with FeatureShard(vggish) as sh:
        assert sorted(sh.videos()) == sorted(hume["ids"])
        assert sh.attrs["videos"] == N_CLIPS
        with_audio = sh.read(hume["ids"][0])            # clip 0 has audio
        assert with_audio.valid.all() and with_audio.features.std() > 0
        silent = sh.read(hume["ids"][1])
        assert silent.features.shape == (2, with_audio.features.shape[1]) and not silent.valid.any()
        for v in ODD.values():
            assert sh.n_frames(v) >= 1
    no_list_attrs(vggish)


def small_temporal() -> dict:
    """workflow_config.yaml's temporal section on the VGGish shard only, shrunk to a tiny ERI model."""
    t = workflow_defaults()["temporal"]
    t.update(features=["vggish"], clip_len=4, stride=2)
    t["eri"].update(d_model=16, nhead=2, layers=1, batch_size=4, epochs=1)
    return t


@pytest.fixture(scope="module")
def folds(hume, vggish):
    """make_folds over every labelled clip (k = 2), and a temporal model trained on a few clips of
    the official split (its training is not what is at scale here; what it predicts on is)."""
    from affect_pipeline.common.runtime import write_json

    work, index = hume["work"], hume["index"]
    folds = work / "folds" / "ERI.json"
    hume["times"]["make_folds"] = stage("make_folds", "--task", "ERI", "--labels", index / "labels/ERI.h5",
                                        "--index", index / "videos.tsv", "--out", folds, params={"k": 2, "seed": 0})
    doc = json.loads(folds.read_text())
    few = work / "folds" / "few.json"
    official = doc["folds"]["fold1"]
    write_json(few, {"task": "ERI", "k": 1, "seed": 0, "test": [],
                     "folds": {"official": {"train": official["train"][:12], "validation": official["validation"][:6]}}})
    model = work / "models" / "ERI" / "official"
    model.mkdir(parents=True)
    assert cli(["train_blb", "--task", "ERI", "--fold", "official", "--folds", str(few), "--labels",
                str(index / "labels/ERI.h5"), "--features", str(vggish), "--out", str(model / "blb.pt"),
                "--metrics", str(model / "blb_metrics.json"), "--curve", str(model / "blb_curve.csv"),
                "--threads", "1", "--device", "cpu", "--params", json.dumps(small_temporal())]) == 0
    return {"doc": doc, "path": folds, "model": model}


@pytest.fixture(scope="module")
def predictions(hume, vggish, folds):
    """predict, fold1 and fold2: each fold's validation clips and every test clip."""
    out = {}
    for fold in ("fold1", "fold2"):
        out[fold] = hume["work"] / "predictions" / "ERI" / f"{fold}.h5"
        hume["times"][f"predict {fold}"] = stage(
            "predict", "--task", "ERI", "--fold", fold, "--folds", folds["path"], "--labels",
            hume["index"] / "labels/ERI.h5", "--features", vggish, "--model", folds["model"] / "blb.pt",
            "--index", hume["index"] / "videos.tsv", "--out", out[fold], params=small_temporal())
    return out


def test_predict_covers_each_folds_validation_and_every_test_clip(hume, folds, predictions):
    for fold, path in predictions.items():
        with h5py.File(path) as f:
            assert sorted(f["test"]) == sorted(hume["test"])
            assert sorted(f["validation"]) == sorted(folds["doc"]["folds"][fold]["validation"])
            assert f["test"][ODD["Test"]]["pred"].shape == (1, 7)
        no_list_attrs(path)
    val = [set(folds["doc"]["folds"][f]["validation"]) for f in predictions]
    assert len(set.union(*val)) == N_CLIPS - HUME_SIZES["Test"] and not set.intersection(*val)


@pytest.fixture(scope="module")
def submission(hume, folds, predictions):
    """ensemble of the two folds -> the ERI submission, with stand-in per-fold metrics (the small
    model's own metrics document, per fold and stage) for the summary."""
    work = hume["work"]
    base = json.loads((folds["model"] / "blb_metrics.json").read_text())
    metrics = []
    for fold in ("official", *predictions):
        for st in ("blb", "dcl"):
            p = work / "models" / "ERI" / fold / f"{st}_metrics.json"
            p.parent.mkdir(parents=True, exist_ok=True)
            if not p.exists():
                p.write_text(json.dumps({**base, "fold": fold, "stage": st}))
            metrics.append(p)
    sub = work / "submission" / "ERI" / "predictions.txt"
    hume["times"]["ensemble"] = stage(
        "ensemble", "--task", "ERI", "--preds", *predictions.values(),
        "--metrics", *(p for p in metrics if p.name == "dcl_metrics.json" and p.parent.name != "official"),
        "--index", hume["index"] / "videos.tsv", "--index-report", hume["index"] / "index_report.json",
        "--out", sub, "--h5", sub.with_name("ensemble.h5"), params=workflow_defaults()["ensemble"])
    return {"file": sub, "metrics": metrics}


def test_ensemble_writes_every_test_clip_in_data_info_order(hume, submission):
    from affect_pipeline.submit.ensemble import video_order

    with open(submission["file"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["File_ID"] for r in rows] == hume["test"]
    with h5py.File(submission["file"].with_name("ensemble.h5")) as f:
        assert video_order(f) == hume["test"]
    no_list_attrs(submission["file"].with_name("ensemble.h5"))
    assert cli(["validate_submission", "--task", "ERI", "--file", str(submission["file"]),
                "--index", str(hume["index"] / "videos.tsv"),
                "--index-report", str(hume["index"] / "index_report.json")]) == 0


@pytest.fixture(scope="module")
def summary(hume, submission):
    """summarize, scoring the submission against held-back truth for every test clip."""
    work = hume["work"]
    truth = work / "test_labels"
    truth.mkdir()
    rng = np.random.default_rng(0)
    with open(truth / "ERI.csv", "w") as fh:
        fh.write("File_ID," + ",".join(HUME_COLUMNS) + "\n")
        fh.writelines(f"[{v}]," + ",".join(f"{x:.2f}" for x in rng.uniform(0, 1, 7)) + "\n" for v in hume["test"])
    out = work / "metrics"
    hume["times"]["summarize"] = stage(
        "summarize", "--tasks", "ERI", "--folds", "official", "fold1", "fold2",
        "--stage-metrics", *submission["metrics"], "--submissions", submission["file"],
        "--labels", hume["index"] / "labels/ERI.h5", "--index", hume["index"] / "videos.tsv",
        "--test-labels", truth, "--out", out / "summary.json", "--ablation", out / "ablation.tsv")
    return out / "summary.json"


def test_summarize_scores_every_test_clip(hume, summary):
    doc = json.loads(summary.read_text())
    assert doc["test"]["ERI"]["videos"] == HUME_SIZES["Test"] and doc["test"]["ERI"]["n"] == HUME_SIZES["Test"]
    assert np.isfinite(doc["test"]["ERI"]["score"])
    assert (summary.parent / "ablation.tsv").read_text().count("\n") > 1


def test_report_plots_writes_every_figure(hume, summary, folds):
    from stage_inputs import face_store

    from affect_pipeline.submit.report import REPORT_FILES

    work = hume["work"]
    shown = [ODD["Test"], *hume["test"][:3]]                    # rules/common.smk report_videos: 4 test clips
    faces = work / "faces_report" / "hume_00"
    faces.mkdir(parents=True)
    for k, v in enumerate(shown):
        face_store(faces / f"{v}.h5", 4, seed=k)
    (hume["lists"] / "report_faces.json").write_text(json.dumps(shown))
    out = work / "report"
    hume["times"]["report_plots"] = stage(
        "report_plots", "--summary", summary, "--curves", folds["model"] / "blb_curve.csv",
        "--labels", hume["index"] / "labels/ERI.h5", "--faces", faces,
        f"--face-videos=@{hume['lists'] / 'report_faces.json'}", "--tasks", "ERI", "--out-dir", out)
    assert sorted(p.name for p in out.glob("*.png")) == sorted(REPORT_FILES)
    print("\nper-stage CPU time (s) at", N_CLIPS, "clips:", {k: round(v, 1) for k, v in hume["times"].items()})


@pytest.fixture(scope="module")
def faces(hume):
    """crop_faces' batch folders: a face store of 1-3 frames per clip (hard links to three real
    stores), and visual_features' list file (rules/common.smk visual_list)."""
    from stage_inputs import face_store

    work = hume["work"]
    templates = {n: face_store(work / f"template_faces_{n}.h5", n) for n in (1, 2, 3)}
    folders = []
    for k, vid in enumerate(hume["ids"]):
        folder = work / "faces" / f"hume_{k % BATCHES:02d}"
        if k < BATCHES:
            folder.mkdir(parents=True)
            folders.append(folder)
        os.link(templates[1 + k % 3], folder / f"{vid}.h5")
    (hume["lists"] / "visual_ERI.json").write_text(json.dumps(sorted(hume["ids"])))
    return sorted(folders)


def visual_params() -> dict:
    """mae.features, pooled as stage_inputs' checkpoints were fine-tuned."""
    return {**workflow_defaults()["mae"]["features"], "pool": "mean_norm"}


def check_visual_shard(path, ids) -> None:
    from affect_pipeline.common.feature_shards import FeatureShard

    with FeatureShard(path) as sh:
        assert sorted(sh.videos()) == sorted(ids) and sh.attrs["videos"] == N_CLIPS
        got = sh.read(ODD["Test"], extra=("logits",))
        assert got.features.shape[0] == sh.n_frames(ODD["Test"]) and got.valid.all() and got.features.std() > 0
    no_list_attrs(path)


def test_visual_features_eri_encodes_every_clip(hume, faces):
    """visual_features_eri: the official EXPR encoder over every Hume clip, one shard."""
    from stage_inputs import finetuned_checkpoint

    model = finetuned_checkpoint(hume["work"] / "mae" / "EXPR" / "official" / "finetune.pt", "EXPR")
    out = hume["work"] / "features" / "mae" / "ERI" / "official.h5"
    hume["times"]["visual_features_eri"] = stage(
        "visual_features", "--model", model, "--faces", *faces, f"--videos=@{hume['lists'] / 'visual_ERI.json'}",
        "--out", out, params=visual_params())
    check_visual_shard(out, hume["ids"])

