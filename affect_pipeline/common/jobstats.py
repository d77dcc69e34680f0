"""A job's own benchmark record, in the format of Snakemake's ``benchmark:`` files.

Snakemake's ``benchmark:`` directive samples the process tree of the job's shell with psutil
(snakemake/benchmark.py). A job of the warm launcher (affect_pipeline.warm) runs in a process
forked from the warm server, outside that tree, so Snakemake would record the launcher (~20 MB,
no CPU). So the rules pass ``--benchmark PATH`` (a declared output) instead, and
:func:`affect_pipeline.common.runtime.run_stage` writes the record of the job itself, however it
was started (warm, cold, Slurm, torchrun):

- ``s``, ``h:m:s``: from the start of the job's first process (the launcher the shell started;
  :data:`STARTED_AT` when the job was handed to a warm server) to the end of the stage;
- ``cpu_time``: user + system seconds of the job's process and its children (getrusage), plus,
  under torchrun, the other ranks and the agent as last sampled; ``mean_load`` = 100 × cpu_time / s
  (percent of one core, as Snakemake's);
- ``max_rss``: the larger of the kernel's peak RSS of the process (and of its largest child) and
  the largest sum over the job's process tree sampled like Snakemake (every 0.5 s for 15 s, then
  every 30 s). A warm job's RSS counts the pages of every library the server preloaded (shared
  with it, not copied), also of those the stage would not import cold; ``max_uss`` is the job's
  own memory, ``max_pss`` its share of the shared pages (both, and ``max_vms``, sampled; NA
  without psutil);
- ``io_in``, ``io_out``: MB read from / written to storage by the process and its children
  (getrusage blocks).
"""
from __future__ import annotations

import datetime
import json
import os
import resource
import sys
import threading
import time

#: Snakemake's columns (BenchmarkRecord.get_header()), in its order
HEADER = ("s", "h:m:s", "max_rss", "max_vms", "max_uss", "max_pss", "io_in", "io_out", "mean_load", "cpu_time")
#: when the job began, if not when this process did: set by a warm server's child to its launcher's start
STARTED_AT: float | None = None
_MB = 1024 * 1024


def split_benchmark(argv: list[str]) -> tuple[list[str], str | None]:
    """``argv`` without ``--benchmark PATH`` / ``--benchmark=PATH``, and PATH. Under torchrun only
    rank 0 records (for every rank): the other ranks get None."""
    rest, path = [], None
    it = iter(argv)
    for a in it:
        if a == "--benchmark":
            path = next(it, None)
        elif a.startswith("--benchmark="):
            path = a.split("=", 1)[1]
        else:
            rest.append(a)
    if "TORCHELASTIC_RUN_ID" in os.environ and os.environ.get("RANK", "0") != "0":
        path = None
    return rest, path


def process_start(pid: int | str = "self") -> float:
    """Wall-clock time at which process ``pid`` started (Linux /proc; now elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            ticks = int(f.read().rsplit(b")", 1)[1].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - age
    except (OSError, ValueError, IndexError, AttributeError):
        return time.time()


class Probe:
    """Measures this job from creation to :meth:`stop`; :meth:`record` formats the result."""

    def __init__(self):
        torchrun = "TORCHELASTIC_RUN_ID" in os.environ
        self.root = os.getppid() if torchrun else os.getpid()      # the agent holds every rank
        self.t0 = STARTED_AT or process_start(self.root)
        self.peak = {"rss": 0.0, "vms": None, "uss": None, "pss": None}
        self.others_cpu: dict[int, float] = {}
        self.t1 = None
        self._done = threading.Event()
        self._lock = threading.Lock()
        try:
            import psutil
        except ImportError:
            psutil = None
        self._ps = psutil
        self._thread = None
        if psutil is not None:
            self._thread = threading.Thread(target=self._loop, name="jobstats", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        n = 0
        while not self._done.is_set():
            self._sample()
            n += 1
            self._done.wait(0.5 if n < 30 else 30)

    def _sample(self) -> None:
        ps = self._ps
        try:
            root = ps.Process(self.root)
            procs = [root, *root.children(recursive=True)]
            mine = {os.getpid()} | ({p.pid for p in ps.Process().children(recursive=True)}
                                    if self.root != os.getpid() else {p.pid for p in procs})
        except (ps.Error, OSError):
            return
        tot = {"rss": 0, "vms": 0, "uss": 0, "pss": 0}
        full = True
        for p in procs:
            try:
                with p.oneshot():
                    try:
                        m = p.memory_full_info()
                    except ps.AccessDenied:
                        m, full = p.memory_info(), False
                    for k in tot:
                        tot[k] += getattr(m, k, 0)
                    if p.pid not in mine:
                        self.others_cpu[p.pid] = sum(p.cpu_times()[:2])
            except (ps.Error, OSError):
                continue
        with self._lock:
            for k, v in tot.items():
                if k in ("uss", "pss") and not full:
                    continue
                self.peak[k] = max(self.peak[k] or 0.0, v / _MB)

    def stop(self) -> None:
        """End the measurement (idempotent): one last sample, then the clock and rusage."""
        if self.t1 is not None:
            return
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._sample()
        self.t1 = time.time()
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        unit = 1 if sys.platform == "darwin" else 1024          # ru_maxrss: bytes on macOS, KiB here
        self.cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime + sum(self.others_cpu.values())
        self.peak["rss"] = max(self.peak["rss"], max(me.ru_maxrss, kids.ru_maxrss) * unit / _MB)
        self.io = ((me.ru_inblock + kids.ru_inblock) * 512 / _MB, (me.ru_oublock + kids.ru_oublock) * 512 / _MB)

    def values(self) -> list:
        """The record's values in :data:`HEADER` order, as Snakemake's get_benchmarks() gives them."""
        self.stop()
        s = max(self.t1 - self.t0, 1e-6)
        td = datetime.timedelta(seconds=s)
        mm, ss = divmod(td.seconds, 60)
        hh, mm = divmod(mm, 60)
        hms = (f"{td.days} day{'s' if td.days != 1 else ''}, " if td.days else "") + f"{hh}:{mm:02d}:{ss:02d}"
        na = lambda v: "NA" if v is None else v
        return [round(s, 4), hms, self.peak["rss"], na(self.peak["vms"]), na(self.peak["uss"]),
                na(self.peak["pss"]), self.io[0], self.io[1], 100 * self.cpu / s, self.cpu]

    def record(self, path: str) -> str:
        """The file's text: TSV with Snakemake's header, or one JSON line for a ``.jsonl`` path."""
        vals = self.values()
        if str(path).endswith(".jsonl"):
            return json.dumps(dict(zip(HEADER, vals)), sort_keys=True, default=str) + "\n"
        cell = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)
        return "\t".join(HEADER) + "\n" + "\t".join(map(cell, vals)) + "\n"
