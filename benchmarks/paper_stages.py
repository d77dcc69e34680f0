"""Every model stage at the paper's sizes, end to end through its own code, against its model alone.

    python -m benchmarks.paper_stages --group vit|audio|temporal|faces [--threads 2] [--repeats 3]

(``python -m benchmarks.run --paper`` runs each group in a fresh process, prints one table, writes
the ``paper-stages`` section of RESULTS.md and ``benchmarks/paper_throughputs.json``.)

Each stage and its model-only reference run on the same inputs, alternately (stage first, then
model first, ...), ``repeats`` times after one warm-up each; a row's ratio is the median of the
paired ratios, so a machine that slows down during the run slows both sides. The stage side is
the stage's per-unit path with the model loaded once, as a job runs it over many videos: what a
job does once (load + digest the weights, publish its shard, build the optimiser) is left out of
the timing (the load is reported as ``job start``), amortised over a real job's thousands of
frames or steps. Per video costs (store open + digest, group write) stay in, over short videos
(16 frames; Aff-Wild2 averages ~5,000), so the ratios are if anything low.

- ViT-B/16 at 224 px: ``visual_features`` (``_run``: store read + JPEG decode ahead + forward +
  shard write) vs the forward on random tensors of the same batch; a ``pretrain_mae`` epoch
  (``_epoch`` over a streamed loader, as at Aff-Wild2 size where crops exceed ``cache_gb``) vs
  forward + backward + AdamW on random tensors; a ``finetune_mae`` epoch (``training.fit`` with the
  stage's streamed loader, augmentation, EMA) vs the same step on random tensors.
- audio: random models of the paper's shapes (HuBERT-Large and wav2vec2-Base from transformers
  configs, the full VGGish): per video ``input_digests`` + ``media_features`` + shard write vs the
  model's forward over the same chunks held in memory.
- BLB d512 x 4 / DCL at clip 100, batch 32, the paper's feature dims: a step with clip gathering
  (``bench_temporal.steps``) vs forward + backward on a random batch; DCL against its own model
  work (frozen BLB forward + CLB step on random batches).
- face detection on 640x360 and 1920x1080 frames: ``crop_faces`` (decode + MTCNN + track + align
  + JPEG + HDF5) with a loaded detector vs the detector on the same frames pre-decoded.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: the paper's temporal feature dims: mae_{task} (ViT-B), hubert (Large), wav2vec2 (Base), vggish
PAPER_DIMS = (768, 1024, 768, 128)


# ---------------------------------------------------------------- pairing
def paired(stage, model, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds of ``stage()`` and ``model()``, alternating which runs first, after one warm-up each;
    a callable that returns a float has timed its own measured part (per-job work left out)."""
    stage(), model()
    s, m = [], []
    for r in range(repeats):
        for fn, acc in ([(stage, s), (model, m)] if r % 2 == 0 else [(model, m), (stage, s)]):
            t = time.perf_counter()
            own = fn()
            acc.append(own if isinstance(own, float) else time.perf_counter() - t)
    return s, m


def result(key: str, stage: str, unit: str, work: float, times: tuple[list, list], ref_name: str,
           note: str = "", batch: int = 1) -> dict:
    """A row: median stage and model rates (``work`` units per call), the median paired ratio."""
    s, m = times
    return {"key": key, "stage": stage, "unit": unit, "value": work / statistics.median(s),
            "reference": work / statistics.median(m), "ref_name": ref_name,
            "ratio": statistics.median(mi / si for si, mi in zip(s, m)),
            "spread": f"{min(mi / si for si, mi in zip(s, m)):.2f}-{max(mi / si for si, mi in zip(s, m)):.2f}",
            "repeats": len(s), "batch": batch, "note": note}


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


