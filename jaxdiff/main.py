"""Command-line entry point: ``jaxdiff --config=configs/X.py --workdir=DIR --mode=train``.

Modes: train, sample, eval, train_classifier, classify; several run in order when comma-separated
(``--mode=train,sample,eval`` is the README's main job).

Config overrides use ml_collections' syntax: ``--config.train.num_steps=200``.  A config error is
reported as one line naming the field, before anything is compiled, with exit status 2.
"""
from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

MODES = ("train", "sample", "eval", "train_classifier", "classify")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
_MODE = flags.DEFINE_list("mode", ["train"], f"What to run, comma-separated, in order: {MODES}.")


def _main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save INFO lines off the console
    unknown = [m for m in _MODE.value if m not in MODES]
    if unknown or not _MODE.value:
        raise app.UsageError(f"--mode: unknown {unknown}; choose from {MODES}")
    from jaxdiff import classify_job, evaluate, sample, train  # heavy imports after parsing

    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/mnist5k.py")
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required")
    try:
        jobs = {"train": train.train, "sample": sample.sample_job,
                "eval": evaluate.evaluate_job,
                "train_classifier": lambda cfg, _: evaluate.train_feature_network(cfg),
                "classify": classify_job.classify_job}
        for mode in _MODE.value:
            jobs[mode](config, _WORKDIR.value)
    except ValueError as e:
        if str(e).startswith("config."):
            print(f"jaxdiff: error: {e}", file=sys.stderr)
            sys.exit(2)
        raise


def run():
    """Console-script entry (``jaxdiff``)."""
    app.run(_main)


if __name__ == "__main__":
    run()
