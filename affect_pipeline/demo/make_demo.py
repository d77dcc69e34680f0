"""``make_demo``: write the embedded demo dataset, a real Aff-Wild2 tree + Hume-Reaction tree.

``python -m affect_pipeline make_demo --out resources/demo --params '<config demo section as JSON>'
[--threads N]``. The tree is read by the same scanner (``data.layout.scan_dataset``) as real data,
through the data keys of ``demo_config.yaml``; the random seed is ``demo.seed``::

    affwild2/videos/{media}                      .mp4 (H.264 + AAC); demo_001.avi (MPEG-4 + PCM);
                                                 demo_002 without audio; demo_pair.mp4 twice as wide,
                                                 face of demo_pair_left on the left half
    affwild2/annotations/{AU_Detection_Challenge,EXPR_Classification_Challenge,
                          VA_Estimation_Challenge}/{Train_Set,Validation_Set}/{video_id}.txt
    affwild2/test_lists/*_test_set_release.txt   test video ids, one a line
    hume/data_info.csv, hume/videos/{File_ID}.mp4   (test rows without intensities)
    test_labels/{AU,EXPR,VA}/{video_id}.txt, test_labels/ERI.csv   held-back truth (scoring only)
    manifest.json                                written last: the tree is complete

Annotation files carry a few invalid rows like the real data (AU all -1, EXPR -1, VA -5) and two
deliberate length mismatches (demo_004 EXPR one row long, demo_005 VA three rows short); the
test_labels files never do. Same params give a byte-identical tree, the encoded videos included
(``demo.media.X264_REPRODUCIBLE``), serial or in a pool; the manifest's ``rendered`` holds the
digests of the rendered frames and audio.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from affect_pipeline.common.config import need
from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.runtime import log, progress, stage_parser, write_json, write_text
from affect_pipeline.common.tasks import ERI_NAMES, EXPR_NAMES, FRAME_TASKS
from affect_pipeline.demo.labels import (
    HUME_DOMINANT,
    Plan,
    annotation_text,
    class_stream,
    eri_intensities,
    hume_stream,
    keyed_rng,
    label_stats,
    plan_track,
)
from affect_pipeline.demo.media import SAMPLE_RATE, MediaJob, render_media

GENERATOR_VERSION = 4
CHALLENGE_DIRS = {"AU": "AU_Detection_Challenge", "EXPR": "EXPR_Classification_Challenge",
                  "VA": "VA_Estimation_Challenge"}
SPLIT_DIRS = {"train": "Train_Set", "validation": "Validation_Set"}
TEST_LISTS = {"AU": "Action_Unit_Detection_Challenge_test_set_release.txt",
              "EXPR": "Expression_Recognition_Challenge_test_set_release.txt",
              "VA": "Valence_Arousal_Estimation_Challenge_test_set_release.txt"}
HUME_SPLITS = {"train": "Train", "validation": "Val", "test": "Test"}     # data_info.csv spelling
SPLITS = ("train", "validation", "test")
FPS_OVERRIDE = {"demo_002": 30, "demo_006": 30}        # a second frame rate to exercise
LENGTH_MISMATCH = {("demo_004", "EXPR"): +1, ("demo_005", "VA"): -3}   # like real Aff-Wild2


# ---------------------------------------------------------------- what to make
@dataclass(frozen=True)
class DemoSpec:
    """The config's ``demo`` section, checked: what the generator makes (its root is ``--out``)."""
    seed: int
    size: int                      # video width = height (px); the pair is twice as wide
    fps: int
    frames: tuple[int, int]        # frames per Aff-Wild2 video (min, max)
    n_videos: dict                 # split -> count (+ one _left/_right pair in train)
    hume: dict                     # split -> count, and frames per Hume video

    @classmethod
    def from_params(cls, params: dict) -> "DemoSpec":
        where = "--params (config demo)"
        unknown = sorted(set(params) - {"root", "seed", "size", "fps", "frames", "n_videos", "hume"})
        if unknown:
            raise PipelineError(f"{where}: unknown key(s) {', '.join(unknown)}")
        frames = need(params, "frames", where)
        if not (isinstance(frames, list) and len(frames) == 2 and all(isinstance(x, int) for x in frames)
                and 8 <= frames[0] <= frames[1]):
            raise PipelineError(f"{where}: demo.frames: need [min, max] integers with 8 <= min <= max, got {frames}")
        spec = cls(seed=int(need(params, "seed", where)), size=int(need(params, "size", where)),
                   fps=int(need(params, "fps", where)), frames=tuple(frames),
                   n_videos={s: int(need(params, f"n_videos.{s}", where)) for s in SPLITS},
                   hume={k: int(need(params, f"hume.{k}", where)) for k in (*SPLITS, "frames")})
        if spec.size < 160 or spec.size % 2:
            raise PipelineError(f"{where}: demo.size: need an even size >= 160 px (detectable faces, "
                                f"yuv420p), got {spec.size}")
        if spec.hume["frames"] < 8 or spec.fps < 5:
            raise PipelineError(f"{where}: demo: hume.frames >= 8 and fps >= 5 needed, got "
                                f"{spec.hume['frames']}, {spec.fps}")
        return spec


