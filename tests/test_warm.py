"""The warm launcher: a job forked from a preloaded server behaves like `python -m affect_pipeline`
(arguments, working directory, environment, stdio, exit codes), dies with its launcher, and the
launcher falls back to running in-process when no server is there."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PY = sys.executable


@pytest.fixture()
def warm_env(tmp_path):
    """A private server directory; the server preloads only numpy (fast) and idles out quickly."""
    run = tmp_path / "xdg"
    run.mkdir()
    env = {**os.environ, "XDG_RUNTIME_DIR": str(run), "AFFECT_WARM_IDLE": "20", "AFFECT_WARM": "1",
           "AFFECT_WARM_PRELOAD": "numpy,h5py"}
    env.pop("SLURM_JOB_ID", None)
    yield env, run
    for log in run.glob("affect-warm-*/*.log"):
        print(log.read_text())
    subprocess.run(["pkill", "-f", f"affect_pipeline.warm --serve {run}"], check=False)


def launch(args, env, cwd, **kw):
    return subprocess.run([PY, "-m", "affect_pipeline.warm", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120, **kw)


def wait_for_server(run: Path, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        socks = list(run.glob("affect-warm-*/*.sock"))
        if socks:
            return socks[0]
        time.sleep(0.5)
    raise AssertionError(f"no warm server came up in {timeout} s")


def server_pid(sock: Path) -> int:
    out = subprocess.run(["pgrep", "-f", f"affect_pipeline.warm --serve {sock}"], capture_output=True, text=True)
    return int(out.stdout.split()[0])


def server_pids(run: Path) -> list[int]:
    """The warm servers whose folder is under ``run`` (one per key)."""
    out = subprocess.run(["pgrep", "-f", f"affect_pipeline.warm --serve {run}/"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def job_children(run: Path, timeout=60) -> list[int]:
    """The jobs forked by the servers under ``run``, waiting up to ``timeout`` s for one."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        kids = [int(k) for srv in server_pids(run) for k in
                subprocess.run(["pgrep", "-P", str(srv)], capture_output=True, text=True).stdout.split()]
        if kids:
            return kids
        time.sleep(0.1)
    raise AssertionError("no server forked a job")


def key_of(env: dict) -> str:
    """The socket name a launcher with ``env`` (and this process's nice, cgroup) uses."""
    return subprocess.run([PY, "-c", "from affect_pipeline.warm import _key; print(_key())"], env=env,
                          capture_output=True, text=True, check=True).stdout.strip()


def home_of(run: Path) -> Path:
    return run / f"affect-warm-{os.getuid()}"


#: a job that blocks reading --params from its stdin (the test holds it open) while it is inspected
BLOCKED = ["make_folds", "--task", "VA", "--labels", "l.h5", "--index", "i.tsv", "--out", "o.json",
           "--params", "@/dev/stdin"]


def test_job_through_server_matches_plain_run(warm_env, tmp_path):
    env, run = warm_env
    labels = tmp_path / "labels.h5"
    index = tmp_path / "videos.tsv"
    _tiny_task(labels, index)
    args = ["make_folds", "--task", "VA", "--labels", str(labels), "--index", str(index), "--out", "folds.json",
            "--params", json.dumps({"k": 2, "seed": 0})]
    first = launch(args, env, tmp_path)            # no server yet: runs in-process, starts one
    assert first.returncode == 0, first.stderr
    plain = json.loads((tmp_path / "folds.json").read_text())
    sock = wait_for_server(run)
    work = tmp_path / "elsewhere"
    work.mkdir()
    p = launch(args, {**env, "AFFECT_LOGLEVEL": "DEBUG"}, work)   # relative --out: the job's own cwd
    assert p.returncode == 0, p.stderr
    assert json.loads((work / "folds.json").read_text()) == plain
    assert "make_folds finished" in p.stderr                    # the job's stderr reached this pipe
    # the server ran it: a child of the server process wrote the file, not an interpreter of ours
    assert server_pid(sock) > 0
    bad = launch(["make_folds", "--task", "VA", "--labels", str(tmp_path / "missing.h5"), "--index", str(index),
                  "--out", "x.json", "--params", json.dumps({"k": 2, "seed": 0})], env, work)
    assert bad.returncode == 1 and "missing.h5" in bad.stderr
    usage = launch(["make_folds", "--no-such-flag"], env, work)
    assert usage.returncode == 2 and "usage" in usage.stderr


def test_job_dies_with_its_launcher(warm_env, tmp_path):
    env, run = warm_env
    launch(["--help"], env, tmp_path)
    sock = wait_for_server(run)
    # --params @/dev/stdin blocks on the launcher's stdin, which this test holds open
    p = subprocess.Popen([PY, "-m", "affect_pipeline.warm", "make_folds", "--task", "VA", "--labels", "l.h5",
                          "--index", "i.tsv", "--out", "o.json", "--params", "@/dev/stdin"],
                         env=env, cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    srv = server_pid(sock)
    child = None
    for _ in range(100):
        kids = subprocess.run(["pgrep", "-P", str(srv)], capture_output=True, text=True).stdout.split()
        if kids:
            child = int(kids[0])
            break
        time.sleep(0.1)
    assert child, "the server forked no job"
    p.send_signal(signal.SIGKILL)
    p.wait()
    for _ in range(100):
        if not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the job outlived its killed launcher")


def test_disabled_runs_in_process(warm_env, tmp_path):
    env, run = warm_env
    p = launch(["--help"], {**env, "AFFECT_WARM": "0"}, tmp_path)
    assert p.returncode == 0 and "stages:" in p.stdout
    time.sleep(1)
    assert not list(run.glob("affect-warm-*/*.sock")) and not list(run.glob("affect-warm-*/*.lock"))


def _tiny_task(labels, index):
    import numpy as np

    from affect_pipeline.common.stores import Labels, write_labels

    vids = [f"v{i}" for i in range(6)]
    write_labels(labels, "VA", {v: Labels(np.zeros((5, 2), np.float32), np.ones(5, bool),
                                          "train" if i < 4 else "validation") for i, v in enumerate(vids)})
    cols = ["video_id", "path", "media", "side", "fps", "n_frames", "width", "height", "duration", "has_audio",
            "split_AU", "split_EXPR", "split_VA", "split_ERI"]
    index.write_text("\t".join(cols) + "\n" + "".join(
        f"{v}\t{v}.mp4\t{v}\t\t25\t5\t64\t64\t0.2\t1\t\t\t{'train' if i < 4 else 'validation'}\t\n"
        for i, v in enumerate(vids)))
