"""Search in the sampling job (``config.search``): one random-search candidate gives the plain
job's samples bit for bit, a tree-search job killed after a shard resumes to the same samples,
the protocol and directory name carry the search, and bad search configs fail naming the field.
The verifier is the digits feature network, trained briefly into a temporary cache."""
import os

import numpy as np
import pytest

from jaxdiff import config as C
from jaxdiff.errors import ConfigError
from jaxdiff.jobs import sample
from jaxdiff.jobs import samples_io as IO
from jaxdiff.search.config import search_config
from tests.sample_job_common import tiny_checkpoint, tiny_config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("search_job")
    old = os.environ.get("JAXDIFF_CACHE")
    os.environ["JAXDIFF_CACHE"] = str(root / "cache")
    yield tiny_checkpoint(str(root / "run"), 0)
    if old is None:
        os.environ.pop("JAXDIFF_CACHE")
    else:
        os.environ["JAXDIFF_CACHE"] = old


def _config(name=None, search="none", **fields):
    cfg = tiny_config()
    cfg.eval.classifier_steps = 20               # the verifier: a briefly trained digits CNN
    cfg.sample.update(dict(num_samples=6, shard_size=3, sampler="dpmpp_2m", steps=4))
    cfg.sample.out_name = name or ""
    cfg.search = search_config(search, **fields)
    return cfg


def test_one_random_candidate_is_the_plain_job(workdir):
    plain = sample.sample_job(_config("plain"), workdir)
    one = sample.sample_job(_config("one", "random", candidates=1), workdir)
    a, la, _ = IO.load_samples(plain["out_dir"])
    b, lb, proto = IO.load_samples(one["out_dir"])
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert proto["search"]["name"] == "random" and proto["search"]["candidates"] == 1
    assert one["search_nfe_per_sample"] == 4 and plain["search_nfe_per_sample"] is None


def test_tree_search_job_resumes_to_the_same_samples(workdir, monkeypatch):
    fields = dict(rollouts=3, branch_every=2)
    full = sample.sample_job(_config(None, "dts", **fields), workdir)
    assert os.path.basename(full["out_dir"]).endswith("-dts-branch_every2-rollouts3")
    assert 4 <= full["search_nfe_per_sample"] <= 12
    real_write, calls = IO.write_shard, []

    def dying_write(path, *arrays):
        if calls:
            raise KeyboardInterrupt("killed after the first shard")
        calls.append(path)
        real_write(path, *arrays)

    cfg = _config("killed", "dts", **fields)
    monkeypatch.setattr(IO, "write_shard", dying_write)
    with pytest.raises(KeyboardInterrupt):
        sample.sample_job(cfg, workdir)
    monkeypatch.setattr(IO, "write_shard", real_write)
    resumed = sample.sample_job(cfg, workdir)
    np.testing.assert_array_equal(IO.load_samples(resumed["out_dir"])[0],
                                  IO.load_samples(full["out_dir"])[0])
    # the plain samples differ: the search changed them
    plain = IO.load_samples(sample.sample_job(_config("plain"), workdir)["out_dir"])[0]
    assert not np.array_equal(plain, IO.load_samples(full["out_dir"])[0])


def test_path_search_with_the_self_supervised_verifier_in_the_job(workdir):
    """Paths on 4 dpmpp_2m steps, start 2, f = 1, b = 2: segments 0-2 (2 steps), 1-3 (2), 2-4
    (2); 2 paths and 2 x 2 branches, one prediction per noisy end, one verifier call per score:
    2 (2 + 1 + 1) + 4 (2 + 1 + 1) + 4 (2 + 0 + 1) = 36 NFE per sample."""
    cfg = _config(None, "paths", paths=2, branches=2, start=2, forward=1, backward=2,
                  verifier="feature_similarity")
    cfg.sample.num_samples = 3                                     # one shard
    out = sample.sample_job(cfg, workdir)
    assert out["search_nfe_per_sample"] == 36
    assert out["out_dir"].endswith("-paths-backward2-branches2-forward1-paths2-start2-"
                                   "feature_similarity")
    x, labels, proto = IO.load_samples(out["out_dir"])
    assert x.shape[0] == 3 and np.all(np.isfinite(x))
    assert proto["search"]["verifier"] == "feature_similarity"


@pytest.mark.parametrize("search, fields, sampler, match", [
    ("mcts", {}, "dpmpp_2m", "config.search.name: unknown search 'mcts'"),
    ("random", dict(candidates=0), "dpmpp_2m", "config.search.candidates: must be >= 1"),
    ("random", {}, "ddpm", "config.sample.sampler: search: the sampler must be deterministic"),
    ("dts", dict(lam=-1.0), "ddpm", "config.search.lam: must be >= 0.0"),
    ("dts_star", dict(c_uct=0.0), "ddpm", "config.search.c_uct: must be > 0.0"),
    ("smc", dict(eta=0.0), "ddpm", "config.search.eta: must be > 0.0"),
    ("dts", dict(verifier="clip"), "ddpm", "config.search.verifier: unknown 'clip'"),
    ("random", dict(verifier_sigma=0.0), "dpmpp_2m", "config.search.verifier_sigma: must be > 0"),
    ("paths", dict(forward=4, backward=4), "dpmpp_2m", "config.search.backward: must exceed"),
    ("paths", dict(start=30), "dpmpp_2m", r"config.search.start: a grid point in \[1, "),
], ids=["name", "candidates", "sampler", "lam", "c_uct", "eta", "verifier", "verifier_sigma",
        "backward", "start"])
def test_bad_search_config_names_the_field(search, fields, sampler, match):
    cfg = tiny_config()
    cfg.sample.sampler = sampler
    if search == "mcts":
        cfg.search.name = "mcts"
    else:
        cfg.search = search_config(search, **fields)
    with pytest.raises(ConfigError, match=match):
        C.validate(cfg, num_classes=10)


def test_search_needs_a_conditional_model_and_known_fields():
    cfg = tiny_config()
    cfg.search = search_config("dts")
    with pytest.raises(ConfigError, match="config.search.verifier: the classifier verifier"):
        C.validate(cfg, num_classes=0)
    cfg.search = search_config("dts", verifier="feature_similarity")   # needs no class
    C.validate(cfg, num_classes=0)
    with pytest.raises(ConfigError, match="config.search.particles: search 'dts' has no such"):
        search_config("dts", particles=4)


def test_a_field_of_a_search_switched_on_the_command_line_says_where_to_set_it(tmp_path):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-m", "jaxdiff.main", "--config=configs/digits.py",
         f"--workdir={tmp_path / 'run'}", "--mode=sample", "--config.search.name=dts",
         "--config.search.lam=2"], cwd=root, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "jaxdiff: error: --config.search.lam: config.search has no field 'lam'; "
        "--config.search.name adds its component's fields after the flags are read, so set "
        "them in a config file that selects it"]


def test_sections_that_draw_different_samples_get_different_directories():
    from jaxdiff.jobs.samples_io import _search_tag

    def tag(name, **fields):
        return _search_tag(search_config(name, **fields).to_dict())

    assert tag("dts", rollouts=3, branch_every=2) == "-dts-branch_every2-rollouts3"
    assert tag("random", candidates=4) == "-random-candidates4"
    assert tag("random", candidates=4, verifier="feature_similarity") == \
        "-random-candidates4-feature_similarity"
    assert tag("smc", lam=2.0) == "-smc-lam2-particles4"
    assert tag("zero_order", iterations=0) == "-zero_order-iterations0-neighbours_per_step2"
    assert tag("dts_star", max_backup=False) == "-dts_star-max_backupFalse-rollouts8"