@dataclass
class DemoVideo:
    """One Aff-Wild2 id of the tree: its media file, split, labelled tasks, side of a pair."""
    video_id: str
    media: str
    split: str
    tasks: tuple = FRAME_TASKS
    side: str = ""


@dataclass
class TreePlan:
    """Which ids the tree holds (a pure function of the spec)."""
    videos: list[DemoVideo] = field(default_factory=list)
    hume: list[tuple[str, str]] = field(default_factory=list)    # (File_ID, split)

    @property
    def media_files(self) -> list[str]:
        return sorted({v.media for v in self.videos})


def plan_tree(spec: DemoSpec) -> TreePlan:
    """Ids per split: demo_001 is an AVI, demo_003 has no VA labels, one _left/_right pair in train."""
    tree, i = TreePlan(), 0
    for split in SPLITS:
        for _ in range(spec.n_videos[split]):
            ext = ".avi" if i == 1 else ".mp4"
            tasks = tuple(t for t in FRAME_TASKS if t != "VA") if i == 3 else FRAME_TASKS
            tree.videos.append(DemoVideo(f"demo_{i:03d}", f"demo_{i:03d}{ext}", split, tasks))
            i += 1
    for side in ("left", "right"):
        tree.videos.append(DemoVideo(f"demo_pair_{side}", "demo_pair.mp4", "train", side=side))
    k = 0
    for split in SPLITS:
        for _ in range(spec.hume[split]):
            tree.hume.append((f"{k:05d}", split))
            k += 1
    return tree


@dataclass
class DemoPlan:
    """The tree, every face track's per-frame truth, and the media files to render."""
    tree: TreePlan
    plans: dict[str, Plan]         # Aff-Wild2 video id -> plan
    hume_plans: dict[str, Plan]    # File_ID -> plan
    jobs: list[MediaJob]


def build_plan(spec: DemoSpec, out: Path) -> DemoPlan:
    """Plan every track (sequentially: class cycles run per split) and list the media to render."""
    seed, fps, size = spec.seed, spec.fps, spec.size
    tree = plan_tree(spec)
    rng_len = keyed_rng(seed, "lengths")
    streams = {s: class_stream(keyed_rng(seed, "classes", s)) for s in SPLITS}
    lengths, plans = {}, {}
    for v in tree.videos:
        stem = Path(v.media).stem
        if stem not in lengths:
            lengths[stem] = int(rng_len.integers(spec.frames[0], spec.frames[1] + 1))
        plans[v.video_id] = plan_track(v.video_id, lengths[stem], FPS_OVERRIDE.get(stem, fps), seed,
                                       streams[v.split].__next__)
    jobs = []
    for media in tree.media_files:
        vids = sorted((v for v in tree.videos if v.media == media), key=lambda v: v.side != "left")
        stem = Path(media).stem
        jobs.append(MediaJob(out / "affwild2" / "videos" / media, [plans[v.video_id] for v in vids],
                             FPS_OVERRIDE.get(stem, fps), size, stem != "demo_002",
                             media.endswith(".avi"), seed))
    hume_plans = {}
    for fid, _ in tree.hume:
        r = keyed_rng(seed, "hume", fid)
        dom = EXPR_NAMES.index(HUME_DOMINANT[int(r.integers(len(HUME_DOMINANT)))])
        calm = r.uniform(0.0, 0.9) if dom == EXPR_NAMES.index("Happiness") else 0.0
        hume_plans[fid] = plan_track(f"hume_{fid}", spec.hume["frames"], fps, seed,
                                     hume_stream(r, dom).__next__, calm=calm)
        jobs.append(MediaJob(out / "hume" / "videos" / f"{fid}.mp4", [hume_plans[fid]], fps, size,
                             True, False, seed))
    return DemoPlan(tree, plans, hume_plans, jobs)


# ---------------------------------------------------------------- label files
def write_affwild2_labels(seed: int, out: Path, plan: DemoPlan) -> dict:
    """Annotation files (train/validation), name lists and held-back truth (test); label facts."""
    invalid, mismatches = {}, {}
    for v in plan.tree.videos:
        track = plan.plans[v.video_id]
        for task in v.tasks:
            if v.split == "test":
                write_text(out / "test_labels" / task / f"{v.video_id}.txt", annotation_text(task, track))
                continue
            delta = LENGTH_MISMATCH.get((v.video_id, task), 0)
            if delta:
                mismatches[f"{v.video_id}/{task}"] = delta
            text = annotation_text(task, track, keyed_rng(seed, "invalid", v.video_id, task), delta)
            invalid[f"{v.video_id}/{task}"] = sum(
                line.startswith("-1") or line.startswith("-5.000,-5.000") for line in text.splitlines()[1:])
            write_text(out / "affwild2" / "annotations" / CHALLENGE_DIRS[task] / SPLIT_DIRS[v.split]
                       / f"{v.video_id}.txt", text)
    for task, name in TEST_LISTS.items():
        ids = [v.video_id for v in plan.tree.videos if v.split == "test" and task in v.tasks]
        write_text(out / "affwild2" / "test_lists" / name, "".join(f"{i}\n" for i in ids))
    return {"invalid_rows": invalid, "length_mismatch": mismatches}


