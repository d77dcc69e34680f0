"""The embedded demo dataset: short face videos in the Aff-Wild2 / Hume-Reaction layouts.

``python -m affect_pipeline make_demo --out resources/demo --params '<config demo as JSON>'``

Every face is the real photograph ``skimage.data.astronaut()`` animated frame by frame, so every
label is known exactly and is visible in the pixels (and partly audible):

- 12 AUs are smooth landmark-centred displacement fields (cv2.remap) plus a little shading
  (mouth gap, glabella, nasolabial folds); each AU has a continuous intensity per frame and its
  binary label is ``intensity >= 0.5``.
- Expressions are 1–2.6 s segments with a prototype AU combination whose intensity ramps in and
  out; the EXPR label is the segment's class (ramps included). Classes are drawn from a shuffled
  per-split cycle, so every class occurs in train, validation and test.
- Valence/arousal follow a per-class prototype plus smooth noise; arousal scales the AU
  amplitudes and drives a voice-like audio track (pitch and loudness rise with arousal, timbre
  brightens with valence).
- Apparent identities differ per video: in-plane pose, scale, aspect, position, colour, gamma,
  mirroring, background (gradients, noise, textures) and gentle head motion over time.

Output tree under ``--out``::

    affwild2/videos/{media}                      .mp4 (H.264 + AAC); demo_001.avi (MPEG-4 + PCM);
                                                 demo_002 without audio; demo_pair.mp4 twice as wide,
                                                 face of demo_pair_left on the left half
    affwild2/annotations/{AU_Detection_Challenge,EXPR_Classification_Challenge,
                          VA_Estimation_Challenge}/{Train_Set,Validation_Set}/{video_id}.txt
    affwild2/test_lists/*_test_set_release.txt   test video ids, one a line
    hume/data_info.csv, hume/videos/{File_ID}.mp4
    test_labels/{AU,EXPR,VA}/{video_id}.txt, test_labels/ERI.csv   held-back truth of the test split
    manifest.json                                written last: the tree is complete

Annotation files carry a few invalid rows like the real data (AU all -1, EXPR -1, VA -5) and two
deliberate length mismatches (demo_004 EXPR one row long, demo_005 VA three rows short); the
test_labels files never do. Same params + seed give byte-identical label files and videos
(single-threaded encoders).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from . import AU_NAMES, ERI_NAMES, EXPR_NAMES, VA_NAMES
from .demo_manifest import AFFWILD2_TEST_LISTS, demo_manifest
from .runtime import PipelineError, atomic_path, log, progress, stage_parser, write_json, write_text

GENERATOR_VERSION = 1
SAMPLE_RATE = 16000
CHALLENGE_DIRS = {"AU": "AU_Detection_Challenge", "EXPR": "EXPR_Classification_Challenge",
                  "VA": "VA_Estimation_Challenge"}
SPLIT_DIRS = {"train": "Train_Set", "validation": "Validation_Set"}
HEADERS = {"AU": ",".join(AU_NAMES), "EXPR": ",".join(EXPR_NAMES), "VA": ",".join(VA_NAMES)}
FPS_OVERRIDE = {"demo_002": 30, "demo_006": 30}        # a second frame rate to exercise
LENGTH_MISMATCH = {("demo_004", "EXPR"): +1, ("demo_005", "VA"): -3}   # like real Aff-Wild2
DEFAULTS = {"seed": 0, "size": 256, "fps": 25, "frames": [150, 220],
            "n_videos": {"train": 9, "validation": 3, "test": 3},
            "hume": {"train": 10, "validation": 3, "test": 3, "frames": 100}}

# ---------------------------------------------------------------- the photograph
# skimage.data.astronaut() (512x512 RGB). Face geometry measured once with
# facenet_pytorch.MTCNN(keep_all=True).detect(img, landmarks=True):
#   box (181.1, 62.2, 267.7, 172.1), p=0.99999, landmarks eyes (205.0, 101.7) (246.8, 103.7),
#   nose (224.7, 129.0), mouth corners (201.7, 139.2) (245.3, 141.9);
# brows, lids, lips and chin read off a 6x zoom with a 10-px grid. Image coordinates below.
SRC_CROP = (130, 10, 320, 240)            # x0, y0, x1, y1: head, hair and neck
FACE_CENTRE = (225.0, 123.0)              # midpoint between eyes and mouth
FACE_HEIGHT = 110.0                       # MTCNN box height (px)
HEAD_ELLIPSE = ((227.0, 122.0), (80.0, 112.0))   # centre, semi-axes: outer limit of the matte
FACE_ELLIPSE = ((225.0, 128.0), (44.0, 58.0))    # always opaque (skin and teeth are light too)

# (cx, cy, sigma_x, sigma_y, dx, dy): Gaussian displacement bumps at full intensity (px).
AU_BUMPS = {
    "AU1": [(209, 93, 6, 5, 0, -6), (240, 95, 6, 5, 0, -6), (224, 84, 14, 6, 0, -2)],
    "AU2": [(191, 91, 7, 5, -1, -6), (259, 93, 7, 5, 1, -6)],
    "AU4": [(200, 92, 9, 5, 2.5, 4), (250, 94, 9, 5, -2.5, 4), (224, 96, 6, 5, 0, 2)],
    "AU6": [(196, 121, 10, 7, 0, -4), (254, 123, 10, 7, 0, -4),
            (204, 107, 6, 3, 0, -2), (246, 109, 6, 3, 0, -2)],
    "AU7": [(204, 106, 6, 2.5, 0, -2.5), (246, 108, 6, 2.5, 0, -2.5),
            (204, 97, 6, 2.5, 0, 1.5), (246, 99, 6, 2.5, 0, 1.5)],
    "AU10": [(224, 140, 12, 4, 0, -4), (215, 131, 4, 4, 0, -2), (233, 132, 4, 4, 0, -2)],
    "AU12": [(203, 140, 6, 6, -4, -4), (245, 142, 6, 6, 4, -4)],
    "AU15": [(203, 141, 6, 6, 1, 6), (245, 143, 6, 6, -1, 6)],
    "AU23": [(203, 140, 6, 5, 3.5, 0), (245, 142, 6, 5, -3.5, 0),
             (224, 141, 12, 3, 0, 1), (224, 151, 12, 3, 0, -1)],
    "AU24": [(224, 141, 14, 3, 0, 2.5), (224, 152, 14, 3.5, 0, -3.5)],
    "AU25": [(224, 152, 14, 4, 0, 3.5), (224, 140, 12, 3, 0, -1)],
    "AU26": [],                                        # a jaw ramp, see _jaw_field
}
# (cx, cy, sigma_x, sigma_y, gain): multiplicative shading at full intensity (gain < 1 darkens);
# for AU25/AU26 1 - gain is how far the lip gap fades towards the mouth's inside.
AU_SHADES = {
    "AU4": [(224, 98, 3, 5, 0.8)],
    "AU10": [(210, 136, 3, 6, 0.85), (238, 137, 3, 6, 0.85)],
    "AU25": [(224, 147, 11, 2.2, 0.3)],
    "AU26": [(224, 150, 10, 4.0, 0.3)],
}

MOUTH_RGB = np.array([70, 28, 30], np.float32)      # inside of an open mouth

# expression prototypes: AU -> weight (intensity at full expression)
EXPR_PROTOTYPES = {
    "Neutral": {},
    "Anger": {"AU4": 1.0, "AU7": 0.9, "AU23": 0.9, "AU24": 0.8},
    "Disgust": {"AU10": 1.0, "AU15": 0.8, "AU4": 0.55},
    "Fear": {"AU1": 0.9, "AU2": 0.8, "AU4": 0.8, "AU25": 0.9},
    "Happiness": {"AU6": 0.9, "AU12": 1.0, "AU25": 0.8},
    "Sadness": {"AU1": 0.9, "AU4": 0.8, "AU15": 0.9},
    "Surprise": {"AU1": 1.0, "AU2": 1.0, "AU25": 0.9, "AU26": 0.9},
    "Other": None,                                     # a random mix per segment
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


def _rng(seed: int, *keys) -> np.random.Generator:
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


def _class_stream(rng):
    """Endless shuffled cycles over the 8 classes: balanced counts, every class early."""
    while True:
        yield from rng.permutation(len(EXPR_NAMES)).tolist()


def _segments(rng, n: int, fps: int, next_class) -> list[tuple[int, int, int]]:
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
    rng = _rng(seed, "plan", video_id)
    segs = _segments(rng, n, fps, next_class)
    expr = np.zeros(n, np.int64)
    strength = np.zeros(n)
    va_target = np.zeros((n, 2))
    weights = np.zeros((n, len(AU_NAMES)))
    for s, e, c in segs:
        name = EXPR_NAMES[c]
        env = _envelope(e - s, min(int(0.32 * fps), (e - s) // 4)) * rng.uniform(0.7, 1.15)
        proto = EXPR_PROTOTYPES[name]
        if proto is None:                                 # Other: a random mix of 2–3 AUs
            picks = rng.choice(len(AU_NAMES), size=int(rng.integers(2, 4)), replace=False)
            proto = {AU_NAMES[i]: rng.uniform(0.75, 1.0) for i in picks}
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


# ---------------------------------------------------------------- the face animator
def _gauss(xx, yy, cx, cy, sx, sy):
    return np.exp(-0.5 * (((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2))


def _smoothstep(x):
    x = np.clip(x, 0, 1)
    return x * x * (3 - 2 * x)


def _jaw_field(xx, yy):
    """AU26: everything between the lower lip and the chin moves down, fading out on the neck."""
    prof = _smoothstep((yy - 143) / 8) * (1 - _smoothstep((yy - 178) / 22))
    return 8.0 * prof * np.exp(-0.5 * ((xx - 224) / 30) ** 2)


class FaceAnimator:
    """The astronaut's head with 12 AU displacement/shading bases, in crop coordinates.

    The bases are stored only over the face region they touch (``roi``), and a frame sums only
    the AUs that are active, so a frame costs a few small array ops (no BLAS).
    """

    def __init__(self):
        from skimage import data

        x0, y0, x1, y1 = SRC_CROP
        self.img = np.ascontiguousarray(data.astronaut()[y0:y1, x0:x1])
        h, w = self.img.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        xx, yy = xx + x0, yy + y0                        # image coordinates
        disp = np.zeros((len(AU_NAMES), h, w, 2), np.float32)
        shade = np.zeros((len(AU_NAMES), h, w), np.float32)
        for j, au in enumerate(AU_NAMES):
            for cx, cy, sx, sy, dx, dy in AU_BUMPS[au]:
                g = _gauss(xx, yy, cx, cy, sx, sy)
                disp[j, ..., 0] += dx * g
                disp[j, ..., 1] += dy * g
            for cx, cy, sx, sy, gain in AU_SHADES.get(au, []):
                shade[j] += np.log(gain) * _gauss(xx, yy, cx, cy, sx, sy)
        disp[AU_NAMES.index("AU26"), ..., 1] += _jaw_field(xx, yy)
        touched = (np.abs(disp).max((0, 3)) > 0.02) | (np.abs(shade).max(0) > 0.005)
        ys, xs = np.nonzero(touched)
        self.roi = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        self.disp = np.ascontiguousarray(disp[(slice(None),) + self.roi])
        self.shade = np.ascontiguousarray(shade[(slice(None),) + self.roi])
        self.grid = np.stack([xx - x0, yy - y0], -1)[self.roi].astype(np.float32)
        self.alpha = _head_alpha(self.img, xx, yy)
        self.centre = np.array([FACE_CENTRE[0] - x0, FACE_CENTRE[1] - y0], np.float32)
        self.shape = (h, w)

    def face(self, base: np.ndarray, intensity: np.ndarray, mouth=MOUTH_RGB) -> np.ndarray:
        """Warp + shade ``base`` (identity-coloured uint8 crop) for one frame's AU intensities;
        the parted-lips gap (AU25/26) fades towards the dark ``mouth`` colour."""
        import cv2

        m = self.grid.copy()                             # backward map: content moves by +d
        logs = np.zeros(m.shape[:2], np.float32)         # skin shading (log gain)
        cavity = np.zeros(m.shape[:2], np.float32)       # open-mouth darkness
        for j in np.flatnonzero(intensity > 1e-3):
            m -= np.float32(intensity[j]) * self.disp[j]
            if j in _CAVITY:
                cavity -= np.float32(intensity[j]) * self.shade[j]
            elif j in _SHADED:
                logs += np.float32(intensity[j]) * self.shade[j]
        roi = cv2.remap(base, m[..., 0], m[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        if logs.any() or cavity.any():
            k = (1 - np.exp(-cavity))[..., None]
            roi = roi * np.exp(logs)[..., None] * (1 - k) + k * mouth
            roi = np.clip(roi + 0.5, 0, 255).astype(np.uint8)
        out = base.copy()
        out[self.roi] = roi
        return out


_SHADED = {AU_NAMES.index(a) for a in AU_SHADES}
_CAVITY = {AU_NAMES.index("AU25"), AU_NAMES.index("AU26")}


def _head_alpha(img: np.ndarray, xx, yy) -> np.ndarray:
    """Matte of head, hair and shoulders: the photo's grey backdrop (low chroma, light) keyed out
    outside the face, inside a soft outer ellipse."""
    import cv2
    from skimage import color

    lab = color.rgb2lab(img)
    backdrop = (np.hypot(lab[..., 1], lab[..., 2]) < 8) & (lab[..., 0] > 62)
    keep = 1 - cv2.GaussianBlur(backdrop.astype(np.float32), (0, 0), 1.5)
    (ex, ey), (ax, ay) = FACE_ELLIPSE
    inner = 1 - np.clip((((xx - ex) / ax) ** 2 + ((yy - ey) / ay) ** 2 - 0.8) / 0.4, 0, 1)
    (ex, ey), (ax, ay) = HEAD_ELLIPSE
    outer = 1 - np.clip((((xx - ex) / ax) ** 2 + ((yy - ey) / ay) ** 2 - 0.85) / 0.25, 0, 1)
    alpha = np.clip(np.maximum(keep, inner), 0, 1) * outer
    return cv2.GaussianBlur(alpha.astype(np.float32), (0, 0), 1.0)


@dataclass
class Style:
    """One apparent identity: how the head is coloured, placed and moved, and its background."""
    gains: np.ndarray
    gamma: float
    brightness: float
    mirror: bool
    scale: float
    aspect: float
    angle: float
    pos: np.ndarray
    motion: np.ndarray        # amplitudes: angle (deg), x, y (px), scale
    phases: np.ndarray
    periods: np.ndarray
    background: np.ndarray    # (H, W, 3) float32
    noise: float


def make_style(rng, width: int, height: int) -> Style:
    size = min(width, height)
    scale = rng.uniform(0.95, 1.25) * size / 256        # face 105–140 px tall at 256
    return Style(gains=rng.uniform(0.8, 1.2, 3).astype(np.float32), gamma=rng.uniform(0.8, 1.25),
                 brightness=rng.uniform(-20, 20), mirror=bool(rng.random() < 0.5), scale=scale,
                 aspect=rng.uniform(0.9, 1.1), angle=rng.uniform(-10, 10),
                 pos=np.array([width / 2, height / 2]) + rng.uniform(-0.07, 0.07, 2) * size,
                 motion=np.array([4.0, 0.03 * size, 0.02 * size, 0.04]) * rng.uniform(0.5, 1.0, 4),
                 phases=rng.uniform(0, 2 * np.pi, 4), periods=rng.uniform(2.0, 6.0, 4),
                 background=_background(rng, width, height), noise=rng.uniform(0.5, 2.0))


def _background(rng, w: int, h: int) -> np.ndarray:
    """Gradient, blurred noise, stripes or checks in random colours."""
    import cv2

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
    kind = int(rng.integers(4))
    if kind == 0:                                        # linear gradient
        a = rng.uniform(0, 2 * np.pi)
        t = (np.cos(a) * xx + np.sin(a) * yy) / max(w, h)
        t = (t - t.min()) / (np.ptp(t) + 1e-6)
    elif kind == 1:                                      # radial gradient
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        t = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        t = t / t.max()
    elif kind == 2:                                      # blurred noise blobs
        t = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), rng.uniform(4, 12))
        t = (t - t.min()) / (np.ptp(t) + 1e-6)
    else:                                                # stripes / checks
        f = rng.uniform(0.03, 0.12)
        a = rng.uniform(0, np.pi)
        t = 0.5 + 0.5 * np.sin(f * (np.cos(a) * xx + np.sin(a) * yy))
        if rng.random() < 0.5:
            t = t * (0.5 + 0.5 * np.sin(f * (-np.sin(a) * xx + np.cos(a) * yy)))
    bg = c0 + t[..., None] * (c1 - c0)
    return bg.astype(np.float32)


class Renderer:
    """Draws frames of one face track onto its background."""

    def __init__(self, anim: FaceAnimator, style: Style, rng):
        self.anim, self.style = anim, style
        base = np.clip(anim.img * style.gains + style.brightness, 0, 255) / 255.0
        self.base = np.clip(255.0 * base ** style.gamma + 0.5, 0, 255).astype(np.uint8)
        self.mouth = np.clip(MOUTH_RGB * style.gains + style.brightness, 0, 255)
        self.alpha = anim.alpha
        if style.mirror:                                 # AU bases live on the unmirrored face
            self.alpha = np.ascontiguousarray(self.alpha[:, ::-1])
        h, w = style.background.shape[:2]
        self.bg = np.clip(style.background + 0.5, 0, 255).astype(np.uint8)
        # sensor noise: random windows into one larger noise field (cheap, still seeded)
        self.noise = np.round(rng.normal(0, style.noise, (h + 64, w + 64, 1))).astype(np.int16)
        self.rng = rng

    def frame(self, intensity: np.ndarray, t: float) -> np.ndarray:
        import cv2

        st, a = self.style, self.anim
        face = a.face(self.base, intensity, self.mouth)
        if st.mirror:
            face = np.ascontiguousarray(face[:, ::-1])
        wave = st.motion * np.sin(2 * np.pi * t / st.periods + st.phases)
        ang = np.deg2rad(st.angle + wave[0])
        s = st.scale * (1 + wave[3])
        cx = a.shape[1] - 1 - a.centre[0] if st.mirror else a.centre[0]
        c, si = np.cos(ang), np.sin(ang)
        lin = np.array([[c, -si], [si, c]]) @ np.diag([s * st.aspect, s])
        off = st.pos + wave[1:3] - lin @ np.array([cx, a.centre[1]])
        M = np.hstack([lin, off[:, None]]).astype(np.float32)
        h, w = self.bg.shape[:2]
        fg = cv2.warpAffine(face, M, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        al = cv2.warpAffine(self.alpha, M, (w, h), flags=cv2.INTER_LINEAR)
        img = cv2.blendLinear(fg, self.bg, al, 1 - al)
        oy, ox = self.rng.integers(0, 64, 2)
        return np.clip(img + self.noise[oy:oy + h, ox:ox + w], 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- audio
def synth_voice(plan: Plan, rng, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A voice-like harmonic signal: syllable envelopes; pitch/loudness ↑ arousal, brighter ↑ valence."""
    n = int(round(plan.n_frames / plan.fps * sr))
    ts = np.arange(n) / sr
    ft = (np.arange(plan.n_frames) + 0.5) / plan.fps
    val = np.interp(ts, ft, plan.va[:, 0])
    a01 = (np.interp(ts, ft, plan.va[:, 1]) + 1) / 2
    env, pitch = np.zeros(n), np.ones(n)
    t = rng.uniform(0, 0.2)
    while t < ts[-1]:
        i = min(int(t * sr), n - 1)
        if rng.random() < 0.12 - 0.08 * (a01[i] - 0.5):           # pauses, more when calm
            t += rng.uniform(0.2, 0.5)
            continue
        d = rng.uniform(0.12, 0.28)
        s, e = int(t * sr), min(int((t + d) * sr), n)
        if e > s:
            env[s:e] = np.sin(np.linspace(0, np.pi, e - s)) ** 2
            pitch[s:e] = rng.uniform(0.93, 1.07) * np.linspace(1.02, 0.97, e - s)
        t += d + rng.uniform(0.03, 0.12)
    f0 = 115.0 * 2 ** (1.1 * a01) * pitch * (1 + 0.03 * np.sin(2 * np.pi * 5.5 * ts))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    tilt = 1.5 - 0.6 * val
    voice = np.zeros(n)
    norm = np.zeros(n)
    for k in range(1, 16):
        ak = np.exp(-tilt * np.log(k)) * (k * f0 < 0.45 * sr)
        voice += ak * np.sin(k * phase)
        norm += ak
    loud = 0.04 + 0.3 * a01 ** 1.5
    noise = np.convolve(rng.standard_normal(n), np.ones(4) / 4, mode="same") * 0.006
    return np.clip(loud * env * voice / norm * 2.0 + noise, -1, 1).astype(np.float32)


