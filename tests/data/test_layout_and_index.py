"""Ingestion: annotation parsing, invalid markers, the length policy, layout scanning, index."""
import copy
import json

import numpy as np
import pytest
from aff_tree import HEADERS, make_tree

from affect_pipeline.__main__ import main as cli
from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.stores import read_labels, write_labels
from affect_pipeline.data.annotations import LayoutError, parse_annotation
from affect_pipeline.data.index_dataset import (
    build_index,
    fit_to_frames,
    read_index,
    write_index_tsv,
)
from affect_pipeline.data.layout import scan_dataset


def write(p, text):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def test_parse_invalid_markers(tmp_path):
    au = write(tmp_path / "au.txt", HEADERS["AU"] + "\n" + "1,0,0,0,0,0,1,0,0,0,1,0\n" + ",".join(["-1"] * 12) + "\n")
    y, m = parse_annotation(au, "AU")
    assert y.shape == (2, 12) and m.tolist() == [True, False]
    ex = write(tmp_path / "ex.txt", HEADERS["EXPR"] + "\n4\n-1\n7\n")
    y, m = parse_annotation(ex, "EXPR")
    assert y[:, 0].tolist() == [4, -1, 7] and m.tolist() == [True, False, True]
    va = write(tmp_path / "va.txt", HEADERS["VA"] + "\n0.5,-0.25\n-5,-5\n")
    y, m = parse_annotation(va, "VA")
    assert np.allclose(y[0], [0.5, -0.25]) and m.tolist() == [True, False]


@pytest.mark.parametrize("text, needle", [
    ("valence,arousal\n1\n", "header"),
    (HEADERS["EXPR"] + "\n9\n", "out of range"),
    (HEADERS["EXPR"] + "\nhappy\n", "not a number"),
    (HEADERS["EXPR"] + "\n1,2\n", "expected 1 value"),
    ("", "empty"),
])
def test_parse_errors_name_file_and_line(tmp_path, text, needle):
    f = write(tmp_path / "bad.txt", text)
    with pytest.raises(PipelineError) as e:
        parse_annotation(f, "EXPR")
    assert "bad.txt" in str(e.value) and needle in str(e.value)


def test_length_policy_never_shifts():
    y = np.arange(5, dtype=np.float32)[:, None]
    m = np.ones(5, bool)
    y2, m2 = fit_to_frames(y, m, 3)                 # extra rows dropped from the end
    assert y2[:, 0].tolist() == [0, 1, 2] and m2.all()
    y3, m3 = fit_to_frames(y, m, 7)                 # missing rows invalid, existing rows in place
    assert y3[:5, 0].tolist() == [0, 1, 2, 3, 4] and m3.tolist() == [True] * 5 + [False] * 2


def test_scan_left_right_and_test_lists(tmp_path):
    data = make_tree(tmp_path, 10, pair_every=4, test_every=5)
    data["tasks"] = ["AU", "EXPR", "VA", "ERI"]
    lay = scan_dataset(data)
    assert lay.tasks == ("AU", "EXPR", "VA")           # hume.root null switches ERI off
    left = lay.videos["0-30-640x360_left"]
    assert left.side == "left" and left.path.endswith("0-30-640x360.mp4")
    assert left.splits["AU"] == "test"                  # video 0 is a test video
    assert lay.videos["1-30-640x360"].splits["VA"] == "validation"
    assert lay.videos["2-30-640x360"].splits["EXPR"] == "train"
    assert set(lay.ids("AU", ("test",))) == {"0-30-640x360_left", "0-30-640x360_right", "5-30-640x360"}
    assert lay.test_order["AU"] == ["0-30-640x360_left", "0-30-640x360_right", "5-30-640x360"]
    # a `demo:` section is only what make_demo generates: it switches nothing in the scan
    with_demo = scan_dataset({**data, "demo": {"root": str(tmp_path), "n_videos": {"train": 1}}})
    assert with_demo.videos == lay.videos and with_demo.tasks == lay.tasks


def test_expr_recognition_folder_name_accepted(tmp_path):
    data = make_tree(tmp_path, 3, test_every=0)
    ann = tmp_path / "annotations"
    (ann / "EXPR_Classification_Challenge").rename(ann / "EXPR_Recognition_Challenge")
    data["tasks"] = ["EXPR"]
    assert len(scan_dataset(data).ids("EXPR")) == 3


