"""The task list has one home, affect_pipeline.common.tasks: what cannot import it (the config
schema's enums) must equal it."""
import yaml
from conftest import REPO

from affect_pipeline.common.tasks import FRAME_TASKS, TASK_COLUMNS, TASK_OUTPUTS, TASKS


def schema() -> dict:
    return yaml.safe_load((REPO / "workflow_config.schema.yaml").read_text())


def test_schema_task_enums_are_the_task_list():
    props = schema()["properties"]
    assert tuple(props["tasks"]["items"]["enum"]) == TASKS
    # ERI's videos are encoded by a frame task's fine-tuned MAE
    assert tuple(props["temporal"]["properties"]["eri_visual_task"]["enum"]) == FRAME_TASKS


def test_every_task_has_columns_and_outputs():
    assert set(TASK_COLUMNS) == set(TASK_OUTPUTS) == set(TASKS) and set(FRAME_TASKS) < set(TASKS)
