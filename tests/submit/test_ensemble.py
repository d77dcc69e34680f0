"""ensemble against the organizers' test lists: the submission's rows are the per-frame list's rows
exactly (its videos, frame names, order; a listed frame past the decoded end repeats the last
prediction), and the ERI rows follow the order of the Hume data_info.csv. The index, the ensemble
and the validator run through their CLIs."""
import csv
import json
import logging

import h5py
import numpy as np
from aff_tree import FRAME_LISTS, write_probe
from frame_lists import DECODED, A, B, C, D, listed_rows, probes, run, tree

from affect_pipeline.__main__ import main as cli
from affect_pipeline.common.tasks import ERI_NAMES
from affect_pipeline.submit import submission as sub


def test_submission_rows_follow_the_frame_list_exactly(tmp_path, caplog):
    data = tree(tmp_path)
    probes(tmp_path)
    rng = np.random.default_rng(0)
    preds = {v: rng.uniform(-0.9, 0.9, (n, 2)).astype(np.float32) for v, n in DECODED.items()}
    with caplog.at_level(logging.WARNING):
        sub_file, index = run(tmp_path, data, preds=preds)
    lines = sub_file.read_text().splitlines()
    assert lines[0] == "image_location,valence,arousal"
    assert [ln.split(",")[0] for ln in lines[1:]] == listed_rows(tmp_path)     # its videos, frames, order
    back = sub.read_submission("VA", sub_file)
    assert list(back) == [B, A, C, D]
    np.testing.assert_allclose(back[A], preds[A][:5], atol=1e-6)               # decoded 7: listed 5 only
    np.testing.assert_allclose(back[B], preds[B][[0, 1, 2, 3, 3, 3]], atol=1e-6)   # decoded 4: last repeated
    np.testing.assert_allclose(back[C], preds[C][[0, 1, 4, 5]], atol=1e-6)     # the listed frame names
    assert f"{B}: the organizers' list has 6 rows (last 00006) but the video decodes 4 frames" in caplog.text
    with h5py.File(sub_file.with_name("ensemble.h5")) as f:
        assert f.attrs["padded_rows"] == 2 and f.attrs["frame_list"].endswith(FRAME_LISTS["VA"])
    # the validator, as a stage: this file passes; the same predictions in decoded form do not
    args = ["validate_submission", "--task", "VA", "--index", str(index / "videos.tsv"),
            "--index-report", str(index / "index_report.json")]
    assert cli(args + ["--file", str(sub_file)]) == 0
    decoded = tmp_path / "decoded.txt"
    decoded.write_text(sub.format_submission("VA", {v: np.clip(preds[v], -1, 1) for v in (B, A, C, D)}))
    assert cli(args + ["--file", str(decoded)]) == 1


def test_eri_rows_follow_the_order_of_data_info_csv(tmp_path):
    root = tmp_path / "hume"
    order = ["00009", "00002", "00005"]
    rows = [("00001", "Train", "0.1"), ("00003", "Train", "0.4"), ("00004", "Val", "0.2")] + [(f, "Test", "") for f in order]
    (root / "videos").mkdir(parents=True)
    (root / "data_info.csv").write_text("File_ID,Split," + ",".join(ERI_NAMES) + "\n"
                                        + "".join(f"{f},{s}" + f",{v}" * 7 + "\n" for f, s, v in rows))
    for f, _, _ in rows:
        (root / "videos" / f"{f}.mp4").write_bytes(b"")
        write_probe(tmp_path / "frames", f, 10)
    data = {"affwild2": {"videos": None}, "hume": {"root": str(root)}, "tasks": ["ERI"]}
    sub_file, index = run(tmp_path, data, task="ERI", preds={f: np.full((1, 7), 0.5, np.float32) for f in order})
    assert [r["File_ID"] for r in csv.DictReader(open(sub_file))] == order != sorted(order)
    assert json.loads((index / "index_report.json").read_text())["test_order"]["ERI"] == order


def test_eri_ensemble_of_the_real_test_size_with_an_option_like_id(tmp_path):
    """Hume-Reaction's 4,604 test clips: the ids' order is a dataset of ensemble.h5 (as an HDF5
    attribute it overflows the 64 KiB object header and the write, predictions.txt with it, fails),
    and a YouTube-style id starting with '-' is an ordinary row."""
    from aff_tree import make_hume_tree

    from affect_pipeline.submit.ensemble import video_order

    root = tmp_path / "hume"
    make_hume_tree(root, {"Train": 3, "Val": 2, "Test": 4604})
    odd = "-8XbT1X7Lq0"
    with open(root / "data_info.csv", "a") as fh:
        fh.write(f"[{odd}],Test,,,,,,,\n")
    (root / "test" / f"{odd}.mp4").write_bytes(b"")
    ids = [r["File_ID"].strip("[]") for r in csv.DictReader(open(root / "data_info.csv"))]
    for f in ids:
        write_probe(tmp_path / "frames", f, 10)
    data = {"affwild2": {"videos": None}, "hume": {"root": str(root)}, "tasks": ["ERI"]}
    test = [f for f, r in zip(ids, csv.DictReader(open(root / "data_info.csv"))) if r["Split"] == "Test"]
    assert len(test) == 4605 and test[-1] == odd
    rng = np.random.default_rng(0)
    sub_file, _ = run(tmp_path, data, task="ERI", preds={f: rng.uniform(0, 1, (1, 7)).astype(np.float32) for f in test})
    rows = list(csv.DictReader(open(sub_file)))
    assert [r["File_ID"] for r in rows] == test
    with h5py.File(sub_file.with_name("ensemble.h5")) as f:
        assert video_order(f) == test and "videos" not in f.attrs
        assert f[odd]["prob"].shape == (1, 7)
