"""The warm launcher is private to its user (issue 32, item 1): a folder another user could enter
or plant is refused (the job runs cold with a one-line warning), no lock or log is followed
through a symlink, the server serves only its own uid and the launcher talks only to a server of
its own uid, signals travel over the socket (no pid from the server is signalled), a job that
never ran never returns 0, and warm mode is off under every batch scheduler.

Another user is simulated the way root can: a folder chowned to uid 12345, processes that drop to
uid 12345 (`subprocess.run(user=...)`).
"""
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from test_warm import (
    PY,
    _tiny_task,
    home_of,
    key_of,
    launch,
    server_pids,
    wait_for_server,
    warm_env,  # noqa: F401 - the fixture
)

OTHER = 12345
root_only = pytest.mark.skipif(os.getuid() != 0 or not shutil.which("setpriv"),
                               reason="simulating another user needs root and setpriv (util-linux)")


def as_other(*cmd) -> list[str]:
    """``cmd`` run as uid/gid OTHER, no supplementary groups."""
    return ["setpriv", f"--reuid={OTHER}", f"--regid={OTHER}", "--clear-groups", *cmd]


def folds_job(tmp_path, out="folds.json"):
    labels, index = tmp_path / "labels.h5", tmp_path / "videos.tsv"
    if not labels.exists():
        _tiny_task(labels, index)
    return ["make_folds", "--task", "VA", "--labels", str(labels), "--index", str(index), "--out", out,
            "--params", json.dumps({"k": 2, "seed": 0})]


def warnings(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("affect_pipeline.warm")]


def _frame(obj) -> bytes:
    data = json.dumps(obj).encode()
    return struct.pack("!I", len(data)) + data


def _read(conn):
    head = conn.recv(4, socket.MSG_WAITALL)
    if len(head) < 4:
        return None
    return json.loads(conn.recv(struct.unpack("!I", head)[0], socket.MSG_WAITALL))


# ---------------------------------------------------------------- the folder
@root_only
@pytest.mark.parametrize("case, why", [("mode 0777", "mode 0777"), ("symlink", "symbolic link"),
                                       ("other owner", f"owned by uid {OTHER}")])
def test_a_folder_others_could_use_is_refused(warm_env, tmp_path, case, why):
    env, run = warm_env
    home = home_of(run)
    looked_in = home
    if case == "mode 0777":
        home.mkdir()
        os.chmod(home, 0o777)
    elif case == "symlink":
        looked_in = tmp_path / "planted"
        looked_in.mkdir(mode=0o700)
        home.symlink_to(looked_in)
    else:
        home.mkdir(mode=0o700)
        os.chown(home, OTHER, OTHER)
    for attempt in range(2):                       # the second job finds no server there either
        out = tmp_path / f"folds{attempt}.json"
        p = launch(folds_job(tmp_path, str(out)), env, tmp_path)
        assert p.returncode == 0, p.stderr         # the job ran, cold
        assert json.loads(out.read_text())["k"] == 2
        w = warnings(p.stderr)
        assert len(w) == 1 and str(home) in w[0] and why in w[0], p.stderr
    time.sleep(1)
    assert sorted(os.listdir(looked_in)) == [], "a socket, lock or log was made in a refused folder"
    assert not server_pids(run)


def test_a_folder_that_cannot_be_made_never_fails_the_job(warm_env, tmp_path):
    env, run = warm_env
    gone = tmp_path / "no-such-runtime-dir"
    p = launch(folds_job(tmp_path), {**env, "XDG_RUNTIME_DIR": str(gone)}, tmp_path)
    assert p.returncode == 0 and (tmp_path / "folds.json").exists(), p.stderr
    w = warnings(p.stderr)
    assert len(w) == 1 and str(gone / f"affect-warm-{os.getuid()}") in w[0], p.stderr


