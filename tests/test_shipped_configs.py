"""Every experiment file under configs/ loads and passes the config check, in its default form
and in each ``:variant`` its docstring shows (``configs/NAME.py:variant``), so a full-scale
config that no CPU test runs cannot rot unnoticed."""
import os
import re

import pytest

from jaxdiff import config as C

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")


def _cases():
    for fname in sorted(os.listdir(CONFIGS)):
        if not fname.endswith(".py"):
            continue
        with open(os.path.join(CONFIGS, fname)) as f:
            text = f.read()
        variants = sorted(set(re.findall(rf"configs/{re.escape(fname)}:(\w+)", text)))
        yield fname, None
        for variant in variants:
            yield fname, variant


def _load(fname, variant):
    path = os.path.join(CONFIGS, fname)
    return C.load_config_file(f"{path}:{variant}" if variant else path)


@pytest.mark.parametrize("fname,variant", list(_cases()))
def test_shipped_config_passes_its_check(fname, variant):
    C.validate(_load(fname, variant))


def test_variants_are_found():
    """The docstring scan sees the variants the distillation configs document."""
    cases = set(_cases())
    assert ("mnist5k_distill.py", "progressive") in cases
    assert ("cifar10_consistency.py", "ct") in cases
