"""Warm start for local jobs: ``python -m affect_pipeline.warm <stage> ...``.

A stage job spends seconds importing torch, torchvision, timm or transformers, often longer than
its work on a small input (compare: ``python -m benchmarks.run --demo --demo-cold``). This
launcher hands the job to a *fork server*: a process of the same interpreter that has imported
the heavy third-party libraries once (never CUDA, never a thread pool, never our own stage code)
and forks a child per job. The child becomes the job Snakemake started, or declines:
- it takes the job's stdin/stdout/stderr (passed over a Unix socket), environment, working
  directory, umask, arguments, rlimits (every ``RLIMIT_*``) and CPU affinity; one it cannot take
  (a hard limit above the server's) -> it declines and the job runs cold;
- what a library reads once, at import or interpreter start-up — the variables matching
  :data:`KEYED_ENV` (HDF5_*, thread counts OMP_/MKL_/OPENBLAS_/NUMEXPR_/..., CUDA_*, PYTORCH_*/
  TORCH*, HF_*/TRANSFORMERS_*, LD_*, PYTHON*, locale, TZ, TMPDIR, HOME) — and the nice value and
  cgroup, which a child cannot lower or leave, are part of the server's *key*: a job with other
  values gets its own server, started under them, never a fork of one that imported under others.
  Keyed rather than refused: Snakemake sets OMP_NUM_THREADS & co. to each rule's threads, so a
  run needs one server per thread count, not a cold start per job;
- it imports the stage's code fresh from disk, runs it and reports its exit code; the launcher's
  signals (TERM, INT, HUP, QUIT, USR1, USR2) go over the socket, the child sends them to itself;
  a child whose launcher is killed kills its process group. No pid from the server is signalled.
Snakemake's ``benchmark:`` sampler would see only the launcher: the rules pass ``--benchmark`` and
the job measures itself (affect_pipeline.common.jobstats).

Safe (as ssh-agent and tmux): the folder ``$XDG_RUNTIME_DIR`` (or /tmp) ``/affect-warm-$UID`` is
created 0700 and checked with lstat on every use — a real directory, owned by the user, no
group/other bits — else the job runs cold with a one-line warning naming the folder and why; its
lock, log and socket are never followed through a symlink; the server drops connections of other
uids and the launcher refuses a server of another uid before sending anything (SO_PEERCRED).

Cold (``python -m affect_pipeline``, exec'd in place): no server yet (one is started for the jobs
after it; the key also covers interpreter, venv and launcher code); ``AFFECT_WARM=0``; under a
scheduler — Slurm (SLURM_JOB_ID), PBS/Torque (PBS_JOBID), LSF (LSB_JOBID), SGE/UGE (JOB_ID with
SGE_TASK_ID or SGE_ROOT), HTCondor (_CONDOR_JOB_AD), Flux (FLUX_JOB_ID), whose cgroup, limits and
accounting are the job's — unless ``AFFECT_WARM=force``; any error talking to the server. The
server exits after ``AFFECT_WARM_IDLE`` seconds (default 120) without jobs.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import resource
import select
import signal
import socket
import stat
import sys
import threading
import time
from pathlib import Path

from affect_pipeline.common.private_ipc import Unsafe, check_dir, peer_uid, private_dir, private_file, recv, send

#: imported by the server before it forks; whatever is missing is skipped
PRELOAD = ("numpy", "h5py", "cv2", "av", "scipy.signal", "skimage.transform", "torch", "torchvision",
           "timm", "timm.scheduler", "timm.utils", "facenet_pytorch", "transformers.models.hubert",
           "transformers.models.wav2vec2", "torchvggish", "psutil")
PRELOAD = tuple(filter(None, os.environ.get("AFFECT_WARM_PRELOAD", ",".join(PRELOAD)).split(",")))
IDLE_S = float(os.environ.get("AFFECT_WARM_IDLE", 120))
#: variables read at import or interpreter start-up: their values are part of the server's key
KEYED_ENV = re.compile(r"HDF5_|OMP_|KMP_|GOMP_|MKL_|OPENBLAS_|GOTO_|BLIS_|VECLIB_|NUMEXPR_|NUMBA_|NPY_|CUDA_"
                       r"|CUBLAS_|CUDNN_|NCCL_|NVIDIA_|PYTORCH_|TORCH|HF_|HUGGINGFACE_|TRANSFORMERS_|TIMM_"
                       r"|OPENCV_|LD_|PYTHON|MALLOC_|GLIBC_TUNABLES$|LC_|LANG$|LANGUAGE$|TZ$|TMPDIR$|TMP$"
                       r"|TEMP$|TEMPDIR$|HOME$|XDG_CACHE_HOME$")
#: (name, variable[, variable that must come with it]): a scheduler runs this job
SCHEDULERS = (("Slurm", "SLURM_JOB_ID"), ("PBS/Torque", "PBS_JOBID"), ("LSF", "LSB_JOBID"),
              ("SGE/UGE", "JOB_ID", "SGE_TASK_ID"), ("SGE/UGE", "JOB_ID", "SGE_ROOT"),
              ("HTCondor", "_CONDOR_JOB_AD"), ("Flux", "FLUX_JOB_ID"))
FORWARD = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
RLIMITS = sorted(n for n in dir(resource) if n.startswith("RLIMIT_"))
_START_CWD = os.getcwd()


def _key() -> str:
    """Names the server that may run this job: same interpreter, venv contents, launcher code and
    package checkout (two checkouts sharing a venv must not run each other's stage code), the
    same import-time variables (:data:`KEYED_ENV`), nice value and cgroup."""
    pkg = Path(__file__).resolve().parent
    h = hashlib.sha256(f"{sys.executable}|{PRELOAD}|{pkg}".encode())
    for f in ("warm.py", "__init__.py", "common/__init__.py", "common/private_ipc.py"):
        h.update((pkg / f).read_bytes())
    for p in sys.path:
        if p.endswith("site-packages") and os.path.isdir(p):
            h.update(f"{p}:{os.stat(p).st_mtime_ns}".encode())
    h.update(repr(sorted((k, v) for k, v in os.environ.items() if KEYED_ENV.match(k))).encode())
    h.update(f"nice={os.getpriority(os.PRIO_PROCESS, 0)}".encode())
    h.update(Path("/proc/self/cgroup").read_bytes() if os.path.exists("/proc/self/cgroup") else b"")
    return h.hexdigest()[:16]


def scheduler(env=os.environ) -> str | None:
    """The scheduler running this job (warm mode is off there), if any."""
    for name, var, *also in SCHEDULERS:
        if var in env and all(a in env for a in also):
            return f"{name} ({var})"
    return None


# ---------------------------------------------------------------- the launcher (client)
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    mode = os.environ.get("AFFECT_WARM", "1")
    if mode == "0" or (mode != "force" and scheduler()):
        _run_here(argv)
    try:
        sock = private_dir(os.environ.get("XDG_RUNTIME_DIR") or "/tmp", f"affect-warm-{os.getuid()}") / f"{_key()}.sock"
        conn = _connect(sock)
        if conn is None:
            _start_server(sock)
            _run_here(argv)
    except (Unsafe, OSError) as e:          # never fails the job: it runs as it would without us
        print(f"affect_pipeline.warm: not using the warm server: {e}; running the job cold", file=sys.stderr)
        _run_here(argv)
    return _hand_over(conn, argv)


def _connect(sock: Path) -> socket.socket | None:
    """A connection to our server at ``sock``; None when there is none (or a dead one)."""
    check_dir(sock.parent)
    try:
        st = os.lstat(sock)
    except FileNotFoundError:
        return None
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.getuid():
        raise Unsafe(f"{sock} is not a socket of uid {os.getuid()}")
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(sock))
    except OSError:
        conn.close()
        return None
    uid = peer_uid(conn)
    if uid != os.getuid():
        conn.close()
        raise Unsafe(f"the server at {sock} runs as uid {uid}, not as this user (uid {os.getuid()})")
    return conn


def _hand_over(conn: socket.socket, argv: list[str]) -> int:
    """Give the job to the server, pass signals on, return the job's exit code."""
    from affect_pipeline.common.jobstats import process_start

    job = {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "umask": _umask(),
           "rlimits": {n: resource.getrlimit(getattr(resource, n)) for n in RLIMITS},
           "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
           "nice": os.getpriority(os.PRIO_PROCESS, 0), "t0": process_start()}
    try:
        socket.send_fds(conn, [b"F"], [0, 1, 2])
        send(conn, job)
        hello = recv(conn)
    except (OSError, ValueError):
        hello = None
    if hello is None:            # the server went away before forking: nothing ran yet
        _run_here(argv)
    if isinstance(hello, dict) and isinstance(hello.get("cold"), str):
        print(f"affect_pipeline.warm: {hello['cold']}; running the job cold", file=sys.stderr)
        conn.close()
        _run_here(argv)
    if not isinstance(hello, dict) or type(hello.get("pid")) is not int:
        print(f"affect_pipeline.warm: the server answered {str(hello)[:80]!r}, not a job start", file=sys.stderr)
        return 1
    passed: list[int] = []

    def pass_on(sig, _frame):
        passed.append(sig)
        try:
            send(conn, {"signal": int(sig)})
        except OSError:
            pass

    for s in FORWARD:
        signal.signal(s, pass_on)
    try:
        done = recv(conn)
    except (OSError, ValueError):
        done = None
    rc = done.get("rc") if isinstance(done, dict) else None
    if type(rc) is int and 0 <= rc <= 255:
        return rc
    if passed:                   # stopped by a signal we passed on: end the way a cold job would
        signal.signal(passed[-1], signal.SIG_DFL)
        os.kill(os.getpid(), passed[-1])
    print(f"affect_pipeline.warm: job process {hello['pid']} ended with no exit status (killed?)", file=sys.stderr)
    return 1


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

    lock = private_file(sock.with_suffix(".lock"), os.O_WRONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(lock)
        return
    log = private_file(sock.with_suffix(".log"), os.O_WRONLY | os.O_TRUNC)
    subprocess.Popen([sys.executable, "-m", "affect_pipeline.warm", "--serve", str(sock)],
                     stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                     pass_fds=(lock,), env={**os.environ, "AFFECT_WARM_LOCK_FD": str(lock)})


# ---------------------------------------------------------------- the server
def serve(sock: Path) -> None:
    import importlib

    check_dir(sock.parent)
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
    check_dir(sock.parent)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sock)         # a dead server's socket (unlink never follows a link)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        srv.bind(str(sock))
    finally:
        os.umask(old)
    mine = os.lstat(sock)
    srv.listen(64)
    lock_fd = os.environ.pop("AFFECT_WARM_LOCK_FD", None)
    if lock_fd:
        os.close(int(lock_fd))           # others may start a server again once this one is gone
    print(f"warm server {os.getpid()} ready in {time.time() - t0:.1f} s at {sock}", flush=True)
    try:
        _accept_jobs(srv)
    finally:
        with contextlib.suppress(OSError):
            st = os.lstat(sock)
            if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
                os.unlink(sock)         # still ours, not a later server's


def _accept_jobs(srv: socket.socket) -> None:
    children: set[int] = set()
    last = time.time()
    while True:
        ready, _, _ = select.select([srv], [], [], 2.0)
        children -= _reaped(children)
        if ready:
            conn, _ = srv.accept()
            uid = peer_uid(conn)
            if uid != os.getuid():
                print(f"refused a connection from uid {uid}", flush=True)
                conn.close()
                continue
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


def _reaped(children: set[int]) -> set[int]:
    gone = set()
    for pid in children:
        try:
            done = os.waitpid(pid, os.WNOHANG)[0]
        except ChildProcessError:
            done = pid
        gone |= {pid} if done else set()
    return gone


def _adopt(job: dict) -> str | None:
    """Take on the job's rlimits, CPU affinity and nice; the reason it cannot, if so."""
    for name, (soft, hard) in job["rlimits"].items():
        res = getattr(resource, name, None)
        if res is not None and resource.getrlimit(res) != (soft, hard):
            try:
                resource.setrlimit(res, (soft, hard))
            except (ValueError, OSError) as e:
                return f"the warm server cannot take the job's {name} {soft}:{hard} ({e})"
    if job.get("affinity") is not None and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, job["affinity"])
        except OSError as e:
            return f"the warm server cannot take the job's CPUs {job['affinity']} ({e})"
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    if job["nice"] != nice:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, job["nice"])
        except OSError:
            return f"the job's nice {job['nice']} is below the warm server's {nice}"
    return None


