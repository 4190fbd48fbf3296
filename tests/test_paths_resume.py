"""User paths are expanded once, before anything reads them; RL stages resume by themselves."""

from __future__ import annotations

import re

import pytest
from omegaconf import OmegaConf

from tests.test_config import _compose


def test_a_home_relative_model_path_that_passes_preflight_loads_in_the_stage(tmp_path, monkeypatch, tokenizer):
    from experiments.preflight import preflight
    from experiments.runtime.cache import ArtifactCache
    from experiments.runtime.context import RunContext
    from experiments.stages.sft import tokenizer_stage

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("LAB_DATA", str(tmp_path / "data"))
    model = tmp_path / "models" / "x"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"")  # preflight looks for the weights; the stage never loads them
    tokenizer.save_pretrained(model)
    lab = OmegaConf.to_object(_compose(["+experiment=sft", "model.name=pretrained", "model.path='~/models/x'",
                                        "pm.val_path='$LAB_DATA/val.jsonl'", "cache_dir='~/cache'"]))
    preflight(lab)
    assert lab.model.path == str(model) and lab.pm.val_path == str(tmp_path / "data" / "val.jsonl")
    assert lab.cache_dir == str(tmp_path / "cache")
    (tmp_path / "run").mkdir()
    ctx = RunContext(lab, tmp_path / "run", ArtifactCache(lab.cache_dir), tracker=None, run_tag="paths")
    assert tokenizer_stage(ctx) == model


@pytest.mark.parametrize("missing, message", [
    ("model.safetensors", "has no weights"), ("tokenizer.json", "has no tokenizer"),
    ("config.json", "has no config.json")])
def test_a_pretrained_model_path_is_checked_as_the_chat_checks_its_model(tmp_path, missing, message):
    # one check of a model directory (alignment.models.model_dir.check_model_dir) for model.path and chat.model
    from experiments.preflight import preflight

    model = tmp_path / "model"
    model.mkdir()
    for name in {"config.json", "model.safetensors", "tokenizer.json"} - {missing}:
        (model / name).write_text("{}")
    lab = OmegaConf.to_object(_compose(["+experiment=sft", "model.name=pretrained", f"model.path={model}",
                                        f"cache_dir={tmp_path / 'cache'}"]))
    with pytest.raises(ValueError, match=rf"^model\.path: {model} {message}"):
        preflight(lab)


def test_an_unset_variable_in_a_path_names_the_key(monkeypatch):
    from experiments.preflight import preflight

    monkeypatch.delenv("NO_SUCH_LAB_VAR", raising=False)
    lab = OmegaConf.to_object(_compose(["+experiment=sft", "data.source=moss_sft",
                                        "data.path='$NO_SUCH_LAB_VAR/x.jsonl'"]))
    with pytest.raises(ValueError, match=r"data\.path: .*NO_SUCH_LAB_VAR"):
        preflight(lab)


def test_rl_stages_resume_by_themselves_and_start_fresh_on_request():
    lab = OmegaConf.to_object(_compose(["+experiment=ppo"]))
    assert lab.resume is True
    assert OmegaConf.to_object(_compose(["+experiment=ppo", "resume=false"])).resume is False


def test_every_method_reads_its_files_in_preflight(tmp_path):
    """Which stages read the preference data and the held-out prompts follows what a stage is
    (``experiments.choices``), not a list of names: every method of the stage table, DPO included,
    has a bad ``pm.data_path`` and ``eval.prompts_path`` refused before anything starts."""
    from experiments.preflight import preflight
    from experiments.stages.chain import METHODS

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"chosen": "only one side"}\n')
    for method in METHODS:
        for key in ("pm.data_path", "eval.prompts_path"):
            lab = OmegaConf.to_object(_compose([f"+experiment={method}", f"{key}={bad}",
                                                f"cache_dir={tmp_path / 'cache'}"]))
            with pytest.raises(ValueError, match="^" + re.escape(key)):
                preflight(lab)
