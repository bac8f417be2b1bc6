#!/usr/bin/env bash
# Download, HERE (with network), the wheels that scripts/gpu_run.sh installs on the GPU
# machine (no network there; its image lacks pydantic and its parts, pyDOE3 and submitit:
# /work/.library/device/KINDS.md). Python 3.12, manylinux x86-64, as that machine runs.
# The folder .whl/ is git-ignored; the device call names it in `carry` (docs/gpu.md).
#
#   bash scripts/gpu_wheels.sh            # -> .whl/*.whl and .whl/COMMIT
#
# Versions: the ones the test suite passes with here (pip list of the tests venv). One
# version of each, --no-deps: every needed package is named. typing-extensions is carried
# too (pydantic-core needs a recent one; the image's may be older).
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-python3 -m pip}
PKGS=(
  "pydantic==2.14.4" "pydantic-core==2.50.5" "annotated-types==0.8.0"
  "typing-inspection==0.4.5" "typing-extensions==4.16.0"
  "pyDOE3==1.6.2" "submitit==1.5.4"
)
mkdir -p .whl
rm -f .whl/*.whl
$PIP download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d .whl "${PKGS[@]}"
# the commit the run measures (the GPU machine gets the tree without .git)
{ git rev-parse HEAD; git status --porcelain | grep -q . && echo dirty || echo clean; } \
  > .whl/COMMIT 2>/dev/null || true
ls -la .whl
du -sh .whl
