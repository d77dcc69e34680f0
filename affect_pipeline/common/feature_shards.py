"""Feature shards: one HDF5 file of per-frame features per extractor job, written video by video
through ``{out}.partial`` so that a killed job resumes where it stopped (format in
:mod:`affect_pipeline.common.stores`)."""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.files import disk_full_names, publish, reserve_h5, trim_reserve
from affect_pipeline.common.partial_lock import PartialLock
from affect_pipeline.common.stores import (
    _open,
    _Reader,
    _require,
    h5_file,
)

log = logging.getLogger(__name__)


# One HDF5 file per extractor job (``features/{model}.h5``, ``features/mae/{task}/{fold}.h5``):
# root attrs name the extractor, fold and checkpoint digest; one group per video holds
# ``features`` (n_frames, D) float16, ``valid`` (n_frames,) bool, optional extras (``logits``)
# and attrs (n_frames, fps). Readers address a video's features as (shard, video id).
@dataclass
class Features:
    features: np.ndarray          # (n_frames, D)
    valid: np.ndarray             # (n_frames,) bool
    attrs: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


class FeatureShardWriter:
    """Write a shard video by video; nothing computed is lost when a job dies.

    Videos go to ``{out}.partial`` (each group flagged ``complete`` once written and flushed);
    :meth:`close` renames it to ``out``. A rerun with the same ``fingerprint`` (extractor,
    checkpoint digest, settings) keeps the partial file's complete videos (:meth:`done`); a
    different fingerprint, or a partial file HDF5 cannot read (killed mid-write, truncated,
    damaged), starts afresh with a warning. A video's group may record its inputs' content digests
    (:meth:`write` ``inputs=``); ``done(video, inputs)`` is then true only while they still match.
    A partial file another writer holds is an error, whether HDF5 file locking is on or off
    (``{out}.partial.lock``, :class:`~affect_pipeline.common.partial_lock.PartialLock`).
    """

    def __init__(self, out, *, extractor: str, fingerprint: str, **attrs):
        with disk_full_names(out):       # no room even to open it: the one line naming ``out``
            self._open(out, extractor=extractor, fingerprint=fingerprint, **attrs)

    def _open(self, out, *, extractor: str, fingerprint: str, **attrs) -> None:
        self.out, self.partial = Path(out), Path(f"{out}.partial")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.f, self.lock = None, PartialLock(self.partial)
        try:
            self.f = self._resume(fingerprint) if self.partial.exists() else None
            if self.f is None:
                self.partial.unlink(missing_ok=True)
                self.f = h5_file(self.partial, "w", "partial feature shard")
                self.f.attrs.update(dict(extractor=extractor, fingerprint=fingerprint, **attrs))
            self._complete = set(self.f)        # every group left is complete: :meth:`done` asks a set, not HDF5
        except BaseException:
            self.lock.release()
            raise

    def _resume(self, fingerprint: str) -> h5py.File | None:
        """The open partial file with only its complete videos, or None (other settings, damaged)."""
        f = None
        try:
            f = h5_file(self.partial, "a", "partial feature shard")
            if f.attrs.get("fingerprint") != fingerprint:
                log.info("%s: made with other settings; starting afresh", self.partial)
                f.close()
                return None
            for v in [k for k in f if not f[k].attrs.get("complete", False)]:
                del f[v]
            log.info("%s: resuming, %d videos already done", self.partial, len(f))
            return f
        except (OSError, KeyError, RuntimeError, ValueError) as e:
            log.warning("%s: unreadable partial shard (%s: %s); starting afresh", self.partial,
                        type(e).__name__, e)
            if f is not None:
                with contextlib.suppress(Exception):
                    f.close()
            return None

    def done(self, video: str, inputs: dict[str, str] | None = None) -> bool:
        """``video`` is complete (and, ``inputs`` given, was made from inputs of these digests)."""
        return video in self._complete and not (inputs and self.changed_inputs(video, inputs))

    def changed_inputs(self, video: str, inputs: dict[str, str]) -> list[str]:
        """Names in ``inputs`` (name -> content digest) whose digest ``video``'s group did not record."""
        g = self.f.get(video)
        return [k for k in inputs if g is None or g.attrs.get(f"input_{k}") != inputs[k]]

    def write(self, video: str, features: np.ndarray, valid: np.ndarray, *, fps: float, dtype="f2",
              extra: dict | None = None, inputs: dict[str, str] | None = None, **attrs) -> None:
        """``inputs``: name -> content digest of what the group is made from (attrs ``input_{name}``)."""
        features, valid = np.asarray(features), np.asarray(valid, dtype=bool)
        if features.ndim != 2 or len(valid) != len(features):
            raise ValueError(f"{video}: features {features.shape} / valid {valid.shape} do not match")
        reserve_h5(self.partial, features.size * np.dtype(dtype).itemsize + valid.nbytes
                   + sum(np.asarray(v).nbytes for v in (extra or {}).values()), self.out)
        if video in self.f:
            self._complete.discard(video)
            del self.f[video]
        g = self.f.create_group(video)
        g.create_dataset("features", data=features.astype(dtype), chunks=True)
        g.create_dataset("valid", data=valid)
        for k, v in (extra or {}).items():
            g.create_dataset(k, data=np.asarray(v))
        g.attrs.update(dict(n_frames=len(features), dim=features.shape[1], fps=float(fps), **attrs))
        g.attrs.update({f"input_{k}": str(v) for k, v in (inputs or {}).items()})
        self.f.flush()
        g.attrs["complete"] = True
        self.f.flush()
        self._complete.add(video)

    def close(self, videos=None) -> None:
        """Finish: every listed video must be present; then the shard appears under its name."""
        missing = [v for v in (videos or []) if not self.done(v)]
        if missing:
            self.abort()
            raise PipelineError(f"{self.partial}: {len(missing)} videos missing: {missing[:5]}")
        reserve_h5(self.partial, 0, self.out)
        try:
            self.f.attrs["videos"] = len(self.f)
            self.f.close()
            publish(self.partial, self.out)      # fsync'd, then renamed
        finally:
            self.lock.release()

    def abort(self) -> None:
        """Keep the partial file for the next attempt (its complete videos are reused)."""
        try:
            if self.f:
                self.f.close()
                trim_reserve(self.partial)
        finally:
            self.lock.release()


