"""A folder, files and a Unix socket private to this user, as ssh-agent and tmux keep theirs
(the warm launcher's, affect_pipeline.warm): the folder is 0700, owned by the user and checked
with lstat on every use; files in it are opened without following symlinks; each end of a
connection checks the other's uid (SO_PEERCRED); messages are length-prefixed JSON.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import stat
import struct
from pathlib import Path


class Unsafe(Exception):
    """The folder or a file in it is not private to this user: run cold, say why."""


def private_dir(base: str | os.PathLike, name: str) -> Path:
    """``base/name``, created 0700 if missing, and checked (:func:`check_dir`)."""
    d = Path(base) / name
    try:
        os.mkdir(d, 0o700)
        os.chmod(d, 0o700)          # a umask may have taken the owner's bits
    except FileExistsError:
        pass
    except OSError as e:
        raise Unsafe(f"cannot create {d}: {e.strerror}") from None
    check_dir(d)
    return d


def check_dir(d: Path) -> None:
    """Unsafe unless ``d`` is a real directory (not a symlink), owned by this user, mode 0700 or less."""
    try:
        st = os.lstat(d)
    except OSError as e:
        raise Unsafe(f"{d}: {e.strerror}") from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise Unsafe(f"{d} is {'a symbolic link' if stat.S_ISLNK(st.st_mode) else 'not a directory'}")
    if st.st_uid != os.getuid():
        raise Unsafe(f"{d} is owned by uid {st.st_uid}, not by this user (uid {os.getuid()})")
    if st.st_mode & 0o077:
        raise Unsafe(f"{d} has mode {stat.S_IMODE(st.st_mode):04o}: other users may enter it (needs 0700)")


def private_file(path: Path, flags: int) -> int:
    """Open (creating 0600) a regular file of ours in the folder, never through a symlink."""
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
    except OSError as e:
        raise Unsafe(f"{path} is a symbolic link" if e.errno == errno.ELOOP else f"{path}: {e.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
        os.close(fd)
        raise Unsafe(f"{path} is not a regular file of uid {os.getuid()}")
    return fd


def peer_uid(conn: socket.socket) -> int:
    """The uid of the process at the other end of a connected Unix socket (SO_PEERCRED)."""
    return struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[1]


def send(conn: socket.socket, obj) -> None:
    data = json.dumps(obj).encode()
    conn.sendall(struct.pack("!I", len(data)) + data)


def recv(conn: socket.socket):
    """One message; None at end of stream. ValueError: not one of ours."""
    head = recv_exact(conn, 4)
    if head is None:
        return None
    size = struct.unpack("!I", head)[0]
    if size > 64 << 20:
        raise ValueError(f"message of {size} bytes")
    body = recv_exact(conn, size)
    return None if body is None else json.loads(body)


def recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf
