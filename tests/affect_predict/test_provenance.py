"""affect-predict's provenance sidecars and what a rerun keeps (affect_predict/provenance.py).

Fast tests drive the batch logic with a made-up predictor and hand-made records: every output
gets a sidecar, a rerun keeps an output only when its record matches (models, config, code
version, arguments, input bytes) and logs why it redoes one; the options recorded are read from
the parsed arguments generically. The slow test runs the command on the trained demo run
(`trained_run`) and changes the models, the config and the input in turn.
"""
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from affect_pipeline.affect_predict.batches import expand_inputs, plan_batch, run_batch
from affect_pipeline.affect_predict.cli import parse_args
from affect_pipeline.affect_predict.outputs import NATIVE, VideoResult
from affect_pipeline.affect_predict.provenance import (
    NOT_RESULT_ARGS,
    Provenance,
    config_digest,
    input_digest,
    read_record,
    result_args,
    sidecar,
)

CLI = str(Path(sys.executable).with_name("affect-predict"))
LOG = "affect_pipeline.temporal.predict"


def provenance(models="m1", config="c1", version="0.1.0", **args) -> Provenance:
    return Provenance({"code": {"version": version, "commit": "abc", "dirty": False},
                       "models": {"path": "/x", "kind": "run", "demo": True, "digest": models},
                       "config": {"digest": config, "files": []},
                       "arguments": {"tasks": ["VA"], "stride": 1, **args}})


class Predictor:
    """Made-up VA rows from the file's size and first byte; counts the videos it predicts."""

    def __init__(self):
        self.calls = []

    def __call__(self):
        return self.predict

    def predict(self, path, vid):
        self.calls.append(vid)
        n = 10 + Path(path).stat().st_size % 5
        va = np.linspace(-0.5, 0.5, 2 * n).reshape(n, 2) / (1 + Path(path).read_bytes()[0])
        return VideoResult(vid, np.arange(n) / 25.0, np.ones(n, bool), {"VA": va}, np.full(n, 0.9))


def clips(root, names=("a.mp4", "b.mp4", "sub/c.mp4")):
    for i, rel in enumerate(names):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(bytes([i]) * (100 + i))
    return expand_inputs([str(root)])


def run(vids, prov, out=None, combined=None, timeline=False):
    pred = Predictor()
    batch = plan_batch(vids, ["VA"], NATIVE, out, combined, timeline)
    batch.provenance = prov
    counts = run_batch(batch, pred)
    return counts, pred.calls


def test_every_output_has_a_sidecar_and_a_matching_rerun_skips(tmp_path):
    """CSV and PNG each get X.provenance.json naming the input's size and content digest; the same
    call again predicts nothing."""
    vids = clips(tmp_path / "in")
    out = tmp_path / "out"
    assert run(vids, provenance(), out, timeline=True)[0] == {"predicted": 3, "skipped": 0}
    for rel in ("a.csv", "a.png", "sub/c.csv", "sub/c.png"):
        rec = read_record(out / rel)
        assert rec is not None and sidecar(out / rel).name == Path(rel).name + ".provenance.json"
        assert rec["models"]["digest"] == "m1" and rec["config"]["digest"] == "c1" and rec["models"]["demo"] is True
    (entry,) = read_record(out / "sub/c.csv")["inputs"]
    assert entry["video"] == "c" and entry["size"] == 102 and entry == {**entry, **input_digest(tmp_path / "in/sub/c.mp4")}
    assert run(vids, provenance(), out, timeline=True) == ({"predicted": 0, "skipped": 3}, [])


@pytest.mark.parametrize("change, why", [
    ({"models": "m2"}, "models.digest differs"),
    ({"config": "c2"}, "config.digest differs"),
    ({"version": "0.2.0"}, "code.version differs"),
    ({"stride": 2}, "arguments differs"),
])
def test_other_models_config_version_or_arguments_redo_every_video(tmp_path, caplog, change, why):
    vids = clips(tmp_path / "in")
    out = tmp_path / "out"
    run(vids, provenance(), out)
    inode = (out / "a.csv").stat().st_ino
    with caplog.at_level(logging.INFO, logger=LOG):
        counts, calls = run(vids, provenance(**change), out)
    assert counts == {"predicted": 3, "skipped": 0} and sorted(calls) == ["a", "b", "c"]
    assert any(why in m and "redoing a" in m for m in caplog.messages), caplog.messages
    assert (out / "a.csv").stat().st_ino != inode                 # a new file renamed into place
    assert read_record(out / "b.csv")["arguments"]["stride"] == change.get("stride", 1)


