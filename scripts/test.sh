#!/usr/bin/env bash
# Set up, then run the test suite (extra args go to pytest). Without test paths among the args, the
# vLLM tests (tests/test_vllm.py) then run again in the venv of scripts/setup_vllm.sh, where vLLM
# imports (in ./.venv they are skipped); LAB_SKIP_VLLM=1 leaves that step out.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(bash scripts/setup.sh | tail -n 1)
status=0
"$PY" -m pytest "$@" || status=$?
paths=0  # test paths (a file, a directory, a node id) among the args: run what they name only
for arg in "$@"; do [[ "$arg" == -* ]] || { [ -e "${arg%%::*}" ] && paths=1; }; done
if [ "$paths" = 0 ] && [ "${LAB_SKIP_VLLM:-0}" != 1 ]; then
  if VPY=$(bash scripts/setup_vllm.sh | tail -n 1); then
    "$VPY" -m pytest "$@" tests/test_vllm.py || status=$?
  else
    echo "scripts/test.sh: setting up the vLLM venv failed (scripts/setup_vllm.sh); its tests did not run" >&2
    status=1
  fi
fi
exit "$status"
