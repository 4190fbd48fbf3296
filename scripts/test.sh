#!/usr/bin/env bash
# Set up, then run the test suite (extra args go to pytest). Without test paths among the args, the
# vLLM tests (tests/test_vllm.py) then run again in the venv of scripts/setup_vllm.sh, where vLLM
# imports (in ./.venv they are skipped); LAB_SKIP_VLLM=1 leaves that step out.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(bash scripts/setup.sh | tail -n 1)
status=0
"$PY" -m pytest "$@" || status=$?
paths=0
for arg in "$@"; do [[ "$arg" == -* ]] || paths=1; done
if [ "$paths" = 0 ] && [ "${LAB_SKIP_VLLM:-0}" != 1 ]; then
  VPY=$(bash scripts/setup_vllm.sh | tail -n 1)
  "$VPY" -m pytest "$@" tests/test_vllm.py || status=$?
fi
exit "$status"