def test_a_changed_input_or_a_csv_without_record_is_redone_alone(tmp_path, caplog):
    vids = clips(tmp_path / "in")
    out = tmp_path / "out"
    run(vids, provenance(), out)
    (tmp_path / "in/b.mp4").write_bytes(b"\x07" * 101)              # same size, other bytes
    sidecar(out / "sub/c.csv").unlink()                             # e.g. written by an older affect-predict
    with caplog.at_level(logging.INFO, logger=LOG):
        counts, calls = run(vids, provenance(), out)
    assert counts == {"predicted": 2, "skipped": 1} and sorted(calls) == ["b", "c"]
    assert any("the input" in m and "b.mp4 changed" in m for m in caplog.messages), caplog.messages
    assert any("no provenance record" in m for m in caplog.messages), caplog.messages
    assert read_record(out / "b.csv")["inputs"][0]["blake2b"] == input_digest(tmp_path / "in/b.mp4")["blake2b"]


def test_a_png_whose_record_differs_is_redrawn_from_its_csv(tmp_path):
    vids = clips(tmp_path / "in")
    out = tmp_path / "out"
    run(vids, provenance(), out, timeline=True)
    rec = read_record(out / "a.png")
    sidecar(out / "a.png").write_text(json.dumps({**rec, "config": {"digest": "old"}}))
    assert run(vids, provenance(), out, timeline=True) == ({"predicted": 0, "skipped": 3}, [])
    assert read_record(out / "a.png") == rec


def test_combined_csv_keeps_matching_rows_and_redoes_the_rest(tmp_path, caplog):
    """One changed input: its rows replaced, the others' kept byte for byte; other models: every
    row redone and the rows of videos not in this call dropped with a warning."""
    vids = clips(tmp_path / "in")
    out, png = tmp_path / "all.csv", tmp_path / "all.png"
    run(vids, provenance(), combined=out, timeline=png)
    rec = read_record(out)
    assert [v["video"] for v in rec["inputs"]] == ["a", "b", "c"] and read_record(png) == rec
    lines = out.read_text().splitlines()
    (tmp_path / "in/a.mp4").write_bytes(b"\x09" * 100)
    counts, calls = run(vids, provenance(), combined=out, timeline=png)
    assert counts == {"predicted": 1, "skipped": 2} and calls == ["a"]
    new = out.read_text().splitlines()
    assert new[0] == lines[0] and [ln for ln in new if ln.startswith(("b,", "c,"))] == \
        [ln for ln in lines if ln.startswith(("b,", "c,"))]
    assert [ln for ln in new if ln.startswith("a,")] != [ln for ln in lines if ln.startswith("a,")]
    assert sorted(v["video"] for v in read_record(out)["inputs"]) == ["a", "b", "c"] and read_record(png) == read_record(out)

    with caplog.at_level(logging.INFO, logger=LOG):
        counts, calls = run(vids[:2], provenance(models="m2"), combined=out, timeline=png)
    assert counts == {"predicted": 2, "skipped": 0}
    assert any("models.digest differs" in m for m in caplog.messages), caplog.messages
    assert any("1 video(s) not in this call dropped" in m for m in caplog.messages), caplog.messages
    assert {ln.split(",")[0] for ln in out.read_text().splitlines()[1:]} == {"a", "b"}
    assert [v["video"] for v in read_record(out)["inputs"]] == ["a", "b"]


def test_recorded_arguments_are_every_option_that_can_change_the_numbers():
    """Read from the parsed options: an option added later is recorded without a change here;
    where outputs go, device, threads and batch size are not."""
    a = parse_args(["v.mp4", "--models", "r", "--out-dir", "o", "--device", "cpu", "--threads", "2",
                    "--batch-size", "4", "--tasks", "VA"])
    got = result_args(a, ["VA"])
    assert got["tasks"] == ["VA"] and not set(got) & NOT_RESULT_ARGS
    assert set(got) == {k for k in vars(a) if k not in NOT_RESULT_ARGS}
    a.some_new_option = 3
    assert result_args(a, ["VA"])["some_new_option"] == 3


