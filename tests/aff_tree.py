"""Build Aff-Wild2-shaped trees (placeholder videos + real-format annotations) for tests."""
import json
from pathlib import Path

from affect_pipeline.common.tasks import AU_NAMES, EXPR_NAMES

HEADERS = {"AU": ",".join(AU_NAMES), "EXPR": ",".join(EXPR_NAMES), "VA": "valence,arousal"}
DIRS = {"AU": "AU_Detection_Challenge", "EXPR": "EXPR_Classification_Challenge", "VA": "VA_Estimation_Challenge"}
TEST_LISTS = {"AU": "Action_Unit_Detection_Challenge_test_set_release.txt",
              "EXPR": "Expression_Recognition_Challenge_test_set_release.txt",
              "VA": "Valence_Arousal_Estimation_Challenge_test_set_release.txt"}
#: the organizers' per-frame test lists (ABAW5 names; ABAW6 writes "CVPR_6th_ABAW_Expr_...")
FRAME_LISTS = {"AU": "CVPR_5th_ABAW_AU_test_set_example.txt", "EXPR": "CVPR_5th_ABAW_EXPR_test_set_example.txt",
               "VA": "CVPR_5th_ABAW_VA_test_set_example.txt"}


def row(task, i):
    return {"AU": ",".join("1" if (i + j) % 3 == 0 else "0" for j in range(12)),
            "EXPR": str(i % 8), "VA": f"{(i % 7) / 10:.3f},{-(i % 5) / 10:.3f}"}[task]


def make_tree(root: Path, n_videos: int, rows: int = 3, pair_every: int = 0, test_every: int = 5,
              videos_dir: str = "videos") -> dict:
    """n_videos placeholder media files; every `test_every`-th is a test video; returns config data keys.
    ``videos_dir``: the videos folder's name under ``root`` (any characters a file system allows)."""
    vids, ann, tl = root / videos_dir, root / "annotations", root / "test_lists"
    for d in (vids, tl):
        d.mkdir(parents=True, exist_ok=True)
    tests = {t: [] for t in DIRS}
    for i in range(n_videos):
        media = f"{i}-30-640x360"
        (vids / f"{media}.mp4").write_bytes(b"")
        ids = [f"{media}_left", f"{media}_right"] if pair_every and i % pair_every == 0 else [media]
        for t in DIRS:
            for vid in ids:
                if test_every and i % test_every == 0:
                    tests[t].append(vid)
                    continue
                split = "Validation_Set" if i % 4 == 1 else "Train_Set"
                f = ann / DIRS[t] / split / f"{vid}.txt"
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_text(HEADERS[t] + "\n" + "".join(row(t, k) + "\n" for k in range(rows)))
    for t, ids in tests.items():
        (tl / TEST_LISTS[t]).write_text("".join(v + "\n" for v in ids))
    return {"affwild2": {"videos": str(vids), "annotations": str(ann), "test_lists": str(tl),
                         "cropped_aligned": None}, "hume": {"root": None}}


def write_frame_list(path: Path, task: str, frames: dict, values: str = "") -> Path:
    """An organizers' frame list: the task's submission header, then ``video/00001.jpg`` per test
    frame; ``frames``: video -> frame count or list of frame numbers, in list order."""
    lines = ["image_location," + HEADERS[task]]
    for vid, f in frames.items():
        lines += [f"{vid}/{k:05d}.jpg{values}" for k in (range(1, f + 1) if isinstance(f, int) else f)]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_probe(frames_dir: Path, media: str, n: int) -> Path:
    """The frames JSON extract_frames writes (probe fields only)."""
    frames_dir.mkdir(parents=True, exist_ok=True)
    p = frames_dir / f"{media}.json"
    p.write_text(json.dumps({"n_frames": n, "fps": 30.0, "width": 640, "height": 360, "duration": n / 30,
                             "has_audio": True, "timestamps": []}))
    return p


#: Hume-Reaction's 7 emotion columns, in data_info.csv's order (ABAW5)
HUME_COLUMNS = ("Adoration", "Amusement", "Anxiety", "Disgust", "Empathic-Pain", "Fear", "Surprise")
#: the ABAW5 Hume-Reaction split sizes (25,067 clips)
HUME_SIZES = {"Train": 15806, "Val": 4657, "Test": 4604}


def make_hume_tree(root: Path, sizes: dict | None = None, first_id: int = 1) -> dict:
    """A Hume-Reaction-shaped tree: ``data_info.csv`` in the format of the ABAW5 release (File_ID
    in brackets, ``Split`` Train / Val / Test, the 7 intensities, empty for test rows) and one
    placeholder ``{File_ID}.mp4`` per row under ``{split}/`` folders. ``sizes``: rows per split
    (default :data:`HUME_SIZES`, the real counts); the splits interleave in the CSV as ids rise.
    Returns the config data key ``hume``."""
    sizes = dict(HUME_SIZES if sizes is None else sizes)
    left, total = dict(sizes), sum(sizes.values())
    for split in sizes:
        (root / split.lower()).mkdir(parents=True, exist_ok=True)
    lines = ["File_ID,Split," + ",".join(HUME_COLUMNS)]
    for i in range(total):
        # the split with the most rows still to place relative to its size: an even interleave
        split = max(left, key=lambda s: (left[s] / max(sizes[s], 1), s))
        left[split] -= 1
        fid = f"{first_id + i:05d}"
        vals = ",".join("" if split == "Test" else f"{((i + k) % 10) / 10:.1f}" for k in range(len(HUME_COLUMNS)))
        lines.append(f"[{fid}],{split},{vals}")
        (root / split.lower() / f"{fid}.mp4").write_bytes(b"")
    (root / "data_info.csv").write_text("\n".join(lines) + "\n")
    return {"hume": {"root": str(root)}}


def placeholder_audio_weights(folder: Path) -> dict:
    """``audio`` config keys naming empty weight files / folders: enough for a dry run (a real run
    must name its own weights; nothing is downloaded)."""
    audio = {}
    for m in ("hubert", "wav2vec2"):
        (folder / m).mkdir(parents=True, exist_ok=True)
        audio[m] = {"weights": str(folder / m)}
    (folder / "vggish.pth").write_bytes(b"")
    audio["vggish"] = {"weights": str(folder / "vggish.pth")}
    return audio
