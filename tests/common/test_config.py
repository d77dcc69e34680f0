"""The config: workflow_config.yaml is the one source of defaults (every key, the paper's values),
overlays (demo_config.yaml, a user's --configfile) merge over it, and the schema only validates:
unknown, mistyped or missing keys stop the run naming the key. A run's saved config is what
affect-predict reads back."""
import copy

import pytest
import yaml
from conftest import REPO, run_snakemake, workflow_defaults
from snakemake.exceptions import WorkflowError
from snakemake.utils import update_config, validate

from affect_pipeline.affect_predict.cli import load_config
from affect_pipeline.common.config import deep_merge, load_run_config, need, write_run_config
from affect_pipeline.common.errors import PipelineError

SCHEMA = str(REPO / "workflow_config.schema.yaml")
DATA_KEYS = {"affwild2": {"videos": "/data/aff/videos", "annotations": "/data/aff/annotations",
                          "test_lists": "/data/aff/test_lists"}, "hume": {"root": "/data/hume"}}


def load():
    return workflow_defaults()


def overlay(*docs) -> dict:
    """workflow_config.yaml with ``docs`` merged over it, as Snakemake merges --configfile files."""
    cfg = load()
    for d in docs:
        update_config(cfg, copy.deepcopy(d))
    return cfg


def demo_overlay() -> dict:
    return yaml.safe_load((REPO / "demo_config.yaml").read_text())


def test_shipped_config_is_valid_and_defaults_are_the_paper():
    cfg = load()
    validate(copy.deepcopy(cfg), SCHEMA)
    minimal = overlay(DATA_KEYS)                   # a --configfile with only the data keys
    validate(copy.deepcopy(minimal), SCHEMA)
    assert minimal["temporal"]["clip_len"] == 100
    assert minimal["temporal"]["blb"]["layers"] == 4 and minimal["temporal"]["blb"]["dropout"] == 0.3
    assert minimal["mae"]["pretrain"]["mask_ratio"] == 0.75 and minimal["mae"]["pretrain"]["base_lr"] == 0.0024
    assert minimal["temporal"]["dcl"]["tau1"] == 2.0 and minimal["folds"] == 5
    assert minimal["temporal"]["blb"]["clip_grad"] == 1.0 and minimal["mae"]["finetune"]["clip_grad"] == 0.0
    assert minimal["mae"]["model"]["embed_dim"] == 768 and minimal["faces"]["size"] == 224   # ViT-B/16, 224 px
    assert minimal["affwild2"]["videos"] == "/data/aff/videos" and minimal["affwild2"]["cropped_aligned"] is None


def test_defaults_live_in_one_place():
    """No `default:` in the schema, no demo section or demo switch in workflow_config.yaml, data keys null."""
    def defaults(node, path=""):
        if isinstance(node, dict):
            return [path] * ("default" in node) + [p for k, v in node.items() for p in defaults(v, f"{path}/{k}")]
        if isinstance(node, list):
            return [p for i, v in enumerate(node) for p in defaults(v, f"{path}/{i}")]
        return []

    assert defaults(yaml.safe_load(open(SCHEMA))) == []
    cfg = load()
    assert "demo" not in cfg and "overrides" not in (REPO / "workflow_config.yaml").read_text()
    assert all(v is None for v in cfg["affwild2"].values()) and cfg["hume"]["root"] is None
    assert cfg["scoring"]["test_labels"] is None


@pytest.mark.parametrize("mutate, needle", [
    (lambda c: c["temporal"]["blb"].__setitem__("layerz", 4), "layerz"),
    (lambda c: c.__setitem__("fold", 5), "fold"),
    (lambda c: c["temporal"].__setitem__("clip_len", "long"), "clip_len"),
    (lambda c: c["faces"].__setitem__("backend", "dlib"), "backend"),
    (lambda c: c.__setitem__("tasks", ["AU", "XYZ"]), "tasks"),
    (lambda c: c["temporal"]["blb"].pop("layers"), "layers"),          # every key is required
    (lambda c: c["temporal"]["blb"].pop("clip_grad"), "clip_grad"),
    (lambda c: c["mae"]["finetune"].__setitem__("clip_grad", -1.0), "clip_grad"),
    (lambda c: c.pop("scoring"), "scoring"),
])
def test_bad_keys_are_named(mutate, needle):
    cfg = load()
    mutate(cfg)
    with pytest.raises(WorkflowError) as e:
        validate(copy.deepcopy(cfg), SCHEMA)
    assert needle in str(e.value)