# ---------------------------------------------------------------- video writing
def write_video(path: Path, frames, n_frames: int, fps: int, width: int, height: int,
                audio: np.ndarray | None, avi: bool = False) -> None:
    """Encode frames (+ mono audio) through a temporary file; single-threaded → reproducible bytes."""
    import av

    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format="avi" if avi else "mp4") as box:
            vs = box.add_stream("mpeg4" if avi else "libx264", rate=fps)
            vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
            vs.codec_context.thread_count = 1
            if avi:
                vs.codec_context.qscale = 3
                vs.codec_context.flags |= av.codec.context.Flags.qscale
            else:
                vs.options = {"crf": "20", "preset": "veryfast", "threads": "1"}
            as_ = None
            if audio is not None:
                as_ = box.add_stream("pcm_s16le" if avi else "aac", rate=SAMPLE_RATE, layout="mono")
                if not avi:
                    as_.bit_rate = 64000
            sent = 0
            for i, rgb in enumerate(frames):
                vf = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                vf.pts, vf.time_base = i, Fraction(1, fps)
                box.mux(vs.encode(vf))
                if as_ is not None:                      # keep audio interleaved with video
                    upto = len(audio) if i == n_frames - 1 else int((i + 1) / fps * SAMPLE_RATE)
                    sent = _push_audio(box, as_, audio, sent, upto, avi)
            box.mux(vs.encode(None))
            if as_ is not None:
                box.mux(as_.encode(None))


