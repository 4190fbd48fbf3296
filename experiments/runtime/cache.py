"""The artifact cache: stage outputs keyed by the hash of the config that made them.

Later stages and sweeps reuse an artifact instead of retraining it. The cache lives in
``$ALIGNMENT_LAB_CACHE`` (default ``${XDG_CACHE_HOME:-~/.cache}/alignment-lab``); each entry
is a directory ``<stage>/<key>`` written atomically, with the config that made it in
``lab_artifact.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignment.atomic import atomic_dir, write_json
from alignment.content_hash import content_digest, expand

CACHE_VERSION = 1  # bump when an artifact's meaning changes without a config change
MANIFEST = "lab_artifact.json"
INFO_FILE = "eval.json"  # what the stage reported (evaluation, training stats)


def cache_root(override: str | None = None) -> Path:
    if override:
        return Path(override).expanduser()
    env = os.environ.get("ALIGNMENT_LAB_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "alignment-lab"


def config_key(stage: str, payload: dict[str, Any]) -> str:
    """A stable hash of ``payload`` (a plain, JSON-able config subset)."""
    blob = json.dumps({"stage": stage, "v": CACHE_VERSION, "cfg": payload}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


PATH_KEYS = frozenset({"tokenizer", "rm", "model", "sft", "pm"})
"""Payload entries that hold a path besides those named ``*path`` (``tokenizer``, the judge's ``rm``...)."""
HASHES = "hashes"  # the cache's memo of file digests (alignment.content_hash)


def content_addressed(payload: Any, cache_root: str | os.PathLike) -> Any:
    """``payload`` with every user path in it replaced by the digest of what it holds
    (``alignment.content_hash``): a string under a key named ``*path`` or in :data:`PATH_KEYS`, or any
    string with a ``/`` or a leading ``~``, that names an existing file or directory outside the cache.
    An artifact of the cache is left as its path (its own key already says what made it), as is a
    path that does not exist, so a payload without user files keeps its key."""
    root = Path(os.path.realpath(Path(cache_root).expanduser()))

    def digest(key: str | None, value: str) -> str:
        named = key is not None and (key.endswith("path") or key in PATH_KEYS)
        if not (named or "/" in value or value.startswith("~")) or "\n" in value or len(value) > 4096:
            return value
        try:
            p = expand(value)
            if not p.exists():
                return value
            real = Path(os.path.realpath(p))
        except (OSError, ValueError):
            return value
        if real == root or root in real.parents:
            return value
        return content_digest(real, root / HASHES)

    def walk(key: str | None, node: Any) -> Any:
        if isinstance(node, dict):
            return {k: walk(k, v) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [walk(key, v) for v in node]
        if isinstance(node, str):
            return digest(key, node)
        return node

    return walk(None, payload)


class ArtifactCache:
    def __init__(self, root: str | os.PathLike, replace: bool = False):
        """``replace``: a new artifact overwrites one with the same key (a run with
        ``use_cache=false``, which retrains what it could have reused); otherwise the first wins."""
        self.root = Path(root)
        self.replace = replace

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def get(self, stage: str, key: str) -> Path | None:
        """The artifact's directory if it is complete, else ``None``."""
        p = self.path(stage, key)
        return p if (p / MANIFEST).is_file() else None

    @contextmanager
    def put(self, stage: str, key: str, payload: dict[str, Any]) -> Iterator[Path]:
        """Yield a temp dir to fill; it becomes the artifact (with its manifest) on success."""
        with atomic_dir(self.path(stage, key), replace=self.replace) as tmp:
            yield tmp
            write_json(tmp / MANIFEST, {"stage": stage, "key": key, "config": payload})



@dataclass
class Artifact:
    """A stage's output directory, whether it came from the cache, and what the stage reported."""

    path: Path
    cached: bool
    info: dict[str, Any]


def reuse(cache: ArtifactCache, stage: str, key: str, what: str) -> Artifact | None:
    """The cached artifact of ``stage`` with ``key``, announced on stdout, or ``None``."""
    hit = cache.get(stage, key)
    if hit is None:
        return None
    print(f"{stage.upper()}: reusing cached {what} {hit}", flush=True)
    return Artifact(hit, True, json.loads((hit / INFO_FILE).read_text()))


def commit(cache: ArtifactCache, stage: str, key: str, payload: dict[str, Any], group: Any,
           info: dict[str, Any], what: str, files: dict[str, Any] | None = None) -> Artifact:
    """Save the model held by ``group`` (rank 0 writes), ``info`` and ``files`` (``{name: JSON-able}``,
    written beside them) as the artifact, atomically."""
    with cache.put(stage, key, payload) as tmp:
        group.call("save", str(tmp))
        write_json(tmp / INFO_FILE, info)
        for name, body in (files or {}).items():
            write_json(tmp / name, body)
    path = cache.path(stage, key)
    print(f"{stage.upper()}: {what} written to {path}", flush=True)
    return Artifact(path, False, info)
