"""The output options of ``affect-predict``: ``--format`` (:mod:`.formats`) and ``--no-face``
(:mod:`.predict_tracks`), kept apart from the command's other arguments."""
from __future__ import annotations

import argparse

from affect_pipeline.affect_predict.formats import FORMATS
from affect_pipeline.submit.no_face import PREDICT_NO_FACE

NO_FACE_HELP = (
    "what a frame without the face gets (default: empty). empty: nothing (NaN; face_found / success 0); "
    "interpolate: the linear interpolation between the track's nearest face frames (the submission's "
    "default; edges copy the nearest, a track without any face frame stays empty); prior: the training "
    "labels' prior (AU rates, EXPR class frequencies, VA means of the ensembled folds' training videos); "
    "audio: the models' output on the audio stream only (visual input zeroed; no audio: empty)")
FORMAT_HELP = (
    "CSV layout (default: native). openface: OpenFace 2's FeatureExtraction CSV (', ' separators; frame, "
    "face_id, timestamp, confidence, success, AU01_c ...; one file per video); pyfeat: py-feat's Fex "
    "columns (FaceRectX ..., FaceScore, AU01 ..., anger ... neutral, valence, arousal, input, frame)")


def add_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=FORMATS, default="native", help=FORMAT_HELP)
    p.add_argument("--no-face", choices=PREDICT_NO_FACE, default="empty", dest="no_face", help=NO_FACE_HELP)
    p.add_argument("--openface-columns", action="store_true", help=argparse.SUPPRESS)   # removed: an error


def check_output_options(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Refuse the removed ``--openface-columns`` and a combined CSV in a one-file-per-video format."""
    if a.openface_columns:
        p.error("--openface-columns is replaced by --format openface (OpenFace 2's own layout: one CSV per "
                "video, ', ' separators, no video column) or --format pyfeat")
    if a.format != "native" and (a.out is not None or a.combined):
        p.error(f"--format {a.format} writes one CSV per video, as {'OpenFace' if a.format == 'openface' else 'py-feat'} "
                f"does (no video column): use --out-dir DIR without --combined")