def _push_audio(box, stream, audio, sent: int, upto: int, avi: bool) -> int:
    import av

    chunk = 1024
    while sent < upto and (upto - sent >= chunk or upto == len(audio)):
        x = audio[sent:min(sent + chunk, upto)]
        if avi:
            af = av.AudioFrame.from_ndarray((x * 32767).astype(np.int16)[None], format="s16", layout="mono")
        else:
            af = av.AudioFrame.from_ndarray(x[None], format="fltp", layout="mono")
        af.sample_rate, af.pts, af.time_base = SAMPLE_RATE, sent, Fraction(1, SAMPLE_RATE)
        box.mux(stream.encode(af))
        sent += len(x)
    return sent


# ---------------------------------------------------------------- jobs
@dataclass
class MediaJob:
    path: Path
    plans: list            # one Plan (single face) or two (left, right)
    fps: int
    size: int
    has_audio: bool
    avi: bool
    seed: int


def render_media(job: MediaJob) -> dict:
    """Render and encode one media file; returns its probe facts for the manifest."""
    import cv2

    cv2.setNumThreads(1)
    anim = _animator()
    rends = [Renderer(anim, make_style(_rng(job.seed, "style", p.video_id), job.size, job.size),
                      _rng(job.seed, "render", p.video_id)) for p in job.plans]
    n = job.plans[0].n_frames
    width = job.size * len(job.plans)

    def frames():
        for i in range(n):
            yield np.concatenate([r.frame(p.au[i], i / job.fps) for r, p in zip(rends, job.plans)], 1)

    audio = None
    if job.has_audio:
        audio = sum(synth_voice(p, _rng(job.seed, "voice", p.video_id)) for p in job.plans)
        audio = np.clip(audio / len(job.plans) ** 0.5, -1, 1).astype(np.float32)
    write_video(job.path, frames(), n, job.fps, width, job.size, audio, job.avi)
    return {"media": job.path.name, "n_frames": n, "fps": job.fps, "width": width,
            "height": job.size, "has_audio": job.has_audio}


