"""Where an ``affect-predict`` output came from, and whether a rerun may keep it.

Every output file ``X`` (per-video CSV and PNG, combined CSV and PNG, a combined run's parts)
gets a sidecar ``X.provenance.json``, written after ``X`` (a kill in between leaves an output
without a matching record, which a rerun redoes). It records:

- ``code``: the package version (and git commit, ``dirty``, when run from a checkout);
- ``models``: the bundle or run folder, its kind, whether it was trained on the demo, and
  ``digest``: a sha256 over every ensembled fold model (``dcl.pt``) and its metrics file (fold
  weights, AU thresholds). The encoders and audio weights are pinned by the digests those
  checkpoints record, which loading checks, so a bundle and the run it was exported from have
  the same digest;
- ``config``: a digest of the effective config (the run's + ``--config`` overlays), weight
  *paths* left out (where the weights lie is not what they are; their digests are checked);
- ``arguments``: every parsed option that can change the numbers (all but the ones in
  :data:`NOT_RESULT_ARGS`: where outputs go, device, threads, batch size), so an option added to
  the command later is covered without touching this module;
- ``inputs``: per video its id, path, size and a streaming blake2b of its bytes.

A rerun keeps an output only if the record's version, models digest, config digest, arguments
and its video's size and digest all equal this call's; otherwise the video is redone and the log
says which field differs. The commit is recorded, not compared (a documentation commit must not
redo a batch); a release that changes numbers changes the version.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.runtime import file_digest, write_json

log = logging.getLogger("affect_pipeline.temporal.predict")

SUFFIX = ".provenance.json"
FORMAT = 1
#: options that say where outputs go or how fast they are made, not what the numbers are
NOT_RESULT_ARGS = frozenset({"videos", "models", "out_dir", "out", "combined", "timeline", "no_timeline",
                             "overwrite", "workdir", "device", "threads", "batch_size", "tmpdir", "config",
                             "seed", "version"})
#: config keys naming weight files whose digests the temporal checkpoints record and loading checks
PINNED_WEIGHT_KEYS = ("audio.hubert.weights", "audio.wav2vec2.weights", "audio.vggish.weights", "audio.vggish.pca")
#: the fields a rerun compares (the rest is information)
COMPARED = (("code", "version"), ("models", "digest"), ("models", "demo"), ("config", "digest"), ("arguments",))


def sidecar(output: Path) -> Path:
    """``X`` -> ``X.provenance.json`` beside it."""
    output = Path(output)
    return output.with_name(output.name + SUFFIX)


def input_digest(path: Path) -> dict:
    """Size and a streaming blake2b of an input's bytes (about 1 GB/s on one core); a folder of
    frames: of its files' names and bytes, in name order, and their total size."""
    path = Path(path)
    files = sorted(q for q in path.rglob("*") if q.is_file()) if path.is_dir() else [path]
    h = hashlib.blake2b(digest_size=20)
    size = 0
    for f in files:
        if path.is_dir():
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
                size += len(block)
    return {"size": size, "blake2b": h.hexdigest()}


def models_digest(task_paths: dict[str, list[Path]]) -> str:
    """sha256 over each fold model and its metrics file (relative name + content digest)."""
    from affect_pipeline.common import results

    h = hashlib.sha256()
    for task in sorted(task_paths):
        for p in task_paths[task]:
            for f in (Path(p), Path(results.metrics(str(p)))):
                h.update(f"{task}/{f.parent.name}/{f.name}\0".encode())
                h.update((file_digest(f, 64) if f.is_file() else "absent").encode() + b"\0")
    return h.hexdigest()


def config_digest(cfg: dict) -> str:
    """sha256 of the effective config as canonical JSON, without ``_files`` and pinned weight paths."""
    plain = copy.deepcopy({k: v for k, v in cfg.items() if not str(k).startswith("_")})
    for key in PINNED_WEIGHT_KEYS:
        *parents, last = key.split(".")
        node = plain
        for k in parents:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()


def result_args(a: argparse.Namespace, tasks: list[str]) -> dict:
    """The parsed options that can change the numbers, as JSON values (``tasks``: the ones run)."""
    out = {}
    for k, v in sorted(vars(a).items()):
        if k in NOT_RESULT_ARGS:
            continue
        out[k] = [str(x) for x in v] if isinstance(v, (list, tuple)) else str(v) if isinstance(v, Path) else v
    out["tasks"] = list(tasks)
    return out


