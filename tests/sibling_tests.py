"""Helpers that live in the test module of another tests/ folder (``make_synthetic`` in
tests/temporal/test_temporal.py, ...). ``sibling("temporal")`` puts that folder first on sys.path,
as pytest's prepend import mode does when it collects a file there; ``from test_temporal import ...``
then imports the very module pytest collects, whatever pytest collected first (a file run alone
included), instead of failing with ModuleNotFoundError.
"""
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def sibling(folder: str) -> None:
    """tests/<folder> first on sys.path (once)."""
    path = TESTS / folder
    assert path.is_dir(), path
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
