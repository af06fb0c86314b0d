#!/usr/bin/env bash
# Download into .whl/ the wheels that the rented GPU image (Python 3.12, x86-64; it has
# jax, flax, optax, orbax, chex, torch, einops, matplotlib, ...) lacks, for
# benchmarks/gpu_suite.sh to install offline with --no-index --no-deps.
#
#   bash benchmarks/make_wheels.sh            # then: ls .whl/
#
# --no-deps: every needed package is named below (titans-pytorch==0.5.5's own
# dependencies and grain's included); .whl/ is git-ignored.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PYVER=${WHEEL_PYTHON_VERSION:-3.12}
rm -rf .whl && mkdir -p .whl          # one version of each: two stop the install
PKGS=(
  # the training stack's imports missing there
  grain tensorboardX
  # grain's own dependencies missing there
  array-record portpicker
  # the PyTorch reference and its dependencies (memory_bench.py)
  titans-pytorch==0.5.5 assoc-scan axial-positional-embedding einx hyper-connections
  rotary-embedding-torch tensordict x-transformers
  # their dependencies missing there (Requires-Dist of each wheel vs the image's list)
  accelerated-scan frozendict loguru pyvers torch-einops-utils
)
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
for pkg in "${PKGS[@]}"; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp "${PLATFORMS[@]}" -d .whl "$pkg"
done
ls -1 .whl
du -sh .whl