def test_demo_config_is_an_ordinary_validated_overlay():
    demo = demo_overlay()
    cfg = overlay(demo)
    validate(copy.deepcopy(cfg), SCHEMA)
    assert cfg["affwild2"]["videos"] == f"{demo['demo']['root']}/affwild2/videos"
    assert cfg["scoring"]["test_labels"] == f"{demo['demo']['root']}/test_labels"
    assert cfg["faces"]["size"] == 112 and cfg["faces"]["score_threshold"] == 0.9   # merged, not replaced
    assert cfg["mae"]["model"]["embed_dim"] == 96 and cfg["mae"]["model"]["mlp_ratio"] == 4.0
    assert cfg["temporal"]["blb"]["layers"] == 4 and cfg["temporal"]["blb"]["d_model"] == 64
    assert cfg["audio"]["vggish"]["weights"].startswith(demo["demo"]["root"] + "/models/")
    assert "overrides" not in cfg["demo"]


@pytest.mark.parametrize("typo, needle", [
    ({"faces": {"sise": 112}}, "sise"),
    ({"demo": {"n_video": {"train": 2}}}, "n_video"),
    ({"demo": {"overrides": {"faces": {"size": 112}}}}, "overrides"),     # settings overlay, not nest
    ({"demo": {"size": 100}}, "size"),
    ({"scoring": {"test_label": "x"}}, "test_label"),
])
def test_typo_in_a_demo_style_overlay_is_refused(typo, needle):
    cfg = overlay(demo_overlay(), typo)
    with pytest.raises(WorkflowError) as e:
        validate(cfg, SCHEMA)
    assert needle in str(e.value)


def test_demo_section_is_complete_or_refused():
    demo = demo_overlay()
    del demo["demo"]["hume"]
    cfg = load()
    update_config(cfg, demo)
    with pytest.raises(WorkflowError, match="hume"):
        validate(cfg, SCHEMA)


def test_need_names_the_missing_key():
    cfg = {"temporal": {"blb": {"epochs": 3}}}
    assert need(cfg, "temporal.blb.epochs") == 3
    with pytest.raises(PipelineError, match=r"--params: missing key 'temporal.blb.lr'"):
        need(cfg, "temporal.blb.lr", "--params")
    with pytest.raises(KeyError):
        need(cfg, "temporal.x", error=KeyError)


def test_run_config_round_trip_and_overlays(tmp_path):
    """affect-predict reads the run's saved config (results/config.yaml), never the repo's defaults."""
    demo_run = tmp_path / "demo_run" / "results"
    write_run_config({**overlay(demo_overlay()), "_private": 1}, demo_run / "config.yaml")
    cfg = load_config(demo_run)
    assert cfg["faces"]["size"] == 112                     # the demo run's settings
    assert "_private" not in cfg and cfg["_files"] == [str(demo_run / "config.yaml")]
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump({"faces": {"margin": 0.1}}))
    cfg = load_config(demo_run, [mine])
    assert cfg["faces"]["size"] == 112 and cfg["faces"]["margin"] == 0.1   # merged key
    paper_run = tmp_path / "paper_run" / "results"
    write_run_config(overlay(DATA_KEYS), paper_run / "config.yaml")
    cfg = load_config(paper_run, [mine])
    assert cfg["faces"]["size"] == 224 and cfg["faces"]["margin"] == 0.1   # paper defaults, merged key
    assert cfg["faces"]["batch_size"] == 32 and cfg["audio"]["hubert"]["weights"] is None
    with pytest.raises(PipelineError, match="nope.yaml: workflow config not found"):
        load_config(paper_run, [tmp_path / "nope.yaml"])
    with pytest.raises(PipelineError, match=r"elsewhere/config.yaml: the run's saved config not found"):
        load_config(tmp_path / "elsewhere")
    bad = tmp_path / "bad.yaml"
    bad.write_text("faces: [1, 2\n")
    with pytest.raises(PipelineError, match="bad.yaml: not valid YAML"):
        load_run_config(paper_run / "config.yaml", [bad])


def test_deep_merge_matches_snakemake_update_config():
    a, b = overlay(), load()
    extra = {**DATA_KEYS, "temporal": {"blb": {"epochs": 3}}, "tasks": ["VA"]}
    update_config(a, copy.deepcopy(extra))
    assert deep_merge(b, extra) == a


def test_typo_in_configfile_stops_dry_run(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("temporal:\n  blb:\n    epochz: 3\n")
    p = run_snakemake("-n", "--configfile", str(bad), "--directory", str(tmp_path), check=False)
    assert p.returncode != 0
    assert "epochz" in p.stdout + p.stderr
