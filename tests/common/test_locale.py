"""Every file the package writes or reads is UTF-8 whatever the locale. Stages run here under a
Latin-1 locale (``en_US.ISO-8859-1``, compiled into a private ``LOCPATH`` with localedef; where
that cannot be done, the C locale with Python's UTF-8 coercion off, i.e. ASCII) on a dataset whose
folders and video ids are not ASCII (``données 日本/vidéos``, ``café``, ``日本_1``).

Before: file names were decoded with the locale's codec (a configured ``…/日本`` path "is not a
folder", a path given on the command line was recorded as mojibake), ``runtime.write_text`` wrote
Latin-1 (``UnicodeEncodeError`` on ``日本``; a ``café`` videos.tsv read back as "malformed index";
a run config with ``/data/vidéos`` read back with an uncaught ``UnicodeDecodeError``).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from aff_tree import DIRS, HEADERS, TEST_LISTS, row
from conftest import REPO

from affect_pipeline.common.errors import PipelineError

PROBE = "import locale, sys; print(locale.getpreferredencoding(False), sys.getfilesystemencoding())"


def _env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LC_", "PYTHONUTF8", "PYTHONIOENCODING", "PYTHONCOERCECLOCALE", "AFFECT_UTF8"))
           and k not in ("LANG", "LANGUAGE")}
    return {**env, "AFFECT_WARM": "0", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture(scope="module")
def latin1(tmp_path_factory) -> dict:
    """The environment of a non-UTF-8 locale: Latin-1 where localedef can build it, else ASCII."""
    tried = []
    if shutil.which("localedef"):
        loc = tmp_path_factory.mktemp("locales")
        p = subprocess.run(["localedef", "-i", "en_US", "-f", "ISO-8859-1", str(loc / "en_US.ISO-8859-1")],
                           capture_output=True, text=True)
        env = _env({"LOCPATH": str(loc), "LC_ALL": "en_US.ISO-8859-1", "LANG": "en_US.ISO-8859-1"})
        got = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True).stdout.split()
        if got[:1] == ["ISO-8859-1"]:
            return env
        tried.append(f"localedef: rc {p.returncode} {p.stderr.strip()[:200]}; probe {got}")
    env = _env({"LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"})
    got = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True).stdout.split()
    if got and got[0].lower().replace("-", "") not in ("utf8",):
        return env
    pytest.skip(f"no non-UTF-8 locale can be set up here ({'; '.join(tried)}; C locale gives {got})")


def run(env, *args, timeout=180) -> subprocess.CompletedProcess:
    """A stage the way a rule runs it, its output read as bytes (decoded as UTF-8 here)."""
    p = subprocess.run([sys.executable, "-m", "affect_pipeline", *map(str, args), "--threads", "1"],
                       env=env, capture_output=True, timeout=timeout)
    p.stdout, p.stderr = p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")
    return p


def _tree(root: Path, ids: list[str]) -> dict:
    from affect_pipeline.data.video_writer import write_video

    vids, ann, tl = root / "vidéos", root / "annotations", root / "test_lists"
    for d in (vids, tl):
        d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for vid in ids:
        write_video(vids / f"{vid}.mp4", [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(10)], 25)
        f = ann / DIRS["VA"] / "Train_Set" / f"{vid}.txt"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(HEADERS["VA"] + "\n" + "".join(row("VA", k) + "\n" for k in range(10)), encoding="utf-8")
    (tl / TEST_LISTS["VA"]).write_text("", encoding="utf-8")
    return {"affwild2": {"videos": str(vids), "annotations": str(ann), "test_lists": str(tl), "cropped_aligned": None},
            "hume": {"root": None}, "tasks": ["VA"]}


def test_stages_under_a_latin1_locale_with_non_ascii_paths_and_ids(latin1, tmp_path):
    from affect_pipeline.data.index_dataset import read_index

    ids = ["café", "日本_1"]
    data = _tree(tmp_path / "données 日本", ids)
    res = tmp_path / "résultats 日本"
    for vid in ids:
        video = Path(data["affwild2"]["videos"]) / f"{vid}.mp4"
        p = run(latin1, "extract_frames", "--video", video, "--out", res / "frames" / f"{vid}.json",
                "--audio-out", res / "audio" / f"{vid}.wav", "--sample-rate", 16000)
        assert p.returncode == 0, p.stderr[-3000:]
        assert str(video) in p.stderr                                  # the log names it, readably
        probe = json.loads((res / "frames" / f"{vid}.json").read_bytes().decode("utf-8"))
        assert probe["path"] == str(video)                             # the real name, not mojibake
    # --data as the rules pass it (json.dumps: \\u escapes), the frames as file names
    p = run(latin1, "index_dataset", "--data", json.dumps(data), "--frames",
            *[res / "frames" / f"{v}.json" for v in ids], "--out-dir", res / "index")
    assert p.returncode == 0, p.stderr[-3000:]
    tsv = (res / "index" / "videos.tsv").read_bytes().decode("utf-8")  # UTF-8 on disk
    assert "café" in tsv and "日本_1" in tsv and "données 日本/vidéos/café.mp4" in tsv
    rows = read_index(res / "index" / "videos.tsv")                   # read back (here: a UTF-8 locale)
    assert sorted(rows) == sorted(ids) and all(Path(r["path"]).is_file() for r in rows.values())
    json.loads((res / "index" / "index_report.json").read_bytes().decode("utf-8"))
    # and read back under the Latin-1 locale too: a later stage's read of the index
    code = ("import sys; from affect_pipeline.data.index_dataset import read_index; "
            "rows = read_index(sys.argv[1]); import os; "
            "print(sorted(rows) == sorted(sys.argv[2:]) and all(os.path.isfile(r['path']) for r in rows.values()))")
    q = subprocess.run([sys.executable, "-X", "utf8", "-c", code, str(res / "index" / "videos.tsv"), *ids],
                       env=latin1, capture_output=True, timeout=60)
    assert q.stdout.strip() == b"True", q.stderr[-2000:]


def test_run_config_round_trip_in_a_latin1_process(latin1, tmp_path):
    """The Snakemake process (not restarted in UTF-8 mode) saves results/config.yaml; affect-predict
    reads it back: ``/data/vidéos`` and ``日本`` survive, whatever the locale of either."""
    cfg = tmp_path / "config.yaml"
    data = ascii({"videos": "/data/vidéos", "id": "日本"})     # \\u escapes: argv is decoded as Latin-1 there
    code = ("import sys; from affect_pipeline.common.config import write_run_config, load_run_config; "
            f"write_run_config({{'data': {data}}}, sys.argv[1]); "
            f"c = load_run_config(sys.argv[1]); print(c['data'] == {data})")
    p = subprocess.run([sys.executable, "-c", code, str(cfg)], env={**latin1, "PYTHONUTF8": "0"},
                       capture_output=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == b"True", p.stderr.decode("utf-8", "replace")[-2000:]
    assert "/data/vidéos" in cfg.read_bytes().decode("utf-8")


def test_a_text_file_that_is_not_utf8_is_one_clear_error(tmp_path):
    """A config or annotation saved as Latin-1 by an editor: one line naming the file and the byte."""
    from affect_pipeline.common.config import read_yaml
    from affect_pipeline.data.annotations import parse_annotation

    cfg = tmp_path / "my config.yaml"
    cfg.write_bytes("data:\n  videos: /data/vidéos\n".encode("latin-1"))
    with pytest.raises(PipelineError, match=r"my config\.yaml: not UTF-8 text \(byte 0xe9 at offset 25\)"):
        read_yaml(cfg)
    ann = tmp_path / "café.txt"
    ann.write_bytes(("valence,arousal\n0.1,0.2  # é\n").encode("latin-1"))
    with pytest.raises(PipelineError, match=r"café\.txt: not UTF-8 text"):
        parse_annotation(ann, "VA")
