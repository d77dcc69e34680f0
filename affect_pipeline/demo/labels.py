"""What the demo's faces show, frame by frame: the label plans and the label files made from them.

Expressions are 1–2.6 s segments with a prototype AU combination (each class its own) whose
intensity ramps in and out over 0.2 s; the EXPR label is the segment's class (ramps included).
Classes come from a shuffled per-split cycle, so every class occurs in train, validation and test.
Valence/arousal follow a per-class prototype plus smooth noise; arousal scales the AU amplitudes
(and drives the voice).
Spontaneous AU events keep the AUs from being a function of the expression.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from affect_pipeline.common.tasks import AU_NAMES, ERI_NAMES, EXPR_NAMES, VA_NAMES

HEADERS = {"AU": ",".join(AU_NAMES), "EXPR": ",".join(EXPR_NAMES), "VA": ",".join(VA_NAMES)}


# expression prototypes: AU -> weight (intensity at full expression)
EXPR_PROTOTYPES = {
    "Neutral": {},
    "Anger": {"AU4": 1.0, "AU7": 0.9, "AU23": 0.9, "AU24": 0.8},
    "Disgust": {"AU10": 1.0, "AU15": 0.8, "AU4": 0.55},
    "Fear": {"AU1": 0.9, "AU2": 0.8, "AU4": 0.8, "AU25": 0.9},
    "Happiness": {"AU6": 0.9, "AU12": 1.0, "AU25": 0.8},
    "Sadness": {"AU1": 0.9, "AU4": 0.8, "AU15": 0.9},
    "Surprise": {"AU1": 1.0, "AU2": 1.0, "AU25": 0.9, "AU26": 0.9},
    # a combination no other class shows, of AUs a 64-px crop shows well (tightened lids, lip
    # corners down, jaw dropped with the lips parted, as a dropped jaw parts them): a random mix
    # per segment would often look like one of the six, and AUs that barely change this smiling
    # photograph (outer brows, a pressed smile) would leave Other looking Neutral or Happy
    "Other": {"AU7": 0.9, "AU15": 1.0, "AU25": 0.8, "AU26": 0.9},
}
# (valence, arousal) prototypes; Other draws its own per segment
VA_PROTOTYPES = {"Neutral": (0.0, -0.2), "Anger": (-0.6, 0.7), "Disgust": (-0.6, 0.25),
                 "Fear": (-0.55, 0.75), "Happiness": (0.7, 0.4), "Sadness": (-0.6, -0.5),
                 "Surprise": (0.2, 0.8), "Other": None}
# spontaneous AU events independent of the expression (so AUs are not a function of EXPR)
AU_EVENTS = [("AU1", "AU2"), ("AU4",), ("AU7",), ("AU10",), ("AU24",), ("AU25",), ("AU25", "AU26"),
             ("AU12",), ("AU15",), ("AU6", "AU7"), ("AU23",)]


# ---------------------------------------------------------------- label plans
@dataclass
class Plan:
    """Everything known about one face track: per-frame truth and its rendering style."""
    video_id: str
    n_frames: int
    fps: int
    au: np.ndarray            # (n, 12) continuous intensities
    expr: np.ndarray          # (n,) class index
    va: np.ndarray            # (n, 2)
    strength: np.ndarray      # (n,) expression envelope x peak (0 in Neutral)
    segments: list = field(default_factory=list)


def keyed_rng(seed: int, *keys) -> np.random.Generator:
    """An independent stream per (seed, key...) so plans do not depend on generation order."""
    return np.random.default_rng([seed] + [zlib.crc32(str(k).encode()) for k in keys])


def _smooth_noise(rng, n: int, fps: float, sigma: float, period_s: float = 1.5) -> np.ndarray:
    """Gaussian-smoothed white noise with std ~sigma and a correlation time of ~period_s."""
    k = max(1, int(period_s * fps / 2))
    x = rng.standard_normal(n + 4 * k)
    w = np.exp(-0.5 * (np.arange(-2 * k, 2 * k + 1) / k) ** 2)
    y = np.convolve(x, w / np.sqrt((w ** 2).sum()), mode="same")[2 * k:2 * k + n]
    return sigma * y


def _envelope(n: int, ramp: int) -> np.ndarray:
    """0 → 1 → 0 with smoothstep ramps of ``ramp`` frames."""
    t = np.ones(n)
    if ramp > 0:
        r = np.clip((np.arange(n) + 0.5) / ramp, 0, 1)
        r = r * r * (3 - 2 * r)
        t = np.minimum(r, r[::-1])
    return t


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur along time (axis 0) with edge padding."""
    k = max(1, int(3 * sigma))
    w = np.exp(-0.5 * (np.arange(-k, k + 1) / max(sigma, 1e-6)) ** 2)
    xp = np.pad(x, [(k, k)] + [(0, 0)] * (x.ndim - 1), mode="edge")
    return np.stack([np.convolve(xp[:, j], w / w.sum(), mode="valid") for j in range(x.shape[1])], 1)


