"""The temporal settings have one list each: the keys a stage receives (settings.stage_keys,
which rules/common.smk sends), the fields of its dataclasses and the allowed values are the
schema's, so the three cannot drift; the module stays torch-free (the Snakefile imports it)."""
import dataclasses
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, workflow_defaults

from affect_pipeline.temporal.settings import (
    CLB_INITS,
    ERI_KEYS,
    INFERENCE,
    POOLINGS,
    SHARED_KEYS,
    STAGE_SECTIONS,
    BranchHP,
    DclHP,
    MiningHP,
    stage_keys,
    temporal_hp,
)

TEMPORAL = yaml.safe_load((REPO / "workflow_config.schema.yaml").read_text())["properties"]["temporal"]
SECTION = TEMPORAL["properties"]


def fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_the_schema_requires_exactly_the_keys_stages_receive():
    assert set(TEMPORAL["required"]) == set(SECTION) == set(SHARED_KEYS + STAGE_SECTIONS + ERI_KEYS)
    assert stage_keys("AU") == SHARED_KEYS
    assert stage_keys("VA", "mining") == SHARED_KEYS + ("mining",)
    assert set(stage_keys("ERI", "dcl")) == set(SHARED_KEYS) | {"dcl", "eri", "eri_visual_task"}
    with pytest.raises(ValueError, match="unknown stage section"):
        stage_keys("AU", "eri")
    smk = (REPO / "rules" / "common.smk").read_text()
    assert "stage_keys(wildcards.task, *sections)" in smk and '"au_pos_weight"' not in smk


def test_the_dataclasses_are_the_schema_sections():
    assert fields(BranchHP) == set(SECTION["blb"]["required"])
    assert fields(DclHP) == set(SECTION["dcl"]["required"])
    assert fields(MiningHP) == set(SECTION["mining"]["required"])
    assert set(SECTION["eri"]["required"]) - {"pooling"} <= fields(BranchHP)   # eri overlays blb


def test_allowed_values_are_the_schema_enums():
    assert SECTION["eri"]["properties"]["pooling"]["enum"] == list(POOLINGS)
    assert SECTION["dcl"]["properties"]["clb_init"]["enum"] == list(CLB_INITS)
    assert SECTION["dcl"]["properties"]["inference"]["enum"] == list(INFERENCE)


@pytest.mark.parametrize("task", ["AU", "EXPR", "VA", "ERI"])
def test_the_shipped_config_gives_every_stage_its_settings(task):
    """Gradient clipping comes from temporal.blb.clip_grad (ERI's model and DCL's CLB inherit it)."""
    t = workflow_defaults()["temporal"]
    hp = temporal_hp({k: t[k] for k in stage_keys(task, *STAGE_SECTIONS)}, task, *STAGE_SECTIONS)
    assert hp.branch.schedule().clip_grad == t["blb"]["clip_grad"] == 1.0
    assert hp.branch.schedule(3).epochs == 3 and hp.dcl.epochs == t["dcl"]["epochs"]
    assert hp.branch.batch_size == t["eri" if task == "ERI" else "blb"]["batch_size"]


def test_settings_import_no_torch():
    code = "import sys, affect_pipeline.temporal.settings; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
