"""``affect-predict --format``: OpenFace 2's FeatureExtraction CSV and py-feat's Fex columns, read
the way those tools' users read them (pandas, py-feat's ``read_openface`` / ``read_feat``), plus
the native layout's empty no-face rows and several face tracks in one file.

The references are the tools' own texts, copied here: OpenFace 2.2's header as its
``RecorderCSV.cpp`` writes it (``frame, face_id, timestamp, confidence, success`` then
``", "``-joined names), the wiki's "Output Format" page (which documents the same columns
without ``face_id``), and py-feat's column lists (``feat/utils``: ``FEAT_FACEBOX_COLUMNS``,
``FEAT_EMOTION_COLUMNS``, ``FEAT_TIME_COLUMNS``; ``read_openface``: ``pd.read_csv(f, sep=",")``
then ``d.columns.str.strip(" ")``). py-feat itself is not a dependency: its two reading lines
are repeated here.
"""
import csv

import numpy as np
import pandas as pd
import pytest

from affect_pipeline.affect_predict.cli import parse_args
from affect_pipeline.affect_predict.formats import CsvStyle
from affect_pipeline.affect_predict.outputs import VideoResult, read_results, write_csv
from affect_pipeline.common.tasks import AU_NAMES

TASKS = ["AU", "EXPR", "VA"]
TH = (0.5,) * 12

#: OpenFace 2.2 lib/local/Utilities/src/RecorderCSV.cpp, WriteHeader, is_sequence (FeatureExtraction)
OPENFACE_RECORDER_HEADER = "frame, face_id, timestamp, confidence, success"
#: OpenFace wiki, "Output Format" (the CSV's first columns, as documented there)
OPENFACE_WIKI_HEADER = ("frame, timestamp, confidence, success, gaze_0_x, gaze_0_y, gaze_0_z, gaze_1_x, "
                        "gaze_1_y, gaze_1_z, pose_Tx, pose_Ty, pose_Tz, pose_Rx, pose_Ry, pose_Rz, x_0, x_1")
#: OpenFace's AU presence names (py-feat's openface_AU_presence: zero-padded, sorted)
OPENFACE_AU_C = ["AU01_c", "AU02_c", "AU04_c", "AU05_c", "AU06_c", "AU07_c", "AU09_c", "AU10_c", "AU12_c",
                 "AU14_c", "AU15_c", "AU17_c", "AU20_c", "AU23_c", "AU25_c", "AU26_c", "AU28_c", "AU45_c"]
#: py-feat feat/utils/__init__.py
FEAT_FACEBOX_COLUMNS = ["FaceRectX", "FaceRectY", "FaceRectWidth", "FaceRectHeight", "FaceScore"]
FEAT_EMOTION_COLUMNS = ["anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"]
FEAT_TIME_COLUMNS = ["frame"]


def track(face_id, n=30, seed=0, x0=10.0, gap=slice(8, 12), nan_gap=True):
    """One face track: box drifting right from x0, no face on ``gap`` (NaN outputs there, as
    ``--no-face empty`` leaves them)."""
    rng = np.random.default_rng(seed)
    found = np.ones(n, bool)
    found[gap] = False
    expr = rng.random((n, 8))
    preds = {"AU": rng.random((n, 12)), "EXPR": expr / expr.sum(1, keepdims=True), "VA": rng.uniform(-1, 1, (n, 2))}
    if nan_gap:
        for p in preds.values():
            p[~found] = np.nan
    box = np.stack([x0 + np.arange(n), np.full(n, 20.0), x0 + 60 + np.arange(n), np.full(n, 95.0)], 1)
    lmk = np.repeat(np.array([[30, 40], [60, 40], [45, 60], [33, 80], [57, 80]], float)[None], n, 0)
    return VideoResult("talk", np.arange(n) / 25.0, found, preds, np.where(found, 0.987, 0.0), None, face_id,
                       box, lmk + box[:, None, :2], "clips/talk.mp4")


def pyfeat_read_openface(path):
    """py-feat's read_openface, its reading lines (feat/utils/io.py)."""
    d = pd.read_csv(path, sep=",")
    d.columns = d.columns.str.strip(" ")
    return d


def test_openface_header_and_separators_are_openface_2s(tmp_path):
    """The header starts with OpenFace 2's lead columns, joined by ", " as RecorderCSV writes them,
    holds the wiki's documented columns in their order, and every line has the header's field
    count under a ", " split; AU presence names follow OpenFace's (zero-padded, sorted)."""
    out = tmp_path / "talk.csv"
    write_csv(out, [track(0)], TASKS, CsvStyle("openface", TH))
    lines = out.read_text().splitlines()
    assert lines[0].startswith(OPENFACE_RECORDER_HEADER + ", AU01_c, AU02_c, AU04_c")
    names = lines[0].split(", ")
    documented = [c for c in OPENFACE_WIKI_HEADER.split(", ") if c in names]
    assert documented == ["frame", "timestamp", "confidence", "success"]
    assert [names.index(c) for c in documented] == sorted(names.index(c) for c in documented)
    au = [c for c in names if c.endswith("_c")]
    assert au == sorted(au) and len(au) == len(AU_NAMES)
    assert set(au) - set(OPENFACE_AU_C) == {"AU24_c"}            # ABAW's AU24: OpenFace has none
    assert not [c for c in names if c.endswith("_r")]            # no intensities: we predict none
    assert all(len(line.split(", ")) == len(names) and line.count(",") == len(names) - 1 for line in lines)
    first = lines[1].split(", ")
    assert first[:5] == ["1", "0", "0.000", "0.99", "1"]           # OpenFace's precisions: 3 and 2 decimals


