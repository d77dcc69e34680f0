"""Face detection for crop_faces: the ``faces`` config, detector backends, 5-point alignment and
which face to keep.

Backends (config ``faces.backend``):
- ``mtcnn``: facenet-pytorch MTCNN, which ships its weights; boxes + 5 landmarks.
- ``face_alignment``: S3FD boxes + FAN 68 landmarks (reduced to the same 5 points: eye centres,
  nose tip, mouth corners), weights from local files (``faces.face_alignment: {s3fd, fan}``)
  or the TORCH_HOME hub cache; never downloaded.
- ``cropped_aligned``: the official Aff-Wild2 crops, no detection (see :mod:`.crop_faces`).

Alignment: the least-squares similarity transform (skimage, Umeyama; deterministic) maps the 5
points onto the ArcFace 112-px template scaled to ``size``; ``margin`` (a fraction of ``size``
per side) shrinks the template towards the centre so more context stays in the crop.

Which face, when there are several (documented choice):
- ``side none``: the first face is the largest; after that, the face that best continues the
  track (highest IoU with the last found box minus its centre distance in units of that box's
  diagonal), so a passer-by does not steal the track.
- ``side left|right`` (``X_left`` / ``X_right`` videos: two people in one video): with two or
  more faces, the one whose box centre x is smallest / largest; with a single face, take it
  only if it continues this side's track or lies in this side's half of the frame, so the
  partner's face is not taken when ours is missed.

torch, torchvision, facenet-pytorch, face_alignment and skimage are imported inside the
functions that use them, so importing this module stays cheap.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from affect_pipeline.common.errors import PipelineError

BACKENDS = ("mtcnn", "face_alignment", "cropped_aligned")

#: ArcFace 5-point template for 112x112 crops (left eye, right eye, nose, mouth left, mouth right;
#: left = image left), scaled to the crop size (224: the paper's crops).
ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)

#: hub-cache file names of the face_alignment 1.x weights (used when the config gives no path)
FA_CACHE_NAMES = {"s3fd": "s3fd-619a316812.pth", "fan": "2DFAN4-11f355bf06.pth.tar"}


# ---------------------------------------------------------------- config
@dataclass(frozen=True)
class FaceParams:
    """The ``faces`` section of workflow_config.yaml, complete (no defaults live in the package)."""

    backend: str
    size: int
    margin: float
    batch_size: int
    min_face_size: int
    score_threshold: float
    face_alignment: dict  # {"s3fd": path | None, "fan": path | None}

    @classmethod
    def from_config(cls, section: dict, where: str = "faces") -> FaceParams:
        """Check and type a config section; a missing key is a PipelineError naming it."""
        if not isinstance(section, dict):
            raise PipelineError(f"{where}: config section must be a mapping, got {type(section).__name__}")
        missing = [f"{where}.{f.name}" for f in fields(cls) if f.name not in section]
        fa = section.get("face_alignment")
        if isinstance(fa, dict):
            missing += [f"{where}.face_alignment.{k}" for k in FA_CACHE_NAMES if k not in fa]
        elif "face_alignment" in section:
            raise PipelineError(f"{where}.face_alignment: must be a mapping {{s3fd, fan}}, got {fa!r}")
        if missing:
            raise PipelineError(f"{where}: missing config key(s) {', '.join(missing)} (workflow_config.yaml "
                                f"has every key; a stage gets its whole section via --params)")
        unknown = sorted(set(section) - {f.name for f in fields(cls)})
        if unknown:
            raise PipelineError(f"{where}: unknown config key(s) {unknown}; known: {[f.name for f in fields(cls)]}")
        if section["backend"] not in BACKENDS:
            raise PipelineError(f"{where}.backend: unknown backend {section['backend']!r} ({' | '.join(BACKENDS)})")
        return cls(backend=str(section["backend"]), size=int(section["size"]), margin=float(section["margin"]),
                   batch_size=int(section["batch_size"]), min_face_size=int(section["min_face_size"]),
                   score_threshold=float(section["score_threshold"]),
                   face_alignment={k: fa[k] for k in FA_CACHE_NAMES})


# ---------------------------------------------------------------- alignment
def template(size: int, margin: float = 0.0) -> np.ndarray:
    """The 5 template points in a ``size`` crop, with ``margin`` x size of extra border per side."""
    u = ARCFACE_112 / 112.0
    return (u + margin) / (1.0 + 2.0 * margin) * size


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 least-squares similarity (rotation, uniform scale, translation) src -> dst.

    skimage's Umeyama estimate. Coincident points (skimage gives no estimate) map with scale 0
    onto dst's mean, so a degenerate landmark set yields a blank crop instead of failing mid-video.
    """
    from skimage.transform import SimilarityTransform

    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    t = SimilarityTransform.from_estimate(src, dst)
    if not t:
        return np.hstack([np.zeros((2, 2)), dst.mean(0)[:, None]])
    return t.params[:2].copy()


