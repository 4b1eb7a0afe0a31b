"""The workdir's config check: which stored configs can serve a config."""
from __future__ import annotations

import json
import os

import pytest

from jaxdiff.config import load_config_file
from jaxdiff.errors import IncompatibleCheckpointError
from jaxdiff.jobs import rundir
from tests.helpers.cli import DIGITS


def _workdir_trained_before(tmp_path, config, missing: str) -> str:
    """A workdir with one (empty) checkpoint step whose config.json lacks the dotted field
    ``missing``, as one written before that field existed."""
    stored = rundir.config_dict(config)
    *parents, leaf = missing.split(".")
    node = stored
    for name in parents:
        node = node[name]
    del node[leaf]
    wd = str(tmp_path / "wd")
    os.makedirs(os.path.join(wd, "checkpoints", "6"))
    with open(os.path.join(wd, rundir.CONFIG_FILE), "w") as f:
        json.dump(stored, f)
    return wd


def test_a_field_added_later_at_its_default_is_compatible(tmp_path):
    config = load_config_file(DIGITS)
    wd = _workdir_trained_before(tmp_path, config, "model.exit_heads")
    rundir.check_compatible(wd, config, "restore")
    rundir.check_compatible(wd, config, "train")


def test_a_field_added_later_at_another_value_is_not(tmp_path):
    config = load_config_file(DIGITS)
    wd = _workdir_trained_before(tmp_path, config, "model.exit_heads")
    config.model.exit_heads = True
    with pytest.raises(IncompatibleCheckpointError, match=r"model\.exit_heads='<absent>' "
                                                          r"\(config has True\)"):
        rundir.check_compatible(wd, config, "restore")


def test_a_changed_field_is_not(tmp_path):
    config = load_config_file(DIGITS)
    wd = _workdir_trained_before(tmp_path, config, "model.exit_heads")
    config.model.base_channels = 2 * config.model.base_channels
    with pytest.raises(IncompatibleCheckpointError, match=r"model\.base_channels"):
        rundir.check_compatible(wd, config, "restore")


def test_learning_rate_multipliers_define_a_resumed_run_but_not_the_model(tmp_path):
    """With multipliers the optimizer state has one more element: a run trained without them
    cannot resume with them (one line naming the field), but its model serves any config."""
    import ml_collections

    config = load_config_file(DIGITS)
    wd = _workdir_trained_before(tmp_path, config, "model.exit_heads")
    config.optim.lr_multipliers = ml_collections.ConfigDict(dict(class_table=50.0))
    with pytest.raises(IncompatibleCheckpointError,
                       match=r"optim\.lr_multipliers\.class_table='<absent>' \(config has 50\.0\)"):
        rundir.check_compatible(wd, config, "train")
    rundir.check_compatible(wd, config, "restore")