class FeatureShard(_Reader):
    """Reader of one shard: ``shard.name`` is its extractor (``mae_AU``, ``hubert``...)."""

    def __init__(self, path):
        self.path = Path(path)
        self.f = _open(path, "feature shard")
        self.attrs = dict(self.f.attrs)
        self.name = str(self.attrs.get("extractor", self.path.stem))

    def videos(self) -> list[str]:
        return list(self.f.keys())

    def __contains__(self, video: str) -> bool:
        return video in self.f

    def n_frames(self, video: str) -> int:
        return int(self._group(video)["features"].shape[0])

    def dim(self) -> int:
        first = next(iter(self.f.values()), None)
        return 0 if first is None else int(first["features"].shape[1])

    def _group(self, video: str):
        try:
            return self.f[video]        # one HDF5 lookup a read (a clip loader makes ~3 a video)
        except KeyError:
            raise PipelineError(f"{self.path}: no features for video {video!r}") from None

    def read(self, video: str, extra: tuple[str, ...] = ()) -> Features:
        g = self._group(video)
        _require(g, f"{self.path}:{video}", ["features", "valid"] + list(extra), "feature shard group")
        try:
            feats = g["features"][:].astype(np.float32)
            valid = g["valid"][:].astype(bool)
            ex = {k: g[k][:] for k in extra}
        except OSError as e:
            raise PipelineError(f"{self.path}: feature shard is truncated or corrupt ({e})") from e
        if len(feats) != len(valid):
            raise PipelineError(f"{self.path}:{video}: features has {len(feats)} rows but valid has {len(valid)}")
        return Features(feats, valid, {**self.attrs, **dict(g.attrs)}, ex)

    def rows(self, video: str, start: int = 0, stop: int | None = None, name: str = "features") -> np.ndarray:
        """Rows [start, stop) of one of a video's datasets as stored (``features``: float16), read
        without the rest of the video: what a job streaming clips from the shard reads."""
        g = self._group(video)
        _require(g, f"{self.path}:{video}", [name], "feature shard group")
        try:
            return g[name][start:stop]
        except OSError as e:
            raise PipelineError(f"{self.path}: feature shard is truncated or corrupt ({e})") from e

    def has(self, video: str, name: str) -> bool:
        return video in self.f and name in self.f[video]
