#!/usr/bin/env bash
# The GPU check in one call on a lent machine (see benchmarks/gpu_check.py's docstring):
# installs carried wheels (.whl/, e.g. ml_collections) where none are installed, then runs
# the check unbuffered and keeps its log in $OUT when the device tool provides one.
set -o pipefail
cd "$(dirname "$0")/.."
# The interpreter: python3 on the lent machine (the one that holds PyTorch); the test sets PYTHON.
python="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" > /dev/null; then
  # --no-deps: the wheels are pure Python and their needs (absl-py, PyYAML) are installed there.
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gpu_check_site .whl/*.whl \
    && export PYTHONPATH="/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}" \
    || echo "gpu_check.sh: installing .whl/*.whl failed; running without them"
fi
export PYTHONUNBUFFERED=1
log="${OUT:-/tmp}/gpu_check.log"
"$python" benchmarks/gpu_check.py "$@" 2>&1 | tee "$log"
