"""Command-line entry point: ``jaxdiff --config=configs/X.py --workdir=DIR --mode=train``.

Modes are the registered jobs (``jaxdiff.jobs.JOBS``: train, sample, eval, train_classifier,
classify, and any a config's ``imports`` register); several run in order when comma-separated
(``--mode=train,sample,eval`` is the README's main job).  ``jaxdiff reproduce NAME`` (or
``--list``) runs a method's small reproduction (``jaxdiff.reproduce``).

Config overrides use ml_collections' syntax: ``--config.train.num_steps=200``.  A config error
(``jaxdiff.errors.ConfigError``) is reported as one line naming the field, before anything is
compiled, with exit status 2; other anticipated failures (``jaxdiff.errors.JaxdiffError``, e.g.
a checkpoint of an earlier layout) as one line with exit status 1.
"""
from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
_MODE = flags.DEFINE_list("mode", ["train"], "What to run, comma-separated, in order: the "
                          "registered jobs (train, sample, eval, train_classifier, classify).")


def _main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save INFO lines off the console
    from jaxdiff import config as C  # heavy imports after parsing
    from jaxdiff.errors import JaxdiffError
    from jaxdiff.jobs import JOBS

    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/mnist5k.py")
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required")
    try:
        C.ensure_registered(config)
        unknown = [m for m in _MODE.value if m not in JOBS]
        if unknown or not _MODE.value:
            raise app.UsageError(f"--mode: unknown {unknown}; choose from {list(JOBS)}")
        for mode in _MODE.value:
            JOBS[mode](config, _WORKDIR.value)
    except JaxdiffError as e:
        print(f"jaxdiff: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


def run():
    """Console-script entry (``jaxdiff``): ``jaxdiff reproduce ...`` or a job."""
    if sys.argv[1:2] == ["reproduce"]:
        from jaxdiff import reproduce

        sys.exit(reproduce.main(sys.argv[2:]))
    app.run(_main)


if __name__ == "__main__":
    run()
