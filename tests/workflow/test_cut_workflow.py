"""The cut-down demo (tests/conftest.py CUT_DEMO: VA, 3 folds, per-fold encoders) run to
`submission` once: the fold count reaches every product, each fold's encoder never saw its
validation videos' labels, and the wild encodings (test videos of that run) reach the submission."""
import json

import h5py
import numpy as np
import pytest
from conftest import decoded_file, face_store_of

pytestmark = pytest.mark.slow


def test_three_folds_reach_submission_and_report(trained_run):
    run = trained_run / "run" / "results"
    summary = json.loads((run / "metrics/summary.json").read_text())
    assert summary["folds"] == ["official", "fold1", "fold2", "fold3"]
    assert summary["ensemble_folds"] == ["fold1", "fold2", "fold3"] and not summary["leaky_folds"]
    header = (run / "metrics/ablation.tsv").read_text().splitlines()[0].split("\t")
    assert header[-1] == "mean(fold1-3)" and "fold4" not in header
    assert (run / "submission/VA/predictions.txt").exists()
    assert (run / "report").is_dir() and any((run / "report").iterdir())


def test_each_fold_encoder_never_saw_its_validation_labels(trained_run):
    """Per-fold fine-tuning: fold k's encoder trained on fold k's train videos only, and the
    features of fold k's temporal models come from that encoder."""
    run = trained_run / "run" / "results"
    folds = json.loads((run / "folds/VA.json").read_text())["folds"]
    assert set(folds) == {"official", "fold1", "fold2", "fold3"}
    for fold, split in folds.items():
        m = json.loads((run / f"mae/VA/{fold}/finetune_metrics.json").read_text())
        assert m["fold"] == fold and m["validation_videos"] == sorted(split["validation"])
        assert set(m["train_videos"]).isdisjoint(split["validation"]), fold
        assert set(m["train_videos"]) <= set(split["train"]), fold
        with h5py.File(run / f"features/mae/VA/{fold}.h5", "r") as f:
            assert f.attrs["fold"] == fold and f.attrs["task"] == "VA"


def test_wild_encodings_reach_submission(trained_run):
    """Every wild variant (tests/wild_media.py) is a VA test video of the run: one submission row
    per decoded frame, faces found on nearly every frame (upright after rotation), a 16 kHz wav."""
    import soundfile as sf

    from affect_pipeline.submit.submission import read_submission

    run = trained_run / "run" / "results"
    ids = (trained_run / "wild_ids.txt").read_text().split()
    assert len(ids) >= 8, ids
    sub = read_submission("VA", run / "submission/VA/predictions.txt")
    for vid in ids:
        frames = json.loads(decoded_file(run, vid).read_text())
        assert len(sub[vid]) == frames["n_frames"], vid
        assert np.isfinite(sub[vid]).all() and (np.abs(sub[vid]) <= 1).all(), vid
        with h5py.File(face_store_of(run, vid), "r") as f:
            found = np.asarray(f["found"][:], bool)
        assert len(found) == frames["n_frames"] and found.mean() >= 0.8, (vid, found.mean())
        info = sf.info(str(decoded_file(run, vid, ".wav")))
        assert info.samplerate == 16000 and info.channels == 1, vid
        assert abs(info.duration - frames["n_frames"] / frames["fps"]) < 0.25, (vid, info.duration)
    assert "wild_overdeclared" in ids
    over = json.loads(decoded_file(run, "wild_overdeclared").read_text())
    assert over["n_frames_declared"] > over["n_frames"]   # the edit-list file that used to stop the run
