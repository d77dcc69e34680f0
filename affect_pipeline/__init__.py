"""affect_pipeline: MAE + multi-modal temporal models for the ABAW challenges.

Every workflow stage is a function ``main(argv)`` reachable as
``python -m affect_pipeline <stage> ...``; see ``affect_pipeline.__main__.STAGES``.
Importing the package is cheap (no torch) so the Snakefile can use the light helpers.
"""

__version__ = "0.1.0"
