"""Stage ``extract_frames``: decode a media file once, for everything later stages need of it.

Per media file (``X_left`` / ``X_right`` share media ``X``) it writes the frames JSON (probe +
exact per-frame timestamps, :func:`video.frame_info`) and the 16 kHz mono wav on the media clock
(:func:`audio_track.extract_audio`; silence of the video's duration, ``has_audio: false``, when
there is no audio stream).

The workflow runs it on a stable batch of media files per job (``--batch``, rules/data.smk), so
the job count does not grow with the dataset: ``{media}.json`` into ``--frames-dir`` and
``{media}.wav`` into ``--audio-dir``, both folders appearing complete only when the batch is done.
A file that fails to decode fails alone: its frames JSON records the error (``{"error": ...,
"media", "video"}``, no ``n_frames``, so no reader takes it for a decode) and it gets no wav; its
batch mates complete, it is named in the log, and ``index_dataset`` reports it in
``index_report.json`` (``decode_failed``) and leaves it out of the index. A full disk fails the
job. Each decode is kept in ``--cache`` (``{media}.{key}.json`` / ``.wav``, key: the stage's code
digest, the file's path, size and mtime, the sample rate) and hard-linked into the batch folders:
a batch rerun (a file added to it, a killed job) decodes only what is new.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

from affect_pipeline.common.errors import PipelineError
from affect_pipeline.common.files import atomic_dir, atomic_path, is_disk_full
from affect_pipeline.common.lists import read_list
from affect_pipeline.common.runtime import stage_parser, write_json
from affect_pipeline.data.audio_track import extract_audio
from affect_pipeline.data.video import frame_info

log = logging.getLogger("affect_pipeline.data.extract_frames")
_CACHED = re.compile(r"(?P<media>.+)\.(?P<key>[0-9a-f]{16})\.(?:json|wav)")


def extract_frames(video, out, audio_out, sample_rate: int, threads: int = 1) -> dict:
    """One media file: the frames JSON and the wav, both written atomically.

    The wav follows :func:`extract_audio` (media clock; silence of the video's duration when
    there is no audio, and ``has_audio: false``). Neither file appears unless both are complete.
    """
    info = frame_info(video, threads)
    with atomic_path(audio_out) as wav_tmp, atomic_path(out) as json_tmp:
        r = extract_audio(video, wav_tmp, sample_rate, duration=float(info["duration"]), threads=threads)
        info["has_audio"] = info["has_audio"] and not r["silent"]   # a stream without samples is no audio
        write_json(json_tmp, info)
    log.info("%s: %d frames (container declares %d), %.3f fps%s, %dx%d shown (rotation %d), %s", video,
             info["n_frames"], info["n_frames_declared"], info["fps"], " (VFR)" if info["vfr"] else "",
             info["width"], info["height"], info["rotation"], info["codec"])
    if r["silent"]:
        log.warning("%s: no audio; wrote %.2f s of silence to %s", video, r["seconds"], audio_out)
    else:
        log.info("%s: %.2f s of audio at %d Hz -> %s", video, r["seconds"], sample_rate, audio_out)
    return {**info, "audio": r}


# ---------------------------------------------------------------- batches
def decode_key(video, sample_rate: int, code: str) -> str:
    """What a cached decode was made from; a rerun reuses it only when all of it is unchanged."""
    st = Path(video).stat()
    made_of = [code, str(video), st.st_size, st.st_mtime_ns, int(sample_rate)]
    return hashlib.sha256(json.dumps(made_of).encode()).hexdigest()[:16]


def _link(src: Path, dst: Path) -> None:
    """``dst`` as a hard link of ``src`` (a copy, renamed into place, where links are refused)."""
    try:
        os.link(src, dst)
    except FileExistsError:
        pass
    except OSError:
        with atomic_path(dst) as tmp:
            shutil.copy2(src, tmp)


def _cache_entries(cache: Path) -> dict[str, set[str]]:
    """media -> the names of its cached files (one listing of the folder for the whole batch)."""
    out: dict[str, set[str]] = {}
    with os.scandir(cache) as it:
        for e in it:
            m = _CACHED.fullmatch(e.name)
            if m:
                out.setdefault(m["media"], set()).add(e.name)
    return out


def _bad_file(e: Exception) -> bool:
    """The file's own fault (the decoder's named errors, FFmpeg's), not the machine's (a full disk)
    or the code's (any other exception fails the job)."""
    return not is_disk_full(e) and (isinstance(e, PipelineError) or type(e).__module__.split(".")[0] == "av")


