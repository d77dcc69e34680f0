"""The audio models of ``audio_features``, loaded from local files (never downloaded).

Every model is seen as a regular *feature grid* over the 16 kHz samples: feature g looks at
samples ``[g*stride, g*stride + rf)`` and sits at the centre of that window,
``t_g = (g*stride + (rf-1)/2) / sr`` seconds.

- HuBERT / wav2vec2: stride = product of the conv strides (320 = 20 ms), rf = conv receptive
  field (400 = 25 ms), so t_g = 0.02 g + 0.0125 s. ``layer``: hidden-state index (-1 = last =
  the model's output; 0 = the encoder's input: projected CNN features + positional conv) or
  "mean" (average of all hidden states); the hidden states are transformers'
  ``output_hidden_states`` (the layers' raw outputs) for every weights format, except that the
  last one is the model's output, ``last_hidden_state`` (fairseq's features): in a pre-norm
  ("stable layer norm": HuBERT-Large/XL, wav2vec2-large-lv60/robust/XLSR) encoder that is the
  last layer's output *after* the encoder's final LayerNorm, which transformers'
  ``hidden_states[-1]`` leaves out (post-norm models: the two are the same). Waveform
  normalisation uses mean/var of the *whole* file, as a single pass would. The weights' kind is
  read from the path and its content:
  (a) a folder: a transformers ``save_pretrained`` folder, run by transformers; normalisation =
      ``do_normalize`` of its preprocessor_config.json (default on);
  (b) a file holding a ``torchaudio.models.Wav2Vec2Model`` state dict (the ``.pth`` files that
      ``torchaudio.pipelines`` bundles load), built with ``torchaudio.models.wav2vec2_model``.
      Its arguments come from a sidecar JSON next to it (same stem, ``.json``: the bundle's
      ``_params``, i.e. wav2vec2_model keywords, plus optional ``normalize_waveform`` (default
      false) and ``sample_rate`` (16000)); without one, from the one ``torchaudio.pipelines``
      HUBERT_* / WAV2VEC2_* bundle whose parameter shapes the state dict has (strides, heads and
      norm order cannot be read from weights, so an unknown shape needs the sidecar);
  (c) a fairseq checkpoint (a dict with ``model`` and ``cfg`` or ``args``, as fairseq saves it):
      its config gives the wav2vec2_model arguments (``task.normalize``: normalisation), its keys
      are mapped by torchaudio's fairseq importer. fairseq/omegaconf objects inside (task
      dictionaries, enums) load as inert stubs; any other pickled object is refused.
- VGGish (torchvggish state dict): torchvggish's log-mel front end (25 ms window, 10 ms hop,
  64 bands), computed with torchaudio on the stage's device (:func:`make_log_mel`, the mel
  matrix is torchvggish's own), examples of 96 log-mel frames (0.96 s, rf = 15600 samples) every
  ``vggish.hop_seconds`` (0.96 = torchvggish's own framing), so t_g = hop*g + 0.4875 s. Optional
  ``vggish.pca`` (pca_eigen_vectors, pca_means): PCA whitening + clip to [-2, 2], without
  torchvggish's 8-bit quantisation (it only loses precision).

(b) and (c) are told apart by content, not by file extension, and run on torchaudio's model;
the same weights give the same features in all three forms (tests/audio/test_audio_checkpoints.py).
The demo's small random models (:mod:`affect_pipeline.demo.make_demo_audio_models`) are
save_pretrained folders and a torchvggish state dict, read back by the same loaders; that module
also writes them as (b) and (c).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from affect_pipeline.audio.checkpoints import (
    bundle_spec,
    fairseq_spec,
    fairseq_state_dict,
    load_pickle,
    numpy_array_globals,
    sidecar_spec,
)
from affect_pipeline.common.config import need
from affect_pipeline.common.runtime import autocast, file_digest, load_checkpoint, read_json
from affect_pipeline.common.errors import PipelineError

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
            with torch.serialization.safe_globals(numpy_array_globals()):
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


# ---------------------------------------------------------------- VGGish log-mel front end
def make_log_mel(hop_frames: int):
    """torchvggish's log-mel examples as a torch module: (B, L) samples -> (B, n, 96, 64).

    torchaudio's magnitude spectrogram of 400-sample periodic-Hann frames every 160 samples,
    FFT 512 (torch.stft centres the window in the FFT frame, hence the 56-sample padding that
    puts frame t on samples [160 t, 160 t + 400) as torchvggish frames it), times torchvggish's
    mel matrix (triangles in mel space, DC bin dropped), log(x + 0.01), cut into 96-frame examples.
    """
    import torch
    import torchaudio
    from torchvggish import mel_features
    from torchvggish import vggish_params as vp

    n_fft = 2 ** int(np.ceil(np.log2(STFT_WIN)))

    class LogMel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.spec = torchaudio.transforms.Spectrogram(n_fft=n_fft, win_length=STFT_WIN, hop_length=STFT_HOP,
                                                          center=False, power=1.0)
            mel = mel_features.spectrogram_to_mel_matrix(vp.NUM_MEL_BINS, n_fft // 2 + 1, VGGISH_SR,
                                                         vp.MEL_MIN_HZ, vp.MEL_MAX_HZ)
            self.register_buffer("mel", torch.from_numpy(mel).float())
            self.pad = (n_fft - STFT_WIN) // 2

        def forward(self, wav):
            if (wav.shape[-1] - STFT_WIN) // STFT_HOP + 1 < EXAMPLE_FRAMES:
                return wav.new_zeros(wav.shape[0], 0, EXAMPLE_FRAMES, vp.NUM_BANDS)
            with torch.autocast(wav.device.type, enabled=False):   # bf16 would cost the log-mel precision
                spec = self.spec(torch.nn.functional.pad(wav.float(), (self.pad, self.pad)))
                log_mel = torch.log(spec.transpose(1, 2) @ self.mel + vp.LOG_OFFSET)
            return log_mel.unfold(1, EXAMPLE_FRAMES, hop_frames).transpose(2, 3)

    return LogMel()


def vggish_examples(wav: np.ndarray, hop_frames: int) -> np.ndarray:
    """The log-mel examples (n, 96, 64) of one mono 16 kHz waveform, on the CPU."""
    import torch

    with torch.inference_mode():
        return make_log_mel(hop_frames)(torch.as_tensor(np.asarray(wav, np.float32))[None])[0].numpy()


# ---------------------------------------------------------------- models on a feature grid
@dataclass
class AudioModel:
    """A loaded extractor: ``forward`` maps equal-length chunks (B, L) to (B, T, dim) features.

    ``backend``: "transformers" (HF folder), "torchaudio" (bundle / fairseq weights) or "vggish".
    """
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
    backend: str = "transformers"
    frontend: object = None

    def centres(self, g: np.ndarray) -> np.ndarray:
        """Seconds of feature g's window centre."""
        return (np.asarray(g, np.float64) * self.stride + (self.rf - 1) / 2) / self.sample_rate

    def n_features(self, n_samples: int) -> int:
        return 0 if n_samples < self.rf else (n_samples - self.rf) // self.stride + 1

    def forward(self, chunks: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode(), autocast(self.device):
            x = torch.from_numpy(np.ascontiguousarray(chunks, np.float32)).to(self.device)
            if self.backend == "vggish":
                return self._forward_vggish(x)
            if self.backend == "torchaudio":
                hs = torchaudio_hidden_states(self.net, x, None if self.layer == "mean" else int(self.layer))
            else:
                out = self.net(x, output_hidden_states=True, return_dict=True)
                hs = (*out.hidden_states[:-1], out.last_hidden_state)    # the last: after a final norm
            h = torch.stack(hs).float().mean(0) if self.layer == "mean" else hs[int(self.layer)]
            return h.float().cpu().numpy()

    def _forward_vggish(self, x):
        import torch

        ex = self.frontend(x)                                   # (B, T, 96, 64) on the device
        b, t = ex.shape[:2]
        ex = ex.reshape(b * t, 1, *ex.shape[2:])
        y = torch.cat([self.net(ex[s:s + self.example_batch]).float()
                       for s in range(0, len(ex), self.example_batch)]) if len(ex) else ex.new_zeros(0, self.dim)
        if self.pca is not None:
            E, m = (torch.as_tensor(a, device=self.device) for a in self.pca)
            y = ((y - m) @ E.T).clamp(-2.0, 2.0)
        return y.cpu().numpy().reshape(b, t, -1)


def torchaudio_hidden_states(net, x, upto: int | None = None) -> list:
    """The hidden states of a torchaudio Wav2Vec2Model as :meth:`AudioModel.forward` takes them from
    transformers: the encoder input (projected CNN features + positional conv, layer-normed in
    post-norm models), then each layer's raw output, the last one being the model's output (a
    pre-norm encoder's final LayerNorm applied, as ``Transformer.forward`` does). ``upto``: only
    states 0..upto are computed (negative: counted from the end)."""
    t = net.encoder.transformer
    n = len(t.layers)
    stop = n if upto is None else upto % (n + 1)
    feats, _ = net.feature_extractor(x, None)
    h = t._preprocess(net.encoder.feature_projection(feats))   # what Transformer.forward runs first
    hs = [h]
    for layer in t.layers[:stop]:
        h, _ = layer(h)
        hs.append(h)
    if stop == n and not t.layer_norm_first:   # torchaudio's flag is True for *post*-norm encoders
        hs[-1] = t.layer_norm(hs[-1])          # what Transformer.forward ends with
    return hs + [None] * (n - stop)


def _conv_grid(kernels, strides) -> tuple[int, int]:
    """(stride, receptive field) in samples of a wav2vec2-style conv feature encoder."""
    stride, rf = 1, 1
    for k, s in zip(kernels, strides):
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
        layer = need(settings, "layer", where)
        if weights.is_dir():
            return _load_hf(name, weights, key, layer, device)
        if not weights.is_file():
            _missing(weights, key, f"{name} weights (save_pretrained folder, torchaudio .pth or fairseq .pt)")
        return _load_torchaudio(name, weights, key, layer, device)
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
                      dim, digest, hop_frames=hop, pca=pca, example_batch=example_batch, backend="vggish",
                      frontend=make_log_mel(hop).to(device))