_ANIM = None


def _animator() -> FaceAnimator:
    global _ANIM
    if _ANIM is None:
        _ANIM = FaceAnimator()
    return _ANIM


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


def _hume_stream(rng, dominant: int):
    """Mostly the video's dominant class, sometimes another one."""
    while True:
        yield dominant if rng.random() < 0.6 else int(rng.integers(len(EXPR_NAMES)))


# ---------------------------------------------------------------- the stage
def _params(params: dict, seed: int) -> dict:
    p = {k: params.get(k, v) for k, v in DEFAULTS.items()}
    p["seed"] = int(params.get("seed", seed))
    p["n_videos"] = {**DEFAULTS["n_videos"], **(params.get("n_videos") or {})}
    p["hume"] = {**DEFAULTS["hume"], **(params.get("hume") or {})}
    lo, hi = p["frames"]
    if not (isinstance(lo, int) and isinstance(hi, int) and 8 <= lo <= hi):
        raise PipelineError(f"--params demo.frames: need [min, max] integers with 8 <= min <= max, got {p['frames']}")
    if int(p["size"]) < 160 or int(p["size"]) % 2:
        raise PipelineError(f"--params demo.size: need an even size >= 160 px (detectable faces, "
                            f"yuv420p), got {p['size']}")
    if int(p["hume"]["frames"]) < 8 or int(p["fps"]) < 5:
        raise PipelineError(f"--params demo: hume.frames >= 8 and fps >= 5 needed, got {p['hume']['frames']}, {p['fps']}")
    return p


