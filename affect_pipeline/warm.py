"""Warm start for local jobs: ``python -m affect_pipeline.warm <stage> ...``.

A stage job spends seconds importing torch, torchvision, timm or transformers (time it:
``time python -c "import torch, torchvision, timm, transformers.models.hubert"``), often
longer than its work on a small input, so on one machine start-up is most of a Snakemake run
(compare: ``python -m benchmarks.run --demo --demo-cold``).

This launcher hands the job to a *fork server*: a process of the same interpreter that has
imported the heavy third-party libraries once (never CUDA, never a thread pool, never our own
stage code) and forks a child per job. The child takes over the job's stdin/stdout/stderr
(passed over a Unix socket), environment, working directory and arguments, imports the stage's
code fresh from disk and runs it; the launcher waits, forwards signals and exits with the
child's code. Snakemake sees an ordinary job.

Safe by construction, or not used:
- no server yet, or a stale one (other interpreter, venv or launcher code: the socket name is a
  digest of all three) -> the job runs in-process as ``python -m affect_pipeline`` (exec) and a
  server is started in the background for the jobs after it;
- inside a Slurm job (``SLURM_JOB_ID``), with ``AFFECT_WARM=0``, or on any error talking to the
  server -> in-process as well;
- the server exits after ``AFFECT_WARM_IDLE`` seconds (default 120) without jobs; a child whose
  launcher disappears (killed) kills itself.
"""
from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path

#: imported by the server before it forks; whatever is missing is skipped
PRELOAD = ("numpy", "h5py", "cv2", "av", "scipy.signal", "skimage.transform", "torch", "torchvision",
           "timm", "timm.scheduler", "timm.utils", "facenet_pytorch", "transformers.models.hubert",
           "transformers.models.wav2vec2", "torchvggish")
PRELOAD = tuple(filter(None, os.environ.get("AFFECT_WARM_PRELOAD", ",".join(PRELOAD)).split(",")))
IDLE_S = float(os.environ.get("AFFECT_WARM_IDLE", 120))
_START_CWD = os.getcwd()


def _key() -> str:
    """Names the server that may run this job: same interpreter, venv contents, launcher code and
    package checkout (two checkouts sharing a venv must not run each other's stage code)."""
    pkg = Path(__file__).resolve().parent
    h = hashlib.sha256(f"{sys.executable}|{PRELOAD}|{pkg}".encode())
    for f in (pkg / "warm.py", pkg / "__init__.py"):
        h.update(f.read_bytes())
    for p in sys.path:
        if p.endswith("site-packages") and os.path.isdir(p):
            h.update(f"{p}:{os.stat(p).st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _home() -> Path:
    d = Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp") / f"affect-warm-{os.getuid()}"
    d.mkdir(mode=0o700, exist_ok=True)
    return d


def _send(conn: socket.socket, obj) -> None:
    data = json.dumps(obj).encode()
    conn.sendall(struct.pack("!I", len(data)) + data)


def _recv(conn: socket.socket):
    head = _recv_exact(conn, 4)
    if head is None:
        return None
    body = _recv_exact(conn, struct.unpack("!I", head)[0])
    return None if body is None else json.loads(body)


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


# ---------------------------------------------------------------- the launcher (client)
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get("AFFECT_WARM", "1") == "0" or "SLURM_JOB_ID" in os.environ:
        _run_here(argv)
    sock = _home() / f"{_key()}.sock"
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(str(sock))
    except OSError:
        _start_server(sock)
        _run_here(argv)
    try:
        socket.send_fds(conn, [b"F"], [0, 1, 2])
        _send(conn, {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "umask": _umask()})
        hello = _recv(conn)
    except OSError:
        hello = None
    if not hello:            # the server went away between connect and fork: nothing ran yet
        _run_here(argv)
    child = int(hello["pid"])
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, lambda sig, _f: _forward(child, sig))
    done = _recv(conn)
    if done is None:
        print(f"affect_pipeline.warm: job process {child} ended without an exit status (killed?)",
              file=sys.stderr)
        return 1
    return int(done["rc"])


def _forward(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def _run_here(argv: list[str]):
    os.execv(sys.executable, [sys.executable, "-m", "affect_pipeline", *argv])


def _start_server(sock: Path) -> None:
    """Start a server in the background unless another launcher is doing so right now."""
    import fcntl
    import subprocess

    lock = open(sock.with_suffix(".lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return
    log = open(sock.with_suffix(".log"), "ab")
    subprocess.Popen([sys.executable, "-m", "affect_pipeline.warm", "--serve", str(sock)],
                     stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                     pass_fds=(lock.fileno(),), env={**os.environ, "AFFECT_WARM_LOCK_FD": str(lock.fileno())})


# ---------------------------------------------------------------- the server
def serve(sock: Path) -> None:
    import importlib

    os.chdir("/")
    sys.path[:] = [p for p in sys.path if p not in ("", ".") and os.path.abspath(p) != _START_CWD]
    t0 = time.time()
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - a missing optional library is not an error here
            print(f"preload {name}: {type(e).__name__}: {e}", flush=True)
    import gc

    gc.collect()
    gc.freeze()     # the preloaded objects: never scanned (or copied-on-write) by a child's gc
    if sock.exists():
        sock.unlink()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(sock))
    srv.listen(64)
    lock_fd = os.environ.pop("AFFECT_WARM_LOCK_FD", None)
    if lock_fd:
        os.close(int(lock_fd))           # others may start a server again once this one is gone
    print(f"warm server {os.getpid()} ready in {time.time() - t0:.1f} s at {sock}", flush=True)
    children: set[int] = set()
    last = time.time()
    try:
        while True:
            ready, _, _ = select.select([srv], [], [], 2.0)
            children -= _reaped(children)
            if ready:
                conn, _ = srv.accept()
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    srv.close()
                    os._exit(_child(conn))
                conn.close()
                children.add(pid)
                last = time.time()
            elif children:
                last = time.time()
            elif time.time() - last > IDLE_S:
                break
    finally:
        if sock.exists():
            sock.unlink()


def _reaped(children: set[int]) -> set[int]:
    gone = set()
    for pid in children:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                gone.add(pid)
        except ChildProcessError:
            gone.add(pid)
    return gone


def _child(conn: socket.socket) -> int:
    """One job, in a fresh fork: become the launcher's process, run the stage, report the code."""
    rc = 1
    try:
        _, fds, _, _ = socket.recv_fds(conn, 1, 3)
        job = _recv(conn)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(job["cwd"])
        os.environ.clear()
        os.environ.update(job["env"])
        os.umask(job["umask"])
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(s, signal.SIG_DFL)
        _send(conn, {"pid": os.getpid()})
        threading.Thread(target=_die_with_launcher, args=(conn,), daemon=True).start()
        sys.argv = ["affect_pipeline", *job["argv"]]
        sys.path.insert(0, job["cwd"])        # as `python -m` would
        from affect_pipeline.__main__ import main as stage_main

        try:
            rc = int(stage_main(job["argv"]) or 0)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:   # noqa: BLE001 - report like an interpreter would
            import traceback

            traceback.print_exc()
            rc = 1
    finally:
        try:
            import gc

            gc.collect()                       # close what a normal interpreter exit would
            sys.stdout.flush()
            sys.stderr.flush()
            _send(conn, {"rc": rc})
        except OSError:
            pass
    return rc


def _die_with_launcher(conn: socket.socket) -> None:
    """The launcher sends nothing after the job: EOF means it was killed, so the job stops too."""
    try:
        while conn.recv(1):
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(Path(sys.argv[2]))
    else:
        sys.exit(main())
