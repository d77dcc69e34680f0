"""Temporary names are the package's own (``.affect-tmp.{name}.{pid}@{host}``) and the cleanup of
killed writers' temporaries touches no other name: a user's ``.thesis.tmp2/chapter1.tex`` or
``.notes.tmp7`` beside an ``affect-predict --out`` survives a write there, however old. A file is
published durably: its data (every file of a folder) and its folder are fsync'd before the rename
that gives it its name, the folder again after (a node crash never leaves an empty file there).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from affect_pipeline.common import files
from affect_pipeline.common.files import atomic_dir, atomic_path, temp_sibling
from affect_pipeline.common.runtime import write_json, write_text

OLD = time.time() - 48 * 3600


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _age(path: Path) -> None:
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(p, (OLD, OLD), follow_symlinks=False)


def test_cleanup_touches_only_the_packages_temporaries(tmp_path):
    """The issue's case: affect-predict --out is a user's folder; a write there used to delete
    every ``.X.tmpN`` file or folder older than 24 h in it."""
    out = tmp_path / "predictions"
    (out / ".thesis.tmp2").mkdir(parents=True)
    (out / ".thesis.tmp2" / "chapter1.tex").write_text("\\chapter{One}\n")
    (out / ".notes.tmp7").write_text("call Ana\n")
    (out / ".draft.tmp3@laptop").write_text("not ours either\n")
    tag = temp_sibling(out / "x").name.split("@", 1)[1]
    ours = {"dead writer": out / f".affect-tmp.clip.csv.{_dead_pid()}@{tag}",
            "other host, 48 h old": out / ".affect-tmp.clip.png.4243@node17-4026531836",
            "killed batch folder": out / f".affect-tmp.batch.{_dead_pid()}@{tag}"}
    ours["dead writer"].write_bytes(b"x" * 100)
    ours["other host, 48 h old"].write_bytes(b"x" * 100)
    ours["killed batch folder"].mkdir()
    (ours["killed batch folder"] / "a.h5").write_bytes(b"x")
    for p in [out / ".thesis.tmp2", out / ".notes.tmp7", out / ".draft.tmp3@laptop", *ours.values()]:
        _age(p)

    write_text(out / "clip.csv", "video,frame\nclip,1\n")            # a write beside them

    assert (out / ".thesis.tmp2" / "chapter1.tex").read_text() == "\\chapter{One}\n"
    assert (out / ".notes.tmp7").read_text() == "call Ana\n"
    assert (out / ".draft.tmp3@laptop").exists()
    assert not [k for k, p in ours.items() if os.path.lexists(p)], "stale temporaries of ours were kept"
    assert sorted(p.name for p in out.iterdir()) == [".draft.tmp3@laptop", ".notes.tmp7", ".thesis.tmp2", "clip.csv"]


def test_temporary_names_carry_the_prefix_even_for_long_names(tmp_path):
    for name in ("a.json", "ü 日本.h5", "x" * 250 + ".csv"):
        out = tmp_path / name
        tmp = temp_sibling(out)
        assert tmp.parent == tmp_path and tmp.name.startswith(".affect-tmp.")
        assert len(os.fsencode(tmp.name)) <= 255, len(os.fsencode(tmp.name))
        with atomic_path(out) as t:
            assert t == tmp
            t.write_text("{}", encoding="utf-8")
            assert files.published_name(t) == out
        assert out.read_text(encoding="utf-8") == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.json", "ü 日本.h5", "x" * 250 + ".csv"])


# ---------------------------------------------------------------- fsync before the rename
class Recorder:
    """Wraps the real os.fsync / os.replace, recording what each one was applied to (in order)."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[str, str]] = []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd):
            self.calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            return real_fsync(fd)

        def replace(src, dst, **kw):
            self.calls.append(("replace", f"{os.path.realpath(src)} -> {os.path.realpath(dst)}"))
            return real_replace(src, dst, **kw)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)

    def index(self, what: str, path) -> int:
        hits = [i for i, c in enumerate(self.calls) if c == (what, os.path.realpath(path))]
        assert hits, (what, path, self.calls)
        return hits[0]

    def rename(self, dst) -> tuple[int, str]:
        hits = [(i, c[1].split(" -> ")[0]) for i, c in enumerate(self.calls)
                if c[0] == "replace" and c[1].endswith(" -> " + os.path.realpath(dst))]
        assert len(hits) == 1, (dst, self.calls)
        return hits[0]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd to name an fd's file")
def test_a_file_is_fsynced_with_its_folder_before_the_rename_that_publishes_it(tmp_path, monkeypatch):
    rec = Recorder(monkeypatch)
    out = tmp_path / "results" / "a.json"
    write_json(out, {"k": "vé"})
    i, tmp = rec.rename(out)
    assert Path(tmp).name.startswith(".affect-tmp.a.json.")
    assert rec.index("fsync", tmp) < i                          # the data, before the rename
    folder = [k for k, c in enumerate(rec.calls) if c == ("fsync", str(out.parent.resolve()))]
    assert any(k < i for k in folder) and any(k > i for k in folder), rec.calls   # the folder: before and after


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd to name an fd's file")
def test_every_file_of_a_folder_is_fsynced_before_its_rename(tmp_path, monkeypatch):
    rec = Recorder(monkeypatch)
    out = tmp_path / "faces" / "batch_0"
    with atomic_dir(out) as t:
        (t / "a.h5").write_bytes(b"1")
        (t / "sub").mkdir()
        (t / "sub" / "b.h5").write_bytes(b"2")
        tmp = t
    i, src = rec.rename(out)
    assert src == os.path.realpath(tmp)
    for p in (tmp / "a.h5", tmp / "sub" / "b.h5", tmp / "sub", tmp, out.parent):
        assert rec.index("fsync", p) < i, p


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd to name an fd's file")
def test_a_feature_shard_is_fsynced_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    from affect_pipeline.common.feature_shards import FeatureShardWriter

    out = tmp_path / "features" / "hubert.h5"
    w = FeatureShardWriter(out, extractor="hubert", fingerprint="f")
    w.write("v0", np.ones((5, 3)), np.ones(5, bool), fps=25.0)
    rec = Recorder(monkeypatch)
    w.close(["v0"])
    i, src = rec.rename(out)
    assert src == os.path.realpath(f"{out}.partial")
    assert rec.index("fsync", src) < i and rec.index("fsync", out.parent) < i


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_strace_sees_fsync_of_the_temporary_before_the_rename(tmp_path):
    """The same, seen from the kernel's side: fsync(fd of the temporary) precedes rename(temporary, out)."""
    out = tmp_path / "o.json"
    code = ("import sys; from affect_pipeline.common.runtime import write_json; "
            "write_json(sys.argv[1], {'a': 1})")
    p = subprocess.run(["strace", "-f", "-y", "-e", "trace=fsync,fdatasync,rename,renameat,renameat2",
                        sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=60)
    if p.returncode != 0 and "ptrace" in p.stderr.lower():
        pytest.skip(f"strace cannot trace here: {p.stderr.strip().splitlines()[-1]}")
    assert p.returncode == 0, p.stderr[-2000:]
    lines = [ln for ln in p.stderr.splitlines() if "fsync(" in ln or "rename" in ln]
    ren = [k for k, ln in enumerate(lines) if "rename" in ln and str(out) in ln]
    assert len(ren) == 1, lines
    synced = [k for k, ln in enumerate(lines) if "fsync(" in ln and ".affect-tmp.o.json." in ln]
    assert synced and synced[0] < ren[0], lines
    assert any(k < ren[0] and f"<{tmp_path}>" in ln for k, ln in enumerate(lines)), lines   # the folder
