"""crop_faces: detect, track and align one face per frame into the face store ``faces/{video}.h5``.

Backends (params ``backend``):
- ``mtcnn`` (default): facenet-pytorch MTCNN, which ships its weights; boxes + 5 landmarks.
- ``face_alignment``: S3FD boxes + FAN 68 landmarks (reduced to the same 5 points: eye centres,
  nose tip, mouth corners), weights from local files (params ``face_alignment: {s3fd, fan}``)
  or the TORCH_HOME hub cache; never downloaded.
- ``cropped_aligned``: the official Aff-Wild2 crops ``{cropped_dir}/{video}/{i:05d}.jpg``
  (1-based); a missing image is a frame without a face. No decoding, no detection.

Alignment: a similarity transform (Umeyama least squares, deterministic) maps the 5 points onto
the ArcFace 112-px template scaled to ``size``; ``margin`` (a fraction of ``size`` per side)
shrinks the template towards the centre so more context stays in the crop.

Which face, when there are several (documented choice):
- ``--side none``: the first face is the largest; after that, the face that best continues the
  track (highest IoU with the last found box minus its centre distance in units of that box's
  diagonal), so a passer-by does not steal the track.
- ``--side left|right`` (``X_left`` / ``X_right`` videos: two people in one video): with two or
  more faces, the one whose box centre x is smallest / largest; with a single face, take it
  only if it continues this side's track or lies in this side's half of the frame, so the
  partner's face is not taken when ours is missed.
Every decoded frame gets a row; a frame without an accepted face has found=false (the store fills
zeros). The store must have exactly the frames JSON's ``n_frames`` rows, else the job fails.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .runtime import PipelineError, pick_device, progress, setup_torch, stage_parser
from .stores import write_face_store
from .video import iter_frame_batches, read_frames_json

log = logging.getLogger("affect_pipeline.faces")

DEFAULTS = {"backend": "mtcnn", "size": 224, "margin": 0.0, "batch_size": 32, "min_face_size": 20,
            "score_threshold": 0.9, "face_alignment": {"s3fd": None, "fan": None}}

#: ArcFace 5-point template for 112x112 crops (left eye, right eye, nose, mouth left, mouth right;
#: left = image left), scaled to the crop size (224: the paper's crops).
ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)

#: hub-cache file names of the face_alignment 1.x weights (used when params give no path)
FA_CACHE_NAMES = {"s3fd": "s3fd-619a316812.pth", "fan": "2DFAN4-11f355bf06.pth.tar"}


# ---------------------------------------------------------------- alignment
def template(size: int, margin: float = 0.0) -> np.ndarray:
    """The 5 template points in a ``size`` crop, with ``margin`` x size of extra border per side."""
    u = ARCFACE_112 / 112.0
    return (u + margin) / (1.0 + 2.0 * margin) * size


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 least-squares similarity (rotation, uniform scale, translation) src -> dst (Umeyama)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    e = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt))])
    r = u @ e @ vt
    scale = np.trace(np.diag(sig) @ e) / max((s ** 2).sum() / len(src), 1e-12)
    m = np.empty((2, 3))
    m[:, :2] = scale * r
    m[:, 2] = md - scale * r @ ms
    return m


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
    x1 = np.maximum(boxes[:, 0], box[0]); y1 = np.maximum(boxes[:, 1], box[1])
    x2 = np.minimum(boxes[:, 2], box[2]); y2 = np.minimum(boxes[:, 3], box[3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / np.maximum(area(boxes) + area(box) - inter, 1e-9)


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


# ---------------------------------------------------------------- backends
class MTCNNBackend:
    """facenet-pytorch MTCNN on a batch of equal-size frames: boxes, probabilities, 5 landmarks."""

    n_landmarks, detector_landmarks = 5, True

    def __init__(self, params: dict, device):
        from facenet_pytorch import MTCNN

        self.threshold = float(params["score_threshold"])
        self.net = MTCNN(keep_all=True, select_largest=False, post_process=False,
                         min_face_size=int(params["min_face_size"]), device=device)

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

    def __init__(self, params: dict, device):
        import torch
        from face_alignment.detection.sfd.sfd_detector import SFDDetector
        from face_alignment.models import FAN

        paths = resolve_fa_weights(params.get("face_alignment") or {})
        self.device, self.threshold = device, float(params["score_threshold"])
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
    the higher neighbour, -0.5, inverse crop transform) vectorised, without its integer rounding.
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
    """Local S3FD / FAN weight files: params paths, else the TORCH_HOME hub cache; never a download."""
    import torch

    out = {}
    for key, fname in FA_CACHE_NAMES.items():
        p = cfg.get(key)
        path = Path(p) if p else Path(torch.hub.get_dir()) / "checkpoints" / fname
        if not path.is_file():
            how = f"faces.face_alignment.{key}" if p else f"faces.face_alignment.{key} (not set; looked in the TORCH_HOME cache)"
            raise PipelineError(f"{path}: {key} weights not found; set {how} to a local file "
                                f"(weights are never downloaded)")
        out[key] = path
    return out


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def make_backend(params: dict, device):
    name = params["backend"]
    if name == "mtcnn":
        return MTCNNBackend(params, device)
    if name == "face_alignment":
        return FaceAlignmentBackend(params, device)
    raise PipelineError(f"faces.backend: unknown backend {name!r} (mtcnn | face_alignment | cropped_aligned)")


# ---------------------------------------------------------------- the stage
def release_memory() -> None:
    """Give freed heap back to the OS (glibc malloc_trim) so RSS stays flat over long videos.

    The detector's batch tensors vary in size with the number of candidate boxes; without a trim
    glibc keeps the fragments and peak RSS drifts up with video length. No-op off glibc.
    """
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


def faces_in_batch(backend, frames: np.ndarray, prev, side: str, size: int, margin: float):
    """Detect on a batch, keep one face per frame (tracking ``prev``), align: the store's columns."""
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
    return crops, found, score, box, lmk, prev


