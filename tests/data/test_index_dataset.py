"""index_dataset against the organizers' per-frame test lists: where the listed and the decoded
frames differ it reports them (index_report.json) and warns, naming video, list and counts."""
import logging

from aff_tree import FRAME_LISTS
from frame_lists import A, B, C, probes, tree

from affect_pipeline.data.index_dataset import build_index
from affect_pipeline.data.layout import scan_dataset


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
