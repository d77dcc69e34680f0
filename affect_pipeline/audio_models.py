"""The audio models of ``audio_features``, loaded from local files (never downloaded).

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
  (0.96 = torchvggish's own framing), so t_g = hop*g + 0.4875 s. Optional ``vggish.pca``
  (pca_eigen_vectors, pca_means): PCA whitening + clip to [-2, 2], without torchvggish's 8-bit
  quantisation (it only loses precision).

The demo's small random models (``demo/audio_models.py``) have the same file formats and are
read back by the same loaders.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import need
from .runtime import PipelineError, autocast, file_digest, load_checkpoint, read_json

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


def load_audio_model(name: str, weights, settings: dict, device=None, weights_key: str | None = None
                     ) -> AudioModel:
    """Load ``name`` (hubert | wav2vec2 | vggish) from a local path; never downloads.

    ``settings``: the model's config section (``audio.<name>``: layer; or pca, hop_seconds, batch_size).
    """
    import torch

    if name not in MODELS:
        raise PipelineError(f"unknown audio model {name!r}; known: {', '.join(MODELS)}")
    key, where = weights_key or f"audio.{name}.weights", f"audio.{name}"
    device = torch.device("cpu") if device is None else torch.device(device)
    if weights is None or str(weights) in ("", "None", "null"):
        raise PipelineError(f"config key {key} is not set: the {name} weights must be a local path")
    weights = Path(weights)
    if name != "vggish":
        return _load_hf(name, weights, key, need(settings, "layer", where), device)
    hop_s, pca_path = float(need(settings, "hop_seconds", where)), need(settings, "pca", where)
    example_batch = int(need(settings, "batch_size", where))
    if not weights.is_file():
        _missing(weights, key, "VGGish state dict (.pth)")
    sd = load_checkpoint(weights)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    net = vggish_from_state_dict(sd, weights).to(device).eval()
    hop = max(1, round(hop_s / 0.01))
    pca = _load_pca(pca_path) if pca_path else None
    dim = net.embeddings[-2].out_features
    if pca is not None and pca[0].shape[0] != dim:
        raise PipelineError(f"{pca_path}: PCA is {pca[0].shape[0]}-d but the VGGish embedding is {dim}-d")
    digest = file_digest(weights) + (f"+pca:{file_digest(pca_path)}" if pca is not None else "")
    return AudioModel(name, net, device, VGGISH_SR, STFT_HOP * hop, (EXAMPLE_FRAMES - 1) * STFT_HOP + STFT_WIN,
                      dim, digest, hop_frames=hop, pca=pca, example_batch=example_batch)


def _load_hf(name, weights: Path, key, layer, device) -> AudioModel:
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
    n_states = net.config.num_hidden_layers + 1
    if layer != "mean" and not (isinstance(layer, int) and -n_states <= layer < n_states):
        raise PipelineError(f"audio.{name}.layer = {layer!r}: an index in [{-n_states}, {n_states}) "
                            f"or \"mean\" ({weights} has {n_states} hidden states)")
    stride, rf = _conv_grid(net.config)
    return AudioModel(name, net, device, int(pre_cfg.get("sampling_rate", 16000)), stride, rf,
                      net.config.hidden_size, file_digest(weights), layer=layer,
                      normalize=bool(pre_cfg.get("do_normalize", True)))
