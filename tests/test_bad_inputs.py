"""The bad-input matrix (docs/bad_inputs.md): each row is a real run that must end in one clear
``ERROR [stage]: <file>: <cause>`` line (rc 1, no traceback, no output file) or a documented
handled result. Rows already covered elsewhere (test_video, test_dataset, test_faces, test_config,
test_dryrun, test_mae, test_audio_features) are only referenced in the doc, not repeated here.

Stage rows call ``python -m affect_pipeline <stage>`` in a subprocess (what a rule runs, so the
real stderr is checked). The workflow row runs Snakemake on a small demo tree whose ids hold
spaces, quotes, non-ASCII and shell metacharacters; the same run is killed midway and resumed,
which test_crash_safety.py asserts on (one run serves both: it is the slow part).
"""
from __future__ import annotations

import ast
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, SNAKEMAKE, face_batch_target, face_store_of
from test_temporal import SMALL

from affect_pipeline.common.runtime import write_json

torch.set_num_threads(1)
# AFFECT_WARM=0: the odd run is SIGKILLed as a process group (tests/test_crash_safety.py); jobs of
# the warm launcher are forks of its server, outside that group, that stop when their launcher's
# socket closes (tests/test_warm.py) — a job finishing in that moment may still publish its
# complete output, which --rerun-incomplete then redoes, so "nothing redone" is exact only here.
ENV = {**os.environ, "AFFECT_WARM": "0", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1", "PYTHONIOENCODING": "utf-8"}


# ---------------------------------------------------------------- helpers
def stage(*args, cwd=None, timeout=180) -> subprocess.CompletedProcess:
    """Run one stage the way a rule does: a fresh interpreter, stderr captured."""
    cmd = [sys.executable, "-m", "affect_pipeline", *map(str, args), "--threads", "1", "--device", "cpu"]
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def assert_clean_error(p: subprocess.CompletedProcess, name: str, *needles) -> str:
    """rc 1, no traceback, exactly one ``ERROR [name]:`` line, and it names every needle."""
    err = p.stderr
    lines = [ln for ln in err.splitlines() if ln.startswith(f"ERROR [{name}]:")]
    assert p.returncode == 1, (p.returncode, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    assert len(lines) == 1, err[-3000:]
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]


class Payload:
    """Pickles to ``os.system("touch MARKER")``: what a malicious checkpoint carries."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def evil_checkpoint(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": 1, "kind": "mae_finetune", "model": {"w": torch.zeros(2)}, "x": Payload(marker)}, path)
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Feature stores + labels + folds (test_temporal's generator) for the temporal stages."""
    from test_temporal import make_folds, make_synthetic

    d = make_synthetic(tmp_path_factory.mktemp("syn"), "AU", n_train=4, n_val=2, n_test=1, frames=(20, 30))
    make_folds(d, "AU")
    return d


def fold_args(d, fold="official"):
    return ["--task", "AU", "--fold", fold, "--folds", d["folds"], "--labels", d["labels"], "--features", *d["features"]]



# ---------------------------------------------------------------- stage rows
def test_truncated_feature_shard_train_blb(synthetic, tmp_path):
    """A feature shard copied half-way (a full disk, an interrupted rsync): one clean error naming
    the shard, and no model, metrics or curve written."""
    d = dict(synthetic)
    feats = [tmp_path / "features" / Path(f).name for f in d["features"]]
    for src, dst in zip(d["features"], feats):          # private copies: the fixture stays intact
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(Path(src).read_bytes())
    bad = feats[1]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    d["features"] = [str(f) for f in feats]
    m = tmp_path / "blb"
    p = stage("train_blb", *fold_args(d), "--out", m / "blb.pt", "--metrics", m / "blb_metrics.json",
              "--curve", m / "blb_curve.csv", "--params", json.dumps(SMALL))
    assert_clean_error(p, "train_blb", bad, "truncated or corrupt")
    assert not m.exists() or not any(m.iterdir())


@pytest.mark.parametrize("broken", ["faces", "model"])
def test_truncated_face_store_or_checkpoint_visual_features(broken, tmp_path):
    """A store or checkpoint copied half-way (a full disk, an interrupted rsync)."""
    from test_determinism import face_store, finetuned_checkpoint

    paths = {"model": finetuned_checkpoint(tmp_path / "finetune_AU.pt"), "faces": face_store(tmp_path / "v 1.h5", 40)}
    data = paths[broken].read_bytes()
    paths[broken].write_bytes(data[: len(data) // 2])
    out = tmp_path / "mae_AU" / "v 1.h5"
    p = stage("visual_features", "--model", paths["model"], "--faces", paths["faces"], "--out", out,
              "--params", json.dumps({"batch_size": 8}))
    assert_clean_error(p, "visual_features", paths[broken], "truncated or corrupt")
    assert not out.exists()


def test_corrupt_video_extract_frames(tmp_path):
    from affect_pipeline.data.video import write_video

    rng = np.random.default_rng(0)
    good = write_video(tmp_path / "ok.mp4", [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(20)], 25)
    bad = tmp_path / "cut short.mp4"                     # a download that stopped at 30 %
    bad.write_bytes(good.read_bytes()[: good.stat().st_size * 3 // 10])
    out, wav = tmp_path / "frames" / "cut short.json", tmp_path / "audio" / "cut short.wav"
    assert_clean_error(stage("extract_frames", "--video", bad, "--out", out, "--audio-out", wav, "--sample-rate", 16000),
                       "extract_frames", bad)
    assert not out.exists() and not wav.exists()


def test_pickled_code_checkpoint_payload_is_live(tmp_path):
    """The attack is real: an unsafe torch.load of this file runs the payload."""
    marker = tmp_path / "PWNED"
    ck = evil_checkpoint(tmp_path / "evil.pt", marker)
    torch.load(ck, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("name", ["visual_features", "train_dcl", "predict"])
def test_pickled_code_checkpoint_is_refused(name, synthetic, tmp_path):
    marker = tmp_path / "PWNED"
    ck = evil_checkpoint(tmp_path / "my model.pt", marker)
    out = tmp_path / "out"
    if name == "visual_features":
        from affect_pipeline.common.stores import write_face_store

        faces = tmp_path / "v.h5"
        with write_face_store(faces, video_id="v", size=32, backend="test", fps=25.0) as w:
            w.append([np.zeros((32, 32, 3), np.uint8)] * 3, np.ones(3, bool), np.ones(3), np.zeros((3, 4)),
                     np.zeros((3, 5, 2)), np.arange(3) / 25)
        args = ["--model", ck, "--faces", faces, "--out", out / "v.h5", "--params", json.dumps({"batch_size": 8})]
    elif name == "train_dcl":
        clb = tmp_path / "clb.json"
        write_json(clb, {"clips": [{"video": "tr0", "start": 0, "length": 8}]})
        args = fold_args(synthetic) + ["--blb", ck, "--clb-clips", clb, "--out", out / "dcl.pt",
                                       "--metrics", out / "m.json", "--curve", out / "c.csv",
                                       "--params", json.dumps(SMALL)]
    else:
        args = fold_args(synthetic) + ["--model", ck, "--index", synthetic["index"], "--out", out / "p.h5"]
    line = assert_clean_error(stage(name, *args), name, ck, "refused")
    assert "weights_only" in line
    assert not marker.exists(), "the checkpoint's code ran"
    assert not out.exists()


def test_missing_audio_weights_folder(tmp_path):
    frames = tmp_path / "v.json"
    write_json(frames, {"n_frames": 5, "fps": 25.0, "has_audio": True, "timestamps": [i / 25 for i in range(5)]})
    from conftest import workflow_defaults

    from affect_pipeline.audio.audio_features import model_params

    absent = tmp_path / "models" / "hubert"
    out = tmp_path / "features" / "hubert.h5"
    p = stage("audio_features", "--model", "hubert", "--weights", absent, "--weights-key", "audio.hubert.weights",
              "--videos", json.dumps({"v": "v"}), "--audio", tmp_path / "v.wav", "--frames", frames, "--out", out,
              "--params", json.dumps(model_params(workflow_defaults()["audio"], "hubert")))
    assert_clean_error(p, "audio_features", absent, "audio.hubert.weights")
    assert not out.exists() and not Path(f"{out}.partial").exists()


def test_face_lost_mid_video_is_masked_not_shifted(tmp_path):
    """Handled result: frames without a face get found=False; the store keeps every frame in place."""
    import cv2
    from test_faces import crop, face_img, make, moving

    from affect_pipeline.common.stores import FaceStore

    rng = np.random.default_rng(0)
    noise = [cv2.GaussianBlur(rng.integers(0, 256, (160, 160, 3), dtype=np.uint8), (9, 9), 3) for _ in range(5)]
    frames = list(moving(face_img(160), 6)) + noise + list(moving(face_img(160), 5))
    video, fj = make(tmp_path, "lost", frames)
    out = tmp_path / "lost.h5"
    assert crop(video, fj, out) == 0
    with FaceStore(out) as fs:
        assert fs.n_frames == 16
        assert fs.found[:6].all() and not fs.found[6:11].any() and fs.found[11:].all(), fs.found
        crops = fs.read_crops(np.arange(16))
    assert not crops[6:11].any() and crops[:6].any(axis=(1, 2, 3)).all()


def test_unsafe_id_characters_are_refused_at_parse_time(tmp_path):
    """A comma / tab in a video id would silently break videos.tsv and the submission CSV."""
    from aff_tree import make_tree

    from affect_pipeline.data.layout import LayoutError, scan_dataset

    data = make_tree(tmp_path, 3, test_every=0)
    vids = tmp_path / "videos"
    (vids / "1-30-640x360.mp4").rename(vids / "a,b.mp4")
    for f in (tmp_path / "annotations").rglob("1-30-640x360.txt"):
        f.rename(f.with_name("a,b.txt"))
    data["tasks"] = ["AU"]
    with pytest.raises(LayoutError, match=r"a,b.txt names video 'a,b': a comma"):
        scan_dataset(data)


# ---------------------------------------------------------------- security: grep the code
SOURCES = sorted([*(REPO / "affect_pipeline").rglob("*.py"), *(REPO / "benchmarks").glob("*.py")])
RULES = sorted([REPO / "Snakefile", *(REPO / "rules").glob("*.smk")])


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def unsafe_calls(src: str) -> list[tuple[int, str]]:
    """Calls that load code or hand strings to a shell, found on the syntax tree (multi-line safe)."""
    bad = []
    for node in ast.walk(ast.parse(src)):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = ast.unparse(f)
        if name.endswith("torch.load"):
            wo = _kw(node, "weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                bad.append((node.lineno, f"{name}( without weights_only=True"))
        if name in ("yaml.load", "yaml.load_all") and "Safe" not in ast.unparse(_kw(node, "Loader") or ast.Constant(None)):
            bad.append((node.lineno, f"{name}( without a safe Loader"))
        if name in ("yaml.unsafe_load", "yaml.full_load", "os.system", "os.popen", "pickle.load", "pickle.loads",
                    "eval", "exec", "subprocess.getoutput", "subprocess.getstatusoutput"):
            bad.append((node.lineno, name))
        sh = _kw(node, "shell")
        if sh is not None and not (isinstance(sh, ast.Constant) and sh.value is False):
            bad.append((node.lineno, f"{name}(..., shell=...)"))
        ap = _kw(node, "allow_pickle")
        if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
            bad.append((node.lineno, f"{name}(..., allow_pickle=...)"))
    return bad


def test_security_scan_catches_what_it_should():
    """The scanner itself against known-bad and known-good snippets (so a pass means something)."""
    bad = ("torch.load(p)\ntorch.load(\n  p,\n  map_location='cpu')\nyaml.load(s)\nyaml.load(s, Loader=yaml.Loader)\n"
           "subprocess.run(cmd, shell=True)\nos.system('ls')\nnp.load(p, allow_pickle=True)\npickle.loads(b)\n")
    assert len(unsafe_calls(bad)) == 8
    good = ("torch.load(p, map_location='cpu', weights_only=True)\nyaml.safe_load(s)\n"
            "yaml.load(s, Loader=yaml.SafeLoader)\nsubprocess.run([a, b])\nnp.load(p)\n")
    assert unsafe_calls(good) == []


def test_security_no_unsafe_loads_or_shells_in_the_package():
    assert len(SOURCES) > 15 and any(p.name == "runtime.py" for p in SOURCES)
    found = [f"{p.relative_to(REPO)}:{ln}: {what}" for p in SOURCES for ln, what in unsafe_calls(p.read_text())]
    assert not found, "unsafe calls:\n" + "\n".join(found)


def test_security_rules_quote_paths_and_read_yaml_safely():
    """Rule files are not plain Python: grep them. Every path placeholder in a shell command is
    quoted (``{input:q}``, ``{output:q}``, ``{log:q}``, or a param built with shlex.quote)."""
    found = []
    for p in RULES:
        text = p.read_text()
        for i, line in enumerate(text.splitlines(), 1):
            if re.search(r"torch\.load\((?![^)]*weights_only=True)|yaml\.load\(|shell=True|os\.system\(", line):
                found.append(f"{p.name}:{i}: {line.strip()}")
            for ph in re.findall(r"\{((?:input|output|log)(?:\.\w+)?)(:q)?\}", line):
                if not ph[1]:
                    found.append(f"{p.name}:{i}: unquoted {{{ph[0]}}}")
    assert not found, "\n".join(found)


# ---------------------------------------------------------------- workflow row: odd video ids
ODD = {"demo_000": "«demo» é & 000", "demo_001": "o'neil 日本", "demo_002": "x;touch PWNED",
       "demo_003": "$(touch PWNED) `touch PWNED`", "demo_pair": "pair ü"}
DEMO_PARAMS = {"seed": 0, "size": 160, "fps": 25, "frames": [12, 16],
               "n_videos": {"train": 2, "validation": 1, "test": 1},
               "hume": {"train": 0, "validation": 0, "test": 0, "frames": 8}}


def rename(vid: str) -> str:
    for old, new in ODD.items():
        if vid == old or vid.startswith(old + "_"):
            return new + vid[len(old):]
    return vid


def odd_tree(root: Path) -> Path:
    """The demo generator's tree with every id renamed (videos, annotation files, test lists)."""
    from affect_pipeline.demo.make_demo import make_demo

    make_demo(root, DEMO_PARAMS, threads=1)
    aff = root / "affwild2"
    for f in [*(aff / "videos").iterdir(), *(aff / "annotations").rglob("*.txt")]:
        f.rename(f.with_name(rename(f.stem) + f.suffix))
    for f in (aff / "test_lists").iterdir():
        f.write_text("".join(rename(ln) + "\n" for ln in f.read_text().splitlines() if ln.strip()))
    cfg = {"affwild2": {k: str(aff / k) for k in ("videos", "annotations", "test_lists")} | {"cropped_aligned": None},
           "hume": {"root": None}, "tasks": ["AU", "EXPR", "VA"], "temporal": {"features": ["mae"]},
           "faces": {"size": 64, "batch_size": 16, "min_face_size": 40}, "resources": ODD_RESOURCES}
    (root / "odd.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return root / "odd.yaml"


ODD_IDS = ["«demo» é & 000", "o'neil 日本", "x;touch PWNED", "$(touch PWNED) `touch PWNED`", "pair ü_left", "pair ü_right"]
ODD_RESOURCES = {"face_batches": 2}      # two crop_faces batches of three videos each
BATCHES = sorted({face_batch_target(v, {"resources": ODD_RESOURCES}) for v in ODD_IDS})


def odd_batch(video: str) -> str:
    return face_batch_target(video, {"resources": ODD_RESOURCES}).rsplit("/", 1)[1]


TARGETS = ["results/index/videos.tsv", *BATCHES] + [f"results/audio/{v}.wav" for v in ODD_IDS[:4]]
_RUN: dict = {}


def _snakemake(cfg, work, *extra):
    return [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--cores", "2", "--configfile", str(cfg),
            "--directory", str(work), *extra]


def odd_workflow(tmp_path_factory) -> dict:
    """Snakemake on the odd tree, SIGKILLed (whole process group) while a crop_faces batch job runs
    that has finished one of its videos, then ``--unlock`` + ``--rerun-incomplete`` to the end.
    Memoised: one run per session."""
    if _RUN:
        return _RUN
    root = tmp_path_factory.mktemp("odd")
    cfg = odd_tree(root / "data")
    work = root / "work"
    work.mkdir()
    t0 = time.time()
    first = subprocess.Popen(_snakemake(cfg, work, *TARGETS), cwd=work, env=ENV, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    faces, logs = work / "results/faces", work / "results/logs/crop_faces"
    killed_in = cached = None
    while first.poll() is None and time.time() - t0 < 400:
        # the stores first, then which batches are unfinished: a batch finishing in between is not "mid"
        stored = {p.name.rsplit(".", 2)[0] for p in (faces / ".cache").glob("*.h5")} if faces.exists() else set()
        running = {p.stem for p in logs.glob("*.log")} if logs.exists() else set()
        mid = {v for v in stored if odd_batch(v) in running and not (faces / odd_batch(v)).exists()}
        if mid:                          # a batch job has stored a video and works on the next: kill all
            os.killpg(first.pid, signal.SIGKILL)
            killed_in = {b for b in running if not (faces / b).exists()}
            cached = {v for v in mid if odd_batch(v) in killed_in}
            break
        time.sleep(0.1)
    first.wait()
    first_log = first.stdout.read().decode("utf-8", "replace")
    assert killed_in and cached, f"the first run was not caught mid-job (rc {first.returncode}):\n{first_log[-3000:]}"
    before = {str(p.relative_to(work)): p.stat().st_mtime_ns for p in (work / "results").rglob("*")
              if p.is_file() and "logs" not in p.parts and not p.name.startswith(".")}
    leftovers = sorted(p.name for p in faces.iterdir())
    unlock = subprocess.run(_snakemake(cfg, work, "--unlock"), cwd=work, env=ENV, capture_output=True, text=True)
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    second = subprocess.run(_snakemake(cfg, work, "--rerun-incomplete", *TARGETS), cwd=work, env=ENV,
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    noop = subprocess.run(_snakemake(cfg, work, "-n", *TARGETS), cwd=work, env=ENV, capture_output=True, text=True)
    print(f"\nodd-id workflow with a kill and a rerun: {time.time() - t0:.0f} s")
    _RUN.update(root=root, cfg=cfg, work=work, killed_in=killed_in, cached=cached, before=before, leftovers=leftovers,
                first_log=first_log, second=second, noop=noop)
    return _RUN


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory):
    return odd_workflow(tmp_path_factory)


@pytest.mark.slow
def test_odd_ids_run_end_to_end(odd_run):
    from affect_pipeline.common.stores import FaceStore
    from affect_pipeline.data.index_dataset import read_index

    work = odd_run["work"]
    index = read_index(work / "results/index/videos.tsv")
    assert sorted(index) == sorted(ODD_IDS)
    assert index["pair ü_left"]["side"] == "left" and index["pair ü_left"]["media"] == "pair ü"
    assert index["x;touch PWNED"]["has_audio"] is False          # demo_002 has no audio stream
    for v in ODD_IDS:
        with FaceStore(face_store_of(work / "results", v)) as fs:
            assert fs.attrs["video_id"] == v and fs.n_frames == index[v]["n_frames"] and fs.found.mean() > 0.8
    import soundfile as sf

    for v in ODD_IDS[:4]:
        x, sr = sf.read(work / "results/audio" / f"{v}.wav", dtype="int16")
        assert sr == 16000 and abs(len(x) - index[v]["duration"] * sr) < 0.1 * sr
        assert x.any() == index[v]["has_audio"]                 # silent exactly when there is no audio
    labels = work / "results/index/labels/AU.h5"
    with h5py.File(labels) as f:
        assert sorted(f) == sorted(v for v in ODD_IDS if index[v]["split_AU"] != "test")


@pytest.mark.slow
def test_odd_ids_inject_nothing(odd_run):
    hits = list(odd_run["root"].rglob("PWNED")) + [p for p in (REPO / "PWNED", Path.cwd() / "PWNED") if p.exists()]
    assert not hits, hits
    assert "Nothing to be done" in odd_run["noop"].stdout + odd_run["noop"].stderr