# ---------------------------------------------------------------- ViT-B
def vit_group(threads: int, repeats: int, frames: int = 16, batch: int = 8, steps: int = 2) -> list[dict]:
    """visual_features, a pretraining epoch and a fine-tune epoch of ViT-B/16 at 224 px on CPU."""
    import torch

    from affect_pipeline.common.runtime import file_digest, save_checkpoint, setup_torch
    from affect_pipeline.mae import model as M
    from affect_pipeline.mae import visual_features as VF
    from benchmarks.bench_mae import CONFIGS, _face_store

    setup_torch(threads, 0)
    cfg = M.model_config(CONFIGS["base"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        ckpt = tmp / "ft.pt"
        save_checkpoint({"format": M.CHECKPOINT_FORMAT, "kind": "mae_finetune", "task": "AU", "fold": "fold1",
                         "config": cfg, "outputs": 12, "pool": "global",
                         "model": M.ViTClassifier(12, pool="global", **cfg).state_dict()}, ckpt)
        store = tmp / "v.h5"
        _face_store(store, max(frames, steps * batch), 224)
        (model, digest), t_load = timed(lambda: (VF.load_finetuned(ckpt), file_digest(ckpt)))
        runs = iter(range(10**6))

        def stage():
            enc = VF.Encoder(model, VF.FeatureShardWriter(tmp / f"o{next(runs)}.h5", extractor="mae_AU",
                                                          fingerprint="bench", no_face="zeros"))
            _, t = timed(lambda: VF._run([("v", str(store))], {"v": [enc]}, 224, batch, torch.device("cpu")))
            enc.writer.close(["v"])          # once per job: the shard's publish
            return t

        x = torch.randn(batch, 3, 224, 224)

        @torch.inference_mode()
        def forward():
            for _ in range(-(-frames // batch)):
                model(x)
        rows.append(result("visual_features", "visual_features ViT-B/16 (store read+decode+forward+shard)",
                           "frames/s", frames, paired(stage, forward, repeats), "forward on random tensors",
                           f"batch {batch}, {frames} frames a call, 1 encoder; job start {t_load:.1f} s"))
        del model
        rows.append(_pretrain(cfg, store, batch, steps, repeats, threads))
        rows.append(_finetune(cfg, store, batch, steps, repeats, threads))
    return rows


def _streamed(store, n: int, threads: int):
    """The stage's loader over ``n`` crops of ``store``, streamed as at Aff-Wild2 size (cache_gb 0)."""
    from affect_pipeline.mae.face_reader import make_loader, stack_crops

    return make_loader(stack_crops([(str(store), np.arange(n))], 224), 0.0, threads)


def _pretrain(cfg: dict, store, batch: int, steps: int, repeats: int, threads: int) -> dict:
    import torch

    from affect_pipeline.common.training import Dist, adamw, warmup_cosine
    from affect_pipeline.mae import pretrain_mae as P
    from affect_pipeline.mae.model import MaskedAutoencoderViT

    loader, torch_threads = _streamed(store, steps * batch, threads)
    torch.set_num_threads(torch_threads)
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(norm_pix_loss=True, **cfg)
    opt = adamw(model, 1e-4, 0.05, betas=(0.9, 0.95))
    p = P.PretrainSettings(1, batch, 1, 2.4e-3, 4096, 0.05, 0, 0.75, True, 0, [], 0.0)
    run = P.Run(model, opt, warmup_cosine(opt, 10**6, 0), loader, p, P.Plan(steps, 10**6, 0, 1e-4),
                Dist(torch.device("cpu")), 0)
    epochs = iter(range(10**6))
    x = torch.randn(batch, 3, 224, 224)

    def model_only():
        for _ in range(steps):
            loss, _, _ = model(x, 0.75)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    def stage() -> None:  # (_epoch returns the epoch's loss, not a time)
        P._epoch(run, next(epochs))
    times = paired(stage, model_only, repeats)
    torch.set_num_threads(threads)
    return result("pretrain_mae", "MAE pretrain ViT-B/16 (pretrain_mae._epoch, streamed crops)", "steps/s", steps,
                  times, "forward+backward+AdamW on random tensors",
                  f"batch {batch}, {steps} steps a call, {loader.workers} decode worker(s), "
                  f"{torch_threads} torch thread(s) of {threads}", batch)


def _finetune(cfg: dict, store, batch: int, steps: int, repeats: int, threads: int) -> dict:
    import torch

    from affect_pipeline.common.losses import task_loss
    from affect_pipeline.common.training import Schedule, fit
    from affect_pipeline.mae.face_reader import augment, standardize, to_unit
    from affect_pipeline.mae.model import ViTClassifier

    loader, torch_threads = _streamed(store, steps * batch, threads)
    torch.set_num_threads(torch_threads)
    torch.manual_seed(0)
    model = ViTClassifier(12, pool="global", drop_path=0.1, layer_decay=0.65, **cfg)
    y = (torch.rand(steps * batch, 12) > 0.7).float()
    gen = torch.Generator().manual_seed(0)
    ends: list[float] = []

    def batches(epoch):  # the stage's closure: streamed crops, augmented on the device
        for imgs, idx in loader.batches(np.arange(steps * batch), batch):
            yield standardize(augment(to_unit(imgs, "cpu"), gen)), y[idx]
        ends.append(time.perf_counter())

    def step(b):
        _, z = model(b[0])
        return task_loss("AU", z.float(), b[1], torch.ones(len(b[1]), dtype=torch.bool))

    def stage() -> float:  # the epoch's steps, from its first batch to its last update (not its evaluation)
        t0 = time.perf_counter()
        fit(model, step, batches, lambda m: {"score": 0.0, "loss": 0.0}, Schedule(1, 1e-4, 0.05, 0, 0.999, 0.0),
            steps)
        return ends[-1] - t0

    x = standardize(torch.rand(batch, 3, 224, 224))

    def model_only():  # a fresh AdamW, as each fit() call builds one: both allocate its state
        model.train()
        opt = torch.optim.AdamW(model.param_groups(0.05), lr=1e-4)
        for _ in range(steps):
            _, z = model(x)
            task_loss("AU", z.float(), y[:batch], torch.ones(batch, dtype=torch.bool)).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    times = paired(stage, model_only, repeats)
    torch.set_num_threads(threads)
    return result("finetune_mae", "MAE fine-tune ViT-B/16 (training.fit: streamed crops+augment+EMA)", "steps/s",
                  steps, times, "forward+backward+AdamW on random tensors",
                  f"batch {batch}, {steps} steps a call, {loader.workers} decode worker(s), "
                  f"{torch_threads} torch thread(s) of {threads}; the epoch's EMA copy and evaluation excluded", batch)


# ---------------------------------------------------------------- audio
def paper_audio_models(out: Path) -> Path:
    """Random HuBERT-Large and wav2vec2-Base (transformers configs) and the full VGGish."""
    import torch
    from transformers import HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2Model

    from affect_pipeline.audio.models import make_vggish

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    large = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                 feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
    HubertModel(HubertConfig(**large)).save_pretrained(out / "hubert")
    Wav2Vec2Model(Wav2Vec2Config()).save_pretrained(out / "wav2vec2")
    torch.save(make_vggish().state_dict(), out / "vggish.pth")
    return out


def audio_group(threads: int, repeats: int, seconds: float = 8.0) -> list[dict]:
    from affect_pipeline.audio import audio_features as af
    from affect_pipeline.audio.models import load_audio_model
    from affect_pipeline.common.feature_shards import FeatureShardWriter
    from affect_pipeline.common.runtime import setup_torch
    from benchmarks.bench_audio import SR, audio_config, synth_audio, write_inputs

    setup_torch(threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wdir = paper_audio_models(tmp / "models")
        wav, frames, _ = write_inputs(tmp, seconds, 30.0)
        media, audio = af.Media("bench", wav, frames), synth_audio(seconds)
        for name, shape in (("hubert", "HuBERT-Large"), ("wav2vec2", "wav2vec2-Base"), ("vggish", "VGGish")):
            prm = af.model_params(audio_config(), name)
            m, t_load = timed(lambda: load_audio_model(name, wdir / ("vggish.pth" if name == "vggish" else name),
                                                       prm[name]))
            chunking = af.Chunking.from_params(prm)
            plan, _ = af.chunk_plan(len(audio), m.stride, m.rf, int(chunking.chunk_seconds * SR),
                                    int(chunking.overlap_seconds * SR))
            scaled = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7) if m.normalize else audio
            groups = [np.stack([np.pad(scaled[a:b], (0, max(0, b - len(audio))))[: b - a] for a, b, _, _ in g])
                      for g in af._batches(plan, chunking.batch_size)]   # normalised as the stage does
            runs = iter(range(10**6))

            def stage():
                w = FeatureShardWriter(tmp / f"{name}{next(runs)}.h5", extractor=name, fingerprint="bench")
                t = time.perf_counter()
                digests = af.input_digests(media)
                feats, valid, fr = af.media_features(m, media, chunking)
                w.write("bench", feats, valid, fps=float(fr["fps"]), inputs=digests, media="bench")
                t = time.perf_counter() - t
                w.close(["bench"])               # once per job: the shard's publish
                return t

            def model_only():
                for x in groups:
                    m.forward(x)
            rows.append(result(f"audio_{name}", f"audio_features {shape} (random weights)", "audio s/s", seconds,
                               paired(stage, model_only, repeats), "forward over the same chunks in memory",
                               f"{seconds:g} s a call; job start {t_load:.1f} s"))
            del m
    return rows


# ---------------------------------------------------------------- BLB / DCL
def temporal_group(threads: int, repeats: int, steps: int = 1) -> list[dict]:
    from benchmarks.bench_temporal import step_functions

    f = step_functions(dims=PAPER_DIMS, n_videos=8, frames=600, clip_len=100, stride=50, batch_size=32,
                       d_model=512, nhead=8, layers=4, threads=threads)
    loop = lambda fn: (lambda: [fn() for _ in range(steps)])  # noqa: E731
    shape = f"B=32 K=100 D={sum(PAPER_DIMS)} d_model=512 L=4"
    return [result("train_blb", "BLB step (clip gather+forward+backward+AdamW)", "steps/s", steps,
                   paired(loop(f["blb_step"]), loop(f["blb_model_only"]), repeats),
                   "forward+backward on a random batch", shape),
            result("train_dcl", "DCL step (2 gathers+frozen BLB+CLB step)", "steps/s", steps,
                   paired(loop(f["dcl_step"]), loop(f["dcl_model_only"]), repeats),
                   "the same on random batches", shape)]


# ---------------------------------------------------------------- faces
def faces_group(threads: int, repeats: int, sizes=((640, 360, 16), (1920, 1080, 2))) -> list[dict]:
    import torch

    from affect_pipeline.common.runtime import setup_torch
    from affect_pipeline.data.video import iter_frame_batches
    from affect_pipeline.faces import crop_faces as C
    from affect_pipeline.faces import detection as D
    from benchmarks.bench_faces import faces_config, make_video

    setup_torch(threads)
    params = D.FaceParams.from_config(faces_config())
    det, t_load = timed(lambda: D.make_backend(params, torch.device("cpu")))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w, h, n in sizes:
            video = Path(tmp) / f"v{w}.mp4"
            info = make_video(video, n, w, h)
            batches = [f for _, _, f in iter_frame_batches(video, params.batch_size, threads, prefetch=0)]
            runs = iter(range(10**6))

            def stage():
                C.crop_faces(C.FaceJob(video, info, Path(tmp) / f"f{next(runs)}.h5", "v"), params, threads=threads,
                             backend=det)

            def model_only():
                for f in batches:
                    det.detect(f)
            rows.append(result(f"crop_faces_{h}p", f"crop_faces {w}x{h} (decode+MTCNN+track+align+store)",
                               "frames/s", info["n_frames"], paired(stage, model_only, repeats),
                               "MTCNN on the same frames, pre-decoded",
                               f"{info['n_frames']} frames a call, batch {params.batch_size}; "
                               f"job start {t_load:.1f} s"))
    return rows


GROUPS = {"vit": vit_group, "audio": audio_group, "temporal": temporal_group, "faces": faces_group}


def run(group: str, threads: int = 2, repeats: int = 3) -> list[dict]:
    """The rows of one group (benchmarks.run calls this in a fresh process per group)."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    return GROUPS[group](threads, repeats)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--group", choices=sorted(GROUPS), required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    for r in run(a.group, a.threads, a.repeats):
        print(json.dumps(r, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
