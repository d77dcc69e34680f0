"""A job forked by the warm server is the job Snakemake started (issue 32, item 2): it has the
launcher's rlimits and CPU affinity, runs at the launcher's nice value, sees import-time settings
(HDF5 file locking) as the launcher has them — or it runs cold when it cannot take them on.

What the job process has is read from the kernel (/proc/PID/limits, /proc/PID/stat,
sched_getaffinity) while the job blocks reading its --params from the test's pipe.
"""
import json
import os
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_warm import (
    BLOCKED,
    PY,
    _tiny_task,
    home_of,
    job_children,
    launch,
    server_pids,
    wait_for_server,
    warm_env,  # noqa: F401 - the fixture
)


def blocked_job(env, cwd, preexec_fn=None):
    return subprocess.Popen([PY, "-m", "affect_pipeline.warm", *BLOCKED], env=env, cwd=cwd, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=preexec_fn)


def proc_limit(pid: int, label: str) -> tuple[str, str]:
    for ln in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if ln.startswith(label):
            soft, hard = ln[len(label):].split()[:2]
            return soft, hard
    raise AssertionError(f"no {label!r} in /proc/{pid}/limits")


def proc_nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def wait_for_servers(run: Path, n: int, timeout=60):
    t0 = time.time()
    while len(list(run.glob("affect-warm-*/*.sock"))) < n:
        assert time.time() - t0 < timeout, f"{n} warm servers expected: the job's settings should key a server"
        time.sleep(0.2)


def test_child_takes_the_jobs_rlimits_and_cpus(warm_env, tmp_path):
    env, run = warm_env
    launch(["--help"], env, tmp_path)
    wait_for_server(run)
    cpus = sorted(os.sched_getaffinity(0))

    def confine():               # as `prlimit --nofile=256:512 --as=... taskset -c N` would
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 512))
        resource.setrlimit(resource.RLIMIT_AS, (48 << 30, 64 << 30))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.sched_setaffinity(0, {cpus[-1]})

    p = blocked_job(env, tmp_path, confine)
    try:
        (child,) = job_children(run)
        assert proc_limit(child, "Max open files") == ("256", "512")
        assert proc_limit(child, "Max address space") == (str(48 << 30), str(64 << 30))
        assert proc_limit(child, "Max core file size") == ("0", "0")
        assert os.sched_getaffinity(child) == {cpus[-1]}
    finally:
        p.kill()
        p.communicate()


def test_a_niced_job_runs_niced(warm_env, tmp_path):
    env, run = warm_env
    launch(["--help"], env, tmp_path)
    wait_for_server(run)                                         # a server at nice 0

    def nice5():
        os.nice(5)

    first = launch(["--help"], env, tmp_path, preexec_fn=nice5)  # none at nice 5 yet: cold, starts one
    assert first.returncode == 0
    wait_for_servers(run, 2)
    p = blocked_job(env, tmp_path, nice5)
    try:
        (child,) = job_children(run)
        assert proc_nice(child) == 5
    finally:
        p.kill()
        p.communicate()


def test_hdf5_file_locking_off_reaches_a_warm_job(warm_env, tmp_path):
    """HDF5 reads HDF5_USE_FILE_LOCKING once, when h5py is imported (the server preloads it):
    docs/cluster.md's advice for NFS must still work for a job run warm."""
    import h5py

    env, run = warm_env
    labels, index = tmp_path / "labels.h5", tmp_path / "videos.tsv"
    _tiny_task(labels, index)
    args = ["make_folds", "--task", "VA", "--labels", str(labels), "--index", str(index), "--out", "folds.json",
            "--params", json.dumps({"k": 2, "seed": 0})]
    launch(["--help"], env, tmp_path)
    wait_for_server(run)                                         # imported h5py with locking on
    off = {**env, "HDF5_USE_FILE_LOCKING": "FALSE"}
    with h5py.File(labels, "r+"):                                # a writer holds the file's lock
        locked = launch(args, env, tmp_path)
        assert locked.returncode != 0 and "lock" in locked.stderr.lower(), "the setup must conflict"
        cold = launch(args, off, tmp_path)                       # no server with locking off yet
        assert cold.returncode == 0, cold.stderr
        wait_for_servers(run, 2)
        warm = launch(args, off, tmp_path)
        assert warm.returncode == 0, warm.stderr
    logs = {p.name: p.read_text() for p in run.glob("affect-warm-*/*.log")}
    assert sum("job " in t for t in logs.values()) == 2, logs   # the --help and the warm job ran forked


@pytest.mark.skipif(os.getuid() != 0 or not shutil.which("setpriv") or not shutil.which("prlimit"),
                    reason="needs root, setpriv and prlimit (util-linux)")
def test_a_limit_the_child_cannot_take_runs_the_job_cold(warm_env, tmp_path):
    """A server under a hard NOFILE of 1024, without the capability to raise it (as any unprivileged
    user's), cannot give a job the default, higher hard limit: the job runs cold, with its own."""
    env, run = warm_env
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert hard == resource.RLIM_INFINITY or hard > 1024
    low = ["prlimit", "--nofile=1024:1024", "setpriv", "--bounding-set=-sys_resource", "--inh-caps=-sys_resource"]
    subprocess.run([*low, PY, "-m", "affect_pipeline.warm", "--help"], env=env, cwd=tmp_path, check=True,
                   capture_output=True)
    sock = wait_for_server(run)
    labels, index = tmp_path / "labels.h5", tmp_path / "videos.tsv"
    _tiny_task(labels, index)
    p = launch(["make_folds", "--task", "VA", "--labels", str(labels), "--index", str(index), "--out", "folds.json",
                "--params", json.dumps({"k": 2, "seed": 0})], env, tmp_path)
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "folds.json").read_text())["k"] == 2
    assert "RLIMIT_NOFILE" in p.stderr and "running the job cold" in p.stderr, p.stderr
    assert server_pids(run) and "job " not in sock.with_suffix(".log").read_text()
