"""The package's expected failure: one readable line, no traceback (``runtime.run_stage``)."""


class PipelineError(Exception):
    """An expected failure (bad input, missing file, wrong config): reported without traceback."""
