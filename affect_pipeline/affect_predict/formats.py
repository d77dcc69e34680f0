"""The column layouts of ``affect-predict``'s CSVs (``--format native | openface | pyfeat``).

One row per decoded frame per face track (``face_id`` 0, 1, ... see :mod:`affect_pipeline.faces.tracking`;
a video without any face has one track, face 0, every row without a face). Rows of frames
without the track's face carry the ``--no-face`` policy's values: empty (NaN) by default.

``native`` (","-separated; ids quoted by the csv module where they need it):
``video, frame`` (1-based), ``face_id, timestamp`` (s, media clock), ``face_found``,
``face_score`` (detector), ``face_x, face_y, face_width, face_height`` (box, pixels),
``{left_eye, right_eye, nose, mouth_left, mouth_right}_{x, y}`` (the 5 alignment points), then
the 12 AU probabilities (``AU1`` ...), the 8 EXPR probabilities (``Neutral`` ...), ``valence,
arousal``. Without a face every one of these is empty.

``openface``: OpenFace 2's ``FeatureExtraction`` CSV (RecorderCSV.cpp): ", "-separated, one file
per video holding every face track by ``face_id`` (as its multi-face tool writes them), first
``frame, face_id, timestamp, confidence, success`` (frame 1-based; timestamp 3 decimals;
confidence 2, here the detector's score), then ``AU01_c`` ... ``AU26_c``: *presence* 0 / 1 with
OpenFace's zero-padded names, our AU probability thresholded with the run's
``ensemble.au_threshold`` as the submission decodes it. No ``AUxx_r``: OpenFace's are
*intensities* on 0-5 and these models predict none (a probability written there would read as an
intensity). Then the other tasks: EXPR probabilities under py-feat's emotion names (below) and
``valence, arousal``. Gaze, pose and the 68 landmarks are not written: we have none. A frame
without the face is, as OpenFace writes it, ``success`` 0 with every value 0 (OpenFace leaves no
cell empty, and py-feat's ``read_openface`` parses numbers only that way): filter on
``success == 1``, as with OpenFace's own files; ``--no-face`` other than ``empty`` writes its
values there instead. Readers: ``pandas.read_csv(path, skipinitialspace=True)``, and py-feat's
``read_openface`` (``sep=","``, then it strips the names).

``pyfeat``: py-feat's ``Fex`` column names for what we have, ","-separated, NaN left empty as
``Fex.to_csv`` writes it: ``FaceRectX, FaceRectY, FaceRectWidth, FaceRectHeight, FaceScore``
(box top-left corner and size in pixels, the detector's score), ``AU01`` ... (AU probabilities,
as py-feat's), ``anger, disgust, fear, happiness, sadness, surprise, neutral`` (py-feat's
``FEAT_EMOTION_COLUMNS``, from our EXPR classes of the same names) and ``other`` (our eighth
class: py-feat has none, so its seven do not sum to 1), ``valence, arousal``, ``face_id``,
``timestamp`` (ours: py-feat has none), ``input`` (the video's path, as py-feat writes it) and
``frame`` (0-based, py-feat's ``FEAT_TIME_COLUMNS``). No ``x_0 ... y_67``: py-feat's landmark
columns are the 68-point scheme, and our detector gives 5 points (written under x_0 ... x_4 they
would read as the jaw line); no ``Pitch, Roll, Yaw``: no head pose.

``openface`` and ``pyfeat`` are one file per video (``--out-dir``), as the tools write them.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np

from affect_pipeline.common.tasks import (
    AU_NAMES,
    EXPR_NAMES,
    FRAME_TASKS,
    TASK_COLUMNS,
    VA_NAMES,
)

FORMATS = ("native", "openface", "pyfeat")
LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
NATIVE_FACE = ["face_score", "face_x", "face_y", "face_width", "face_height",
               *(f"{p}_{c}" for p in LANDMARKS for c in "xy")]
PYFEAT_FACEBOX = ["FaceRectX", "FaceRectY", "FaceRectWidth", "FaceRectHeight", "FaceScore"]


def openface_au(name: str) -> str:
    """``AU1`` -> ``AU01`` (OpenFace's and py-feat's zero-padded names)."""
    return f"AU{int(name[2:]):02d}"


def emotion_name(name: str) -> str:
    """Our EXPR class -> py-feat's emotion column (``Happiness`` -> ``happiness``; ``Other`` -> ``other``)."""
    return name.lower()


def fmt(v: np.ndarray, spec: str, empty: str = "") -> np.ndarray:
    """Numbers as strings (numpy-vectorised: 10^5 rows per video on Aff-Wild2), NaN as ``empty``."""
    v = np.asarray(v, np.float64)
    return np.where(np.isnan(v), empty, np.char.mod(spec, np.nan_to_num(v)))


