"""The ``affect-predict`` command: a trained run's models on new videos, one CSV (and timeline) per video."""
