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
import sys
import time
from pathlib import Path
from typing import Any, Callable

from affect_pipeline.common.errors import PipelineError, UsageError
from affect_pipeline.common.files import ENCODING, DiskFull, atomic_path, is_disk_full, not_utf8

log = logging.getLogger("affect_pipeline")


def run_stage(stage: str, fn: Callable[[list[str]], int | None], argv: list[str]) -> int:
    logging.basicConfig(level=os.environ.get("AFFECT_LOGLEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from affect_pipeline.common import jobstats

    # --benchmark PATH: the job's own time, CPU and peak memory in Snakemake's benchmark format
    # (the rules' benchmark files: Snakemake's sampler cannot see a warm job; common/jobstats.py)
    argv, bench = jobstats.split_benchmark(argv)
    probe = jobstats.Probe() if bench else None
    t0 = time.time()
    try:
        rc = fn(argv) or 0
    except PipelineError as e:
        print(f"ERROR [{stage}]: {e}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    except Exception as e:   # ENOSPC / EDQUOT outside atomic_path: the same one line (DiskFull)
        if not is_disk_full(e):
            raise
        print(f"ERROR [{stage}]: {DiskFull.of(e)}", file=sys.stderr)
        return 1
    finally:
        if probe:
            probe.stop()
    if probe and rc == 0:
        write_text(bench, probe.record(bench))
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
        try:
            text = Path(text[1:]).read_text(encoding=ENCODING)
        except UnicodeDecodeError as e:
            raise argparse.ArgumentTypeError(f"--params {not_utf8(text[1:], e)}") from None
    try:
        value = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"--params is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--params must be a JSON object")
    return value


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """``text`` as UTF-8 (whatever the locale), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=ENCODING)


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
        return json.loads(path.read_text(encoding=ENCODING))
    except UnicodeDecodeError as e:
        raise PipelineError(not_utf8(path, e)) from None
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

    # through a Python file: a full disk is then an OSError (ENOSPC) under torch's RuntimeError,
    # and the archive's inner folder is "archive", not the temporary's name (same bytes every run)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


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


def check_device(requested: str) -> None:
    """Refuse ``--device`` values this machine cannot honour (a :class:`UsageError`): a name torch
    does not parse, ``cuda``/``cuda:N`` without CUDA or beyond the visible GPUs. For commands
    where a silent CPU fallback would mislead (affect-predict); :func:`pick_device` then picks it."""
    if requested in ("auto", "cpu"):
        return
    import torch

    try:
        dev = torch.device(requested)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {requested}: not a device (auto | cpu | cuda | cuda:N)") from None
    if dev.type != "cuda":
        raise UsageError(f"--device {requested}: not supported (auto | cpu | cuda | cuda:N)")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {requested}: CUDA is not available here (torch {torch.__version__}, built "
                         f"for CUDA {torch.version.cuda}, CUDA_VISIBLE_DEVICES={visible}); use --device cpu")
    n = torch.cuda.device_count()
    if dev.index is not None and dev.index >= n:
        raise UsageError(f"--device {requested}: only {n} CUDA device(s) visible (cuda:0 to cuda:{n - 1}, "
                         f"CUDA_VISIBLE_DEVICES={visible})")


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