@dataclass(frozen=True)
class CsvStyle:
    """A column layout (``format``); ``au_threshold``: per-AU presence cut for OpenFace's ``AUxx_c``."""
    format: str = "native"
    au_threshold: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"format {self.format!r} is not {' | '.join(FORMATS)}")

    @property
    def sep(self) -> str:
        return ", " if self.format == "openface" else ","

    @property
    def id_column(self) -> str | None:
        """The column naming the video (a combined CSV needs one): native only."""
        return "video" if self.format == "native" else None

    @property
    def found_column(self) -> str:
        return {"native": "face_found", "openface": "success", "pyfeat": "FaceScore"}[self.format]

    def task_columns(self, task: str) -> list[str]:
        if self.format == "native":
            return list(TASK_COLUMNS[task])
        au = [openface_au(n) + ("_c" if self.format == "openface" else "") for n in AU_NAMES]
        expr = [emotion_name(n) for n in EXPR_NAMES]
        if self.format == "pyfeat":
            expr = [e for e in expr if e != "neutral" and e != "other"] + ["neutral", "other"]
        return {"AU": au, "EXPR": expr, "VA": list(VA_NAMES)}[task]

    def task_order(self, task: str) -> list[int]:
        """Our output index of each of the task's columns."""
        if task != "EXPR" or self.format != "pyfeat":
            return list(range(len(TASK_COLUMNS[task])))
        names = [emotion_name(n) for n in EXPR_NAMES]
        return [names.index(c) for c in self.task_columns("EXPR")]

    def header(self, tasks) -> list[str]:
        cols = [c for t in FRAME_TASKS if t in tasks for c in self.task_columns(t)]
        if self.format == "native":
            return ["video", "frame", "face_id", "timestamp", "face_found", *NATIVE_FACE, *cols]
        if self.format == "openface":
            return ["frame", "face_id", "timestamp", "confidence", "success", *cols]
        return [*PYFEAT_FACEBOX, *cols, "face_id", "timestamp", "input", "frame"]

    def values(self, r, task: str) -> list[np.ndarray]:
        """The strings of one task's columns."""
        v = np.asarray(r.preds[task], np.float64)[:, self.task_order(task)]
        if self.format == "openface":
            if task == "AU":
                if self.au_threshold is None:
                    raise ValueError("OpenFace AU presence columns need the run's AU threshold")
                v = np.where(np.isnan(v), 0.0, (v >= np.asarray(self.au_threshold)).astype(float))
                return list(fmt(v, "%.1f").T)
            return list(fmt(np.nan_to_num(v), "%.4f").T)
        return list(fmt(v, "%.6f").T)

    def table(self, r, tasks) -> np.ndarray:
        """(n, columns) strings of one face track."""
        n = len(r.timestamps)
        found = np.asarray(r.found, bool)
        score = np.where(found, np.nan if r.score is None else r.score, np.nan)
        box = np.where(found[:, None], np.full((n, 4), np.nan) if r.box is None else r.box, np.nan)
        frames, fid = r.frame_numbers - 1, np.full(n, str(r.face_id), dtype=object)   # 0-based; --stride skips
        if self.format == "native":
            lmk = np.full((n, 2 * len(LANDMARKS)), np.nan) if r.landmarks is None else r.landmarks.reshape(n, -1)
            lmk = np.where(found[:, None], lmk, np.nan)
            xywh = np.concatenate([box[:, :2], box[:, 2:] - box[:, :2]], 1)
            left = [np.full(n, r.video_id, dtype=object), (frames + 1).astype(str), fid, fmt(r.timestamps, "%.6f"),
                    found.astype(int).astype(str), fmt(score, "%.4f"), *fmt(xywh, "%.1f").T, *fmt(lmk, "%.1f").T]
        elif self.format == "openface":
            left = [(frames + 1).astype(str), fid, fmt(r.timestamps, "%.3f"), fmt(np.nan_to_num(score), "%.2f"),
                    found.astype(int).astype(str)]
        else:
            xywh = np.concatenate([box[:, :2], box[:, 2:] - box[:, :2]], 1)
            left = [*fmt(xywh, "%.1f").T, fmt(score, "%.4f")]
        cols = left + [c for t in FRAME_TASKS if t in tasks for c in self.values(r, t)]
        if self.format == "pyfeat":
            cols += [fid, fmt(r.timestamps, "%.6f"), np.full(n, r.source or r.video_id, dtype=object),
                     frames.astype(str)]
        return np.stack([np.asarray(c, dtype=object) for c in cols], 1)

    def line(self, fields) -> str:
        """One CSV line: OpenFace's ", " (numbers only), else the csv module's quoting."""
        if self.format == "openface":
            return ", ".join(fields) + "\n"
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(fields)
        return buf.getvalue()

    def lines(self, table: np.ndarray) -> str:
        if self.format == "openface":
            return "".join(", ".join(row) + "\n" for row in table.tolist())
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(table.tolist())
        return buf.getvalue()


NATIVE = CsvStyle()