def test_annotation_for_missing_video(tmp_path):
    data = make_tree(tmp_path, 3, test_every=0)
    write(tmp_path / "annotations/VA_Estimation_Challenge/Train_Set/ghost.txt", HEADERS["VA"] + "\n0,0\n")
    data["tasks"] = ["VA"]
    with pytest.raises(LayoutError, match="ghost"):
        scan_dataset(data)


def probes(root):
    return sorted((root / "frames").glob("*.json"))


def _probe(frames_dir, media, n):
    write(frames_dir / f"{media}.json", json.dumps({"n_frames": n, "fps": 30.0, "width": 640, "height": 360,
                                                    "duration": n / 30, "has_audio": True, "timestamps": []}))


def test_index_applies_length_policy_and_reports(tmp_path):
    data = make_tree(tmp_path / "aff", 3, rows=5, test_every=0)
    data["tasks"] = ["AU", "EXPR", "VA"]
    lay = scan_dataset(data)
    for i, n in enumerate((5, 4, 7)):            # exact, one row too many, two rows missing
        _probe(tmp_path / "frames", f"{i}-30-640x360", n)
    rows, labels, report = build_index(lay, probes(tmp_path))
    assert len(rows) == 3
    lab = labels["VA"]["2-30-640x360"]
    assert lab.y.shape == (7, 2) and lab.mask.tolist() == [True] * 5 + [False] * 2
    assert labels["AU"]["1-30-640x360"].y.shape == (4, 12)
    mism = {(d["video"], d["task"]): (d["rows"], d["frames"]) for d in report["length_mismatch"]}
    assert mism[("1-30-640x360", "EXPR")] == (5, 4) and mism[("2-30-640x360", "AU")] == (5, 7)
    # round trips
    write_index_tsv(tmp_path / "videos.tsv", rows)
    idx = read_index(tmp_path / "videos.tsv")
    assert idx["2-30-640x360"]["n_frames"] == 7 and idx["2-30-640x360"]["has_audio"] is True
    write_labels(tmp_path / "VA.h5", "VA", labels["VA"])
    back = read_labels(tmp_path / "VA.h5")
    assert np.array_equal(back["2-30-640x360"].mask, lab.mask) and back["0-30-640x360"].split == "train"


def test_all_invalid_task_is_an_error(tmp_path):
    data = make_tree(tmp_path / "aff", 2, rows=3, test_every=0)
    for f in (tmp_path / "aff/annotations/VA_Estimation_Challenge").rglob("*.txt"):
        f.write_text(HEADERS["VA"] + "\n" + "-5,-5\n" * 3)
    data["tasks"] = ["VA"]
    for i in range(2):
        _probe(tmp_path / "frames", f"{i}-30-640x360", 3)
    with pytest.raises(PipelineError, match="every training label is invalid"):
        build_index(scan_dataset(data), probes(tmp_path))


def test_hume_csv(tmp_path):
    root = tmp_path / "hume"
    write(root / "data_info.csv", "File_ID,Split,Adoration,Amusement,Anxiety,Disgust,Empathic-Pain,Fear,Surprise\n"
          "[00001],Train,0.1,0.2,0.3,0.4,0.5,0.6,0.7\n00002,Val,0,0,0,0,0,0,1\n00003,Test,,,,,,,\n")
    for i in (1, 2, 3):
        write(root / "videos" / f"0000{i}.mp4", "")
        _probe(tmp_path / "frames", f"0000{i}", 10)
    data = {"affwild2": {"videos": None}, "hume": {"root": str(root)}, "tasks": ["ERI"]}
    lay = scan_dataset(data)
    assert {v: e.splits["ERI"] for v, e in lay.videos.items()} == {"00001": "train", "00002": "validation", "00003": "test"}
    _, labels, _ = build_index(lay, probes(tmp_path))
    assert np.allclose(labels["ERI"]["00001"].y, [[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]])
    assert "00003" not in labels["ERI"]


def test_missing_probe_names_the_video(tmp_path):
    data = make_tree(tmp_path / "aff", 2, rows=3, test_every=0)
    data["tasks"] = ["AU"]
    _probe(tmp_path / "frames", "0-30-640x360", 3)
    with pytest.raises(PipelineError, match=r"1-30-640x360\.mp4: no frames probe 1-30-640x360\.json"):
        build_index(scan_dataset(data), probes(tmp_path))


