#!/usr/bin/env bash
# Set up (idempotent) and run the test suite. This is the README's test command.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
# Test files run in parallel processes (pytest-xdist), one per core up to 4; each uses one
# intra-op thread (tests/conftest.py), so they share the cores without oversubscribing them.
# VLARL_TEST_WORKERS=N sets the count; 0 runs every test in this one process.
n="$(nproc)"
workers="${VLARL_TEST_WORKERS:-$(( n < 4 ? n : 4 ))}"
exec .venv/bin/python -m pytest -n "$workers" --dist worksteal "$@"