def align_face(frame: np.ndarray, points: np.ndarray, size: int, margin: float = 0.0) -> np.ndarray:
    """Warp ``frame`` so that ``points`` (5, 2) land on the template: an RGB (size, size, 3) crop.

    A large face is warped to an integer multiple of ``size`` first and area-downscaled, which
    avoids the aliasing of a direct bilinear warp at scale < 1/2.
    """
    import cv2

    m = similarity_transform(points, template(size, margin))
    k = int(np.clip(np.floor(1.0 / max(np.sqrt(abs(np.linalg.det(m[:, :2]))), 1e-6)), 1, 4))
    big = cv2.warpAffine(frame, m * np.array([[k], [k]]), (size * k, size * k), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return big if k == 1 else cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)


# ---------------------------------------------------------------- choosing the face
def box_iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """IoU of each of ``boxes`` (k, 4) with ``box`` (4,) (torchvision); empty unions count as 0."""
    import torch
    from torchvision.ops import box_iou as tv_box_iou

    iou = tv_box_iou(torch.as_tensor(np.asarray(boxes, np.float64).reshape(-1, 4)),
                     torch.as_tensor(np.asarray(box, np.float64).reshape(1, 4)))
    return np.nan_to_num(iou[:, 0].numpy(), nan=0.0)


def _track_cost(boxes, prev):
    """Lower is better: centre distance in units of the previous box's diagonal, minus IoU."""
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    pc = (prev[:2] + prev[2:]) / 2
    diag = max(np.hypot(prev[2] - prev[0], prev[3] - prev[1]), 1e-6)
    return np.linalg.norm(c - pc, axis=1) / diag - box_iou(boxes, prev)


def select_face(boxes: np.ndarray, prev: np.ndarray | None, side: str, width: int) -> int | None:
    """Index of the face to keep among ``boxes`` (k, 4), or None (see the module docstring)."""
    if len(boxes) == 0:
        return None
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    if side in ("left", "right"):
        if len(boxes) > 1:
            return int(np.argmin(cx) if side == "left" else np.argmax(cx))
        ours = (cx[0] < width / 2) == (side == "left")
        continues = prev is not None and _track_cost(boxes, prev)[0] < 0.5
        return 0 if ours or continues else None
    if prev is None:
        return int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
    return int(np.argmin(_track_cost(boxes, prev)))


@dataclass
class BatchFaces:
    """One face per frame of a batch: the face store's columns (crop None = no face)."""

    crops: list
    found: np.ndarray
    score: np.ndarray
    box: np.ndarray
    landmarks: np.ndarray


def faces_in_batch(backend, frames: np.ndarray, prev, side: str, size: int, margin: float):
    """Detect on a batch, keep one face per frame (tracking ``prev``), align -> (BatchFaces, prev)."""
    b = len(frames)
    found, score = np.zeros(b, bool), np.zeros(b, np.float32)
    box, lmk = np.zeros((b, 4), np.float32), np.zeros((b, 5, 2), np.float32)
    for j, (boxes, scores, points) in enumerate(backend.detect(frames)):
        k = select_face(boxes, prev, side, frames.shape[2])
        if k is not None:
            found[j], score[j], box[j], prev = True, scores[k], boxes[k], boxes[k]
            if points is not None:
                lmk[j] = points[k]
    sel = np.flatnonzero(found)
    if not backend.detector_landmarks and len(sel):
        lmk[sel] = backend.landmarks(frames[sel], box[sel].astype(np.float64))
    crops = [align_face(frames[j], lmk[j], size, margin) if found[j] else None for j in range(b)]
    return BatchFaces(crops, found, score, box, lmk), prev


# ---------------------------------------------------------------- backends
class MTCNNBackend:
    """facenet-pytorch MTCNN on a batch of equal-size frames: boxes, probabilities, 5 landmarks."""

    n_landmarks, detector_landmarks = 5, True

    def __init__(self, params: FaceParams, device):
        import torch
        from facenet_pytorch import MTCNN

        self.threshold = params.score_threshold
        self.net = MTCNN(keep_all=True, select_largest=False, post_process=False,
                         min_face_size=params.min_face_size, device=device)
        # channels-last convolutions and max-pools: R-Net / O-Net run on every P-Net candidate
        # (dozens a frame) and their NCHW max-pools take most of the detector's time; channels-last
        # about halves it on one CPU thread, with the same boxes (tests/faces/test_faces.py checks
        # them). Time it: `python benchmarks/bench_faces.py --size 160`, detector row, with and
        # without this loop.
        for net in (self.net.pnet, self.net.rnet, self.net.onet):
            net.to(memory_format=torch.channels_last)

    def detect(self, frames: np.ndarray):
        import torch

        with torch.inference_mode():
            boxes, probs, points = self.net.detect(frames, landmarks=True)
        out = []
        for b, p, pt in zip(boxes, probs, points):
            if b is None:
                out.append((np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))))
                continue
            p = np.asarray(p, np.float64)
            keep = p >= self.threshold
            out.append((np.asarray(b, np.float64)[keep], p[keep], np.asarray(pt, np.float64)[keep]))
        return out


