"""The workflow on ids that hold spaces, quotes, non-ASCII and shell metacharacters (the odd-id run
of tests/odd_run.py): they run through frames, audio, index, labels and face stores, and nothing
is injected into a shell. The same run, killed midway and resumed, is what
tests/workflow/test_rerun_incomplete.py asserts on (memoised: one run serves both files).
"""
from __future__ import annotations

from pathlib import Path

import h5py
import pytest
from conftest import REPO, decoded_file, face_store_of
from odd_run import ODD_IDS, odd_workflow


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
        x, sr = sf.read(decoded_file(work / "results", v, ".wav"), dtype="int16")
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
