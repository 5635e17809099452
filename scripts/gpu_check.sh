#!/usr/bin/env bash
# The GPU acceptance check (scripts/gpu_check.py): ~10 minutes on one GPU, one JSON of figures
# and a PASS / FAIL / SKIP line per check. Exits 2 at once on a machine without CUDA.
#   bash scripts/gpu_check.sh [OUT_DIR]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PY" scripts/gpu_check.py "$@"
