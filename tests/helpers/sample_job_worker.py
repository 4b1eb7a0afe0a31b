"""Runs the sampling job of a tiny digits config (used by tests/test_sample_job.py).

usage: sample_job_worker.py WORKDIR OUT_NAME NUM_SAMPLES SHARD_SIZE
"""
import sys

from tests.sample_job_common import tiny_config  # noqa: E402

from jaxdiff.jobs import sample

workdir, out_name, n, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cfg = tiny_config()
cfg.sample.out_name = out_name
cfg.sample.num_samples = n
cfg.sample.shard_size = size
sample.sample_job(cfg, workdir)
