"""The workflow config outside Snakemake: required keys, YAML overlays, a run's saved config.

``workflow_config.yaml`` (repo root) is the one source of defaults; Snakemake merges the
overlays (``demo_config.yaml``, a user's ``--configfile``) over it and validates the result
against ``workflow_config.schema.yaml``. The package holds no defaults: a stage receives its
complete section(s) through ``--params`` and :func:`need` names a key that is absent. A run saves
its effective config as ``results/config.yaml`` (:func:`write_run_config`), which is where
``affect-predict`` reads the run's settings back (:func:`load_run_config`).
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Iterable, Mapping

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.files import not_utf8
from affect_pipeline.common.runtime import write_text

#: file name of a run's effective config under its results/ folder
RUN_CONFIG = "config.yaml"


def need(cfg: Mapping, key: str, where: str = "config", error: type[Exception] = PipelineError) -> Any:
    """The value at dotted ``key`` of ``cfg``; absent -> ``error`` naming the key and ``where``."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise error(f"{where}: missing key {key!r} (settings come complete from workflow_config.yaml "
                        f"and its overlays; the package has no defaults)")
        node = node[part]
    return node


def settings(cls, values, where: str):
    """The dataclass ``cls`` built from one config section, which the rule passes complete
    (workflow_config.yaml is the only source of defaults): a missing or unknown key is a
    PipelineError that names it and ``where`` (e.g. ``mae.finetune``). Here, not in training.py,
    so stages that never import torch check their sections the same way."""
    if not isinstance(values, dict):
        raise PipelineError(f"{where}: config section missing from --params (got {values!r})")
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names if n not in values]
    unknown = sorted(set(values) - set(names))
    if missing:
        raise PipelineError(f"{where}: missing key(s) {missing} in --params (see workflow_config.yaml)")
    if unknown:
        raise PipelineError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    return cls(**values)


def deep_merge(base: dict, overlay: Mapping) -> dict:
    """Merge ``overlay`` into ``base`` in place as snakemake's ``--configfile`` does (nested
    mappings merge, anything else replaces); returns ``base``."""
    for k, v in overlay.items():
        if isinstance(v, Mapping) and isinstance(base.get(k), dict):
            deep_merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


def read_yaml(path: str | Path) -> dict:
    """One config file as a mapping; missing, unparsable or not a mapping -> PipelineError naming it."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: workflow config not found")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise PipelineError(not_utf8(path, e)) from None
    except yaml.YAMLError as e:
        raise PipelineError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise PipelineError(f"{path}: a workflow config must be a mapping, got {type(doc).__name__}")
    return doc


def load_run_config(run_config: str | Path, overlays: Iterable[str | Path] = ()) -> dict:
    """A finished run's effective config with ``overlays`` merged over it in order.

    ``_files`` lists the files read, for error messages that point at the setting's source."""
    run_config = Path(run_config)
    if not run_config.is_file():
        raise PipelineError(f"{run_config}: the run's saved config not found (every workflow run writes "
                            f"results/{RUN_CONFIG}; is --models a finished run's results/ folder?)")
    files = [run_config, *map(Path, overlays)]
    cfg: dict = {}
    for f in files:
        deep_merge(cfg, read_yaml(f))
    cfg["_files"] = [str(f) for f in files]
    return cfg


def write_run_config(config: Mapping, path: str | Path) -> None:
    """Save a run's effective (merged, validated) config, atomically, as YAML."""
    import yaml

    plain = {k: v for k, v in copy.deepcopy(dict(config)).items() if not str(k).startswith("_")}
    write_text(path, "# the effective config of this run (workflow_config.yaml + overlays)\n"
               + yaml.safe_dump(plain, sort_keys=False, allow_unicode=True))