class FaceAlignmentBackend:
    """face_alignment's S3FD detector + 2D FAN, built from its model classes and local weights.

    Landmarks are computed only for the face the tracker keeps (one FAN call per batch).
    """

    n_landmarks, detector_landmarks = 5, False

    def __init__(self, params: FaceParams, device):
        import torch
        from face_alignment.detection.sfd.sfd_detector import SFDDetector
        from face_alignment.models import FAN

        paths = resolve_fa_weights(params.face_alignment)
        self.device, self.threshold = device, params.score_threshold
        try:
            self.detector = SFDDetector(device=str(device), path_to_detector=str(paths["s3fd"]))
        except Exception as e:  # any load failure: name the file
            raise PipelineError(f"{paths['s3fd']}: not a valid S3FD state dict ({_first_line(e)})") from e
        self.fan = FAN(4)
        try:
            state = torch.load(paths["fan"], map_location="cpu", weights_only=True)
            self.fan.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
        except Exception as e:  # any load failure: name the file
            raise PipelineError(f"{paths['fan']}: not a valid 2D-FAN-4 state dict ({_first_line(e)})") from e
        self.fan.to(device).eval()

    def detect(self, frames: np.ndarray):
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2).float()
            lists = self.detector.detect_from_batch(x)
        out = []
        for bl in lists:
            bl = np.asarray(bl, np.float64).reshape(-1, 5)
            bl = bl[bl[:, 4] >= self.threshold]
            out.append((bl[:, :4], bl[:, 4], None))
        return out

    def landmarks(self, frames: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """FAN on each (frame, box): 68 points reduced to the 5 alignment points, (k, 5, 2)."""
        import torch
        from face_alignment.utils import CENTER_Y_OFFSET, crop

        if len(boxes) == 0:
            return np.zeros((0, 5, 2))
        centers = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2,
                            (boxes[:, 1] + boxes[:, 3]) / 2 - (boxes[:, 3] - boxes[:, 1]) * CENTER_Y_OFFSET], 1)
        scales = ((boxes[:, 2] - boxes[:, 0]) + (boxes[:, 3] - boxes[:, 1])) / self.detector.reference_scale
        inp = np.stack([crop(f, c, s) for f, c, s in zip(frames, centers, scales)])
        with torch.inference_mode():
            x = torch.from_numpy(inp).to(self.device).permute(0, 3, 1, 2).float() / 255.0
            hm = self.fan(x)
            hm = (hm[-1] if isinstance(hm, (list, tuple)) else hm).float().cpu().numpy()
        pts = heatmap_points(hm, centers, scales)
        return np.stack([pts[:, 36:42].mean(1), pts[:, 42:48].mean(1), pts[:, 30], pts[:, 48], pts[:, 54]], 1)


def heatmap_points(hm: np.ndarray, centers: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """FAN heatmaps (k, 68, R, R) -> points in frame pixels (k, 68, 2).

    Same decoding as face_alignment.utils.get_preds_fromhm (argmax, quarter-pixel shift towards
    the higher neighbour, -0.5, inverse crop transform) vectorised over the batch (the package
    decodes one face at a time, numba-compiled), without its integer rounding.
    """
    k, c, r, _ = hm.shape
    flat = hm.reshape(k, c, -1)
    idx = flat.argmax(-1)
    x, y = (idx % r).astype(np.int64), (idx // r).astype(np.int64)
    pts = np.stack([x, y], -1).astype(np.float64) + 1.0
    inner = (x > 0) & (x < r - 1) & (y > 0) & (y < r - 1)
    xi, yi = np.clip(x, 1, r - 2), np.clip(y, 1, r - 2)
    kk, cc = np.meshgrid(np.arange(k), np.arange(c), indexing="ij")
    dx = hm[kk, cc, yi, xi + 1] - hm[kk, cc, yi, xi - 1]
    dy = hm[kk, cc, yi + 1, xi] - hm[kk, cc, yi - 1, xi]
    pts += np.where(inner[..., None], np.sign(np.stack([dx, dy], -1)) * 0.25, 0.0)
    pts -= 0.5
    h = 200.0 * scales[:, None, None]
    return (pts - r * 0.5) * h / r + centers[:, None, :]


def resolve_fa_weights(cfg: dict) -> dict[str, Path]:
    """Local S3FD / FAN weight files: config paths, else the TORCH_HOME hub cache; never a download."""
    import torch

    out = {}
    for key, fname in FA_CACHE_NAMES.items():
        p = cfg.get(key)
        path = Path(p) if p else Path(torch.hub.get_dir()) / "checkpoints" / fname
        if not path.is_file():
            how = f"faces.face_alignment.{key}" + ("" if p else " (not set; looked in the TORCH_HOME cache)")
            raise PipelineError(f"{path}: {key} weights not found; set {how} to a local file "
                                f"(weights are never downloaded)")
        out[key] = path
    return out


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def make_backend(params: FaceParams, device):
    """The detector named by ``params.backend`` (cropped_aligned has none: it reads images)."""
    if params.backend == "mtcnn":
        return MTCNNBackend(params, device)
    if params.backend == "face_alignment":
        return FaceAlignmentBackend(params, device)
    raise PipelineError(f"faces.backend: {params.backend!r} is not a detector (mtcnn | face_alignment)")
