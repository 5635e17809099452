#!/usr/bin/env bash
# Set up (idempotent) and run the main job: vlarl quickstart [--smoke] [overrides].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec .venv/bin/vlarl quickstart "$@"