def build_jobs(p: dict, out: Path):
    """Plan every track (sequentially: class cycles run per split) and list the media to render."""
    seed, fps, size = p["seed"], int(p["fps"]), int(p["size"])
    man = demo_manifest(p)
    rng_len = _rng(seed, "lengths")
    streams = {s: _class_stream(_rng(seed, "classes", s)) for s in ("train", "validation", "test")}
    lengths, plans = {}, {}
    for v in man.videos:
        stem = Path(v.media).stem
        if stem not in lengths:
            lengths[stem] = int(rng_len.integers(p["frames"][0], p["frames"][1] + 1))
        vfps = FPS_OVERRIDE.get(stem, fps)
        plans[v.video_id] = plan_track(v.video_id, lengths[stem], vfps, seed, streams[v.split].__next__)
    jobs = []
    for media in man.media_files:
        vids = sorted((v for v in man.videos if v.media == media), key=lambda v: v.side != "left")
        stem = Path(media).stem
        jobs.append(MediaJob(out / "affwild2" / "videos" / media, [plans[v.video_id] for v in vids],
                             FPS_OVERRIDE.get(stem, fps), size, stem != "demo_002",
                             media.endswith(".avi"), seed))
    hume_plans = {}
    for fid, split in man.hume:
        r = _rng(seed, "hume", fid)
        dom = EXPR_NAMES.index(HUME_DOMINANT[int(r.integers(len(HUME_DOMINANT)))])
        calm = r.uniform(0.0, 0.9) if dom == EXPR_NAMES.index("Happiness") else 0.0
        hume_plans[fid] = plan_track(f"hume_{fid}", int(p["hume"]["frames"]), fps, seed,
                                     _hume_stream(r, dom).__next__, calm=calm)
        jobs.append(MediaJob(out / "hume" / "videos" / f"{fid}.mp4", [hume_plans[fid]], fps, size,
                             True, False, seed))
    return man, plans, hume_plans, jobs


