"""Shared job runtime: clear errors, atomic outputs, safe checkpoints, threads, devices, progress.

Every stage runs through :func:`run_stage`, so a :class:`PipelineError` (bad input, missing
weights, ...) ends the job with one readable line naming the file and the cause instead of a
traceback, and every output is written under a temporary name and renamed only when complete.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import random
import re
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

log = logging.getLogger("affect_pipeline")


class PipelineError(Exception):
    """An expected failure (bad input, missing file, wrong config): reported without traceback."""


def run_stage(stage: str, fn: Callable[[list[str]], int | None], argv: list[str]) -> int:
    logging.basicConfig(level=os.environ.get("AFFECT_LOGLEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    t0 = time.time()
    try:
        rc = fn(argv) or 0
    except PipelineError as e:
        print(f"ERROR [{stage}]: {e}", file=sys.stderr)
        return 1
    log.info("%s finished in %.1f s", stage, time.time() - t0)
    return rc


# ---------------------------------------------------------------- arguments
def stage_parser(stage: str, doc: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with the options every stage shares."""
    p = argparse.ArgumentParser(prog=f"python -m affect_pipeline {stage}", description=doc)
    p.add_argument("--params", type=parse_params, default={}, help="stage hyperparameters as JSON")
    p.add_argument("--threads", type=int, default=1, help="CPU threads this job may use")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--seed", type=int, default=0)
    return p


def parse_params(text: str) -> dict:
    """Parse ``--params``: inline JSON, or @PATH to a JSON file."""
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        value = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"--params is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--params must be a JSON object")
    return value


# ---------------------------------------------------------------- atomic outputs
#: a temporary file untouched for this long belongs to no running job (longer than any job's wall
#: time × its retry in profiles/slurm, but for pretrain_mae, whose temporary lives only seconds)
STALE_TMP_HOURS = float(os.environ.get("AFFECT_STALE_TMP_HOURS", "24"))


def _writer_tag() -> str:
    """Host (and, on Linux, PID namespace) of this process: a PID is only meaningful within both."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "localhost"
    with contextlib.suppress(OSError):
        host += "-" + re.sub(r"\D", "", os.readlink("/proc/self/ns/pid"))
    return host


_TAG = _writer_tag()
_TMP_NAME = re.compile(r"\.(?P<out>.+)\.tmp(?P<pid>\d+)(?:@(?P<tag>[A-Za-z0-9-]+))?")


def temp_sibling(path: str | os.PathLike) -> Path:
    """``.{name}.tmp{pid}@{host}``: hidden, and naming the writer so that a later job can tell
    whether it still runs (:func:`remove_stale_temps`)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}@{_TAG}")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's live process
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike, max_age_h: float | None = None) -> list[Path]:
    """Delete the temporary files of killed writers in ``folder`` (a killed crop_faces job leaves up
    to a GB): those of this host whose PID is dead, and any untouched for ``max_age_h`` hours (the
    only safe test for another host's, or for older code's names without a host)."""
    max_age = (STALE_TMP_HOURS if max_age_h is None else max_age_h) * 3600
    removed = []
    with contextlib.suppress(OSError), os.scandir(folder) as it:   # tidying never fails a writer
        for e in it:
            m = _TMP_NAME.fullmatch(e.name)
            if not m or int(m["pid"]) == os.getpid() and m["tag"] == _TAG:
                continue
            with contextlib.suppress(OSError):
                dead = m["tag"] == _TAG and not _pid_alive(int(m["pid"]))
                if (dead or time.time() - e.stat(follow_symlinks=False).st_mtime > max_age):
                    if e.is_dir(follow_symlinks=False):    # a batch directory being assembled
                        shutil.rmtree(e.path)
                    else:
                        os.unlink(e.path)
                    removed.append(Path(e.path))
    if removed:
        log.warning("removed %d temporary file(s) left by killed jobs: %s", len(removed),
                    ", ".join(str(r) for r in removed[:5]))
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto ``path`` only if the block succeeds.

    A crash (or kill -9) leaves at most a hidden ``.{name}.tmp{pid}@{host}`` file that no rule lists
    as an output, never a half-written file under the real name; the next writer in the same
    folder removes it once its writer is known dead (:func:`remove_stale_temps`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    tmp = temp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary sibling folder; it replaces ``path`` (all or nothing) only if the
    block succeeds, else it is removed (a kill leaves it to :func:`remove_stale_temps`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    tmp = temp_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PipelineError(f"{path}: not valid JSON ({e})") from e


def file_digest(path: str | os.PathLike, n: int = 16) -> str:
    """Short sha256 of a file (or of a folder's files), recorded next to features it produced."""
    h = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:n]


# ---------------------------------------------------------------- checkpoints
def save_checkpoint(obj: dict, path: str | os.PathLike) -> None:
    """torch.save through a temporary name. Keep ``obj`` to tensors, numbers, strings, lists, dicts."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> dict:
    """torch.load with ``weights_only=True``: a checkpoint that carries pickled code is refused."""
    import pickle

    import torch

    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [l.strip() for l in str(e).splitlines() if l.strip()]
        detail = next((l for l in lines if "GLOBAL" in l), lines[0] if lines else "")
        raise PipelineError(
            f"{path}: refused to load: the checkpoint carries pickled code or objects that are not "
            f"plain tensors/containers (torch.load weights_only=True): {detail}; do not load it with "
            f"weights_only=False unless you trust its source — re-save its state_dict instead") from e
    except (RuntimeError, EOFError, OSError) as e:
        raise PipelineError(f"{path}: not a readable torch checkpoint (truncated or corrupt?): {e}") from e


# ---------------------------------------------------------------- torch setup
def setup_torch(threads: int = 1, seed: int = 0, deterministic: bool = True):
    """Use exactly ``threads`` CPU threads and seed every RNG; returns the torch module."""
    import numpy as np
    import torch

    threads = max(1, int(threads))
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # may only be set once per process
        torch.set_num_interop_threads(max(1, min(threads, 2)))
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    return torch


def pick_device(requested: str = "auto"):
    """The device this job uses: the GPUs it was given (CUDA_VISIBLE_DEVICES) or the CPU. Logged."""
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
    if requested == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(requested)
        if dev.type == "cuda" and not torch.cuda.is_available():
            log.warning("device %s requested but CUDA is not available; falling back to CPU", requested)
            dev = torch.device("cpu")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    log.info("device: %s — %s (CUDA_VISIBLE_DEVICES=%s)", dev, name, visible)
    return dev


def autocast(device, enabled: bool = True):
    """bf16 autocast on GPU, a no-op context on CPU (CPU autocast is slower than fp32 here)."""
    import torch

    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def progress(iterable=None, **kw):
    """tqdm into the job's log (stderr), throttled so logs stay small."""
    from tqdm.auto import tqdm

    kw.setdefault("mininterval", 15.0 if not sys.stderr.isatty() else 0.1)
    kw.setdefault("file", sys.stderr)
    kw.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kw)
