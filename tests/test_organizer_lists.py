"""The organizers' per-frame test lists (``CVPR_5th_ABAW_AU_test_set_example.txt`` & co.): they set
the test videos, their order and the submission's rows; differences to the decoded frame counts
are reported; the validator holds a submission to them. Also the Hume test order (data_info.csv).

Trees, probes, the index and the fold predictions are real files written as the stages write them;
the index, the ensemble and the validator run through their CLIs."""
import csv
import json
import logging

import h5py
import numpy as np
import pytest
from aff_tree import FRAME_LISTS, TEST_LISTS, make_tree, write_frame_list, write_probe
from conftest import workflow_defaults

from affect_pipeline.__main__ import main as cli
from affect_pipeline.common.tasks import ERI_NAMES
from affect_pipeline.data.index_dataset import build_index
from affect_pipeline.data.layout import LayoutError, _frame_list, scan_dataset
from affect_pipeline.submit import submission as sub

A, B, C, D = (f"{i}-30-640x360" for i in (0, 3, 6, 9))      # make_tree(test_every=3)'s test videos
DECODED = {A: 7, B: 4, C: 6, D: 5}
LISTED = {B: 6, A: 5, C: [1, 2, 5, 6], D: 5}                  # official order B, A, C, D (not sorted)


def tree(tmp_path, tasks=("VA",), frame_list=LISTED):
    data = make_tree(tmp_path / "aff", 10, rows=5, test_every=3)
    data["tasks"] = list(tasks)
    if frame_list is not None:
        write_frame_list(tmp_path / "aff/test_lists" / FRAME_LISTS["VA"], "VA", frame_list, values=",0,0")
    return data


def probes(tmp_path):
    return [write_probe(tmp_path / "frames", f"{i}-30-640x360", DECODED.get(f"{i}-30-640x360", 5))
            for i in range(10)]


def listed_rows(tmp_path, task="VA"):
    lines = (tmp_path / "aff/test_lists" / FRAME_LISTS[task]).read_text().splitlines()[1:]
    return [ln.split(",")[0] for ln in lines]


# ----------------------------------------------------------------------------- layout
def test_frame_list_sets_the_test_videos_and_their_order(tmp_path):
    data = tree(tmp_path, tasks=("AU", "VA"))
    lay = scan_dataset(data)
    assert lay.test_order["VA"] == [B, A, C, D]                       # the frame list's order
    assert lay.test_frames["VA"].runs == {B: [[1, 6]], A: [[1, 5]], C: [[1, 2], [5, 6]], D: [[1, 5]]}
    assert lay.test_frames["VA"].path.endswith(FRAME_LISTS["VA"])
    rows = list(enumerate(open(lay.test_frames["VA"].path).read().splitlines(), 1))[1:]
    assert _frame_list("x", rows) == lay.test_frames["VA"].runs      # the line-by-line reference parser
    assert "AU" not in lay.test_frames and lay.test_order["AU"] == [A, B, C, D]   # name list: as before
    # without the name list, the frame list alone names the test videos; ABAW6's "Expr" spelling
    (tmp_path / "aff/test_lists" / TEST_LISTS["VA"]).unlink()
    write_frame_list(tmp_path / "aff/test_lists/CVPR_6th_ABAW_Expr_test_set_example.txt", "EXPR", {D: 2, A: 3})
    data["tasks"] = ["VA", "EXPR"]
    (tmp_path / "aff/test_lists" / TEST_LISTS["EXPR"]).write_text(f"{A}\n{D}\n")
    lay = scan_dataset(data)
    assert lay.test_order == {"VA": [B, A, C, D], "EXPR": [D, A]} and set(lay.ids("VA", ("test",))) == {A, B, C, D}


@pytest.mark.parametrize("rows, expect", [
    ([f"{A}/00001.jpg", "oops"], r"line 3: 'oops' is not video/NNNNN\.jpg"),
    ([f"{A}/00002.jpg", f"{A}/00001.jpg"], r"line 3: .*00001\.jpg: it does not follow frame 00002"),
    ([f"{A}/00001.jpg", f"{B}/00001.jpg", f"{A}/00002.jpg"], rf"line 4: video '{A}' again"),
    ([f"{A}/1.jpg"], r"line 2: .*'1' is not written 00001"),
    ([f"{A}/00000.jpg"], r"line 2: .*frame numbers start at 00001"),
])
def test_malformed_frame_list_names_file_and_line(tmp_path, rows, expect):
    data = tree(tmp_path, frame_list=None)
    (tmp_path / "aff/test_lists" / TEST_LISTS["VA"]).unlink()
    f = tmp_path / "aff/test_lists" / FRAME_LISTS["VA"]
    f.write_text("image_location,valence,arousal\n" + "".join(r + "\n" for r in rows))
    with pytest.raises(LayoutError, match=FRAME_LISTS["VA"].replace(".", r"\.") + " " + expect):
        scan_dataset(data).test_frames["VA"].runs     # checked in full where used (index_dataset)


