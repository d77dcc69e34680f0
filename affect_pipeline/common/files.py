"""Files the package writes and reads: UTF-8 text, temporary names, durable publication, a full disk.

- Text is UTF-8 whatever the locale (:data:`ENCODING`); an entry point restarts the interpreter in
  UTF-8 mode under a non-UTF-8 locale (:func:`ensure_utf8_mode`), so file names are UTF-8 too.
- Every output is written under a temporary name that only this package writes
  (``.affect-tmp.{name}.{pid}@{host}``, :func:`temp_sibling`) and published, fsync'd, by one
  rename (:func:`atomic_path`, :func:`atomic_dir`, :func:`publish`); a killed writer's temporary is
  removed by the next writer in its folder, and no other name is ever touched
  (:func:`remove_stale_temps`).
- A full disk or quota (ENOSPC, EDQUOT) is :class:`DiskFull`, naming the output the user asked
  for; writers that cannot survive a failed write (HDF5) reserve their room first
  (:func:`reserve_space`).

Re-exported by :mod:`affect_pipeline.common.runtime`, where the stages import them from.
"""
from __future__ import annotations

import codecs
import contextlib
import errno
import hashlib
import locale
import logging
import os
import re
import shutil
import socket
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from affect_pipeline.common.errors import PipelineError

log = logging.getLogger("affect_pipeline")


# ---------------------------------------------------------------- text: UTF-8 whatever the locale
#: every text file the package writes or reads (configs, JSON, TSV/CSV, annotations) is UTF-8
ENCODING = "utf-8"


def _is_utf8(codec: str) -> bool:
    try:
        return codecs.lookup(codec).name == "utf-8"
    except LookupError:
        return False


def ensure_utf8_mode() -> None:
    """Restart this interpreter in UTF-8 mode (PEP 540) when the locale's encoding is not UTF-8.

    Under e.g. ``LC_ALL=en_US.ISO-8859-1`` Python turns file names, ``sys.argv`` and the JSON of
    ``--params`` into text with the locale's codec: a configured ``/data/日本`` cannot even be
    looked up, and a path given on the command line is recorded in the frames JSON and videos.tsv
    as mojibake that names another file under a UTF-8 locale. In UTF-8 mode names and text are
    UTF-8 (as on disk, and as the workflow's files are) whatever the locale; ``PYTHONUTF8=1`` is
    passed on to the processes the job starts. Called first by the entry points (``python -m
    affect_pipeline``, ``affect-predict``); a no-op under a UTF-8 locale or in UTF-8 mode.
    """
    if sys.flags.utf8_mode or (_is_utf8(sys.getfilesystemencoding())
                               and _is_utf8(locale.getpreferredencoding(False))):
        return
    if os.environ.get("AFFECT_UTF8_RESTARTED") or not getattr(sys, "orig_argv", None):
        # could not restart: text files still are UTF-8 (explicit encodings); keep logs printable
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(AttributeError, ValueError):
                stream.reconfigure(errors="backslashreplace")
        return
    os.environ.update(PYTHONUTF8="1", AFFECT_UTF8_RESTARTED="1")
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.flush()
    os.execv(sys.executable, [sys.executable, "-X", "utf8", *sys.orig_argv[1:]])


def not_utf8(path, e: UnicodeDecodeError) -> str:
    """The message for a text file that is not UTF-8 (saved as Latin-1 / cp1252, say)."""
    return (f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
            f"save it as UTF-8")


# ---------------------------------------------------------------- a full disk
#: errno values that mean "no room for this write": the file system is full, or the user's quota
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskFull(PipelineError):
    """A write found no space (ENOSPC) or no quota (EDQUOT) left. ``path`` is the output the user
    asked for, never the temporary it was being written as; a resumable partial file is kept."""

    def __init__(self, path, cause: BaseException | None = None):
        self.path = published_name(path) if path is not None else None
        self.errno = _disk_full_errno(cause) or errno.ENOSPC       # EDQUOT: the same message
        super().__init__("no space left on device" + (f" writing {self.path}" if self.path is not None else ""))

    @classmethod
    def of(cls, e: BaseException) -> DiskFull:
        """The DiskFull of a raw error that :func:`is_disk_full`, naming its file where it has one."""
        if isinstance(e, DiskFull):
            return e
        name = next((x.filename for x in _chain(e) if isinstance(x, OSError) and x.filename), None)
        return cls(os.fsdecode(name) if name is not None else None, e)


