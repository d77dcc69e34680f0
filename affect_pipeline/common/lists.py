"""Per-video lists handed to a stage in a file: ``--batch=@results/lists/...json``.

The rules write a job's list of videos / media files into a JSON file it declares as an input
(rules/common.smk ``list_file``) instead of putting it on the command line: a shell argument
holds at most 128 KiB (a few thousand ids), and an id such as ``-8XbT1X7Lq0`` would read as an
option. :func:`read_list` reads such an argument back.
"""
from __future__ import annotations

import json
from pathlib import Path

from affect_pipeline.common.errors import PipelineError


def read_list(arg: str):
    """A list argument: ``@PATH`` (the JSON file a rule wrote), else the JSON text itself."""
    if arg.startswith("@"):
        try:
            return json.loads(Path(arg[1:]).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise PipelineError(f"{arg[1:]}: unreadable list file ({e})") from e
    try:
        return json.loads(arg)
    except ValueError as e:
        raise PipelineError(f"not a JSON list, nor @FILE: {arg[:80]!r} ({e})") from e
