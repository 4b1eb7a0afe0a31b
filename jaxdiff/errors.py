"""jaxdiff's error types: what the command line reports as one line.

``ConfigError``: a config field is invalid; the message starts with the field
(``config.optim.lr: must be > 0, got -1.0``).  The CLI prints it as
``jaxdiff: error: <message>`` and exits with status 2, before anything is compiled.
It subclasses ValueError, so library callers that catch ValueError keep working.
"""
from __future__ import annotations


class ConfigError(ValueError):
    """An invalid config field; the message names it (``config.<section>.<field>: ...``)."""