def test_config_keys_are_required_and_data_must_be_given(tmp_path):
    data = make_tree(tmp_path, 2, test_every=0)
    data["tasks"] = ["AU"]
    no_lists = copy.deepcopy(data)
    del no_lists["affwild2"]["test_lists"]             # no default: null must be written out
    with pytest.raises(LayoutError, match="missing key 'affwild2.test_lists'"):
        scan_dataset(no_lists)
    with pytest.raises(LayoutError, match="missing key 'tasks'"):
        scan_dataset({k: v for k, v in data.items() if k != "tasks"})
    nothing = {"affwild2": {"videos": None, "annotations": None, "test_lists": None, "cropped_aligned": None},
               "hume": {"root": None}, "tasks": ["AU", "ERI"]}
    with pytest.raises(LayoutError, match="no data for tasks.*demo_config.yaml"):
        scan_dataset(nothing)


def test_index_dataset_cli(tmp_path):
    """The stage as the rule runs it: data keys as JSON, explicit probe files, one output folder."""
    data = make_tree(tmp_path / "aff", 5, rows=4, pair_every=3, test_every=4)
    data["tasks"] = ["AU", "VA"]
    for media in ("0-30-640x360", "1-30-640x360", "2-30-640x360", "3-30-640x360", "4-30-640x360"):
        _probe(tmp_path / "frames", media, 4)
    out = tmp_path / "index"
    assert cli(["index_dataset", "--data", json.dumps(data), "--frames", *map(str, probes(tmp_path)),
                "--out-dir", str(out)]) == 0
    idx = read_index(out / "videos.tsv")
    assert sorted(idx) == ["0-30-640x360_left", "0-30-640x360_right", "1-30-640x360", "2-30-640x360",
                           "3-30-640x360_left", "3-30-640x360_right", "4-30-640x360"]
    assert idx["0-30-640x360_left"]["split_AU"] == "test" and idx["1-30-640x360"]["split_VA"] == "validation"
    report = json.loads((out / "index_report.json").read_text())
    assert report["test_order"]["VA"] == ["0-30-640x360_left", "0-30-640x360_right", "4-30-640x360"]
    assert report["AU"] == {"train": 3, "validation": 1, "test": 3} and report["n_videos"] == 7
    assert sorted(read_labels(out / "labels" / "VA.h5")) == ["1-30-640x360", "2-30-640x360",
                                                             "3-30-640x360_left", "3-30-640x360_right"]


# ----------------------------------------------------------------------------- ids, stems, paths
def _rename_video(tmp_path, old, new):
    """Rename one video of a make_tree tree (media file and its annotation files)."""
    vids = tmp_path / "videos"
    (vids / f"{old}.mp4").rename(vids / f"{new}.mp4")
    for f in (tmp_path / "annotations").rglob(f"{old}.txt"):
        f.rename(f.with_name(f"{new}.txt"))


@pytest.mark.parametrize("bad, needle", [
    ('a"b', "a double quote"), ("a,b", "a comma"), ("a\tb", "a tab"), ("a\nb", "a line break"),
    ("a\rb", "a carriage return"), (" lead", "leading or trailing white space"),
    ("trail ", "leading or trailing white space"), ("a\x1bb", "a control character"),
])
def test_ids_the_official_formats_cannot_carry_are_refused(tmp_path, bad, needle):
    """Ids go unquoted into videos.tsv and into the submission rows (``video/00001.jpg,…``), which
    the organizers' scripts split on commas: an id they cannot carry stops the scan, naming the file."""
    data = make_tree(tmp_path, 3, test_every=0)
    _rename_video(tmp_path, "1-30-640x360", bad)
    data["tasks"] = ["AU"]
    with pytest.raises(LayoutError) as e:
        scan_dataset(data)
    assert f"{bad}.txt names video {bad!r}: {needle}" in str(e.value)


def test_duplicate_media_stems_are_refused_naming_both_files(tmp_path):
    data = make_tree(tmp_path, 3, test_every=0)
    (tmp_path / "videos" / "b").mkdir()
    (tmp_path / "videos" / "b" / "1-30-640x360.avi").write_bytes(b"")
    data["tasks"] = ["AU"]
    with pytest.raises(LayoutError) as e:
        scan_dataset(data)
    msg = str(e.value)
    assert str(tmp_path / "videos" / "1-30-640x360.mp4") in msg and str(tmp_path / "videos/b/1-30-640x360.avi") in msg
    assert "1-30-640x360.txt names video '1-30-640x360'" in msg
    # an unused duplicate (no annotation or list names it) is no ambiguity
    (tmp_path / "videos" / "b" / "1-30-640x360.avi").rename(tmp_path / "videos" / "b" / "unused.avi")
    (tmp_path / "videos" / "unused.mkv").write_bytes(b"")
    assert len(scan_dataset(data).ids("AU")) == 3