def write_labels(p: dict, out: Path, man, plans: dict, hume_plans: dict) -> dict:
    """Annotation files, test lists, Hume csv and held-back test labels; returns label facts."""
    seed = p["seed"]
    invalid = {}
    mismatches = {}
    for v in man.videos:
        plan = plans[v.video_id]
        for task in v.tasks:
            if v.split == "test":
                write_text(out / "test_labels" / task / f"{v.video_id}.txt", annotation_text(task, plan))
                continue
            delta = LENGTH_MISMATCH.get((v.video_id, task), 0)
            if delta:
                mismatches[f"{v.video_id}/{task}"] = delta
            text = annotation_text(task, plan, _rng(seed, "invalid", v.video_id, task), delta)
            invalid[f"{v.video_id}/{task}"] = sum(
                line.startswith("-1") or line.startswith("-5.000,-5.000") for line in text.splitlines()[1:])
            write_text(out / "affwild2" / "annotations" / CHALLENGE_DIRS[task] / SPLIT_DIRS[v.split]
                       / f"{v.video_id}.txt", text)
    for task, name in AFFWILD2_TEST_LISTS.items():
        ids = [v.video_id for v in man.videos if v.split == "test" and task in v.tasks]
        write_text(out / "affwild2" / "test_lists" / name, "".join(f"{i}\n" for i in ids))
    rows, test_rows, eri = [], [], {}
    for fid, split in man.hume:
        eri[fid] = eri_intensities(hume_plans[fid], _rng(seed, "eri", fid))
        cells = ",".join(f"{x:.4f}" for x in eri[fid])
        rows.append(f"{fid},{split}," + (",".join([""] * len(ERI_NAMES)) if split == "Test" else cells))
        if split == "Test":
            test_rows.append(f"{fid},{cells}")
    write_text(out / "hume" / "data_info.csv", "File_ID,Split," + ",".join(ERI_NAMES) + "\n"
               + "".join(r + "\n" for r in rows))
    write_text(out / "test_labels" / "ERI.csv", "File_ID," + ",".join(ERI_NAMES) + "\n"
               + "".join(r + "\n" for r in test_rows))
    return {"invalid_rows": invalid, "length_mismatch": mismatches, "eri": eri}


