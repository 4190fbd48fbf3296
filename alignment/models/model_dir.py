"""A local Hugging Face model directory, checked without loading anything: the one check behind
``model.path``, the chat's model and the reward-model judge's directory (nothing is downloaded, so
a checkpoint is always a directory on disk)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def check_model_dir(key: str, value: str | Path | None, not_a_dir: str = "not a directory",
                    weights: bool = True) -> Path:
    """``value`` as a local model directory the lab can load (``config.json``, weights unless
    ``weights=False``, and the model's own tokenizer), resolved; else a ``ValueError`` naming
    ``key`` and the fault (``not_a_dir``: what it says of a value that names no directory)."""
    if not value:
        raise ValueError(f"{key} is required: a local Hugging Face checkpoint directory")
    p = Path(value).expanduser()
    if not p.is_dir():
        raise ValueError(f"{key}: {str(value)!r} is {not_a_dir}")
    if not (p / "config.json").is_file():
        raise ValueError(f"{key}: {value} has no config.json: not a model directory (save_pretrained writes one)")
    if weights and not any((p / w).is_file() for w in WEIGHTS):
        raise ValueError(f"{key}: {value} has no weights ({' or '.join(WEIGHTS[::2])})")
    if not any((p / t).is_file() for t in TOKENIZER_FILES):
        raise ValueError(f"{key}: {value} has no tokenizer ({' or '.join(TOKENIZER_FILES)}); the lab loads "
                         "the model's own")
    return p.resolve()


def model_config(key: str, path: Path) -> dict[str, Any]:
    """``path``'s ``config.json`` as a JSON object; else a ``ValueError`` naming ``key``."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{key}: config.json is not readable JSON ({e})") from e
    if not isinstance(config, dict):
        raise ValueError(f"{key}: config.json is not a JSON object")
    return config
