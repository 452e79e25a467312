"""Errors a user can fix, raised by the gpt package.

The example scripts print these as one line (`error: ...`) and exit with one rule for
every script (README, "Exit statuses"): status 2 when the command line is wrong (a
setting that cannot work, an input path that is missing or unusable), status 1 when
a correct command failed while running (the loss diverged, the disk filled up, a
download failed, the ranks could not start). Any other exception is a bug and keeps
its traceback. ConfigError and DataError are ValueErrors, so code that catches
ValueError keeps working.
"""


class ConfigError(ValueError):
    """A setting that cannot work: batch size 0, an out dir holding another run, ... (exit status 2)."""


class DataError(ValueError):
    """An input file named on the command line that cannot be used: missing, a folder, empty,
    not UTF-8 (exit status 2)."""


class RunError(RuntimeError):
    """A correct command that failed while running: a non-finite loss, a full disk, a failed
    download (exit status 1)."""


class DistributedError(RuntimeError):
    """Ranks that cannot run here: mpi4py or NCCL missing, more ranks than GPUs (exit status 1)."""