def _chain(e: BaseException | None, depth: int = 8) -> Iterator[BaseException]:
    seen = set()
    while e is not None and id(e) not in seen and depth > 0:
        seen.add(id(e))
        yield e
        e, depth = e.__cause__ or e.__context__, depth - 1


def _disk_full_errno(e: BaseException | None) -> int | None:
    return next((x.errno for x in _chain(e) if isinstance(x, OSError) and x.errno in DISK_FULL_ERRNOS), None)


def is_disk_full(e: BaseException) -> bool:
    """``e`` (or what caused it: torch and h5py wrap the OSError) is ENOSPC / EDQUOT."""
    return isinstance(e, DiskFull) or _disk_full_errno(e) is not None


@contextlib.contextmanager
def disk_full_names(path) -> Iterator[None]:
    """Any ENOSPC / EDQUOT in the block (an OSError, or torch's / h5py's error around one) becomes
    :class:`DiskFull` naming ``path``; a DiskFull raised inside keeps its own path."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as e:
        if is_disk_full(e):
            raise DiskFull(path, e) from e
        raise


_FALLOC_FL_KEEP_SIZE = 1
_fallocate = None


def _fallocate_fn():
    """libc's fallocate(2) (Linux), or None."""
    global _fallocate
    if _fallocate is None:
        _fallocate = False
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            fn = getattr(libc, "fallocate64", None) or libc.fallocate
            fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
            fn.restype = ctypes.c_int
            _fallocate = (fn, ctypes.get_errno)
    return _fallocate or None


#: files with blocks reserved past their end, trimmed when published (:func:`trim_reserve`)
_RESERVED: set[str] = set()


def reserve_space(path, nbytes: int, publishes=None) -> None:
    """Make room for ``nbytes`` more after the end of file ``path``, or raise :class:`DiskFull`
    (naming ``publishes``, default ``path``'s published name) before anything is written.

    For writers that cannot survive a failed write: HDF5 hitting ENOSPC inside a flush leaves its
    file open with unwritable metadata and the process dies (SIGSEGV) in a later flush or at exit,
    with no message. The blocks are allocated now (``fallocate`` with FALLOC_FL_KEEP_SIZE: the
    size is unchanged, and a quota counts them too), so the writes that follow cannot run out;
    where the file system cannot preallocate, its free space is checked instead. What is left
    past the end is given back by :func:`trim_reserve` (called when the file is published).
    """
    path, nbytes = os.fspath(path), int(nbytes)
    target = path if publishes is None else publishes
    fa = _fallocate_fn()
    if fa is not None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if fa[0](fd, _FALLOC_FL_KEEP_SIZE, size, max(nbytes, 1)) == 0:
                _RESERVED.add(os.path.abspath(path))
                return
            err = fa[1]()
        finally:
            os.close(fd)
        if err in DISK_FULL_ERRNOS:
            raise DiskFull(target, OSError(err, os.strerror(err), path))
        if err not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENODEV):
            raise OSError(err, os.strerror(err), path)
    st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    if st.f_bavail * st.f_frsize < nbytes:
        raise DiskFull(target, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path))


def trim_reserve(path) -> None:
    """Give back the blocks :func:`reserve_space` allocated past the file's end."""
    path = os.path.abspath(path)
    if path in _RESERVED:
        _RESERVED.discard(path)
        with contextlib.suppress(OSError):
            os.truncate(path, os.stat(path).st_size)


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
#: every temporary name this package writes starts with it, and cleanup touches no other name: a
#: user's ``.notes.tmp7`` or ``.thesis.tmp2/`` beside an output (affect-predict --out) is theirs
TMP_PREFIX = ".affect-tmp."
_TMP_NAME = re.compile(re.escape(TMP_PREFIX) + r"(?P<out>.+)\.(?P<pid>\d+)@(?P<tag>[A-Za-z0-9-]+)")
_NAME_MAX = 255
#: temporary -> the path it becomes when its atomic_path / atomic_dir block succeeds
_PUBLISHES: dict[Path, Path] = {}


def temp_sibling(path: str | os.PathLike) -> Path:
    """``.affect-tmp.{name}.{pid}@{host}``: hidden, marked as this package's (only such names are
    ever removed), and naming the writer so that a later job can tell whether it still runs
    (:func:`remove_stale_temps`). A name too long for the file system keeps its start and a hash."""
    path = Path(path)
    tail = f".{os.getpid()}@{_TAG}"
    name = path.name
    room = _NAME_MAX - len(os.fsencode(TMP_PREFIX + tail))
    if len(os.fsencode(name)) > room:
        digest = hashlib.sha1(os.fsencode(name)).hexdigest()[:12]
        name = os.fsdecode(os.fsencode(name)[:room - 13]) + "~" + digest
    return path.with_name(f"{TMP_PREFIX}{name}{tail}")