@root_only
@pytest.mark.parametrize("planted", ["lock", "log"])
def test_no_lock_or_log_is_followed_through_a_symlink(warm_env, tmp_path, planted):
    env, run = warm_env
    home = home_of(run)
    home.mkdir(mode=0o700)
    victim = tmp_path / "thesis.tex"
    victim.write_text("precious\n")
    (home / f"{key_of(env)}.{planted}").symlink_to(victim)
    p = launch(["--help"], env, tmp_path)
    assert p.returncode == 0 and "stages:" in p.stdout
    w = warnings(p.stderr)
    assert len(w) == 1 and f".{planted} is a symbolic link" in w[0], p.stderr
    t0 = time.time()                               # a server, had one started, logs within seconds
    while server_pids(run) and victim.read_text() == "precious\n" and time.time() - t0 < 30:
        time.sleep(0.2)
    assert victim.read_text() == "precious\n"
    assert not list(home.glob("*.sock"))


# ---------------------------------------------------------------- peers of another uid
CLIENT = r"""
import json, socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
data = sys.argv[2].encode()
try:
    socket.send_fds(s, [b"F"], [0, 1, 2])
    s.sendall(struct.pack("!I", len(data)) + data)
except OSError as e:
    print("send failed:", e)
s.settimeout(30)
try:
    reply = s.recv(4096)
except OSError:
    reply = b""
print("REPLY", reply)
"""


@pytest.fixture()
def reachable_env(warm_env):
    """warm_env with the server folder in a directory other users may traverse (pytest's is 0700)."""
    env, run = warm_env
    base = Path(tempfile.mkdtemp(prefix="affect-warm-test-", dir="/tmp"))
    os.chmod(base, 0o711)
    yield {**env, "XDG_RUNTIME_DIR": str(base)}, base
    for pid in server_pids(base):
        os.kill(pid, signal.SIGTERM)
    shutil.rmtree(base, ignore_errors=True)


@root_only
def test_the_server_drops_connections_of_other_users(reachable_env, tmp_path):
    env, run = reachable_env
    launch(["--help"], env, tmp_path)
    sock = wait_for_server(run)
    pwned = tmp_path / "pwned.json"
    job = {"argv": folds_job(tmp_path, str(pwned)), "cwd": "/", "env": {"PATH": os.environ["PATH"]}, "umask": 0o22,
           "rlimits": {}, "affinity": None, "nice": 0, "t0": time.time()}
    os.chmod(sock.parent, 0o711)                   # a user's mistake: the socket reachable by others
    os.chmod(sock, 0o777)
    try:
        other = subprocess.run(as_other(PY, "-c", CLIENT, str(sock), json.dumps(job)), cwd="/",
                               capture_output=True, text=True, timeout=60)
    finally:
        os.chmod(sock.parent, 0o700)
        os.chmod(sock, 0o600)
    assert "REPLY b''" in other.stdout, other.stdout + other.stderr
    time.sleep(1)
    assert not pwned.exists(), "the server ran another user's job"
    assert f"refused a connection from uid {OTHER}" in sock.with_suffix(".log").read_text()
    ours = launch(folds_job(tmp_path, "mine.json"), env, tmp_path)      # still serves its own user
    assert ours.returncode == 0 and (tmp_path / "mine.json").exists(), ours.stderr
    assert "job " in sock.with_suffix(".log").read_text()


FAKE_SERVER = r"""
import json, os, socket, struct
srv = socket.socket(fileno=int(os.environ["FD"]))
srv.listen(4)
srv.settimeout(60)
c, _ = srv.accept()
for msg in ({"pid": os.getpid()}, {"rc": 0}):          # "it ran, and succeeded"
    d = json.dumps(msg).encode()
    try:
        c.sendall(struct.pack("!I", len(d)) + d)
    except OSError:
        pass
c.settimeout(5)
got = b""
try:
    while chunk := c.recv(65536):
        got += chunk
except OSError:
    pass
print(len(got), flush=True)
"""


@root_only
def test_the_launcher_refuses_a_server_of_another_user(warm_env, tmp_path):
    env, run = warm_env
    home = home_of(run)
    home.mkdir(mode=0o700)
    sock = home / f"{key_of(env)}.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(sock))                            # the socket file is ours; its listener is not
    fake = subprocess.Popen(as_other(PY, "-c", FAKE_SERVER), pass_fds=(srv.fileno(),), cwd="/",
                            env={"FD": str(srv.fileno())}, stdout=subprocess.PIPE, text=True)
    srv.close()
    try:
        time.sleep(1)
        p = launch(folds_job(tmp_path), {**env, "SECRET_TOKEN": "s3cr3t"}, tmp_path)
        got, _ = fake.communicate(timeout=30)
    finally:
        fake.kill()
    assert p.returncode == 0 and json.loads((tmp_path / "folds.json").read_text())["k"] == 2, p.stderr
    w = warnings(p.stderr)
    assert len(w) == 1 and f"runs as uid {OTHER}" in w[0], p.stderr
    assert got.strip() == "0", "the launcher sent its environment to another user's server"


