#!/usr/bin/env bash
# The GPU path's device check, one command: bench/gpu_check.sh OUT_DIR [options of bench/gpu_check.py]
#   bench/gpu_check.sh --dry-run      # no GPU needed: environment, configs, synthetic data, the plan
# Sized for one H100/H200 (about 5 minutes, budget 8). Writes OUT_DIR/gpu_check.json and
# OUT_DIR/gpu_check.txt. Exits 1 with one line when no CUDA device is visible.
# Python packages the machine lacks travel as wheels in .whl/ (installed here into /tmp/site);
# PYTHON picks the interpreter (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PYTHONHASHSEED=0 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$PY" bench/gpu_check.py "$@"
