"""The demo's face: the photograph ``skimage.data.astronaut()`` animated frame by frame.

12 AUs are smooth landmark-centred displacement fields (cv2.remap) plus shading (mouth gap,
glabella, nasolabial folds), strong enough to move features by a few pixels in the 64-px crops the
demo's ViT sees, so every label is visible in the pixels. Apparent identities
differ per video: in-plane pose, scale, aspect, position, colour, gamma, mirroring, background
(gradients, noise, textures) and gentle head motion over time.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from affect_pipeline.common.tasks import AU_NAMES

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

# (cx, cy, sigma_x, sigma_y, dx, dy): Gaussian displacement bumps at full intensity (px), before
# DEFORM_GAIN / SPREAD: a 64-px crop shows a face at ~1/3 of this photograph's scale, where the
# raw amplitudes (2-6 px here) would move features by about one pixel.
DEFORM_GAIN = 1.8          # displacement x 1.8
SPREAD = 1.5               # bump widths x 1.5 (keeps the warp fold-free: max gradient < 0.9)
SHADE_GAIN = 1.6           # log-shading x 1.6 (glabella, nasolabial folds; the mouth gap keeps its own)
#: per-AU gains where DEFORM_GAIN does not suit this photograph. Brows move less: at DEFORM_GAIN
#: their bumps drag the eyes along, and MTCNN (which needs the eyes) misses full-intensity Surprise
#: (AU1+2) and Anger (AU4+7) faces. Cheeks and lip corners move more: the astronaut already smiles,
#: so at DEFORM_GAIN a smile (AU12), a cheek raise (AU6) or pressed lips (AU24) barely change a
#: 64-px crop and the model cannot learn them. tests/demo/test_demo.py::test_mtcnn_finds_the_faces
#: checks that the animated faces stay detectable.
AU_GAIN = {"AU1": 1.4, "AU2": 1.4, "AU4": 1.4, "AU6": 2.8, "AU12": 2.8, "AU24": 2.8}
#: The upper lip raise (AU10, the mark of Disgust) lifts the lip 5 px over a tall patch: less and
#: it hardly shows in a 64-px crop, so Disgust looks Neutral. It keeps DEFORM_GAIN and furrows of
#: 0.85 (AU_SHADES): a larger gain or darker furrows show it better, but MTCNN then misses
#: full-Disgust faces in the wild-video clips (tests/wild_media.py, run by
#: tests/workflow/test_wild_videos.py).
AU_BUMPS = {
    "AU1": [(209, 93, 6, 5, 0, -6), (240, 95, 6, 5, 0, -6), (224, 84, 14, 6, 0, -2)],
    "AU2": [(191, 91, 7, 5, -1, -6), (259, 93, 7, 5, 1, -6)],
    "AU4": [(200, 92, 9, 5, 2.5, 4), (250, 94, 9, 5, -2.5, 4), (224, 96, 6, 5, 0, 2)],
    "AU6": [(196, 121, 10, 7, 0, -4), (254, 123, 10, 7, 0, -4),
            (204, 107, 6, 3, 0, -2), (246, 109, 6, 3, 0, -2)],
    "AU7": [(204, 106, 6, 2.5, 0, -2.5), (246, 108, 6, 2.5, 0, -2.5),
            (204, 97, 6, 2.5, 0, 1.5), (246, 99, 6, 2.5, 0, 1.5)],
    "AU10": [(224, 140, 12, 6, 0, -5), (215, 131, 4, 4, 0, -2), (233, 132, 4, 4, 0, -2)],
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


# ---------------------------------------------------------------- the face animator
def _gauss(xx, yy, cx, cy, sx, sy):
    return np.exp(-0.5 * (((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2))


def _smoothstep(x):
    x = np.clip(x, 0, 1)
    return x * x * (3 - 2 * x)


def _jaw_field(xx, yy, drop: float):
    """AU26: everything between the lower lip and the chin moves down by ``drop`` px, fading out
    on the neck; the ramp below the lip is 1.6 x ``drop`` long, so the warp cannot fold."""
    prof = _smoothstep((yy - 143) / (1.6 * drop)) * (1 - _smoothstep((yy - 178) / 22))
    return drop * prof * np.exp(-0.5 * ((xx - 224) / 30) ** 2)


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
            gain = AU_GAIN.get(au, DEFORM_GAIN)
            for cx, cy, sx, sy, dx, dy in AU_BUMPS[au]:
                g = _gauss(xx, yy, cx, cy, SPREAD * sx, SPREAD * sy)
                disp[j, ..., 0] += gain * dx * g
                disp[j, ..., 1] += gain * dy * g
            k = 1.0 if au in ("AU25", "AU26") else SHADE_GAIN   # a darker mouth hid faces from MTCNN
            for cx, cy, sx, sy, gain in AU_SHADES.get(au, []):
                shade[j] += k * np.log(gain) * _gauss(xx, yy, cx, cy, SPREAD * sx, sy)
        disp[AU_NAMES.index("AU26"), ..., 1] += _jaw_field(xx, yy, 8.0 * DEFORM_GAIN)
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