def crop_video(video, info: dict, out, *, video_id: str, params: dict, side: str = "none",
               threads: int = 1, device="cpu") -> dict:
    """Detect, track and align faces in ``video``, streaming, into the face store ``out``."""
    backend = make_backend(params, device)
    size, margin, bs = int(params["size"]), float(params["margin"]), int(params["batch_size"])
    n_expected, prev, n_found = int(info["n_frames"]), None, 0
    ref_ts = np.asarray(info["timestamps"], np.float64)
    bar = progress(total=n_expected, desc=f"faces {video_id}", unit="fr")
    with write_face_store(out, video_id=video_id, size=size, backend=params["backend"], fps=info["fps"],
                          n_landmarks=backend.n_landmarks, side=side, margin=margin,
                          source=str(video)) as w:
        for idx, ts, frames in iter_frame_batches(video, bs, threads):
            if idx[-1] >= n_expected:
                raise PipelineError(f"{video}: decoding yields more frames than the {n_expected} in its "
                                    f"frames JSON (video changed since extract_frames? rerun it)")
            if np.abs(ts - ref_ts[idx]).max() > 1e-3:
                raise PipelineError(f"{video}: frame timestamps differ from its frames JSON at frame "
                                    f"{int(idx[0])}+ (a different or re-encoded video? rerun extract_frames)")
            crops, found, score, box, lmk, prev = faces_in_batch(backend, frames, prev, side, size, margin)
            w.append(crops, found, score, box, lmk, ts)
            n_found += int(found.sum())
            bar.update(len(frames))
            release_memory()
        bar.close()
        if w.n != n_expected:
            raise PipelineError(f"{video}: decoded {w.n} frames but its frames JSON says {n_expected} "
                                f"(truncated or changed video? rerun extract_frames)")
        w.f.attrs["n_found"] = n_found
    return {"n_frames": n_expected, "n_found": n_found}


