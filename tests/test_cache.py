"""The artifact cache and atomic writes: nothing half-written is ever visible."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignment.atomic import atomic_dir, write_json, write_text
from experiments.runtime.cache import ArtifactCache, cache_root, config_key


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ALIGNMENT_LAB_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("ALIGNMENT_LAB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "alignment-lab"
    assert cache_root(str(tmp_path / "o")) == tmp_path / "o"


def test_config_key_is_stable_and_sensitive():
    a = config_key("sft", {"lr": 1e-3, "model": {"layers": 4}})
    assert a == config_key("sft", {"model": {"layers": 4}, "lr": 1e-3})
    assert a != config_key("sft", {"lr": 2e-3, "model": {"layers": 4}})
    assert a != config_key("pm", {"lr": 1e-3, "model": {"layers": 4}})


def test_failed_artifact_leaves_nothing_behind(tmp_path):
    cache = ArtifactCache(tmp_path)
    with pytest.raises(RuntimeError):
        with cache.put("sft", "k1", {"x": 1}) as tmp:
            (tmp / "weights.bin").write_bytes(b"partial")
            raise RuntimeError("killed mid-write")
    assert cache.get("sft", "k1") is None
    assert list((tmp_path / "sft").iterdir()) == []
    with cache.put("sft", "k1", {"x": 1}) as tmp:
        (tmp / "weights.bin").write_bytes(b"full")
    hit = cache.get("sft", "k1")
    assert hit is not None and (hit / "weights.bin").read_bytes() == b"full"
    assert '"x": 1' in (hit / "lab_artifact.json").read_text()


def test_a_concurrent_twin_artifact_wins_quietly(tmp_path):
    with atomic_dir(tmp_path / "a") as first:
        (first / "f").write_text("1")
        with atomic_dir(tmp_path / "a") as second:
            (second / "f").write_text("2")
    assert (tmp_path / "a" / "f").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_a_run_without_the_cache_replaces_the_artifact(tmp_path):
    """``use_cache=false`` retrains; what it made must be what later stages load."""
    for replace, expect in ((False, "old"), (True, "new")):
        cache = ArtifactCache(tmp_path / str(replace), replace=replace)
        for text in ("old", "new"):
            with cache.put("sft", "k", {}) as tmp:
                (tmp / "w").write_text(text)
        assert (cache.get("sft", "k") / "w").read_text() == expect
        assert sorted(p.name for p in (tmp_path / str(replace) / "sft").iterdir()) == ["k"]  # no temp dirs left


def test_atomic_text_and_json(tmp_path):
    write_text(tmp_path / "d" / "x.txt", "hello")
    write_json(tmp_path / "d" / "y.json", {"b": 1, "a": "中"})
    assert (tmp_path / "d" / "x.txt").read_text() == "hello"
    assert (tmp_path / "d" / "y.json").read_text().startswith('{\n  "a": "中"')
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["x.txt", "y.json"]


def _record_durability(monkeypatch) -> list[tuple[str, str]]:
    """Every fsync (with the path of the synced descriptor) and every rename, in order."""
    import os

    events: list[tuple[str, str]] = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", str(dst)))
        return real_replace(src, dst)

    def rename(src, dst):
        events.append(("rename", str(dst)))
        return real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)
    return events


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self/fd"), reason="reads /proc/self/fd (Linux)")
def test_atomic_writes_fsync_the_file_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    events = _record_durability(monkeypatch)
    write_text(tmp_path / "manifest.json", "{}")
    renamed = events.index(("rename", str(tmp_path / "manifest.json")))
    assert any(kind == "fsync" and ".manifest.json." in path for kind, path in events[:renamed])  # the temp file
    assert ("fsync", str(tmp_path)) in events[renamed:]  # the directory holding the new name

    events.clear()
    with atomic_dir(tmp_path / "artifact") as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "weights.bin").write_bytes(b"\0" * 64)
    renamed = events.index(("rename", str(tmp_path / "artifact")))
    synced = [path for kind, path in events[:renamed] if kind == "fsync"]
    assert any(p.endswith("/sub/weights.bin") for p in synced) and any(p.endswith("/sub") for p in synced)
    assert ("fsync", str(tmp_path)) in events[renamed:]


class _SavingGroup:
    """A role group whose ``save`` writes a weights file, or fails (a rank lost while saving)."""

    def __init__(self, fail: bool = False):
        self.fail = fail

    def call(self, method, path):
        assert method == "save"
        if self.fail:
            raise RuntimeError("rank 0 died while saving")
        (Path(path) / "weights.bin").write_bytes(b"trained")


def test_commit_trained_drops_the_checkpoints_only_once_the_artifact_is_saved(tmp_path):
    from experiments.runtime.loop import Checkpoints, commit_trained

    cache = ArtifactCache(tmp_path / "cache")
    ckpts = Checkpoints(tmp_path / "cache" / "dpo-checkpoints" / "k", every=1)
    (ckpts.root / "step_000001").mkdir(parents=True)
    with pytest.raises(RuntimeError, match="died while saving"):
        commit_trained(cache, "dpo", "k", {"x": 1}, _SavingGroup(fail=True), {"loss": 0.5}, "policy", ckpts)
    assert cache.get("dpo", "k") is None and (ckpts.root / "step_000001").is_dir()  # a rerun resumes from it
    art = commit_trained(cache, "dpo", "k", {"x": 1}, _SavingGroup(), {"loss": 0.5}, "policy", ckpts)
    assert art.path == cache.get("dpo", "k") and not art.cached and art.info == {"loss": 0.5}
    assert (art.path / "weights.bin").read_bytes() == b"trained"
    assert not ckpts.root.exists()
