"""jaxdiff's error types: what the command line reports as one line.

``JaxdiffError`` is the base of every anticipated failure whose message says what is wrong and
how to fix it; the CLI prints it as ``jaxdiff: error: <message>`` without a traceback.

  ConfigError             a config field is invalid; the message starts with the field
                          (``config.optim.lr: must be > 0, got -1.0``); exit status 2, before
                          anything is compiled.
  CheckpointFormatError   a checkpoint on disk has another layout than this version reads;
                          exit status 1.

Both subclass ValueError too, so library callers that catch ValueError keep working.
"""
from __future__ import annotations


class JaxdiffError(Exception):
    """An anticipated failure whose message names the cause and the fix."""

    exit_code = 1


class ConfigError(JaxdiffError, ValueError):
    """An invalid config field; the message names it (``config.<section>.<field>: ...``)."""

    exit_code = 2


class CheckpointFormatError(JaxdiffError, ValueError):
    """A checkpoint on disk holds other items than this version reads (an older layout)."""