def _hume(root, rows):
    write(root / "data_info.csv", "File_ID,Split,Adoration,Amusement,Anxiety,Disgust,Empathic-Pain,Fear,Surprise\n"
          + "".join(f"{fid},{split},,,,,,,\n" for fid, split in rows))
    for fid, _ in rows:
        write(root / "videos" / f"{fid}.mp4", "")
    return str(root)


def test_hume_id_equal_to_an_affwild2_id_is_refused_naming_both_files(tmp_path):
    data = make_tree(tmp_path / "aff", 3, pair_every=2, test_every=0)
    data["tasks"] = ["AU", "ERI"]
    data["hume"]["root"] = _hume(tmp_path / "hume", [("00001", "Train"), ("1-30-640x360", "Test")])
    with pytest.raises(LayoutError) as e:
        scan_dataset(data)
    msg = str(e.value)
    assert "data_info.csv" in msg and str(tmp_path / "hume/videos/1-30-640x360.mp4") in msg
    assert str(tmp_path / "aff/videos/1-30-640x360.mp4") in msg
    # a Hume id equal to the media stem of an Aff-Wild2 pair (0-30-640x360_left / _right) shares frames/{media}.json
    data["hume"]["root"] = _hume(tmp_path / "hume2", [("00001", "Train"), ("0-30-640x360", "Test")])
    with pytest.raises(LayoutError) as e:
        scan_dataset(data)
    msg = str(e.value)
    assert str(tmp_path / "hume2/videos/0-30-640x360.mp4") in msg and str(tmp_path / "aff/videos/0-30-640x360.mp4") in msg
    # a File_ID listed twice (which row's split holds?) is refused too
    data["hume"]["root"] = _hume(tmp_path / "hume3", [("00001", "Train"), ("00001", "Test")])
    with pytest.raises(LayoutError, match=r"data_info\.csv: File_ID '00001' is listed twice"):
        scan_dataset(data)


def test_hume_test_ids_keep_the_order_of_data_info_csv(tmp_path):
    root = _hume(tmp_path / "hume", [("00009", "Test"), ("00001", "Train"), ("00005", "Test"), ("00007", "Test")])
    lay = scan_dataset({"affwild2": {"videos": None}, "hume": {"root": root}, "tasks": ["ERI"]})
    assert lay.test_order["ERI"] == ["00009", "00005", "00007"]


def test_videos_tsv_round_trips_a_folder_name_with_tab_newline_and_quote(tmp_path):
    """A real videos folder whose name holds a tab, a line break and quotes: videos.tsv (via the
    stage) reads back the exact paths, which exist."""
    odd = 'vids\tfolder\nnext "q" \'s'
    data = make_tree(tmp_path / "aff", 3, rows=4, test_every=0, videos_dir=odd)
    data["tasks"] = ["AU"]
    for i in range(3):
        _probe(tmp_path / "frames", f"{i}-30-640x360", 4)
    out = tmp_path / "index"
    assert cli(["index_dataset", "--data", json.dumps(data), "--frames", *map(str, probes(tmp_path)),
                "--out-dir", str(out)]) == 0
    idx = read_index(out / "videos.tsv")
    assert sorted(idx) == ["0-30-640x360", "1-30-640x360", "2-30-640x360"]
    for vid, r in idx.items():
        assert r["path"] == str(tmp_path / "aff" / odd / f"{vid}.mp4") and (tmp_path / "aff" / odd / f"{vid}.mp4").exists()
        assert r["n_frames"] == 4 and r["split_AU"] in ("train", "validation") and r["has_audio"] is True
    # a hand-damaged index names itself and the fix
    bad = out / "videos.tsv"
    bad.write_text(bad.read_text().replace("\t4\t", "\tfour\t", 1))
    with pytest.raises(PipelineError, match=r"videos\.tsv: malformed index after 0 good row\(s\).*rerun the index_dataset"):
        read_index(bad)