# ---------------------------------------------------------------- signals, exit codes
def _fake_own_server(home: Path, key: str, replies: list, received: list, close_after=10.0):
    """A server of our own uid at home/key.sock that answers ``replies`` and records what comes."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(home / f"{key}.sock"))
    srv.listen(1)

    def run():
        c, _ = srv.accept()
        for fd in socket.recv_fds(c, 1, 3)[1]:      # the launcher's stdio: held, its pipes never end
            os.close(fd)
        received.append(_read(c))
        for r in replies:
            c.sendall(_frame(r))
        c.settimeout(close_after)
        try:
            while (msg := _read(c)) is not None:
                received.append(msg)
                if "signal" in msg:
                    break
        except OSError:
            pass
        c.close()
        srv.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _handler_installed(pid: int, sig: int) -> bool:
    for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
        if ln.startswith("SigCgt:"):
            return bool(int(ln.split()[1], 16) >> (sig - 1) & 1)
    return False


def test_signals_go_over_the_socket_not_to_a_pid_the_server_names(warm_env, tmp_path):
    env, run = warm_env
    home = home_of(run)
    home.mkdir(mode=0o700)
    bystander = subprocess.Popen(["sleep", "120"])          # the pid a hostile server names
    received: list = []
    t = _fake_own_server(home, key_of(env), [{"pid": bystander.pid}], received)
    try:
        p = subprocess.Popen([PY, "-m", "affect_pipeline.warm", *folds_job(tmp_path)], env=env, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.time()
        while not _handler_installed(p.pid, signal.SIGTERM) and time.time() - t0 < 60:
            time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=60)
        t.join(30)
        assert bystander.poll() is None, "the launcher signalled the pid the server gave it"
        assert {"signal": int(signal.SIGTERM)} in received
        assert p.returncode == -signal.SIGTERM        # ends as a cold job killed by SIGTERM would
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.parametrize("replies", [[{"pid": 4242}], [{"rc": 0}], [{"pid": "x"}, {"rc": 0}],
                                     [{"pid": 4242}, {"rc": "0"}]])
def test_a_job_that_did_not_report_never_returns_0(warm_env, tmp_path, replies):
    env, run = warm_env
    home = home_of(run)
    home.mkdir(mode=0o700)
    t = _fake_own_server(home, key_of(env), replies, [], close_after=0.5)
    p = launch(folds_job(tmp_path), env, tmp_path)
    t.join(30)
    assert p.returncode == 1 and not (tmp_path / "folds.json").exists()
    assert len(warnings(p.stderr)) == 1 and "Traceback" not in p.stderr, p.stderr


# ---------------------------------------------------------------- schedulers
@pytest.mark.parametrize("job_vars", [{"SLURM_JOB_ID": "1"}, {"PBS_JOBID": "1.pbs"}, {"LSB_JOBID": "1"},
                                      {"JOB_ID": "1", "SGE_TASK_ID": "undefined"}, {"JOB_ID": "1", "SGE_ROOT": "/sge"},
                                      {"_CONDOR_JOB_AD": "/condor/.job.ad"}, {"FLUX_JOB_ID": "f1"}])
def test_off_under_a_scheduler(warm_env, tmp_path, job_vars):
    env, run = warm_env
    p = launch(["--help"], {**env, **job_vars}, tmp_path)
    assert p.returncode == 0 and "stages:" in p.stdout
    time.sleep(1)
    assert not list(run.glob("affect-warm-*/*")) and not server_pids(run)


def test_a_plain_job_id_is_not_a_scheduler(warm_env, tmp_path):
    """JOB_ID alone is a common variable name: only with SGE's own variables does it mean SGE."""
    env, run = warm_env
    launch(["--help"], {**env, "JOB_ID": "7"}, tmp_path)
    wait_for_server(run)