def class_stream(rng):
    """Endless shuffled cycles over the 8 classes: balanced counts, every class early."""
    while True:
        yield from rng.permutation(len(EXPR_NAMES)).tolist()


def _segments(rng, n: int, fps: int, next_class) -> list[tuple[int, int, int]]:
    """(start, end, class) segments of 1–2.6 s covering n frames, no stub at the end."""
    segs, t = [], 0
    while t < n:
        d = int(rng.integers(int(1.0 * fps), int(2.6 * fps) + 1))
        if n - (t + d) < int(0.6 * fps):          # no stub at the end
            d = n - t
        segs.append((t, t + d, next_class()))
        t += d
    return segs


def plan_track(video_id: str, n: int, fps: int, seed: int, next_class, calm: float = 0.0) -> Plan:
    """Per-frame AU intensities, expression class and VA for one face track."""
    rng = keyed_rng(seed, "plan", video_id)
    segs = _segments(rng, n, fps, next_class)
    expr = np.zeros(n, np.int64)
    strength = np.zeros(n)
    va_target = np.zeros((n, 2))
    weights = np.zeros((n, len(AU_NAMES)))
    for s, e, c in segs:
        name = EXPR_NAMES[c]
        env = _envelope(e - s, min(int(0.2 * fps), (e - s) // 5)) * rng.uniform(0.85, 1.15)
        proto = EXPR_PROTOTYPES[name]
        va = VA_PROTOTYPES[name] or (rng.uniform(-0.4, 0.4), rng.uniform(-0.3, 0.5))
        va = np.array(va) + rng.uniform(-0.15, 0.15, 2) + (0, -calm * (name == "Happiness"))
        expr[s:e] = c
        strength[s:e] = env if name != "Neutral" else 0
        va_target[s:e] = va * np.clip(env, 0.35, None)[:, None]
        for au, w in proto.items():
            weights[s:e, AU_NAMES.index(au)] = w * env
    va_target = _blur(va_target, 0.15 * fps)                # no jumps at segment borders
    va = np.clip(va_target + np.stack([_smooth_noise(rng, n, fps, 0.07),
                                       _smooth_noise(rng, n, fps, 0.07)], 1), -1, 1)
    amp = 0.8 + 0.3 * va[:, 1:2]                          # arousal → AU amplitude
    au = weights * amp
    au[:, AU_NAMES.index("AU12")] += 0.3 * np.clip(va[:, 0], 0, None)    # valence → smile
    au[:, AU_NAMES.index("AU15")] += 0.3 * np.clip(-va[:, 0], 0, None)   # and its opposite
    t = 0                                                 # spontaneous AU events
    while True:
        t += int(rng.integers(int(1.0 * fps), int(4.0 * fps)))
        d = int(rng.integers(int(0.4 * fps), int(1.2 * fps)))
        if t + d > n:
            break
        env = _envelope(d, d // 4) * rng.uniform(0.45, 1.05)
        for a in AU_EVENTS[int(rng.integers(len(AU_EVENTS)))]:
            j = AU_NAMES.index(a)
            au[t:t + d, j] = np.maximum(au[t:t + d, j], env)
    au = np.clip(au, 0, 1.2)
    return Plan(video_id, n, fps, au, expr, va, strength, segs)


# ---------------------------------------------------------------- label files
def annotation_text(task: str, plan: Plan, rng=None, length_delta: int = 0) -> str:
    """Official Aff-Wild2 text; with ``rng``, a few invalid rows like the real annotations."""
    n = plan.n_frames
    if task == "AU":
        y = (plan.au >= 0.5).astype(np.int64)
        if rng is not None:                               # ~2 % rows all -1, one run
            k = max(1, int(round(0.02 * n)))
            s = int(rng.integers(0, n - k + 1))
            y[s:s + k] = -1
        rows = [",".join(map(str, r)) for r in y]
    elif task == "EXPR":
        y = plan.expr.copy()
        if rng is not None and rng.random() < 0.6:        # a short run of -1
            k = int(rng.integers(3, 9))
            s = int(rng.integers(0, max(1, n - k)))
            y[s:s + k] = -1
        rows = [str(int(v)) for v in y]
    else:
        y = np.round(plan.va, 3)
        if rng is not None:                               # a few isolated -5,-5
            y = y.copy()
            y[rng.choice(n, size=min(n, int(rng.integers(2, 5))), replace=False)] = -5
        rows = [f"{a:.3f},{b:.3f}" for a, b in y]
    if length_delta > 0:
        rows += rows[-1:] * length_delta
    elif length_delta < 0:
        rows = rows[:length_delta]
    return HEADERS[task] + "\n" + "\n".join(rows) + "\n"


def eri_intensities(plan: Plan, rng) -> np.ndarray:
    """The 7 Hume intensities from the expressions shown: mean class strength, scaled, in [0, 1]."""
    def mean_of(cls, w=1.0):
        return float(np.mean(plan.strength * (plan.expr == EXPR_NAMES.index(cls)) * w))

    a01 = (plan.va[:, 1] + 1) / 2
    e = {"Adoration": 1.1 * mean_of("Happiness", 2 * (1 - a01)),     # calm happiness
         "Amusement": 1.1 * mean_of("Happiness", 2 * a01),           # aroused happiness
         "Anxiety": 0.8 * mean_of("Fear") + 0.5 * mean_of("Sadness"),
         "Disgust": 1.2 * mean_of("Disgust"), "Empathic-Pain": 1.2 * mean_of("Sadness"),
         "Fear": 1.2 * mean_of("Fear"), "Surprise": 1.2 * mean_of("Surprise")}
    v = 0.05 + np.array([e[k] for k in ERI_NAMES]) + rng.normal(0, 0.02, len(ERI_NAMES))
    return np.clip(v, 0, 1)


#: classes a Hume video is mostly about (those the ERI dimensions are read from)
HUME_DOMINANT = ("Happiness", "Happiness", "Sadness", "Fear", "Disgust", "Surprise", "Neutral")


def hume_stream(rng, dominant: int):
    """Mostly the video's dominant class, sometimes another one."""
    while True:
        yield dominant if rng.random() < 0.6 else int(rng.integers(len(EXPR_NAMES)))


def label_stats(by_split: dict[str, list[Plan]], eri: np.ndarray) -> dict:
    """Class counts, AU rates and VA moments per split, ERI moments: what the manifest reports."""
    stats = {}
    for split, plans in by_split.items():
        if not plans:
            continue
        expr = np.concatenate([q.expr for q in plans])
        au = np.concatenate([q.au >= 0.5 for q in plans])
        va = np.concatenate([q.va for q in plans])
        stats[split] = {"frames": int(len(expr)),
                        "EXPR_counts": {n: int((expr == i).sum()) for i, n in enumerate(EXPR_NAMES)},
                        "AU_rates": {n: round(float(r), 4) for n, r in zip(AU_NAMES, au.mean(0))},
                        "VA_mean": np.round(va.mean(0), 4).tolist(), "VA_std": np.round(va.std(0), 4).tolist()}
    moments = {"mean": {}, "std": {}}
    if len(eri):
        moments = {"mean": dict(zip(ERI_NAMES, np.round(eri.mean(0), 4).tolist())),
                   "std": dict(zip(ERI_NAMES, np.round(eri.std(0), 4).tolist()))}
    stats["ERI"] = moments
    return stats
