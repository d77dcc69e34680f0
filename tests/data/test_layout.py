"""The dataset layout (data/layout.py): the organizers' per-frame test lists set the test videos and
their order; a malformed list, or lists that disagree, name the file and line; an id the official
formats cannot carry is refused at parse time."""
import pytest
from aff_tree import FRAME_LISTS, TEST_LISTS, write_frame_list
from frame_lists import LISTED, A, B, C, D, tree

from affect_pipeline.data.annotations import LayoutError, _frame_list
from affect_pipeline.data.layout import scan_dataset


def test_frame_list_sets_the_test_videos_and_their_order(tmp_path):
    data = tree(tmp_path, tasks=("AU", "VA"))
    lay = scan_dataset(data)
    assert lay.test_order["VA"] == [B, A, C, D]                       # the frame list's order
    assert lay.test_frames["VA"].runs == {B: [[1, 6]], A: [[1, 5]], C: [[1, 2], [5, 6]], D: [[1, 5]]}
    assert lay.test_frames["VA"].path.endswith(FRAME_LISTS["VA"])
    rows = list(enumerate(open(lay.test_frames["VA"].path).read().splitlines(), 1))[1:]
    assert _frame_list("x", rows) == lay.test_frames["VA"].runs      # the line-by-line reference parser
    assert "AU" not in lay.test_frames and lay.test_order["AU"] == [A, B, C, D]   # AU: a name list only
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