def _cropped_dir(root, video_id: str) -> Path:
    root = Path(root)
    for d in (root / video_id, root):
        if d.is_dir() and (d is not root or next(d.glob("[0-9][0-9][0-9][0-9][0-9].jpg"), None)):
            return d
    raise PipelineError(f"{root / video_id}: no official cropped_aligned folder for video {video_id}")


def crop_from_official(cropped_dir, info: dict, out, *, video_id: str, params: dict, side: str = "none") -> dict:
    """Official crops ``{dir}/{video}/{i:05d}.jpg`` into the store; a missing image = no face."""
    import cv2

    d = _cropped_dir(cropped_dir, video_id)
    size, bs, n = int(params["size"]), int(params["batch_size"]), int(info["n_frames"])
    ts, n_found = np.asarray(info["timestamps"], np.float64), 0
    with write_face_store(out, video_id=video_id, size=size, backend="cropped_aligned", fps=info["fps"],
                          n_landmarks=5, side=side, margin=0.0, source=str(d)) as w:
        for s in progress(range(0, n, bs), desc=f"crops {video_id}", unit="batch"):
            crops = []
            for i in range(s, min(s + bs, n)):
                f = d / f"{i + 1:05d}.jpg"
                img = cv2.imread(str(f), cv2.IMREAD_COLOR) if f.exists() else None
                if f.exists() and img is None:
                    raise PipelineError(f"{f}: not a readable JPEG")
                if img is not None and img.shape[:2] != (size, size):
                    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
                crops.append(None if img is None else img[..., ::-1])
            b = len(crops)
            found = np.array([c is not None for c in crops])
            w.append(crops, found, found.astype(np.float32), np.zeros((b, 4)), np.zeros((b, 5, 2)), ts[s:s + b])
            n_found += int(found.sum())
        w.f.attrs["n_found"] = n_found
    extra = len(list(d.glob("*.jpg"))) - n_found
    if extra > 0:
        log.warning("%s: %d images beyond the video's %d frames are ignored", d, extra, n)
    return {"n_frames": n, "n_found": n_found}


def main(argv: list[str]) -> int:
    p = stage_parser("crop_faces", "Detect, track and align one face per frame into faces/{video}.h5.")
    p.add_argument("--video", required=True, help="the media file")
    p.add_argument("--frames", required=True, help="frames JSON of the media file (n_frames, timestamps)")
    p.add_argument("--out", required=True, help="results/faces/{video}.h5 (the stem is the video id)")
    p.add_argument("--side", choices=["left", "right", "none"], default="none")
    p.add_argument("--cropped-dir", default=None, help="official cropped_aligned root (backend cropped_aligned)")
    a = p.parse_args(argv)
    params = {**DEFAULTS, **a.params}
    if a.cropped_dir:
        params["backend"] = "cropped_aligned"
    info = read_frames_json(a.frames)
    video_id = Path(a.out).stem
    torch = setup_torch(a.threads, a.seed)
    import cv2

    cv2.setNumThreads(a.threads)
    if params["backend"] == "cropped_aligned":
        if not a.cropped_dir:
            raise PipelineError("faces.backend cropped_aligned needs --cropped-dir (affwild2.cropped_aligned)")
        r = crop_from_official(a.cropped_dir, info, a.out, video_id=video_id, params=params, side=a.side)
    else:
        device = pick_device(a.device)
        r = crop_video(a.video, info, a.out, video_id=video_id, params=params, side=a.side,
                       threads=a.threads, device=device)
    frac = r["n_found"] / max(r["n_frames"], 1)
    if r["n_found"] == 0:
        log.warning("%s: no face found in any of its %d frames; the store marks every frame found=false",
                    a.video, r["n_frames"])
    log.info("%s: face in %d/%d frames (%.1f %%) -> %s [torch threads %d]", video_id, r["n_found"],
             r["n_frames"], 100 * frac, a.out, torch.get_num_threads())
    return 0

