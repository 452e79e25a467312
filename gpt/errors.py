"""Errors a user can fix, raised by the gpt package.

The example scripts print these as one line (`error: ...`) and exit with status
2 (a setting to change) or 1 (a file that cannot be used); any other exception
is a bug and keeps its traceback. Both are ValueErrors, so code that catches
ValueError keeps working.
"""


class ConfigError(ValueError):
    """A setting that cannot work: batch size 0, an out dir holding another run, ... (exit status 2)."""


class DataError(ValueError):
    """A data file that cannot be used: missing, empty, not UTF-8, not prepared (exit status 1)."""


class DistributedError(RuntimeError):
    """Ranks that cannot run here: mpi4py or NCCL missing, more ranks than GPUs (exit status 1)."""