def _failure(media: str, video: str, e: Exception) -> dict:
    msg = str(e) if isinstance(e, PipelineError) else f"{type(e).__name__}: {e}"
    return {"error": msg, "media": media, "video": str(video)}


def _one(m: dict, dirs: tuple[Path, Path], cache: Path, entries: dict, settings: tuple) -> dict | None:
    """One media file of a batch into the batch folders ``dirs`` (frames, audio): from the cache,
    or decoded and cached; None, or its failure record when it does not decode."""
    name, video = m["media"], m["video"]
    sample_rate, code, threads = settings
    json_out, wav_out = dirs[0] / f"{name}.json", dirs[1] / f"{name}.wav"
    try:
        key = decode_key(video, sample_rate, code)
    except OSError as e:
        return _failure(name, video, PipelineError(f"{video}: video not found or unreadable ({e.strerror})"))
    cached = [cache / f"{name}.{key}.json", cache / f"{name}.{key}.wav"]
    if all(p.name in entries.get(name, ()) for p in cached):
        log.info("%s: decode kept from an earlier run (%s)", name, cached[0])
        _link(cached[0], json_out)
        _link(cached[1], wav_out)
    else:
        try:
            extract_frames(video, json_out, wav_out, sample_rate, threads)
        except Exception as e:   # noqa: BLE001 - the file's own failure: recorded; its batch mates go on
            if not _bad_file(e):
                raise
            return _failure(name, video, e)
        _link(json_out, cached[0])
        _link(wav_out, cached[1])
    for old in entries.get(name, set()) - {p.name for p in cached}:   # decodes of older code / media
        (cache / old).unlink(missing_ok=True)
    return None


def extract_batch(media: list[dict], frames_dir, audio_dir, cache, sample_rate: int, code: str = "",
                  threads: int = 1) -> dict[str, dict]:
    """Every media file of a batch (``media``: dicts media, video) into ``frames_dir/{media}.json``
    and ``audio_dir/{media}.wav``; returns the failed ones' records (media -> error record)."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    entries, failed = _cache_entries(cache), {}
    with atomic_dir(frames_dir) as ftmp, atomic_dir(audio_dir) as atmp:
        for i, m in enumerate(media, 1):
            log.info("[%d/%d] %s", i, len(media), m["media"])
            bad = _one(m, (ftmp, atmp), cache, entries, (sample_rate, code, threads))
            if bad is not None:
                failed[m["media"]] = bad
                log.error("%s: decoding failed, left out of the run (index_report.json names it): %s",
                          m["video"], bad["error"])
                write_json(ftmp / f"{m['media']}.json", bad)
    done = len(media) - len(failed)
    log.info("%s: %d of %d media files decoded%s", Path(frames_dir).name, done, len(media),
             f"; {len(failed)} failed: {', '.join(failed)}" if failed else "")
    return failed


def main(argv: list[str]) -> int:
    p = stage_parser("extract_frames", "Decode media files once: frame count, timestamps, probe, 16 kHz wav.")
    p.add_argument("--video", help="one media file (else --batch)")
    p.add_argument("--out", help="with --video: results/frames/{media}.json")
    p.add_argument("--audio-out", help="with --video: the wav")
    p.add_argument("--batch", help="@FILE (or JSON text): a list of {media, video}, the batch's media files")
    p.add_argument("--frames-dir", help="with --batch: the batch's frames folder, results/frames/{batch}")
    p.add_argument("--audio-dir", help="with --batch: the batch's wav folder, results/audio/{batch}")
    p.add_argument("--cache", help="with --batch: where each decode is kept between runs")
    p.add_argument("--code-digest", default="", help="with --batch: the stage code's digest (a decode made "
                   "by other code is not reused)")
    p.add_argument("--sample-rate", type=int, required=True, help="config audio.sample_rate")
    a = p.parse_args(argv)
    if a.batch is not None:
        if a.video or not (a.frames_dir and a.audio_dir and a.cache):
            p.error("--batch takes --frames-dir, --audio-dir and --cache (not --video)")
        extract_batch(read_list(a.batch), a.frames_dir, a.audio_dir, a.cache, a.sample_rate, a.code_digest, a.threads)
        return 0
    if not (a.video and a.out and a.audio_out):
        p.error("give --video, --out and --audio-out, or --batch")
    extract_frames(a.video, a.out, a.audio_out, a.sample_rate, a.threads)
    return 0
