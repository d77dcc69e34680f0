"""What code is running: the package version and, in a git checkout, the commit. Printed by
``--version``, recorded in model bundles and in every affect-predict output's provenance.

Kept out of the package's ``__init__`` (which every stage's code digest covers) so that this
module's code does not rerun the workflow; the version itself is ``affect_pipeline.__version__``.
"""
from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

from affect_pipeline import __version__

CHECKOUT = Path(__file__).resolve().parents[2]


def code_version() -> dict:
    """``version``; ``commit`` and ``dirty`` (tracked files differ from it) in a git checkout,
    None for an installed copy or without git. Git is asked once per process."""
    return dict(_code_version())


@functools.lru_cache(maxsize=1)
def _code_version() -> dict:
    info = {"version": __version__, "commit": None, "dirty": None}
    git = shutil.which("git")
    if git is None or not (CHECKOUT / ".git").exists():
        return info
    info["commit"] = _git(git, "rev-parse", "HEAD")
    if info["commit"]:
        status = _git(git, "status", "--porcelain", "--untracked-files=no")
        info["dirty"] = None if status is None else bool(status)
    return info


def _git(git: str, *args: str) -> str | None:
    try:
        p = subprocess.run([git, "-C", str(CHECKOUT), *args], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def version_string(prog: str = "affect_pipeline") -> str:
    """``affect_pipeline 0.1.0 (git 1a2b3c4d5e6f, modified)``: what ``--version`` prints."""
    v = code_version()
    if not v["commit"]:
        return f"{prog} {v['version']}"
    return f"{prog} {v['version']} (git {v['commit'][:12]}{', modified' if v['dirty'] else ''})"