def test_openface_csv_loads_with_pandas_and_pyfeats_reader(tmp_path):
    """pandas with skipinitialspace and py-feat's read_openface both load every column as numbers
    (no-face rows: success 0 and zeros, as OpenFace writes them); two tracks sit frame by frame."""
    out = tmp_path / "talk.csv"
    a, b = track(0, seed=1), track(1, seed=2, x0=200.0, gap=slice(20, 25))
    write_csv(out, [b, a], TASKS, CsvStyle("openface", TH))
    for d in (pd.read_csv(out, skipinitialspace=True), pyfeat_read_openface(out)):
        assert list(d.columns[:5]) == OPENFACE_RECORDER_HEADER.split(", ")
        assert all(pd.api.types.is_numeric_dtype(d[c]) for c in d.columns), d.dtypes
        assert list(d["frame"][:4]) == [1, 1, 2, 2] and list(d["face_id"][:4]) == [0, 1, 0, 1]
        mine = d[d.face_id == 0].reset_index(drop=True)
        assert list(mine.success) == list(a.found.astype(int))
        off = mine[mine.success == 0]
        assert (off.drop(columns=["frame", "face_id", "timestamp", "success"]).to_numpy() == 0).all()
        on = mine[mine.success == 1]
        np.testing.assert_allclose(on[["valence", "arousal"]], a.preds["VA"][a.found], atol=1e-4)
        np.testing.assert_array_equal(on["AU12_c"], (a.preds["AU"][a.found, AU_NAMES.index("AU12")] >= 0.5) * 1.0)
    back = read_results(out, TASKS, CsvStyle("openface", TH))
    assert [(r.video_id, r.face_id) for r in back] == [("talk", 0), ("talk", 1)]
    np.testing.assert_array_equal(back[1].found, b.found)


def test_pyfeat_columns_are_fex_names(tmp_path):
    """--format pyfeat: py-feat's facebox, AU, emotion and time columns (our 8th class `other`
    after them), NaN on no-face rows as Fex.to_csv leaves it, 0-based frames, the input's path."""
    out = tmp_path / "talk.csv"
    r = track(0, seed=3)
    write_csv(out, [r], TASKS, CsvStyle("pyfeat"))
    d = pd.read_csv(out)                                          # read_feat: pd.read_csv(fexfile)
    cols = list(d.columns)
    assert cols[:5] == FEAT_FACEBOX_COLUMNS
    assert cols[5:17] == ["AU01", "AU02", "AU04", "AU06", "AU07", "AU10", "AU12", "AU15", "AU23", "AU24",
                          "AU25", "AU26"]
    assert cols[17:25] == FEAT_EMOTION_COLUMNS + ["other"]
    assert cols[25:] == ["valence", "arousal", "face_id", "timestamp", "input"] + FEAT_TIME_COLUMNS
    assert not [c for c in cols if c.startswith(("x_", "y_", "Pitch"))]   # 5 points, no pose: not py-feat's
    assert list(d.frame[:3]) == [0, 1, 2] and set(d.input) == {"clips/talk.mp4"}
    assert d.loc[~r.found, FEAT_FACEBOX_COLUMNS + ["valence", "happiness"]].isna().all().all()
    np.testing.assert_allclose(d.loc[r.found, "FaceRectWidth"], 60.0)
    np.testing.assert_allclose(d.loc[r.found, "FaceRectX"], r.box[r.found, 0], atol=0.05)
    np.testing.assert_allclose(d.loc[r.found, "happiness"], r.preds["EXPR"][r.found, 4], atol=1e-6)
    np.testing.assert_allclose(d.loc[r.found, "neutral"], r.preds["EXPR"][r.found, 0], atol=1e-6)
    back = read_results(out, TASKS, CsvStyle("pyfeat"))[0]
    np.testing.assert_array_equal(back.found, r.found)
    np.testing.assert_allclose(back.preds["EXPR"], r.preds["EXPR"], atol=1e-6, equal_nan=True)


def test_native_rows_leave_no_face_frames_empty(tmp_path):
    """Native: a row per frame per track, face_found 0 and every value empty without the face;
    box, score and the 5 points with it; read back track by track."""
    out = tmp_path / "talk.csv"
    a, b = track(0, seed=4), track(1, seed=5, x0=200.0)
    write_csv(out, [a, b], TASKS, CsvStyle())
    with open(out, newline="") as fh:
        head, *rows = list(csv.reader(fh))
    assert len(rows) == 60 and [r[2] for r in rows[:4]] == ["0", "1", "0", "1"]
    off = [r for r in rows if r[4] == "0"]
    assert len(off) == 8 and all(v == "" for r in off for v in r[5:])
    on = rows[0]
    assert on[head.index("face_width")] == "60.0" and on[head.index("face_score")] == "0.9870"
    assert on[head.index("nose_x")] == "55.0"
    back = read_results(out, TASKS)
    assert [r.face_id for r in back] == [0, 1]
    np.testing.assert_allclose(back[1].preds["VA"], b.preds["VA"], atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("args, message", [
    (["--out-dir", "o", "--openface-columns"], "replaced by --format openface"),
    (["--out-dir", "o", "--combined", "--format", "openface"], "one CSV per video"),
    (["--out", "o.csv", "--format", "pyfeat"], "one CSV per video"),
])
def test_format_options_are_checked(args, message, capsys):
    """The removed --openface-columns names its replacement; OpenFace and py-feat files are one
    per video (no video column), so a combined CSV is refused."""
    with pytest.raises(SystemExit) as e:
        parse_args(["v.mp4", "--models", "r", *args])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert parse_args(["v.mp4", "--models", "r", "--out-dir", "o", "--format", "openface"]).format == "openface"
