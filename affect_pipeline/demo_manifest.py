"""Which files the embedded demo dataset holds, as a pure function of its config.

The Snakefile needs the demo's video ids at parse time, before the ``make_demo`` rule has
generated anything; :func:`demo_manifest` gives them without touching the disk.
"""
from __future__ import annotations

from dataclasses import dataclass, field

AFFWILD2_TEST_LISTS = {
    "AU": "Action_Unit_Detection_Challenge_test_set_release.txt",
    "EXPR": "Expression_Recognition_Challenge_test_set_release.txt",
    "VA": "Valence_Arousal_Estimation_Challenge_test_set_release.txt",
}


@dataclass
class DemoVideo:
    video_id: str          # annotation / submission id (X_left / X_right for the pair)
    media: str             # file name under affwild2/videos
    split: str             # train | validation | test
    tasks: tuple = ("AU", "EXPR", "VA")
    side: str = ""         # "left" / "right" for the pair


@dataclass
class DemoManifest:
    videos: list[DemoVideo] = field(default_factory=list)
    hume: list[tuple[str, str]] = field(default_factory=list)   # (File_ID, Split)

    @property
    def media_files(self) -> list[str]:
        return sorted({v.media for v in self.videos})


def demo_manifest(demo: dict) -> DemoManifest:
    n = demo["n_videos"]
    m = DemoManifest()
    i = 0
    for split in ("train", "validation", "test"):
        for _ in range(n[split]):
            ext = ".avi" if i == 1 else ".mp4"      # one AVI to exercise a second container
            tasks = ("AU", "EXPR") if i == 3 else ("AU", "EXPR", "VA")  # one video without VA labels
            m.videos.append(DemoVideo(f"demo_{i:03d}", f"demo_{i:03d}{ext}", split, tasks))
            i += 1
    for side in ("left", "right"):
        m.videos.append(DemoVideo(f"demo_pair_{side}", "demo_pair.mp4", "train", side=side))
    h = demo["hume"]
    k = 0
    for split, name in (("train", "Train"), ("validation", "Val"), ("test", "Test")):
        for _ in range(h[split]):
            m.hume.append((f"{k:05d}", name))
            k += 1
    return m
