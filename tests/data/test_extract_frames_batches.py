"""extract_frames on a batch of media files, the way the rule runs it (a fresh interpreter, the list
in a file): a file that does not decode fails alone (its batch mates complete, it is named in the
log, its frames JSON records the error and it gets no wav), index_dataset reports it and leaves it
out, a rerun reuses the decodes it has, and an id that looks like an option is just an id."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from stage_errors import stage

from affect_pipeline.common.tasks import ERI_NAMES

OPTION_LIKE = "-8XbT1X7Lq0"          # a YouTube id: argparse would read it as an option


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Three short clips (one named like an option, one without audio) and one cut short."""
    from affect_pipeline.data.video_writer import Soundtrack, write_video

    d = tmp_path_factory.mktemp("batch") / "hume" / "videos"
    rng = np.random.default_rng(0)

    def frames(n):
        return [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(n)]

    tone = Soundtrack(np.sin(np.arange(16000) / 16000 * 2 * np.pi * 440).astype(np.float32) * 0.3)
    out = {"00001": write_video(d / "00001.mp4", frames(12), 25, audio=tone),
           OPTION_LIKE: write_video(d / f"{OPTION_LIKE}.mp4", frames(10), 25, audio=tone),
           "00003": write_video(d / "00003.mp4", frames(8), 25)}
    good = out["00001"].read_bytes()
    (d / "00002.mp4").write_bytes(good[: len(good) * 3 // 10])      # a download that stopped at 30 %
    out["00002"] = d / "00002.mp4"
    return out


def run_batch(tmp_path, media: dict, name="hume_0"):
    spec = tmp_path / "lists" / f"{name}.json"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(json.dumps([{"media": m, "video": str(p)} for m, p in sorted(media.items())]))
    frames, audio = tmp_path / "frames" / name, tmp_path / "audio" / name
    p = stage("extract_frames", f"--batch=@{spec}", "--frames-dir", frames, "--audio-dir", audio,
              "--cache", tmp_path / "frames" / ".cache", "--code-digest", "c0de", "--sample-rate", 16000)
    return p, frames, audio


def test_a_bad_file_fails_alone_inside_its_batch(media, tmp_path):
    p, frames, audio = run_batch(tmp_path, media)
    assert p.returncode == 0, p.stderr[-3000:]          # Snakemake sees the batch job succeed
    err = p.stderr
    assert "00002.mp4: decoding failed, left out of the run" in err and "3 of 4 media files decoded" in err
    for m, n in (("00001", 12), (OPTION_LIKE, 10), ("00003", 8)):
        info = json.loads((frames / f"{m}.json").read_text())
        assert info["n_frames"] == n and len(info["timestamps"]) == n and "error" not in info
        assert (audio / f"{m}.wav").stat().st_size > 44
    assert json.loads((frames / f"{OPTION_LIKE}.json").read_text())["has_audio"] is True
    assert json.loads((frames / "00003.json").read_text())["has_audio"] is False
    bad = json.loads((frames / "00002.json").read_text())
    assert set(bad) == {"error", "media", "video"} and "00002.mp4" in bad["error"]   # no n_frames: never a decode
    assert not (audio / "00002.wav").exists()
    assert sorted(x.name for x in frames.iterdir() if not x.name.startswith(".")) == \
        sorted(f"{m}.json" for m in media)                                          # no temporary file left
    # a rerun (a file added to the batch) decodes only the new file: the others are hard links of the cache
    first = {m: os.stat(frames / f"{m}.json").st_ino for m in ("00001", OPTION_LIKE)}
    from affect_pipeline.data.video_writer import write_video

    new = write_video(media["00001"].parent.parent / "more" / "00004.mp4",
                      [np.zeros((48, 64, 3), np.uint8)] * 6, 25)
    p, frames, audio = run_batch(tmp_path, {**media, "00004": new})
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"{OPTION_LIKE}: decode kept from an earlier run" in p.stderr and "00004: decode kept" not in p.stderr
    assert {m: os.stat(frames / f"{m}.json").st_ino for m in first} == first
    assert json.loads((frames / "00004.json").read_text())["n_frames"] == 6
    assert "00002.mp4: decoding failed" in p.stderr                          # a failure is not cached: retried


def test_index_dataset_reports_the_bad_file_and_leaves_it_out(media, tmp_path):
    p, frames, _ = run_batch(tmp_path, media)
    assert p.returncode == 0, p.stderr[-3000:]
    root = media["00001"].parent.parent
    rows = [("00001", "Train"), (OPTION_LIKE, "Train"), ("00002", "Test"), ("00003", "Test")]
    (root / "data_info.csv").write_text("File_ID,Split," + ",".join(ERI_NAMES) + "\n" + "".join(
        f"{f},{s}" + ("," * 7 if s == "Test" else ",0.5" * 7) + "\n" for f, s in rows))
    data = {"affwild2": {"videos": None}, "hume": {"root": str(root)}, "tasks": ["ERI"]}
    out = tmp_path / "index"
    p = stage("index_dataset", "--data", json.dumps(data), "--frames", frames, "--out-dir", out)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "video 00002 left out: extract_frames could not decode" in p.stderr
    report = json.loads((out / "index_report.json").read_text())
    assert [d["video"] for d in report["decode_failed"]] == ["00002"]
    assert report["decode_failed"][0]["splits"] == {"ERI": "test"} and "00002.mp4" in report["decode_failed"][0]["error"]
    assert report["test_order"]["ERI"] == ["00003"] and report["ERI"]["test"] == 1
    with open(out / "videos.tsv", newline="") as fh:
        assert sorted(r["video_id"] for r in csv.DictReader(fh, delimiter="\t")) == sorted(["00001", OPTION_LIKE, "00003"])