def _check_layer(name, layer, n_states: int, weights) -> None:
    if layer != "mean" and not (isinstance(layer, int) and -n_states <= layer < n_states):
        raise PipelineError(f"audio.{name}.layer = {layer!r}: an index in [{-n_states}, {n_states}) "
                            f"or \"mean\" ({weights} has {n_states} hidden states)")


def _load_hf(name, weights: Path, key, layer, device) -> AudioModel:
    import torch
    from transformers import HubertModel, Wav2Vec2Model
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()        # keep job logs small
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
    _check_layer(name, layer, net.config.num_hidden_layers + 1, weights)
    stride, rf = _conv_grid(net.config.conv_kernel, net.config.conv_stride)
    return AudioModel(name, net, device, int(pre_cfg.get("sampling_rate", 16000)), stride, rf,
                      net.config.hidden_size, file_digest(weights), layer=layer,
                      normalize=bool(pre_cfg.get("do_normalize", True)))


# ---------------------------------------------------------------- torchaudio: bundle .pth, fairseq .pt
def _load_torchaudio(name, weights: Path, key, layer, device) -> AudioModel:
    """A torchaudio bundle state dict or a fairseq checkpoint (told apart by content), as a
    torchaudio.models.Wav2Vec2Model."""
    import torch
    from torchaudio.models import wav2vec2_model

    ckpt, digest = load_pickle(weights), file_digest(weights)
    if isinstance(ckpt, dict) and "model" in ckpt and ("cfg" in ckpt or "args" in ckpt):
        spec, sd = fairseq_spec(ckpt, weights, name), fairseq_state_dict(ckpt["model"], weights)
    elif isinstance(ckpt, dict) and any(str(k).startswith("feature_extractor.conv_layers.") for k in ckpt):
        sd = {k: v for k, v in ckpt.items() if not k.startswith("aux.")}    # an ASR head is not a feature
        sidecar = weights.with_suffix(".json")
        spec = sidecar_spec(sidecar) if sidecar.exists() else bundle_spec(sd, weights, name)
        digest += f"+cfg:{file_digest(sidecar)}" if sidecar.exists() else ""
    else:
        raise PipelineError(f"{weights}: neither a torchaudio Wav2Vec2Model state dict (feature_extractor.* "
                            f"keys) nor a fairseq checkpoint (model + cfg/args) (config key {key})")
    try:
        net = wav2vec2_model(**{**spec.params, "aux_num_out": None})
        net.load_state_dict(sd, strict=True)
    except (RuntimeError, TypeError, ValueError) as e:
        raise PipelineError(f"{weights}: weights do not fit torchaudio wav2vec2_model({spec.params}) "
                            f"(config key {key}): {str(e).splitlines()[0]}") from e
    net = net.to(device=device, dtype=torch.float32).eval()
    _check_layer(name, layer, len(net.encoder.transformer.layers) + 1, weights)
    convs = spec.params["extractor_conv_layer_config"]
    stride, rf = _conv_grid([c[1] for c in convs], [c[2] for c in convs])
    return AudioModel(name, net, device, spec.sample_rate, stride, rf, spec.params["encoder_embed_dim"],
                      digest, layer=layer, normalize=spec.normalize, backend="torchaudio")