def test_config_digest_ignores_pinned_weight_paths_only():
    """Where the audio weights lie is not what they are (their digests are checked on load); any
    other setting changes the digest."""
    cfg = {"audio": {"vggish": {"weights": "a/vggish.pth", "pca": None, "hop_seconds": 0.24}},
           "faces": {"size": 112}, "_files": ["x.yaml"]}
    moved = {**cfg, "audio": {"vggish": {**cfg["audio"]["vggish"], "weights": "b/v.pth"}}, "_files": ["y"]}
    assert config_digest(cfg) == config_digest(moved)
    assert config_digest(cfg) != config_digest({**cfg, "faces": {"size": 224}})
    assert config_digest(cfg) != config_digest({**cfg, "audio": {"vggish": {**cfg["audio"]["vggish"], "hop_seconds": 0.5}}})


def test_input_digest_of_a_file_and_a_folder_of_frames(tmp_path):
    f = tmp_path / "v.mp4"
    f.write_bytes(b"x" * 3_000_000)
    d = input_digest(f)
    import hashlib

    assert d == {"size": 3_000_000, "blake2b": hashlib.blake2b(b"x" * 3_000_000, digest_size=20).hexdigest()}
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        (frames / f"{i:03d}.png").write_bytes(bytes([i]) * 50)
    first = input_digest(frames)
    assert first["size"] == 150
    (frames / "001.png").rename(frames / "009.png")                 # same bytes, other order
    assert input_digest(frames)["blake2b"] != first["blake2b"]


def test_version_flags():
    """`affect-predict --version` and `python -m affect_pipeline --version`: the package version and,
    in a git checkout, the commit."""
    import affect_pipeline
    from affect_pipeline.common.version import code_version

    for cmd, prog in (([CLI, "--version"], "affect-predict"), ([sys.executable, "-m", "affect_pipeline", "--version"],
                                                               "affect_pipeline")):
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        assert p.stdout.startswith(f"{prog} {affect_pipeline.__version__}"), p.stdout
        commit = code_version()["commit"]
        if commit:
            assert f"(git {commit[:12]}" in p.stdout, p.stdout


# ---------------------------------------------------------------- slow: the command on the demo run
def run_cli(*args, timeout=300):
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_changed_models_config_or_input_redo_the_video(trained_run, tmp_path):
    """On the demo run: a rerun skips; a fold model changed in place (same size), a config overlay
    and a re-rendered video each redo it, saying why; every run warns that the models are the demo's."""
    from test_affect_predict import make_video

    from affect_pipeline.common.runtime import load_checkpoint, save_checkpoint

    res = trained_run / "run" / "results"
    models = tmp_path / "results"                  # the run's, with a copy of its fold models altered below
    shutil.copytree(res / "models" / "VA", models / "models" / "VA")
    for rel in ("config.yaml", "mae"):
        (models / rel).symlink_to(res / rel)
    video = make_video(tmp_path / "clip.mp4", 30, seed=21)
    base = [video, "--models", models, "--workdir", trained_run / "run", "--out-dir", tmp_path / "out",
            "--threads", "2", "--no-timeline"]
    csv = tmp_path / "out" / "clip.csv"

    def call(*extra, redo=None):
        p = run_cli(*base, *extra)
        assert p.returncode == 0, p.stderr[-3000:]
        assert "trained on the synthetic demo data" in p.stderr and "WARNING" in p.stderr
        if redo is None:
            assert "1 of 1 video(s) skipped" in p.stderr, p.stderr[-3000:]
        else:
            assert "1 video(s) predicted" in p.stderr and redo in p.stderr, p.stderr[-3000:]
        return csv.read_bytes()

    first = call(redo="")
    assert read_record(csv)["models"]["demo"] is True
    assert call() == first

    ck = models / "models/VA/fold1/dcl.pt"
    state = load_checkpoint(ck)
    for k, v in state.items():                     # every float weight of fold1 nudged: same file size
        if isinstance(v, dict):
            state[k] = {n: (t + 0.05 if getattr(t, "is_floating_point", lambda: False)() else t) for n, t in v.items()}
    save_checkpoint(state, ck)
    changed = call(redo="models.digest differs")
    assert changed != first

    overlay = tmp_path / "faces.yaml"
    overlay.write_text(yaml.safe_dump({"faces": {"score_threshold": 0.95}}))
    call("--config", overlay, redo="config.digest differs")

    make_video(video, 30, seed=22)                 # the same name, other content
    call("--config", overlay, redo="clip.mp4 changed")
    rec = read_record(csv)
    assert rec["inputs"][0]["blake2b"] == input_digest(video)["blake2b"]
    assert rec["arguments"]["tasks"] == ["VA"] and "device" not in rec["arguments"]
