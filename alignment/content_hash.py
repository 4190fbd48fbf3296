"""Content digests of user inputs: a file by its bytes, a directory (a model checkpoint, a tokenizer)
by the bytes of every file in it, so a cache key follows what a path holds, not its name.

Editing a data file in place or re-pointing a ``latest`` checkpoint link changes the digest; moving an
unchanged file does not. Hashing a checkpoint's weights takes seconds per GiB, so each file's digest is
remembered in ``memo_dir`` under the file's identity: its resolved path, device, inode, size, mtime and
ctime in nanoseconds. A write changes mtime and ctime (``touch -d`` can set mtime back, never ctime),
and a replacement by rename changes the inode, so a remembered digest is only reused for the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from alignment.atomic import write_json

CHUNK = 1 << 20


def expand(path: str | os.PathLike) -> Path:
    """``path`` with ``~`` and ``$VARS`` expanded (every user path of the lab goes through this)."""
    return Path(os.path.expandvars(os.path.expanduser(os.fspath(path))))


def _identity(path: Path, st: os.stat_result) -> str:
    return f"{path}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"


def file_digest(path: str | os.PathLike, memo_dir: str | os.PathLike | None = None) -> str:
    """The sha256 of the file's bytes (hex), remembered in ``memo_dir`` by the file's identity."""
    real = Path(os.path.realpath(expand(path)))
    st = real.stat()
    memo = None
    if memo_dir is not None:
        ident = _identity(real, st)
        memo = Path(memo_dir) / f"{hashlib.sha256(ident.encode()).hexdigest()[:32]}.json"
        try:
            saved = json.loads(memo.read_text())
            if saved.get("identity") == ident:
                return saved["sha256"]
        except (OSError, ValueError, KeyError, AttributeError):
            pass
    h = hashlib.sha256()
    with open(real, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    if memo is not None and _identity(real, real.stat()) == ident:  # unchanged while it was read
        write_json(memo, {"identity": ident, "sha256": digest})
    return digest


def dir_digest(path: str | os.PathLike, memo_dir: str | os.PathLike | None = None) -> str:
    """The sha256 over every regular file under the directory (weights, config, tokenizer files), each
    by its relative path and its bytes; hidden entries (``.git``, ``.cache``) are left out."""
    root = Path(os.path.realpath(expand(path)))
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            full = Path(dirpath) / name
            if not full.is_file():
                continue
            rel = full.relative_to(root).as_posix()
            h.update(f"{rel}\0{file_digest(full, memo_dir)}\n".encode())
    return h.hexdigest()


def content_digest(path: str | os.PathLike, memo_dir: str | os.PathLike | None = None) -> str:
    """``sha256:<hex>`` of a file's or a directory's content (:func:`file_digest`, :func:`dir_digest`)."""
    p = expand(path)
    if p.is_dir():
        return f"sha256:dir:{dir_digest(p, memo_dir)}"
    return f"sha256:{file_digest(p, memo_dir)}"
