"""Per-frame audio features (HuBERT, wav2vec2, VGGish) aligned to a video's frames.

Stage ``audio_features``: one wav + the video's frames JSON -> ``features/{model}/{video}.h5``
(stores.write_features): ``features`` (n_frames, D) and ``valid`` (n_frames,).

Every model is seen as a regular *feature grid* over the 16 kHz samples: feature g looks at
samples ``[g*stride, g*stride + rf)`` and sits at the centre of that window,
``t_g = (g*stride + (rf-1)/2) / sr`` seconds.

- HuBERT / wav2vec2 (transformers, ``save_pretrained`` folder): stride = product of the conv
  strides (320 = 20 ms), rf = conv receptive field (400 = 25 ms), so t_g = 0.02 g + 0.0125 s.
  ``layer``: hidden-state index (-1 = last; 0 = the projected CNN features) or "mean" (average
  of all hidden states). Waveform normalisation (``do_normalize`` of the folder's
  preprocessor_config.json, default on) uses mean/var of the *whole* file, as a single pass would.
- VGGish (torchvggish): torchvggish's log-mel front end (25 ms window, 10 ms hop, 64 bands),
  examples of 96 log-mel frames (0.96 s, rf = 15600 samples) every ``vggish.hop_seconds``
  (default 0.24 s; 0.96 = torchvggish's own framing), so t_g = hop*g + 0.4875 s. Optional
  ``vggish.pca`` (pca_eigen_vectors, pca_means): PCA whitening + clip to [-2, 2], without
  torchvggish's 8-bit quantisation (it only loses precision).

Alignment rule (video frame i at ``timestamps[i]``, its presentation time): linear interpolation
between the two nearest feature centres; before the first / after the last centre the edge
feature is held. ``valid[i]`` is False — and the row is zeros — where the video has no audio
stream (frames JSON ``has_audio`` false), where ``timestamps[i]`` lies at or beyond the audio's
end (``n_samples / sr``), or before 0.

Long audio runs in overlapping chunks of ``chunk_seconds``; consecutive chunks share
``overlap_seconds`` (raised to at least one receptive field), chunk starts sit on the feature
grid, and each feature is taken from the chunk whose core (the chunk minus half the overlap on
each inner side) holds its centre, so stitching reproduces a single pass up to the models'
context at the boundaries (VGGish: exactly). The file is streamed chunk by chunk and the
alignment runs as features arrive, so memory is flat in the audio's duration.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .runtime import (PipelineError, autocast, file_digest, load_checkpoint, pick_device,
                      progress, read_json, setup_torch, stage_parser)

log = logging.getLogger("affect_pipeline.audio_features")

MODELS = ("hubert", "wav2vec2", "vggish")
VGGISH_SR, STFT_HOP, STFT_WIN, EXAMPLE_FRAMES = 16000, 160, 400, 96
VGGISH_WIDTHS = (64, 128, 256, 256, 512, 512)      # torchvggish make_layers() conv widths
VGGISH_POOL_AFTER = (0, 1, 3, 5)                   # max-pool after these convs (4 pools)


# ---------------------------------------------------------------- VGGish network
def make_vggish(widths=VGGISH_WIDTHS, fc=(4096, 4096, 128)):
    """torchvggish's VGG (same layer indices / state-dict keys), widths given: real or demo-sized."""
    import torch
    from torch import nn

    class VGGish(nn.Module):
        def __init__(self):
            super().__init__()
            layers, c_in = [], 1
            for i, w in enumerate(widths):
                layers += [nn.Conv2d(c_in, w, 3, padding=1), nn.ReLU(inplace=True)]
                if i in VGGISH_POOL_AFTER:
                    layers.append(nn.MaxPool2d(2, 2))
                c_in = w
            self.features = nn.Sequential(*layers)
            dims = (c_in * 6 * 4,) + tuple(fc)     # 96x64 input / 16 = 6x4
            emb = []
            for a, b in zip(dims[:-1], dims[1:]):
                emb += [nn.Linear(a, b), nn.ReLU(True)]
            self.embeddings = nn.Sequential(*emb)

        def forward(self, x):                     # (B, 1, 96, 64) log-mel examples
            x = self.features(x)
            x = x.permute(0, 2, 3, 1).contiguous().flatten(1)   # == torchvggish's transposes
            return self.embeddings(x)

    return VGGish().to(torch.float32)