def test_frame_list_and_name_list_that_disagree_or_two_frame_lists_are_refused(tmp_path):
    data = tree(tmp_path, frame_list={A: 3, B: 2})                   # the name list also has C and D
    with pytest.raises(LayoutError) as e:
        scan_dataset(data)
    msg = str(e.value)
    assert FRAME_LISTS["VA"] in msg and TEST_LISTS["VA"] in msg and C in msg and D in msg
    data = tree(tmp_path)
    write_frame_list(tmp_path / "aff/test_lists/CVPR_6th_ABAW_VA_test_set_example.txt", "VA", LISTED)
    with pytest.raises(LayoutError, match="two frame lists for VA.*CVPR_5th.*CVPR_6th"):
        scan_dataset(data)


# ----------------------------------------------------------------------------- index report
def test_index_reports_where_the_list_and_the_decoded_frames_differ(tmp_path, caplog):
    data = tree(tmp_path)
    with caplog.at_level(logging.WARNING):
        _, _, report = build_index(scan_dataset(data), probes(tmp_path))
    got = {d["video"]: (d["listed"], d["decoded"], d["padded"], d["unlisted"]) for d in report["frame_list_mismatch"]}
    assert got == {A: (5, 7, 0, 2), B: (6, 4, 2, 0), C: (4, 6, 0, 2)}          # D: listed = decoded
    assert all(d["task"] == "VA" and d["file"].endswith(FRAME_LISTS["VA"]) for d in report["frame_list_mismatch"])
    assert report["test_frames"]["VA"]["videos"][C] == [[1, 2], [5, 6]]
    assert f"test video {B} (VA): 6 listed frames (last 00006), 4 decoded" in caplog.text
    assert "last prediction is repeated for 2 listed frame(s)" in caplog.text


# ----------------------------------------------------------------------------- ensemble + validator
def write_preds(path, task, fold, preds):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs.update(task=task, fold=fold, score=0.5)
        for vid, p in preds.items():
            g = f.create_group(f"test/{vid}")
            g["pred"], g["valid"] = p, np.ones(len(p), bool)
    return path


def run(tmp_path, data, task="VA", preds=None):
    """index_dataset + two folds of predictions + ensemble, all through the CLI."""
    out = tmp_path / "index"
    assert cli(["index_dataset", "--data", json.dumps(data), "--frames", *map(str, sorted((tmp_path / "frames").glob("*.json"))),
                "--out-dir", str(out)]) == 0
    paths = [write_preds(tmp_path / f"pred/fold{k}.h5", task, f"fold{k}", preds) for k in (1, 2)]
    sub_file = tmp_path / "submission" / task / "predictions.txt"
    assert cli(["ensemble", "--task", task, "--preds", *map(str, paths), "--index", str(out / "videos.tsv"),
                "--index-report", str(out / "index_report.json"), "--out", str(sub_file),
                "--params", json.dumps(workflow_defaults()["ensemble"] | {"weighting": "uniform"})]) == 0
    return sub_file, out


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


def _validate(tmp_path, lines):
    path = tmp_path / "mutated.txt"
    path.write_text("\n".join(lines) + "\n")
    index = tmp_path / "index"
    videos = sub.test_videos(index / "videos.tsv", "VA", index / "index_report.json")
    frames = sub.listed_frames(index / "index_report.json", "VA", videos)
    return sub.check_submission("VA", path, videos, ordered=True, frames=frames)


def test_validator_holds_a_submission_to_the_frame_list(tmp_path):
    data = tree(tmp_path)
    probes(tmp_path)
    sub_file, _ = run(tmp_path, data, preds={v: np.zeros((n, 2), np.float32) for v, n in DECODED.items()})
    good = sub_file.read_text().splitlines()
    assert not _validate(tmp_path, good)
    i_c = next(i for i, ln in enumerate(good) if ln.startswith(f"{C}/"))
    cases = {
        "frames not as in the organizers' list": good[:i_c + 2] + [f"{C}/00003.jpg,0,0"] + good[i_c + 3:],
        "missing frames": [ln for ln in good if not ln.startswith(f"{A}/00005")],
        "more rows than listed frames": good[:i_c] + [f"{A}/00006.jpg,0,0"] + good[i_c:],
        "videos out of the official order": [good[0]] + [ln for ln in good[1:] if ln.startswith(A)]
                                            + [ln for ln in good[1:] if not ln.startswith(A)],
    }
    for kind, lines in cases.items():
        probs = _validate(tmp_path, lines)
        assert kind in probs.count, (kind, dict(probs.count))


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
