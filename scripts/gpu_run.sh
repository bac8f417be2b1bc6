#!/usr/bin/env bash
# Issue #23 in one command on a CUDA machine (docs/gpu.md): installs what is missing from
# the carried wheels (.whl/, made by scripts/gpu_wheels.sh; no network there), then runs
# scripts/gpu_run.py: parity on the device, the seed timeline, legacy/seed/best/float, the
# reports, a summary printed last. Every file goes under $OUT (default runs/gpu_run).
#
#   bash scripts/gpu_run.sh --smoke                      # tiny sizes; prints the plan
#   bash scripts/gpu_run.sh --blocks 3 --steps 12 ...    # the measurement (the plan's line)
#   OUT=/tmp/x bash scripts/gpu_run.sh --smoke --device cpu --models ivit_micro,swin_micro \
#       --img-size 32 --batch-size 4                     # the same path on a CPU (tests)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_run}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
need="import pydantic, pydantic_core, pyDOE3, submitit"
if ! "$PY" -c "$need" 2>/dev/null; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    site=${QVIT_WHEEL_SITE:-/tmp/qvit_site}
    echo "gpu_run.sh: installing $(ls .whl/*.whl | wc -l) carried wheels into $site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$site" .whl/*.whl || { echo "gpu_run.sh: wheel install failed"; exit 3; }
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  "$PY" -c "$need" || {
    echo "gpu_run.sh: pydantic/pyDOE3/submitit missing and no usable .whl/:" \
         "run scripts/gpu_wheels.sh here and carry .whl"; exit 3; }
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch, timm, pandas, pyarrow, seaborn, scipy, statsmodels" || {
  echo "gpu_run.sh: a package the harness needs is missing"; exit 3; }
exec "$PY" scripts/gpu_run.py --out "$OUT" "$@"
