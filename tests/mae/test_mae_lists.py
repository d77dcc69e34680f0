"""visual_features and pretrain_mae as rules/mae.smk runs them: ``--videos=@FILE`` (the id list the
rule writes) with crop_faces' batch folders as ``--faces``. An id that looks like an option
(``-8XbT1X7Lq0``) is read as an id; an id the batch's ``failed.json`` names (its media file did
not decode, so crop_faces wrote no store) is left out and logged, while its batch mates are
encoded; a store in the folder but not in the list is not."""
from __future__ import annotations

import json
import logging

import h5py
import torch
from stage_inputs import face_store, finetuned_checkpoint

from affect_pipeline.__main__ import main as cli
from affect_pipeline.mae import pretrain_mae as P

torch.set_num_threads(1)

DASHED = "-8XbT1X7Lq0"       # a YouTube id: argparse would read it as an option


def faces_batch(root):
    """A crop_faces batch folder: stores of DASHED, "mate" and "other"; "gone" named in failed.json."""
    d = root / "faces" / "b0"
    for i, v in enumerate((DASHED, "mate", "other")):
        face_store(d / f"{v}.h5", 12, seed=i)
    (d / "failed.json").write_text(json.dumps({"gone": {"video": "/data/gone.mp4",
                                                        "error": "extract_frames: moov atom not found"}}))
    listed = root / "videos.json"
    listed.write_text(json.dumps([DASHED, "gone", "mate"]))
    return d, listed


def _left_out(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]


def test_visual_features_reads_its_list_file_and_skips_a_failed_decode(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    d, listed = faces_batch(tmp_path)
    ck = finetuned_checkpoint(tmp_path / "ft.pt")
    out = tmp_path / "AU.h5"
    rc = cli(["visual_features", "--model", str(ck), "--faces", str(d), f"--videos=@{listed}", "--out", str(out),
              "--params", json.dumps({"batch_size": 16}), "--threads", "1", "--device", "cpu"])
    assert rc == 0
    with h5py.File(out) as f:
        assert set(f) == {DASHED, "mate"}                     # not "gone" (no store), not "other" (not listed)
        assert f[DASHED]["features"].shape[0] == 12 and f[DASHED]["valid"][:].sum() > 0
    assert _left_out(caplog) == [f"video gone: left out, named in {d / 'failed.json'}: "
                                 "extract_frames: moov atom not found"]


def test_pretrain_mae_reads_its_list_file_and_skips_a_failed_decode(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    d, listed = faces_batch(tmp_path)
    seen = {}
    monkeypatch.setattr(P, "pretrain_mae", lambda faces, *a, **k: seen.setdefault("faces", faces))
    args = ["--faces", str(d), "--out", str(tmp_path / "p.pt"), "--curve", str(tmp_path / "c.csv")]
    assert cli(["pretrain_mae", *args, f"--videos=@{listed}"]) == 0
    assert seen.pop("faces") == [str(d / f"{DASHED}.h5"), str(d / "mate.h5")]
    assert len(_left_out(caplog)) == 1 and "video gone" in _left_out(caplog)[0]
    # no list: every store of the folders (the failed video has none)
    assert cli(["pretrain_mae", *args]) == 0
    assert seen.pop("faces") == [str(d / f"{v}.h5") for v in (DASHED, "mate", "other")]
    # an imported checkpoint (no --faces) reads no list
    assert cli(["pretrain_mae", "--faces", "--out", str(tmp_path / "p.pt"), "--curve", str(tmp_path / "c.csv"),
                f"--videos=@{tmp_path / 'absent.json'}"]) == 0
    assert seen.pop("faces") == []