def write_hume_labels(seed: int, out: Path, plan: DemoPlan) -> dict[str, np.ndarray]:
    """data_info.csv (test rows without intensities) and the held-back test_labels/ERI.csv."""
    rows, test_rows, eri = [], [], {}
    for fid, split in plan.tree.hume:
        eri[fid] = eri_intensities(plan.hume_plans[fid], keyed_rng(seed, "eri", fid))
        cells = ",".join(f"{x:.4f}" for x in eri[fid])
        blank = ",".join([""] * len(ERI_NAMES))
        rows.append(f"{fid},{HUME_SPLITS[split]},{blank if split == 'test' else cells}")
        if split == "test":
            test_rows.append(f"{fid},{cells}")
    header = ",".join(ERI_NAMES)
    write_text(out / "hume" / "data_info.csv", f"File_ID,Split,{header}\n" + "".join(r + "\n" for r in rows))
    write_text(out / "test_labels" / "ERI.csv", f"File_ID,{header}\n" + "".join(r + "\n" for r in test_rows))
    return eri


# ---------------------------------------------------------------- the stage
def render_all(plan: DemoPlan, out: Path, threads: int) -> dict[str, dict]:
    """Render every media file (a fork pool when threads > 1: same frames); path under out -> facts."""
    media = {}
    bar = progress(total=sum(j.plans[0].n_frames for j in plan.jobs), desc="make_demo", unit="frame")
    if threads > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(min(threads, len(plan.jobs))) as pool:
            for j, info in zip(plan.jobs, pool.imap(render_media, plan.jobs)):
                media[str(j.path.relative_to(out))] = info
                bar.update(info["n_frames"])
    else:
        for j in plan.jobs:
            media[str(j.path.relative_to(out))] = render_media(j)
            bar.update(j.plans[0].n_frames)
    bar.close()
    return media


def make_demo(out: str | Path, params: dict, threads: int = 1) -> dict:
    """Write the whole demo tree under ``out``; returns the manifest (``out/manifest.json``, last)."""
    out = Path(out)
    spec = DemoSpec.from_params(params)
    plan = build_plan(spec, out)
    facts = write_affwild2_labels(spec.seed, out, plan)
    eri = write_hume_labels(spec.seed, out, plan)
    media = render_all(plan, out, threads)
    probe = ("n_frames", "fps", "width", "height", "has_audio")
    vids = {v.video_id: {"media": v.media, "split": v.split, "tasks": list(v.tasks), "side": v.side,
                         **{k: media[f"affwild2/videos/{v.media}"][k] for k in probe},
                         "segments": [[s, e, EXPR_NAMES[c]] for s, e, c in plan.plans[v.video_id].segments]}
            for v in plan.tree.videos}
    hume = {fid: {"split": split, **{k: media[f"hume/videos/{fid}.mp4"][k] for k in ("n_frames", "fps", "has_audio")},
                  "eri": dict(zip(ERI_NAMES, np.round(eri[fid], 4).tolist()))}
            for fid, split in plan.tree.hume}
    by_split = {s: [plan.plans[v.video_id] for v in plan.tree.videos if v.split == s] for s in SPLITS}
    eri_all = np.array([eri[f] for f, _ in plan.tree.hume]).reshape(-1, len(ERI_NAMES))
    rendered = {path: {k: info[k] for k in ("frames_sha256", "audio_sha256")} for path, info in sorted(media.items())}
    manifest = {"generator": f"affect_pipeline.demo v{GENERATOR_VERSION}", "seed": spec.seed,
                "params": asdict(spec), "source_image": "skimage.data.astronaut()",
                "audio_sample_rate": SAMPLE_RATE, "videos": vids, "hume": hume,
                "test_lists": {t: f"affwild2/test_lists/{n}" for t, n in TEST_LISTS.items()},
                "annotation_length_mismatch": facts["length_mismatch"],
                "invalid_rows": facts["invalid_rows"], "label_stats": label_stats(by_split, eri_all),
                "rendered": rendered}
    write_json(out / "manifest.json", manifest)          # last: the tree is complete
    return manifest


def main(argv: list[str]) -> int:
    ap = stage_parser("make_demo", __doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="demo root, e.g. resources/demo")
    args = ap.parse_args(argv)
    import cv2

    cv2.setNumThreads(1)
    m = make_demo(args.out, args.params, threads=args.threads)
    log.info("demo: %d face tracks, %d Hume videos under %s; train EXPR counts %s",
             len(m["videos"]), len(m["hume"]), args.out, m["label_stats"].get("train", {}).get("EXPR_counts"))
    return 0
