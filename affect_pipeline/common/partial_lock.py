"""One writer per partial file: an exclusive lock on ``{partial}.lock`` that works without HDF5's.

HDF5's own file lock is off wherever ``HDF5_USE_FILE_LOCKING=FALSE`` (the advice for shared file
systems, docs/cluster.md), and then nothing else kept a job left running on a node and its rerun
from both opening one ``{out}.partial`` and corrupting it. :class:`PartialLock` does:

- ``fcntl.lockf`` (POSIX record locks), taken without waiting. NFSv4 implements these on the
  server, so they hold between nodes; BSD ``flock`` is only local on some NFS clients, and
  NFSv3 needs the client's lock daemon (``nolock`` mounts have none). Where the file system
  has no POSIX locks at all (ENOLCK, EOPNOTSUPP) the writer warns and goes on unlocked.
- The lock goes with the holder's process, however it ends (SIGKILL, OOM kill): the kernel
  drops it; over NFSv4 the server drops a crashed node's locks when its lease lapses (~90 s).
  A lock file left behind by a kill is therefore stale and simply taken over.
- The file holds the holder's pid, host and start time (JSON), which a refused writer reports
  in one line; the holder removes it on release (while still holding the lock; a writer that
  locked a removed file notices and retries on the current one).
- Opened with O_NOFOLLOW: a symlink planted under the lock's name is refused, never written through.
- POSIX locks belong to a process, and closing any of its descriptors of the file drops them:
  so a second writer in the same process is refused from a registry, without opening the file.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import stat
import time
import weakref
from pathlib import Path

from affect_pipeline.common.errors import PipelineError

log = logging.getLogger(__name__)

#: (st_dev, st_ino) of a lock file -> the PartialLock of this process that holds it
_HELD: dict[tuple[int, int], weakref.ref] = {}
#: lockf errors that mean "held by another process" / "this file system has no POSIX locks"
_BUSY = (errno.EACCES, errno.EAGAIN)
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


def _holder_text(raw: bytes) -> str:
    """'pid P on HOST, since T' from a lock file's contents (whatever a holder, or anyone, wrote)."""
    try:
        info = json.loads(raw.decode("utf-8", "replace") or "{}")
        info = info if isinstance(info, dict) else {}
    except ValueError:
        info = {}

    def clean(v, n=80):
        return "".join(c if c.isprintable() else "?" for c in str(v))[:n] if v not in (None, "") else "?"

    return f"pid {clean(info.get('pid'), 12)} on {clean(info.get('host'))}, since {clean(info.get('since'), 40)}"


class PartialLock:
    """Hold ``{path}.lock`` exclusively while writing ``path``; :meth:`release` (or process death) frees it."""

    def __init__(self, path):
        self.path, self.lock = Path(path), Path(f"{path}.lock")
        self.fd, self.key, self.pid = None, None, os.getpid()
        self.info = {"pid": self.pid, "host": socket.gethostname(),
                     "since": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        for _ in range(20):                      # retried only while holders keep removing the file
            if self._try():
                return
        raise PipelineError(f"{self.lock}: could not take the lock of {self.path} (the file kept being replaced)")

    def _busy(self, holder: str) -> PipelineError:
        return PipelineError(
            f"{self.path} is being written by another job ({holder}; lock {self.lock}): a job still running "
            f"(e.g. one left on a compute node after its Snakemake died); let it finish or stop it. Its lock "
            f"goes when its process ends")

    def _stat(self):
        try:
            st = os.stat(self.lock, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(st.st_mode):
            raise PipelineError(f"{self.lock}: is a symlink; refusing to follow it (remove it if it is not yours)")
        return st

    def _try(self) -> bool:
        st = self._stat()
        mine = _HELD.get((st.st_dev, st.st_ino)) if st else None
        other = mine() if mine else None
        if other is not None and other.fd is not None and other.pid == os.getpid():
            raise self._busy(_holder_text(json.dumps(other.info).encode()))
        try:
            fd = os.open(self.lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise PipelineError(f"{self.lock}: is a symlink; refusing to follow it (remove it if it is not "
                                    f"yours)") from e
            raise PipelineError(f"{self.lock}: cannot open the lock of {self.path} ({e.strerror})") from e
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            raw = os.pread(fd, 4096, 0) if e.errno in _BUSY else b""
            os.close(fd)
            if e.errno in _BUSY:
                raise self._busy(_holder_text(raw)) from e
            if e.errno in _UNSUPPORTED:
                log.warning("%s: the file system has no POSIX locks (%s); writing %s unlocked: make sure no "
                            "other job writes it", self.lock, e.strerror, self.path)
                return True
            raise PipelineError(f"{self.lock}: cannot lock it ({e.strerror})") from e
        now = os.fstat(fd)
        try:
            st = self._stat()
        except PipelineError:
            os.close(fd)
            raise
        if st is None or (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):
            os.close(fd)                         # its holder removed it as we locked it: lock the new one
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(self.info) + "\n").encode(), 0)
        self.fd, self.key = fd, (now.st_dev, now.st_ino)
        _HELD[self.key] = weakref.ref(self)
        return True

    def release(self) -> None:
        """Remove the lock file (still holding it) and let go. In a forked child: only close."""
        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            if self.pid == os.getpid():
                _HELD.pop(self.key, None)
                st = self._stat()
                if st is not None and (st.st_dev, st.st_ino) == self.key:
                    os.unlink(self.lock)
        except (OSError, PipelineError) as e:
            log.warning("%s: could not remove the lock file (%s)", self.lock, e)
        finally:
            os.close(fd)

    def __del__(self):
        with contextlib.suppress(Exception):   # at interpreter exit: the kernel frees the lock anyway
            self.release()
