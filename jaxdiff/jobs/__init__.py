"""The jobs: siblings over ``spec`` (the run spec, model-only restores) and ``samples_io`` (the
sample shards), each registered in ``JOBS`` under its ``--mode`` name.  A job never imports
another job.

Importing this package registers every job (and the config sections they own).
"""
from jaxdiff.jobs import classify, evaluate, sample, train, train_guidance  # noqa: F401  (register the jobs)
from jaxdiff.jobs.spec import JOBS, register_job

__all__ = ["JOBS", "register_job"]
