"""``affwild2.cropped_aligned`` (a full Aff-Wild2 run's path the demo does not take): a real
``snakemake`` run of the faces rule for a left/right pair on an Aff-Wild2-shaped tree; each store
must hold its own folder's JPEGs (the video has no face)."""
from __future__ import annotations
import json

from pathlib import Path

import cv2
import numpy as np
import yaml
from aff_tree import make_tree
from conftest import face_batch_target, face_store_of, run_snakemake
from stage_inputs import astronaut_face

from affect_pipeline.common.stores import FaceStore


def official_tree(root: Path) -> tuple[Path, str, dict]:
    """An Aff-Wild2 tree whose first video is a real 8-frame clip with no face (grey noise) and
    a left/right pair; ``cropped_aligned/{id}/{i:05d}.jpg`` crops per side, frame 5 without one.
    Returns (config file, media stem, id -> {frame: the JPEG's RGB})."""
    from affect_pipeline.data.video_writer import write_video

    data = make_tree(root, 2, rows=8, pair_every=2, test_every=0)
    media = "0-30-640x360"
    rng = np.random.default_rng(0)
    noise = [cv2.GaussianBlur(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), (9, 9), 3) for _ in range(8)]
    write_video(root / "videos" / f"{media}.mp4", noise, 25, "libx264")
    face, crops = cv2.resize(astronaut_face(48), (112, 112)), {}
    for side, channel in (("left", 0), ("right", 2)):
        vid, folder = f"{media}_{side}", root / "cropped_aligned" / f"{media}_{side}"
        folder.mkdir(parents=True)
        crops[vid] = {}
        for i in range(8):
            if i == 4:
                continue
            img = face.copy()
            img[..., channel] = np.clip(img[..., channel].astype(int) + 40 + 20 * i, 0, 255)  # one per frame
            img[: 6 + 4 * i, :8] = 255
            cv2.imwrite(str(folder / f"{i + 1:05d}.jpg"), img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
            crops[vid][i] = cv2.cvtColor(cv2.imread(str(folder / f"{i + 1:05d}.jpg")), cv2.COLOR_BGR2RGB)
    data["affwild2"]["cropped_aligned"] = str(root / "cropped_aligned")
    cfg = {**data, "tasks": ["AU", "EXPR", "VA"], "temporal": {"features": ["mae"]},
           "faces": {"size": 64, "batch_size": 4}}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    return root / "config.yaml", media, crops


def test_cropped_aligned_faces_rule_reads_the_official_jpegs(tmp_path):
    cfg, media, crops = official_tree(tmp_path / "aff")
    work = tmp_path / "work"
    targets = sorted({face_batch_target(v) for v in crops})
    assert len(targets) == 1                  # both sides share their media file's batch
    p = run_snakemake("--cores", "1", "--configfile", str(cfg), "--directory", str(work), *targets, timeout=300)
    batch = targets[0].rsplit("/", 1)[1]
    listed = {j["id"]: j["cropped_dir"] for j in json.loads((work / "results/lists/crop_faces" / f"{batch}.json").read_text())}
    for vid, jpegs in crops.items():
        assert listed[vid] == str(tmp_path / "aff" / "cropped_aligned" / vid)     # the rule passed it
        with FaceStore(face_store_of(work / "results", vid)) as fs:
            assert fs.attrs["backend"] == "cropped_aligned"
            assert fs.attrs["source"] == str(tmp_path / "aff" / "cropped_aligned" / vid)
            assert fs.found.tolist() == [i in jpegs for i in range(8)]   # frame 5 has no crop: no face
            got = fs.read_crops(np.arange(8)).astype(float)
        assert not got[4].any()
        want = {i: cv2.resize(c, (64, 64), interpolation=cv2.INTER_AREA).astype(float) for i, c in jpegs.items()}
        for i, w in want.items():                     # each frame holds its own JPEG, not another's
            err = {j: np.abs(got[i] - v).mean() for j, v in want.items()}
            assert min(err, key=err.get) == i and err[i] < 4, (vid, i, err)
    left, right = (face_store_of(work / "results", f"{media}_{s}") for s in ("left", "right"))
    with FaceStore(left) as a, FaceStore(right) as b:                 # each side read its own folder
        assert a.read_crops([0])[0, 30:, :, 0].mean() > b.read_crops([0])[0, 30:, :, 0].mean()
