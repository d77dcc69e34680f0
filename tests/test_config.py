"""The config schema: defaults filled, unknown or mistyped keys stop the run naming the key."""
import copy

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from conftest import REPO, run_snakemake

SCHEMA = str(REPO / "workflow_config.schema.yaml")


def load():
    return yaml.safe_load((REPO / "workflow_config.yaml").read_text())


def test_shipped_config_is_valid_and_defaults_are_the_paper():
    cfg = load()
    validate(cfg, SCHEMA, set_default=True)
    minimal = {"affwild2": {"videos": "v", "annotations": "a"}, "hume": {"root": None}}
    validate(minimal, SCHEMA, set_default=True)
    assert minimal["temporal"]["clip_len"] == 100
    assert minimal["temporal"]["blb"]["layers"] == 4 and minimal["temporal"]["blb"]["dropout"] == 0.3
    assert minimal["mae"]["pretrain"]["mask_ratio"] == 0.75 and minimal["mae"]["pretrain"]["base_lr"] == 0.0024
    assert minimal["temporal"]["dcl"]["tau1"] == 2.0 and minimal["folds"] == 5


@pytest.mark.parametrize("mutate, needle", [
    (lambda c: c["temporal"]["blb"].__setitem__("layerz", 4), "layerz"),
    (lambda c: c.__setitem__("fold", 5), "fold"),
    (lambda c: c["temporal"].__setitem__("clip_len", "long"), "clip_len"),
    (lambda c: c["faces"].__setitem__("backend", "dlib"), "backend"),
    (lambda c: c.__setitem__("tasks", ["AU", "XYZ"]), "tasks"),
])
def test_bad_keys_are_named(mutate, needle):
    cfg = load()
    mutate(cfg)
    with pytest.raises(WorkflowError) as e:
        validate(copy.deepcopy(cfg), SCHEMA, set_default=True)
    assert needle in str(e.value)


def test_typo_in_configfile_stops_dry_run(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("temporal:\n  blb:\n    epochz: 3\n")
    p = run_snakemake("-n", "--configfile", str(bad), "--directory", str(tmp_path), check=False)
    assert p.returncode != 0
    assert "epochz" in p.stdout + p.stderr
