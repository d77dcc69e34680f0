"""The results page, benchmarks/RESULTS.md: one section per benchmark, each between the lines

    <!-- bench:NAME -->
    ...
    <!-- /bench:NAME -->

A benchmark command replaces only its own sections (:func:`update_page`): every byte outside
them stays as it is, and a section the page does not have yet is appended at its end. The
figures a command writes open with :func:`stamp` (machine, command, date and commit), so each
section says where its numbers come from.
"""
from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from pathlib import Path

from affect_pipeline.common.runtime import write_text

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "benchmarks" / "RESULTS.md"
_MARKER = re.compile(r"^<!-- (/?)bench:([A-Za-z0-9_.-]+) -->[ \t]*$", re.MULTILINE)


class PageError(ValueError):
    """The page's markers are unbalanced, nested or repeated: fix them by hand."""


def sections(text: str) -> dict[str, tuple[int, int]]:
    """NAME -> (start, end): the character range of each section, from the first character of
    its opening marker line to just past the newline of its closing one (or the text's end)."""
    found: dict[str, tuple[int, int]] = {}
    open_name, open_at = None, 0
    for m in _MARKER.finditer(text):
        closing, name = m.group(1) == "/", m.group(2)
        if not closing:
            if open_name is not None:
                raise PageError(f"section {name!r} opens inside section {open_name!r}")
            if name in found:
                raise PageError(f"section {name!r} appears twice")
            open_name, open_at = name, m.start()
        else:
            if name != open_name:
                raise PageError(f"closing marker of {name!r} without its opening marker"
                                + (f" (section {open_name!r} is open)" if open_name else ""))
            end = m.end() + 1 if text[m.end():m.end() + 1] == "\n" else m.end()
            found[name], open_name = (open_at, end), None
    if open_name is not None:
        raise PageError(f"section {open_name!r} has no closing marker")
    return found


def block(name: str, body: str) -> str:
    """Section ``name`` holding ``body`` (a heading, then its figures), markers included."""
    if _MARKER.search(body):
        raise PageError(f"the body of section {name!r} holds a section marker")
    return f"<!-- bench:{name} -->\n{body.strip(chr(10))}\n\n<!-- /bench:{name} -->\n"


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with section ``name`` replaced by ``body``, or appended when it has none."""
    where = sections(text)
    new = block(name, body)
    if name in where:
        start, end = where[name]
        return text[:start] + new + text[end:]
    if not text:
        return new
    return text + ("" if text.endswith("\n\n") else "\n" if text.endswith("\n") else "\n\n") + new


def update_page(path: Path, updates: dict[str, str]) -> None:
    """Replace (or append) the sections ``updates`` names in the page at ``path``, written
    atomically; a page that does not exist yet starts empty."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    for name, body in updates.items():
        text = replace_section(text, name, body)
    write_text(path, text)


def machine() -> str:
    """This machine in one line: host, cores, CPU model, memory, GPU, Python and torch."""
    import torch

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    mem = next((int(ln.split()[1]) // 1024**2 for ln in open("/proc/meminfo") if ln.startswith("MemTotal")), 0)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"{platform.node()}: {os.cpu_count()} cores ({cpu}), {mem} GiB RAM, GPU: {gpu}; "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def commit() -> str:
    """The checkout's commit (``+ local changes`` when tracked files differ from it), or ``unknown``."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=30)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + (" + local changes" if dirty.stdout.strip() else "")


def dated() -> str:
    """When, and at which code, figures were measured: today and the checkout's commit."""
    return f"- Date: {time.strftime('%Y-%m-%d')}, commit {commit()}"


def stamp(machine_line: str, command: str) -> str:
    """The lines a section's figures open with: where, how and when they were measured."""
    return f"- Machine: {machine_line}\n- Command: `{command}`\n{dated()}"