def _child(conn: socket.socket) -> int:
    """One job, in a fresh fork: become the launcher's process, run the stage, report the code."""
    rc = 1
    try:
        os.setpgid(0, 0)                       # its own group: killing it never reaches the server
        _, fds, _, _ = socket.recv_fds(conn, 1, 3)
        job = recv(conn)
        why = _adopt(job)
        if why:
            send(conn, {"cold": why})
            conn.close()                       # (no exit status follows: the launcher runs the job)
            return 0
        print(f"job {os.getpid()}: {job['argv'][:1]}", flush=True)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(job["cwd"])
        os.environ.clear()
        os.environ.update(job["env"])
        os.umask(job["umask"])
        for s in FORWARD[:1] + FORWARD[2:] + (signal.SIGCHLD,):
            signal.signal(s, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)     # as in a fresh interpreter
        send(conn, {"pid": os.getpid()})
        threading.Thread(target=_listen_to_launcher, args=(conn,), daemon=True).start()
        sys.argv = ["affect_pipeline", *job["argv"]]
        sys.path.insert(0, job["cwd"])        # as `python -m` would
        from affect_pipeline.common import jobstats

        jobstats.STARTED_AT = float(job["t0"])
        from affect_pipeline.__main__ import main as stage_main

        rc = int(stage_main(job["argv"]) or 0) & 0xFF
    except SystemExit as e:
        rc = (e.code if isinstance(e.code, int) else (0 if e.code is None else 1)) & 0xFF
    except BaseException as e:   # noqa: BLE001 - report like an interpreter would (never return to the loop)
        import traceback

        traceback.print_exc()
        rc = 130 if isinstance(e, KeyboardInterrupt) else 1
    finally:
        try:
            import gc

            gc.collect()                       # close what a normal interpreter exit would
            sys.stdout.flush()
            sys.stderr.flush()
            send(conn, {"rc": rc})
        except (OSError, ValueError):
            pass
    return rc


def _listen_to_launcher(conn: socket.socket) -> None:
    """Signals the launcher passes on go to this process; EOF means the launcher was killed, so
    the job and what it started stop too."""
    while True:
        try:
            msg = recv(conn)
        except (OSError, ValueError):
            msg = None
        if msg is None:
            os.killpg(0, signal.SIGKILL)
        sig = msg.get("signal") if isinstance(msg, dict) else None
        if sig in {int(s) for s in FORWARD}:
            os.kill(os.getpid(), sig)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(Path(sys.argv[2]))        # (imports no stage code: its children import it fresh)
    else:
        import locale  # UTF-8 mode as `python -m affect_pipeline` has it (PYTHONUTF8 keys the server)

        if not sys.flags.utf8_mode and (sys.getfilesystemencoding(), locale.getpreferredencoding(False)) != (
                "utf-8", "UTF-8"):
            from affect_pipeline.common.files import ensure_utf8_mode

            ensure_utf8_mode()
        sys.exit(main())
