"""jaxdiff's error types: every anticipated failure, reported by the command line as one line.

``JaxdiffError`` is the base of every failure whose message says what is wrong, where, and how
to fix it; ``jaxdiff`` prints it as ``jaxdiff: error: <message>`` without a traceback (set
``--debug`` or ``JAXDIFF_DEBUG=1`` for one).  Two exit statuses tell the kinds apart:

  exit 2  the command was wrong: fix the command line or the config and run it again
    UsageError              a command-line flag (a missing --workdir, an unknown --mode, a
                            config file that does not load, an override of an unknown field)
    ConfigError             a config field; the message starts with it
                            (``config.optim.lr: must be > 0, got -1.0``), before anything is
                            compiled
  exit 1  the run met a fault in its inputs, its data or its environment
    MissingInputError       an input a job needs is not there (no checkpoint, no samples, a
                            dataset not prepared, a weights file); the message names the
                            command that makes it
    IncompatibleCheckpointError
                            a checkpoint cannot serve this config (other fields or shapes)
      CheckpointFormatError a checkpoint in another layout than this version reads
    CorruptDataError        a file on disk is unreadable or has the wrong checksum
    RunEnvironmentError     the workdir is not writable, the disk is full, a write failed
    NonFiniteError          training diverged (non-finite loss or gradients) or sampling
                            produced non-finite values

Each also subclasses the built-in type library callers would catch (ValueError,
FileNotFoundError, OSError, FloatingPointError), so code written against those keeps working.
"""
from __future__ import annotations

USAGE_EXIT = 2
RUNTIME_EXIT = 1


class JaxdiffError(Exception):
    """An anticipated failure whose message names the cause and the fix."""

    exit_code = RUNTIME_EXIT


class UsageError(JaxdiffError, ValueError):
    """A wrong command line: flags, the config file, an override."""

    exit_code = USAGE_EXIT


class ConfigError(JaxdiffError, ValueError):
    """An invalid config field; the message names it (``config.<section>.<field>: ...``)."""

    exit_code = USAGE_EXIT


class MissingInputError(JaxdiffError, FileNotFoundError):
    """An input the job needs does not exist; the message names the command that makes it."""


class IncompatibleCheckpointError(JaxdiffError, ValueError):
    """A checkpoint that cannot serve this config; the message names the differing fields."""


class CheckpointFormatError(IncompatibleCheckpointError):
    """A checkpoint on disk holds other items than this version reads (an older layout)."""


class CorruptDataError(JaxdiffError, ValueError):
    """A file on disk is unreadable, truncated or has another checksum than recorded."""


class RunEnvironmentError(JaxdiffError, OSError):
    """The run's environment failed it: an unwritable workdir, a full disk, a failed write."""


class NonFiniteError(JaxdiffError, FloatingPointError):
    """Non-finite values where finite ones are required (a diverged run, a broken sampler)."""
