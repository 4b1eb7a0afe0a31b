#!/usr/bin/env bash
# Downloads into .whl/ the wheels jaxdiff needs that the lent GPU machine's image lacks.
#
# That machine (an H200; /work/.library/device/KINDS.md) reaches no package registry.  Its
# python3 is CPython 3.12 with jax (CUDA), flax, optax, orbax-checkpoint, chex, numpy, scipy,
# matplotlib, pillow, tqdm, scikit-learn and absl-py already installed; what jaxdiff imports on
# top of those travels as wheels, installed there with --no-deps by bench/gpu_session.sh.
# The list was found by importing jaxdiff and running bench/gpu_session.sh --cpu-smoke in a
# Python 3.12 venv holding only the image's packages.  Run from the repository root; .whl/ is
# git-ignored through .git/info/exclude (about 6 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64 --platform any)
# pinned to the versions CI installs (python3 -m pip install -e ".[test]", 2026-12)
WHEELS=(ml_collections==1.1.0 grain==0.2.18 array_record==0.8.6 tensorboardX==2.6.5
        mlxtend==0.25.0 portpicker==1.6.0 dm-tree==0.1.10 immutabledict==4.3.1)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${PLATFORMS[@]}" -d .whl "${WHEELS[@]}"
ls -s .whl