def vggish_from_state_dict(sd: dict, path) -> "torch.nn.Module":
    """Build the VGGish whose widths the state dict implies, then load it strictly."""
    try:
        convs = sorted((int(k.split(".")[1]), v.shape[0]) for k, v in sd.items()
                       if k.startswith("features.") and k.endswith(".weight"))
        fcs = sorted((int(k.split(".")[1]), v.shape[0]) for k, v in sd.items()
                     if k.startswith("embeddings.") and k.endswith(".weight"))
        net = make_vggish(tuple(w for _, w in convs), tuple(w for _, w in fcs))
        net.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    except (RuntimeError, ValueError, IndexError, AttributeError) as e:
        raise PipelineError(f"{path}: not a VGGish state dict (torchvggish VGG keys "
                            f"features.N / embeddings.N expected): {str(e).splitlines()[0]}") from e
    return net


def _load_pca(path) -> tuple[np.ndarray, np.ndarray]:
    """VGGish PCA params: .npz or torch file with pca_eigen_vectors (D, D) and pca_means (D,)."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: VGGish PCA params not found (config key audio.vggish.pca)")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            d = dict(z)
    else:
        import torch

        try:  # torchvggish's released file pickles plain numpy arrays: allow exactly those
            with torch.serialization.safe_globals(_numpy_array_globals()):
                d = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any refusal -> one readable line
            raise PipelineError(f"{path}: unreadable VGGish PCA params ({str(e).splitlines()[0]}); "
                                f"save them as .npz with pca_eigen_vectors, pca_means") from e
    try:
        E = np.asarray(d["pca_eigen_vectors"], np.float32)
        m = np.asarray(d["pca_means"], np.float32).reshape(-1)
    except KeyError as e:
        raise PipelineError(f"{path}: VGGish PCA params lack {e}") from e
    if E.shape != (len(m), len(m)):
        raise PipelineError(f"{path}: pca_eigen_vectors {E.shape} does not match pca_means {m.shape}")
    return E, m


def _numpy_array_globals() -> list:
    """The globals a pickled plain numpy array needs (numpy 1 and 2 module names)."""
    rec = np._core.multiarray._reconstruct
    dtypes = [type(np.dtype(t)) for t in (np.float32, np.float64, np.float16, np.int64)]
    return ([rec, (rec, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype]
            + dtypes + [(t, f"numpy.dtypes.{t.__name__}") for t in dtypes])


# ---------------------------------------------------------------- models on a feature grid
@dataclass
class AudioModel:
    """A loaded extractor: ``forward`` maps equal-length chunks (B, L) to (B, T, dim) features."""
    name: str
    net: object
    device: object
    sample_rate: int
    stride: int          # samples between features
    rf: int              # samples a feature sees
    dim: int
    digest: str
    layer: object = None
    normalize: bool = False
    hop_frames: int = 0
    pca: tuple | None = None
    example_batch: int = 256

    def centres(self, g: np.ndarray) -> np.ndarray:
        """Seconds of feature g's window centre."""
        return (np.asarray(g, np.float64) * self.stride + (self.rf - 1) / 2) / self.sample_rate

    def n_features(self, n_samples: int) -> int:
        return 0 if n_samples < self.rf else (n_samples - self.rf) // self.stride + 1

    def forward(self, chunks: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode(), autocast(self.device):
            if self.name == "vggish":
                return self._forward_vggish(chunks)
            x = torch.from_numpy(np.ascontiguousarray(chunks, np.float32)).to(self.device)
            out = self.net(x, output_hidden_states=True, return_dict=True)
            hs = out.hidden_states
            h = torch.stack(hs).float().mean(0) if self.layer == "mean" else hs[int(self.layer)]
            return h.float().cpu().numpy()

    def _forward_vggish(self, chunks):
        import torch

        ex = [vggish_examples(c, self.hop_frames) for c in chunks]
        t = ex[0].shape[0]
        x = torch.from_numpy(np.concatenate(ex)[:, None]).to(self.device)
        y = torch.cat([self.net(x[s:s + self.example_batch]).float()
                       for s in range(0, len(x), self.example_batch)])
        if self.pca is not None:
            E, m = (torch.as_tensor(a, device=self.device) for a in self.pca)
            y = ((y - m) @ E.T).clamp(-2.0, 2.0)
        return y.cpu().numpy().reshape(len(chunks), t, -1)


def vggish_examples(wav: np.ndarray, hop_frames: int) -> np.ndarray:
    """torchvggish's log-mel (64 bands, 10 ms hop) cut into 96-frame examples every hop_frames."""
    from torchvggish import mel_features, vggish_params as vp

    n = (len(wav) - STFT_WIN) // STFT_HOP + 1
    if n < EXAMPLE_FRAMES:
        return np.zeros((0, EXAMPLE_FRAMES, vp.NUM_BANDS), np.float32)
    log_mel = mel_features.log_mel_spectrogram(
        np.asarray(wav, np.float64), audio_sample_rate=vp.SAMPLE_RATE, log_offset=vp.LOG_OFFSET,
        window_length_secs=vp.STFT_WINDOW_LENGTH_SECONDS, hop_length_secs=vp.STFT_HOP_LENGTH_SECONDS,
        num_mel_bins=vp.NUM_MEL_BINS, lower_edge_hertz=vp.MEL_MIN_HZ, upper_edge_hertz=vp.MEL_MAX_HZ)
    return mel_features.frame(log_mel, EXAMPLE_FRAMES, hop_frames).astype(np.float32)


def _conv_grid(cfg) -> tuple[int, int]:
    """(stride, receptive field) in samples of a wav2vec2-style conv feature encoder."""
    stride, rf = 1, 1
    for k, s in zip(cfg.conv_kernel, cfg.conv_stride):
        rf += (k - 1) * stride
        stride *= s
    return stride, rf


def _missing(weights, key, what):
    raise PipelineError(f"{weights}: {what} not found (config key {key}); set {key} to a local path")


def load_audio_model(name: str, weights, params: dict | None = None, device=None,
                     weights_key: str | None = None) -> AudioModel:
    """Load ``name`` (hubert | wav2vec2 | vggish) from a local path; never downloads.

    ``params``: the config's ``audio`` section (per-model keys under ``params[name]``).
    """
    import torch

    if name not in MODELS:
        raise PipelineError(f"unknown audio model {name!r}; known: {', '.join(MODELS)}")
    params = params or {}
    mp = params.get(name) or {}
    key = weights_key or f"audio.{name}.weights"
    device = torch.device("cpu") if device is None else torch.device(device)
    if weights is None or str(weights) in ("", "None", "null"):
        raise PipelineError(f"config key {key} is not set: the {name} weights must be a local path")
    weights = Path(weights)
    if name == "vggish":
        if not weights.is_file():
            _missing(weights, key, "VGGish state dict (.pth)")
        sd = load_checkpoint(weights)
        if isinstance(sd, dict) and "state_dict" in sd:
            sd = sd["state_dict"]
        net = vggish_from_state_dict(sd, weights).to(device).eval()
        hop_s = float(mp.get("hop_seconds", 0.24))
        hop = max(1, round(hop_s / 0.01))
        pca = _load_pca(mp["pca"]) if mp.get("pca") else None
        dim = net.embeddings[-2].out_features
        if pca is not None and pca[0].shape[0] != dim:
            raise PipelineError(f"{mp['pca']}: PCA is {pca[0].shape[0]}-d but the VGGish embedding is {dim}-d")
        digest = file_digest(weights) + (f"+pca:{file_digest(mp['pca'])}" if pca is not None else "")
        return AudioModel(name, net, device, VGGISH_SR, STFT_HOP * hop,
                          (EXAMPLE_FRAMES - 1) * STFT_HOP + STFT_WIN, dim, digest,
                          hop_frames=hop, pca=pca, example_batch=int(mp.get("batch_size", 256)))
    return _load_hf(name, weights, key, mp, device)


def _load_hf(name, weights: Path, key, mp, device) -> AudioModel:
    import torch
    from transformers import HubertModel, Wav2Vec2Model
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()        # keep job logs small

    if not weights.is_dir():
        _missing(weights, key, f"{name} save_pretrained folder")
    cfg_path = weights / "config.json"
    if not cfg_path.exists():
        raise PipelineError(f"{weights}: no config.json: not a save_pretrained folder (config key {key})")
    model_type = read_json(cfg_path).get("model_type")
    cls = HubertModel if name == "hubert" else Wav2Vec2Model
    if model_type != name:
        raise PipelineError(f"{cfg_path}: model_type is {model_type!r}, expected {name!r} (config key {key})")
    try:
        net = cls.from_pretrained(weights, local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise PipelineError(f"{weights}: cannot load {name} weights (config key {key}): "
                            f"{str(e).splitlines()[0]}") from e
    net = net.to(device).eval()
    pre = weights / "preprocessor_config.json"
    pre_cfg = read_json(pre) if pre.exists() else {}
    layer = mp.get("layer", -1)
    n_states = net.config.num_hidden_layers + 1
    if layer != "mean" and not (isinstance(layer, int) and -n_states <= layer < n_states):
        raise PipelineError(f"audio.{name}.layer = {layer!r}: an index in [{-n_states}, {n_states}) "
                            f"or \"mean\" ({weights} has {n_states} hidden states)")
    stride, rf = _conv_grid(net.config)
    return AudioModel(name, net, device, int(pre_cfg.get("sampling_rate", 16000)), stride, rf,
                      net.config.hidden_size, file_digest(weights), layer=layer,
                      normalize=bool(pre_cfg.get("do_normalize", True)))


# ---------------------------------------------------------------- audio sources
class _Source:
    """Mono float32 samples by range; zero-padded past the end. From an array or a wav (streamed)."""

    def __init__(self, wav, sr: int | None = None):
        self.sf = None
        if isinstance(wav, (str, os.PathLike)):
            import soundfile as sf

            path = Path(wav)
            if not path.exists():
                raise PipelineError(f"{path}: audio file not found")
            try:
                self.sf = sf.SoundFile(str(path))
            except (RuntimeError, sf.LibsndfileError) as e:
                raise PipelineError(f"{path}: unreadable audio ({e})") from e
            self.path, self.sr, self.n = path, self.sf.samplerate, self.sf.frames
        else:
            if sr is None:
                raise ValueError("extract(): a waveform array needs its sample rate sr")
            a = np.asarray(wav, np.float32)
            self.x = a.mean(1) if a.ndim == 2 else a
            self.path, self.sr, self.n = "<array>", int(sr), len(self.x)

    def read(self, start: int, stop: int) -> np.ndarray:
        if self.sf is None:
            out = self.x[start:stop]
        else:
            self.sf.seek(min(start, self.n))
            out = self.sf.read(max(0, min(stop, self.n) - start), dtype="float32", always_2d=True).mean(1)
        return np.pad(out, (0, stop - start - len(out))) if len(out) < stop - start else out

    def stats(self, block: int = 1 << 20) -> tuple[float, float]:
        """Mean and variance of the whole signal, streamed (float64 sums)."""
        s = s2 = 0.0
        for a in range(0, self.n, block):
            x = self.read(a, min(a + block, self.n)).astype(np.float64)
            s, s2 = s + x.sum(), s2 + (x * x).sum()
        mean = s / max(self.n, 1)
        return mean, max(s2 / max(self.n, 1) - mean * mean, 0.0)

    def close(self):
        if self.sf is not None:
            self.sf.close()


# ---------------------------------------------------------------- chunking + alignment
def chunk_plan(n_samples: int, stride: int, rf: int, chunk: int, overlap: int):
    """[(start, stop, g_lo, g_hi)]: chunk sample range and the global features it keeps.

    Starts lie on the feature grid; the overlap is at least rf + stride, so a kept feature's
    window lies inside its chunk. Boundary between chunks k, k+1 = middle of their overlap.
    """
    n = max(n_samples, rf)                       # audio shorter than one window: zero-padded
    g_total = (n - rf) // stride + 1
    overlap = math.ceil(max(overlap, rf + stride) / stride) * stride
    step = max(stride, (max(chunk, overlap + stride) - overlap) // stride * stride)
    size, half = step + overlap, (rf - 1) / 2
    plan, a, lo = [], 0, 0
    while True:
        last = a + size >= n
        hi = g_total if last else min(g_total, math.ceil((a + step + overlap / 2 - half) / stride))
        plan.append((a, min(a + size, n), lo, hi))
        if last:
            return plan, g_total
        a, lo = a + step, hi


class Aligner:
    """Streams features in grid order and linearly interpolates them at video timestamps."""

    def __init__(self, times: np.ndarray, centre0: float, step: float, g_total: int, dim: int):
        self.out = np.zeros((len(times), dim), np.float32)
        p = np.clip((np.asarray(times, np.float64) - centre0) / step, 0, max(g_total - 1, 0))
        self.g0 = np.minimum(np.floor(p).astype(np.int64), max(g_total - 2, 0))
        self.w = (p - self.g0).astype(np.float32)[:, None]
        self.order = np.argsort(self.g0, kind="stable")
        self.sorted_g0 = self.g0[self.order]
        self.prev, self.g_total, self.done = None, g_total, 0

    def push(self, g_start: int, feats: np.ndarray) -> None:
        """Features of grid indices g_start .. g_start+len-1 (contiguous with the previous push)."""
        if not len(feats):
            return
        if self.prev is not None:
            feats, g_start = np.concatenate([self.prev[None], feats]), g_start - 1
        g_end = g_start + len(feats)              # rows g_start..g_end-1 available
        lim = g_end if self.g_total == 1 else g_end - 1   # frame needs rows g0 and g0 + 1
        k = int(np.searchsorted(self.sorted_g0, lim, side="left"))
        idx = self.order[self.done:k]
        if len(idx):
            a = self.g0[idx] - g_start
            b = np.minimum(a + 1, len(feats) - 1)
            self.out[idx] = (1 - self.w[idx]) * feats[a] + self.w[idx] * feats[b]
        self.done, self.prev = k, feats[-1].copy()


def extract(model: AudioModel, wav, sr: int | None, timestamps, *, chunk_seconds: float = 30.0,
            overlap_seconds: float = 1.0, batch_size: int = 2, show_progress: bool = False):
    """(features (n_frames, dim) float32, valid (n_frames,) bool) of ``wav`` at ``timestamps``.

    ``wav``: a path (streamed) or a mono/(n, channels) array with sample rate ``sr``.
    """
    times = np.asarray(timestamps, np.float64)
    src = _Source(wav, sr)
    try:
        if src.sr != model.sample_rate:
            raise PipelineError(f"{src.path}: sample rate {src.sr} Hz, but {model.name} needs "
                                f"{model.sample_rate} Hz (resample in extract_audio)")
        valid = (times >= 0) & (times < src.n / src.sr) & (src.n > 0)
        if not valid.any():
            return np.zeros((len(times), model.dim), np.float32), valid
        mean, var = src.stats() if model.normalize else (0.0, 1.0)
        scale = 1.0 / math.sqrt(var + 1e-7)
        plan, g_total = chunk_plan(src.n, model.stride, model.rf, int(chunk_seconds * src.sr),
                                   int(overlap_seconds * src.sr))
        al = Aligner(times, float(model.centres(0)), model.stride / model.sample_rate, g_total, model.dim)
        groups = _batches(plan, batch_size)
        for group in progress(groups, desc=model.name, unit="batch", disable=not show_progress):
            x = np.stack([src.read(a, b) for a, b, _, _ in group])
            if model.normalize:
                x = (x - mean) * scale
            y = model.forward(x)
            for (a, _, lo, hi), f in zip(group, y):
                s = a // model.stride
                if hi - s > f.shape[0]:
                    raise RuntimeError(f"{model.name}: chunk gave {f.shape[0]} features, need {hi - s}")
                al.push(lo, f[lo - s:hi - s])
        out = al.out
        out[~valid] = 0
        return out, valid
    finally:
        src.close()


def _batches(plan, batch_size):
    """Consecutive chunks of equal length, ``batch_size`` at a time (no padding, no masks)."""
    out, cur = [], []
    for c in plan:
        if cur and (len(cur) == batch_size or c[1] - c[0] != cur[0][1] - cur[0][0]):
            out.append(cur)
            cur = []
        cur.append(c)
    return out + [cur] if cur else out


# ---------------------------------------------------------------- stage: audio_features
def main(argv: list[str]) -> int:
    p = stage_parser("audio_features", "HuBERT / wav2vec2 / VGGish features per video frame")
    p.add_argument("--model", required=True, choices=MODELS)
    p.add_argument("--weights", default=None, help="local weights (default: params[model].weights)")
    p.add_argument("--weights-key", default=None, help="config key named in errors")
    p.add_argument("--audio", required=True, help="16 kHz mono wav (extract_audio)")
    p.add_argument("--frames", required=True, help="frames JSON (extract_frames)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    prm = a.params
    key = a.weights_key or f"audio.{a.model}.weights"
    weights = a.weights if a.weights is not None else (prm.get(a.model) or {}).get("weights")
    setup_torch(a.threads, a.seed)
    fr = read_json(a.frames)
    for k in ("timestamps", "n_frames", "has_audio"):
        if k not in fr:
            raise PipelineError(f"{a.frames}: frames JSON lacks {k!r}")
    times = np.asarray(fr["timestamps"], np.float64)
    if len(times) != int(fr["n_frames"]):
        raise PipelineError(f"{a.frames}: {len(times)} timestamps but n_frames = {fr['n_frames']}")
    model = load_audio_model(a.model, weights, prm, pick_device(a.device), weights_key=key)
    want_sr = int(prm.get("sample_rate", model.sample_rate))
    if want_sr != model.sample_rate:
        raise PipelineError(f"audio.sample_rate = {want_sr}, but {a.model} ({weights}) expects {model.sample_rate} Hz")
    if fr["has_audio"]:
        feats, valid = extract(model, a.audio, None, times, chunk_seconds=float(prm.get("chunk_seconds", 30)),
                               overlap_seconds=float(prm.get("overlap_seconds", 1.0)),
                               batch_size=int(prm.get("batch_size", 2)), show_progress=True)
    else:
        log.info("%s: no audio stream: %d zero rows, valid = false", a.frames, len(times))
        feats, valid = np.zeros((len(times), model.dim), np.float32), np.zeros(len(times), bool)
    from .stores import write_features

    write_features(a.out, feats, valid, extractor=a.model, checkpoint_digest=model.digest,
                   fps=float(fr.get("fps", 0.0)), layer=str(model.layer), has_audio=bool(fr["has_audio"]),
                   sample_rate=model.sample_rate, feature_stride_s=model.stride / model.sample_rate,
                   feature_centre0_s=float(model.centres(0)), alignment="linear-between-centres")
    log.info("%s: %d frames x %d (%s), %d valid", a.out, len(feats), model.dim, a.model, int(valid.sum()))
    return 0


# ---------------------------------------------------------------- stage: make_demo_audio_models
def demo_configs(hidden: int = 32):
    """Tiny HuBERT / wav2vec2 configs: real conv strides/kernels (20 ms frames), narrow widths.

    ``feat_extract_norm="layer"`` (as the large models) keeps the front end frame-local, so
    chunked extraction equals a single pass away from chunk boundaries.
    """
    from transformers import HubertConfig, Wav2Vec2Config

    kw = dict(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2, intermediate_size=2 * hidden,
              conv_dim=(32,) * 7, feat_extract_norm="layer", num_conv_pos_embeddings=16,
              num_conv_pos_embedding_groups=4, do_stable_layer_norm=False)
    return {"hubert": HubertConfig(**kw), "wav2vec2": Wav2Vec2Config(**kw, codevector_dim=16, proj_codevector_dim=16)}


DEMO_VGGISH = dict(widths=(8, 16, 32, 32, 64, 64), fc=(256, 256, 128))


def make_demo_models(out_dir, seed: int = 0) -> Path:
    """Random tiny hubert/, wav2vec2/ (save_pretrained) and vggish.pth under out_dir, atomically.

    The demo VGGish keeps torchvggish's topology and 128-d output with 1/8 conv widths and
    256-wide FC layers (~0.5 M params, ~2 MB) instead of 72 M params / 290 MB; the loader infers
    widths from the state dict, so the real checkpoint goes through the same code.
    """
    import shutil

    import torch
    from transformers import HubertModel, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        cfgs = demo_configs()
        for name, cls in (("hubert", HubertModel), ("wav2vec2", Wav2Vec2Model)):
            torch.manual_seed(seed)
            cls(cfgs[name]).eval().save_pretrained(tmp / name)
            Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False).save_pretrained(tmp / name)
        torch.manual_seed(seed)
        sd = make_vggish(**DEMO_VGGISH).state_dict()
        torch.save(sd, tmp / "vggish.pth")
        (tmp / "README.txt").write_text("Randomly initialised demo audio models (seed %d); not pretrained.\n" % seed)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def make_demo_models_main(argv: list[str]) -> int:
    p = stage_parser("make_demo_audio_models", "small random HuBERT / wav2vec2 / VGGish for the demo")
    p.add_argument("--out-dir", required=True)
    a = p.parse_args(argv)
    setup_torch(a.threads, a.seed)
    out = make_demo_models(a.out_dir, a.seed)
    log.info("demo audio models in %s: %s", out, ", ".join(sorted(x.name for x in out.iterdir())))
    return 0
