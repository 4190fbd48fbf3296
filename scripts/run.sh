#!/usr/bin/env bash
# Set up, then run the lab's main job on the built-in default (extra args go to run.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(bash scripts/setup.sh | tail -n 1)
exec "$PY" run.py +experiment=pat "$@"