def published_name(path) -> Path:
    """The output a temporary (or a file inside a temporary folder) becomes: what messages name."""
    path = Path(path)
    for _ in range(8):
        for anc in (path, *path.parents):
            if anc in _PUBLISHES:
                path = _PUBLISHES[anc] / path.relative_to(anc)
                break
            m = _TMP_NAME.fullmatch(anc.name)
            if m:
                path = anc.with_name(m["out"]) / path.relative_to(anc)
                break
        else:
            break
    return path


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
    to a GB): names of this package only (:data:`TMP_PREFIX`), those of this host whose PID is
    dead, and any untouched for ``max_age_h`` hours (the only safe test for another host's)."""
    max_age = (STALE_TMP_HOURS if max_age_h is None else max_age_h) * 3600
    removed = []
    with contextlib.suppress(OSError), os.scandir(folder) as it:   # tidying never fails a writer
        for e in it:
            if not e.name.startswith(TMP_PREFIX):
                continue
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


def _fsync(path, directory: bool = False) -> None:
    """fsync one file or folder; a folder the file system cannot fsync (EINVAL etc.) is let be."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECTORY if directory else 0))
    except (PermissionError, IsADirectoryError):
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if not directory or e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES):
            raise
    finally:
        os.close(fd)


def fsync_tree(path) -> None:
    """fsync a file, or every file and folder under a folder (regular files only: no symlink is
    followed, no FIFO opened)."""
    path = os.fspath(path)
    mode = os.lstat(path).st_mode
    if stat.S_ISREG(mode):
        _fsync(path)
    if not stat.S_ISDIR(mode):
        return
    for root, _dirs, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            if stat.S_ISREG(os.lstat(p).st_mode):
                _fsync(p)
        _fsync(root, directory=True)


def publish(src, dst) -> None:
    """Rename the complete ``src`` onto ``dst`` so that a crash (power, node) leaves the old
    ``dst`` or the whole new one, never an empty or partly written file under its name: the data
    (every file of a folder) and the folder are fsync'd before the rename, the folder after it."""
    src, dst = Path(src), Path(dst)
    with disk_full_names(dst):
        trim_reserve(src)
        fsync_tree(src)
        _fsync(dst.parent, directory=True)
        os.replace(src, dst)
        _fsync(dst.parent, directory=True)


@contextlib.contextmanager
def _temporary(path: Path) -> Iterator[Path]:
    """The temporary sibling that will publish ``path``: its folder made, dead writers'
    temporaries removed, registered for :func:`published_name` while the block runs."""
    with disk_full_names(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    tmp = temp_sibling(path)
    _PUBLISHES[tmp] = path
    try:
        yield tmp
    finally:
        _PUBLISHES.pop(tmp, None)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; publish it as ``path`` only if the block succeeds.

    A crash (or kill -9) leaves at most a hidden ``.affect-tmp.{name}.{pid}@{host}`` file that no
    rule lists as an output, never a half-written file under the real name; the next writer in the
    same folder removes it once its writer is known dead (:func:`remove_stale_temps`). A full disk
    (or quota) in the block is a :class:`DiskFull` naming ``path``; the temporary is removed.
    """
    path = Path(path)
    with _temporary(path) as tmp:
        try:
            with disk_full_names(path):
                yield tmp
                publish(tmp, path)
        finally:
            _RESERVED.discard(os.path.abspath(tmp))
            if os.path.lexists(tmp):
                tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary sibling folder; it replaces ``path`` (all or nothing) only if the
    block succeeds, else it is removed (a kill leaves it to :func:`remove_stale_temps`)."""
    path = Path(path)
    with _temporary(path) as tmp:
        try:
            with disk_full_names(path):
                tmp.mkdir()
                yield tmp
                if path.exists():
                    shutil.rmtree(path)
                publish(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def reserve_h5(path, nbytes: int, publishes=None) -> None:
    """Room for ``nbytes`` of array data (twice that, for chunk rounding, + 256 KiB of metadata)
    in the HDF5 file ``path`` before writing it, or :class:`DiskFull` naming ``publishes``: HDF5
    that runs out of space mid-flush crashes the process (SIGSEGV)."""
    reserve_space(path, 2 * int(nbytes) + (256 << 10), publishes)