@dataclass
class Provenance:
    """This call's record, less the inputs; input digests computed once per file."""
    common: dict
    _digests: dict = field(default_factory=dict)

    def video(self, path: Path, video_id: str) -> dict:
        key = Path(path).resolve()
        if key not in self._digests:
            self._digests[key] = input_digest(path)
        return {"video": video_id, "path": str(path), **self._digests[key]}

    def record(self, videos: list[dict]) -> dict:
        return {"format": FORMAT, **copy.deepcopy(self.common), "inputs": videos}

    def write(self, output: Path, videos: list[dict]) -> None:
        """The sidecar of ``output`` (call after ``output`` is in place)."""
        write_json(sidecar(output), self.record(videos))

    def differs(self, output: Path) -> str | None:
        """Why ``output``'s record does not match this call (None: it matches, inputs aside)."""
        rec = read_record(output)
        if rec is None:
            return "it has no provenance record"
        for path in COMPARED:
            mine, theirs = self.common, rec
            for k in path:
                mine, theirs = mine.get(k), theirs.get(k) if isinstance(theirs, dict) else None
            if mine != theirs:
                return f"its {'.'.join(path)} differs ({_short(theirs)} then, {_short(mine)} now)"
        return None

    def video_differs(self, output: Path, path: Path | None, video_id: str) -> str | None:
        """Why the rows of ``video_id`` in ``output`` cannot be kept (None: they can); ``path``
        None: a video not in this call, kept when the rest of the record matches."""
        why = self.differs(output)
        return why or self.input_differs(read_record(output), path, video_id)

    def input_differs(self, rec: dict, path: Path | None, video_id: str) -> str | None:
        old = {v.get("video"): v for v in rec.get("inputs", [])}.get(video_id)
        if old is None:
            return f"its record has no input {video_id!r}"
        if path is None:
            return None
        now = self.video(path, video_id)
        if (old.get("size"), old.get("blake2b")) != (now["size"], now["blake2b"]):
            return f"the input {path} changed (size {old.get('size')} -> {now['size']}, content digest differs)"
        return None


# ---------------------------------------------------------------- what a rerun keeps
def keeps(prov: Provenance | None, output: Path, path: Path, video_id: str) -> bool:
    """A finished ``output`` of ``video_id`` may be kept: no provenance asked for (``prov`` None:
    the columns decide), or its record matches; else the log says why it is redone."""
    if prov is None:
        return True
    why = prov.video_differs(output, path, video_id)
    if why:
        log.info("%s: redoing %s: %s", output, video_id, why)
    return why is None


def kept_rows(prov: Provenance | None, combined: Path, paths: dict[str, Path], quiet: bool = False) -> list[str]:
    """The videos of a combined CSV whose rows a rerun keeps, in file order (``paths``: this
    call's videos by id; a video not among them is kept when the rest of the record matches)."""
    from affect_pipeline.affect_predict.outputs import csv_videos

    vids = csv_videos(combined)
    if prov is None:
        return vids
    why = prov.differs(combined)
    if why:
        if not quiet:
            log.info("%s: redoing its %d video(s): %s", combined, len(vids), why)
        return []
    rec, kept = read_record(combined), []
    for v in vids:
        reason = prov.input_differs(rec, paths.get(v), v)
        if reason and not quiet:
            log.info("%s: redoing %s: %s", combined, v, reason)
        if reason is None:
            kept.append(v)
    return kept


def kept_entries(combined: Path, videos: list[str]) -> list[dict]:
    """The combined CSV's record of ``videos`` (kept rows), before the CSV is rewritten."""
    rec = read_record(combined) or {}
    old = {v.get("video"): v for v in rec.get("inputs", [])}
    return [old[v] for v in videos if v in old]


def copy_rows(src: Path, fh, videos: set[str]) -> None:
    """The lines of ``videos`` (by their first field) of the CSV ``src``, unchanged, to ``fh``."""
    import csv

    with open(src, encoding="utf-8", newline="") as old:
        old.readline()                                    # its header: the caller writes this call's
        for line in old:
            row = next(csv.reader([line]), None)
            if row and row[0] in videos:
                fh.write(line)


def read_record(output: Path) -> dict | None:
    """The sidecar of ``output`` (None if absent); unreadable -> PipelineError naming it."""
    p = sidecar(output)
    if not p.is_file():
        return None
    try:
        rec = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PipelineError(f"{p}: not a provenance record ({e}); remove it or pass --overwrite") from None
    return rec if isinstance(rec, dict) else None


def _short(v) -> str:
    text = json.dumps(v, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def make_provenance(a: argparse.Namespace, models, cfg: dict, task_paths: dict) -> Provenance:
    """This call's record: code version, models (``models``: bundle.ModelSource), config, arguments."""
    from affect_pipeline.common.version import code_version

    return Provenance({
        "code": code_version(),
        "models": {"path": str(Path(models.root).resolve()), "kind": models.kind, "demo": models.demo,
                   "trained_on": "the synthetic demo data" if models.demo else "real data",
                   "digest": models_digest(task_paths)},
        "config": {"digest": config_digest(cfg), "files": [str(Path(f).resolve()) for f in cfg.get("_files", [])]},
        "arguments": result_args(a, list(task_paths)),
    })
