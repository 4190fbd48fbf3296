#!/usr/bin/env bash
# Set up, then run the test suite (extra args go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(bash scripts/setup.sh | tail -n 1)
exec "$PY" -m pytest "$@"
