"""The submission validator (submit/submission.py) holds a submission to the organizers' per-frame
test list: other frame names, missing frames, extra rows and videos out of the official order are
each reported."""
import numpy as np
from frame_lists import DECODED, A, C, probes, run, tree

from affect_pipeline.submit import submission as sub


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