def label_stats(man, plans: dict, eri: dict) -> dict:
    stats = {}
    for split in ("train", "validation", "test"):
        vs = [plans[v.video_id] for v in man.videos if v.split == split]
        if not vs:
            continue
        expr = np.concatenate([q.expr for q in vs])
        au = np.concatenate([q.au >= 0.5 for q in vs])
        va = np.concatenate([q.va for q in vs])
        stats[split] = {"frames": int(len(expr)),
                        "EXPR_counts": {n: int((expr == i).sum()) for i, n in enumerate(EXPR_NAMES)},
                        "AU_rates": {n: round(float(r), 4) for n, r in zip(AU_NAMES, au.mean(0))},
                        "VA_mean": np.round(va.mean(0), 4).tolist(), "VA_std": np.round(va.std(0), 4).tolist()}
    e = np.array([eri[f] for f, _ in man.hume]) if man.hume else np.zeros((0, len(ERI_NAMES)))
    stats["ERI"] = {"mean": dict(zip(ERI_NAMES, np.round(e.mean(0), 4).tolist())) if len(e) else {},
                    "std": dict(zip(ERI_NAMES, np.round(e.std(0), 4).tolist())) if len(e) else {}}
    return stats


def generate(out: str | Path, params: dict, seed: int = 0, threads: int = 1) -> dict:
    """Write the whole demo tree under ``out``; returns the manifest (also ``out/manifest.json``)."""
    out = Path(out)
    p = _params(params, seed)
    man, plans, hume_plans, jobs = build_jobs(p, out)
    facts = write_labels(p, out, man, plans, hume_plans)
    media = {}
    bar = progress(total=sum(j.plans[0].n_frames for j in jobs), desc="make_demo", unit="frame")
    if threads > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(min(threads, len(jobs))) as pool:
            for j, info in zip(jobs, pool.imap(render_media, jobs)):
                media[str(j.path.relative_to(out))] = info
                bar.update(info["n_frames"])
    else:
        for j in jobs:
            media[str(j.path.relative_to(out))] = render_media(j)
            bar.update(j.plans[0].n_frames)
    bar.close()
    vids = {}
    for v in man.videos:
        info = media[f"affwild2/videos/{v.media}"]
        vids[v.video_id] = {"media": v.media, "split": v.split, "tasks": list(v.tasks), "side": v.side,
                            **{k: info[k] for k in ("n_frames", "fps", "width", "height", "has_audio")},
                            "segments": [[s, e, EXPR_NAMES[c]] for s, e, c in plans[v.video_id].segments]}
    hume = {fid: {"split": split, **{k: media[f"hume/videos/{fid}.mp4"][k] for k in
                                      ("n_frames", "fps", "has_audio")},
                  "eri": dict(zip(ERI_NAMES, np.round(facts["eri"][fid], 4).tolist()))}
            for fid, split in man.hume}
    manifest = {"generator": f"affect_pipeline.demo v{GENERATOR_VERSION}", "seed": p["seed"],
                "params": {k: p[k] for k in DEFAULTS}, "source_image": "skimage.data.astronaut()",
                "audio_sample_rate": SAMPLE_RATE, "videos": vids, "hume": hume,
                "annotation_length_mismatch": facts["length_mismatch"],
                "invalid_rows": facts["invalid_rows"],
                "label_stats": label_stats(man, plans, facts["eri"])}
    write_json(out / "manifest.json", manifest)          # last: the tree is complete
    return manifest


def main(argv: list[str]) -> int:
    ap = stage_parser("make_demo", __doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="demo root, e.g. resources/demo")
    args = ap.parse_args(argv)
    import cv2

    cv2.setNumThreads(1)
    m = generate(args.out, args.params, seed=args.seed, threads=args.threads)
    s = m["label_stats"]
    log.info("demo: %d face tracks, %d Hume videos under %s; train EXPR counts %s",
             len(m["videos"]), len(m["hume"]), args.out, s.get("train", {}).get("EXPR_counts"))
    return 0
