"""The workflow at the paper's model sizes: one run to `submission` with the shapes of
workflow_config.yaml (MAE ViT-B/16 on 224-px crops, BLB d512 x 4 + DCL, ERI's d256 x 2 model,
HuBERT-Large- / wav2vec2-Base-shaped and full VGGish audio models, random weights in their real
formats from rule make_paper_weights) and only counts and schedules cut (paper_size.yaml: VA +
ERI, 2 folds, one encoder, 10-12-frame videos, one short epoch each).

The demo runs tiny models; this run keeps the paper's shapes flowing through every stage type,
so a shape that breaks at ViT-B / HuBERT-Large size, or a stage whose memory record stops
measuring the job, fails here. Its per-stage time and peak memory are the `paper-run` section
of benchmarks/RESULTS.md (`python -m benchmarks.bench_paper_run --run DIR --out ...`).
"""
import json
import os
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, run_snakemake, workflow_defaults

sys.path.insert(0, str(REPO))          # the benchmarks package lives beside the tests, not installed
from benchmarks.bench_paper_run import read_jobs, stage_rows, table

pytestmark = pytest.mark.slow

OVERLAY = Path(__file__).with_name("paper_size.yaml")
#: every stage type that runs a model or media job, each of which must leave its benchmark record
STAGES = {"make_paper_weights", "extract_frames", "crop_faces", "pretrain_mae", "finetune_mae", "visual_features",
          "audio_features", "train_blb", "mine_hard_clips", "train_dcl", "predict"}


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    """The paper-size run, to `submission` once (``AFFECT_PAPER_RUN=DIR`` keeps it in DIR/run)."""
    work = Path(os.environ.get("AFFECT_PAPER_RUN") or tmp_path_factory.mktemp("paper_run"))
    run = work / "run"
    run.mkdir(parents=True, exist_ok=True)
    t0, load = time.time(), os.getloadavg()[0]
    run_snakemake("submission", "--cores", "2", "--directory", str(run),
                  "--configfile", str(REPO / "demo_config.yaml"), str(OVERLAY), timeout=1500)
    wall = time.time() - t0
    # for benchmarks/bench_paper_run.py: the wall time and the machine's load around the run
    (work / "paper_run.json").write_text(json.dumps({"wall_s": round(wall, 1), "load_before": load,
                                                     "load_after": os.getloadavg()[0]}))
    print(f"\npaper-size workflow (ViT-B, HuBERT-Large, VA + ERI, 2 folds) to submission: {wall:.0f} s")
    return run


def test_paper_size_run_reaches_a_valid_submission(paper_run):
    """Both tasks' submission files pass the validator, with a row for every test frame."""
    from affect_pipeline.submit.submission import test_videos, validate_submission

    index = paper_run / "results/index/videos.tsv"
    for task in ("VA", "ERI"):
        videos = test_videos(index, task)
        assert videos, task
        validate_submission(task, paper_run / "results/submission" / task / "predictions.txt", videos)


def test_every_model_ran_at_the_paper_shape(paper_run):
    """The checkpoints and feature stores carry workflow_config.yaml's shapes: ViT-B/16 at 224 px
    with its 8 x 512 decoder, 768-d frame features, 1024-d HuBERT-Large, 768-d wav2vec2-Base and
    128-d VGGish features, BLB / DCL d512 x 4 and ERI's d256 x 2 on their concatenation."""
    import h5py

    from affect_pipeline.mae.checkpoints import read_encoder_checkpoint
    from affect_pipeline.temporal.checkpoint import read_temporal_checkpoint

    paper = workflow_defaults()
    vit = paper["mae"]["model"]
    cfg, encoder = read_encoder_checkpoint(paper_run / "results/mae/pretrain.pt")
    assert {k: cfg[k] for k in vit} == vit, cfg
    tokens = (vit["img_size"] // vit["patch_size"]) ** 2 + 1
    assert tuple(encoder["pos_embed"].shape) == (1, tokens, vit["embed_dim"])
    assert len({k.split(".")[1] for k in encoder if k.startswith("blocks.")}) == vit["depth"]
    tuned = torch_load(paper_run / "results/mae/VA/official/finetune.pt")
    assert tuned["config"] == cfg and tuned["pool"] == paper["mae"]["features"]["pool"]
    assert sum(v.numel() for v in tuned["model"].values()) > 85e6          # ViT-B/16: 86 M
    dims = {"mae/VA/official": 768, "mae/ERI/official": 768, "hubert": 1024, "wav2vec2": 768, "vggish": 128}
    for name, dim in dims.items():
        with h5py.File(paper_run / f"results/features/{name}.h5", "r") as f:
            shapes = [f[v]["features"].shape for v in f if isinstance(f[v], h5py.Group)]
        assert shapes and all(s[1] == dim and s[0] >= 10 for s in shapes), (name, shapes)
    for task, model in (("VA", "blb"), ("ERI", "eri")):
        want = paper["temporal"][model]
        for fold in ("official", "fold1", "fold2"):
            ck = read_temporal_checkpoint(paper_run / f"results/models/{task}/{fold}/dcl.pt")
            assert {k: ck["config"][k] for k in ("d_model", "nhead", "layers")} == \
                {k: want[k] for k in ("d_model", "nhead", "layers")}, (task, fold, ck["config"])
            assert ck["feature_dims"] == [768, 1024, 768, 128], ck["feature_dims"]
    hubert = json.loads((paper_run / "resources/demo/paper_models/hubert/config.json").read_text())
    assert (hubert["hidden_size"], hubert["num_hidden_layers"], hubert["do_stable_layer_norm"]) == (1024, 24, True)
    vggish = torch_load(paper_run / "resources/demo/paper_models/vggish.pth")
    assert sum(v.numel() for v in vggish.values()) > 72e6                   # torchvggish: 72.1 M


def test_every_stage_recorded_its_time_and_memory(paper_run):
    """Every stage type left its jobs' benchmark records, and they measured the job itself (not a
    ~20 MB launcher): the ViT-B fine-tune's peak holds its weights, gradients and two Adam moments
    (4 x 4 bytes x 86 M), HuBERT-Large's feature job its 1.26 GB of weights."""
    jobs = read_jobs(paper_run)
    rows = {r["stage"]: r for r in stage_rows(jobs)}
    print("\n" + table(list(rows.values())))
    assert STAGES <= set(rows), STAGES - set(rows)
    assert all(j.s > 0 and j.max_rss > 0 for j in jobs), [j for j in jobs if not (j.s > 0 and j.max_rss > 0)]
    vit_b_bytes = sum(v.numel() for v in torch_load(paper_run / "results/mae/VA/official/finetune.pt")["model"].values()) * 4
    assert rows["finetune_mae"]["max_rss"] * 2**20 > 4 * vit_b_bytes, rows["finetune_mae"]
    hubert = next(j for j in jobs if j.stage == "audio_features" and j.job == "hubert")
    weights = (paper_run / "resources/demo/paper_models/hubert/model.safetensors").stat().st_size
    assert hubert.max_rss * 2**20 > weights, (hubert, weights)


def torch_load(path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)
