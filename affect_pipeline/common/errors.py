"""The package's expected failures: one readable line, no traceback (``runtime.run_stage``)."""


class PipelineError(Exception):
    """An expected failure (bad input, missing file, wrong config): reported without traceback,
    exit code 1."""


class UsageError(PipelineError):
    """A command called wrongly: an argument or input file it cannot use (unreadable video or
    image, a device this machine lacks). Exit code 2, argparse's convention for usage errors,
    so scripts can tell "fix the call" from "the run failed"."""
