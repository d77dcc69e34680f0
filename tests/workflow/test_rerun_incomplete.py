"""The workflow killed and rerun: Snakemake SIGKILLed (its whole process group) with a crop_faces
batch job running that has finished one of its videos, then ``--unlock`` + ``--rerun-incomplete``:
the interrupted job is redone keeping the stores it had finished, nothing completed is recomputed
(mtimes kept). That run is the odd-id run of tests/odd_run.py (memoised: one run serves this file
and tests/workflow/test_odd_ids.py).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import face_store_of
from odd_run import ODD_IDS, odd_batch, odd_workflow


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory):
    return odd_workflow(tmp_path_factory)


@pytest.mark.slow
def test_workflow_killed_then_rerun_incomplete(odd_run):
    from affect_pipeline.common.stores import FaceStore

    work, before = odd_run["work"], odd_run["before"]
    killed, cached = odd_run["killed_in"], odd_run["cached"]
    # right after the kill: the interrupted batch job left no batch directory under its name...
    assert not killed & set(odd_run["leftovers"]), odd_run["leftovers"]
    assert all(n.startswith(".") or f"results/faces/{n}/" in " ".join(before) for n in odd_run["leftovers"])
    # ... and the store it had finished is in the cache, complete
    stores_before = [k for k in before if k.startswith("results/faces/")]
    assert any(k.startswith("results/faces/.cache/") for k in stores_before), stores_before
    for k in stores_before:                               # what existed was complete
        with FaceStore(work / k) as fs:
            assert fs.n_frames > 0
    # after --rerun-incomplete: every target exists, nothing that existed was redone
    log = odd_run["second"].stdout + odd_run["second"].stderr
    # a decode batch killed before its folders were complete is redone, and so are the face batches
    # made from its probes: Snakemake's rule for incomplete jobs, not a lost result
    redone_batches = set(re.findall(r"output: results/frames/([^,\s]+)", log))
    redecoded = {re.sub(r"_(left|right)$", "", v) for v in ODD_IDS if odd_batch(v) in redone_batches}
    after = {k: (work / k).stat().st_mtime_ns for k in before if (work / k).exists()}
    redone = {k for k in before if after.get(k) != before[k]}
    # ... and a job killed just after publishing its output (atomic, complete) but before Snakemake
    # recorded it: at most one per running job (2 cores), never a store that was recorded done
    unexplained = {k for k in redone if re.sub(r"_(left|right)$", "", Path(k).stem.split(".")[0]) not in redecoded}
    assert len(unexplained) <= 2, (redone, redecoded)
    for b in killed:
        assert (work / "results/faces" / b).is_dir()
        assert re.search(rf"output: results/faces/{b}[,\n]", log)        # the killed batch was redone...
        batch_log = (work / "results/logs/crop_faces" / f"{b}.log").read_text(encoding="utf-8")
        for v in (v for v in cached if odd_batch(v) == b):   # ... keeping the stores it had finished
            assert f"{v}: store kept from an earlier run" in batch_log, batch_log[-2000:]
    for v in cached:
        kept = [k for k in before if k.startswith("results/faces/.cache/") and Path(k).name.startswith(v + ".")]
        assert kept and all(k not in redone for k in kept), (v, kept, redone)
        assert face_store_of(work / "results", v).samefile(work / kept[0])   # hard-linked, not copied
    assert "Nothing to be done" in odd_run["noop"].stdout + odd_run["noop"].stderr
