"""Cache keys follow what a user path holds: an in-place edit of a data file, a re-pointed model
directory or a judge's weights make a new artifact; an unchanged file keeps its artifact wherever it is."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from alignment.content_hash import content_digest, file_digest
from experiments.runtime.cache import Artifact, ArtifactCache
from experiments.runtime.context import RunContext
from tests.builders import write_hh, write_moss_sft
from tests.test_config import _compose


def _ctx(tmp_path: Path, overrides: list[str]) -> RunContext:
    lab = OmegaConf.to_object(_compose(["+experiment=compare", "ray.reuse_actors=false", *overrides]))
    (tmp_path / "run").mkdir(exist_ok=True)
    return RunContext(lab, tmp_path / "run", ArtifactCache(tmp_path / "cache"), tracker=None, run_tag="keys")


def _sft_key(ctx: RunContext, tokenizer_dir: Path) -> str:
    from experiments.stages.sft import sft_payload

    return ctx.cache_key("sft", sft_payload(ctx.cfg, tokenizer_dir))


def _edit_in_place(path: Path) -> None:
    """Change one byte, keeping the size and putting the old mtime back (what a careless copy tool does)."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    i = data.index(b"e")
    data[i:i + 1] = b"E"
    with open(path, "r+b") as f:
        f.write(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def test_an_in_place_data_edit_retrains(tmp_path, world):
    data = write_moss_sft(tmp_path / "sft.jsonl", world, 4)
    ctx = _ctx(tmp_path, ["data.source=moss_sft", f"data.path={data}"])
    tok = tmp_path / "cache" / "tokenizer" / "x"  # a cache artifact: keyed by its own key
    built: list[str] = []

    def stage() -> Artifact:
        key = _sft_key(ctx, tok)

        def build() -> Artifact:
            built.append(key)
            with ctx.cache.put("sft", key, {}) as out:
                (out / "eval.json").write_text("{}")
            return Artifact(ctx.cache.path("sft", key), False, {})

        return ctx.stage("sft", key, "model", build)

    first = stage()
    assert stage().cached and len(built) == 1  # unchanged: reused
    _edit_in_place(data)
    third = stage()
    assert len(built) == 2 and not third.cached and third.path != first.path  # edited: trained again


def test_an_unchanged_file_keeps_its_key_wherever_it_is(tmp_path, world):
    data = write_moss_sft(tmp_path / "a.jsonl", world, 4)
    key = _sft_key(_ctx(tmp_path, ["data.source=moss_sft", f"data.path={data}"]), tmp_path / "tok")
    moved = tmp_path / "sub" / "b.jsonl"
    moved.parent.mkdir()
    os.replace(data, moved)
    assert _sft_key(_ctx(tmp_path, ["data.source=moss_sft", f"data.path={moved}"]), tmp_path / "tok") == key


def test_a_repointed_model_directory_changes_the_key(tmp_path):
    for name, weights in (("v1", b"\x00" * 64), ("v2", b"\x01" * 64)):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text('{"model_type": "llama"}')
        (d / "model.safetensors").write_bytes(weights)
    latest = tmp_path / "latest"
    latest.symlink_to(tmp_path / "v1")
    keys = []
    for target in ("v1", "v2"):
        latest.unlink()
        latest.symlink_to(tmp_path / target)
        ctx = _ctx(tmp_path, ["model.name=pretrained", f"model.path={latest}"])
        keys.append(_sft_key(ctx, latest))
    assert keys[0] != keys[1]
    (tmp_path / "v2" / "model.safetensors").write_bytes(b"\x00" * 64)  # now the same weights as v1
    assert _sft_key(_ctx(tmp_path, ["model.name=pretrained", f"model.path={latest}"]), latest) == keys[0]


@pytest.mark.parametrize("key", ["pm.data_path", "pm.val_path"])
def test_preference_files_are_keyed_by_content(tmp_path, world, key):
    from experiments.stages.pm import pm_payload

    files = {k: write_hh(tmp_path / f"{k}.jsonl", world, 6, seed=i)
             for i, k in enumerate(["pm.data_path", "pm.val_path"])}
    sft = Artifact(tmp_path / "sft", False, {})
    overrides = ["pm.data_format=hh_rlhf"] + [f"{k}={v}" for k, v in files.items()]
    before = _ctx(tmp_path, overrides).cache_key("pm", pm_payload(_ctx(tmp_path, overrides), sft))
    _edit_in_place(files[key])
    ctx = _ctx(tmp_path, overrides)
    assert ctx.cache_key("pm", pm_payload(ctx, sft)) != before


def test_the_judge_reward_model_is_keyed_by_its_weights(tmp_path):
    rm = tmp_path / "rm"
    rm.mkdir()
    (rm / "model.safetensors").write_bytes(b"\x00" * 32)
    ctx = _ctx(tmp_path, [f"judges.rm.path={rm}"])
    payload = {"judge": {"rm": str(rm), "max_length": 512}}
    before = ctx.cache_key("feedback", payload)
    (rm / "model.safetensors").write_bytes(b"\x02" * 32)
    assert ctx.cache_key("feedback", payload) != before


def test_a_remembered_digest_is_never_stale(tmp_path):
    f, memo = tmp_path / "x.txt", tmp_path / "memo"
    f.write_text("hello world")
    first = file_digest(f, memo)
    assert any(memo.iterdir()) and file_digest(f, memo) == first
    _edit_in_place(f)
    assert file_digest(f, memo) != first
    assert file_digest(f, memo) == file_digest(f, None)
    assert content_digest(f, memo) == content_digest(f, None)
