"""The chat command (``+experiment=chat``): in a pseudo-terminal with a tiny model that learned to call
the calculator, the plugin fields shown or hidden, ``/reset``, and ``chat.model`` resolved from the
cache with the chain's keys or failing before any model loads, naming the key."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from alignment.chat_format import Conversation, Section, ToolSwitch, Turn, meta_instruction, render
from experiments.commands.chat import ChatModel, NotCached, banner, chat, plugin_fields, plugin_lines, resolve_model
from experiments.config import register
from tests.lab import ROOT

register()
QUESTION = "What is 2+3?"
THOUGHTS, COMMANDS, REPLY = "I should calculate it.", 'Calculate("2+3")', "2+3 is 5."
RESULTS = 'Calculate("2+3") => "5"'  # what alignment.tools writes for the call
ENV = dict(os.environ, WANDB_MODE="offline", PYTHONPATH=str(ROOT), TERM="dumb")


@pytest.fixture(scope="module")
def calc_model(tmp_path_factory, tokenizer) -> Path:
    """A tiny Llama fine-tuned (a few seconds) on one MOSS conversation that calls Calculate: greedy,
    it writes those Inner Thoughts and Commands to the question, and the reply after the Results."""
    from alignment.models.causal_lm import ArchSpec, build_tiny
    from alignment.tool_use import tool_prompt

    meta = meta_instruction(ToolSwitch(enabled=frozenset({"Calculator"})))
    text = render(Conversation(meta, (Turn(QUESTION, REPLY, THOUGHTS, COMMANDS, RESULTS),)))
    prompt = tool_prompt(Conversation(meta, (Turn(QUESTION, ""),)))
    assert text.startswith(prompt)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    labels = ids.clone()
    labels[:, : len(tokenizer(prompt, add_special_tokens=False)["input_ids"])] = -100  # learn what follows it
    model = build_tiny(ArchSpec(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4), tokenizer, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(200):
        loss = model(input_ids=ids, labels=labels).loss
        if loss.item() < 0.05:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = tmp_path_factory.mktemp("calc") / "policy"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _lab(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="config", overrides=["+experiment=chat", *overrides]))


def _chat(model_dir: Path, lines: str, *overrides: str) -> tuple[int, str]:
    lab = _lab(f"chat.model={model_dir}", "chat.tools=[Calculate]", "eval.do_sample=false",
               "eval.max_new_tokens=48", *overrides)
    out = io.StringIO()
    return chat(lab, resolve_model(lab), io.StringIO(lines), out), out.getvalue()


def test_plugin_fields_are_read_from_the_transcript():
    full = f' {THOUGHTS}<eot>\n<|Commands|>: {COMMANDS}<eoc>\n<|Results|>: {RESULTS}<eor>\n<|MOSS|>: {REPLY}<eom>'
    fields = plugin_fields(full)
    assert fields == {Section.INNER_THOUGHTS: THOUGHTS, Section.COMMANDS: COMMANDS, Section.RESULTS: RESULTS}
    assert plugin_fields(f"<|Inner Thoughts|>:{full}") == fields  # a transcript that starts with the role token
    assert plugin_fields(" quick<eot>\n<|MOSS|>: right away<eom>") == \
        {Section.INNER_THOUGHTS: "quick", Section.COMMANDS: None, Section.RESULTS: None}
    assert plugin_fields("<|MOSS|>: hi<eom>") == dict.fromkeys(fields)
    assert plugin_fields(" x<eot>\n<|Commands|>: None<eoc>\n<|MOSS|>: y")[Section.COMMANDS] == "None"
    assert plugin_fields(" cut off by max_new_tokens") == \
        {Section.INNER_THOUGHTS: "cut off by max_new_tokens", Section.COMMANDS: None, Section.RESULTS: None}
    lines = plugin_lines(fields | {Section.RESULTS: 'Calculate("1") => "1"\nSearch("x") => "y"'})
    assert lines == [f"  [Inner Thoughts] {THOUGHTS}", f"  [Commands] {COMMANDS}", '  [Results] Calculate("1") => "1"',
                     '            Search("x") => "y"']


def test_chat_in_a_terminal_shows_the_tool_call_and_leaves_on_eof(calc_model, tmp_path):
    """The real command in a pseudo-terminal: banner, prompt, the plugin fields and the reply, then
    end of input (Ctrl-D) leaves with status 0."""
    child = pexpect.spawn(sys.executable, ["run.py", "+experiment=chat", f"chat.model={calc_model}",
                                           "chat.tools=[Calculate]", "eval.do_sample=false", "eval.max_new_tokens=48",
                                           f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=str(ROOT), env=ENV, encoding="utf-8", timeout=180)
    try:
        child.expect_exact(f"Chatting with {calc_model}")
        child.expect_exact("no quality tag, tools: Calculate; Inner Thoughts, Commands and Results shown")
        child.expect_exact("You: ")
        child.sendline(QUESTION)
        child.expect_exact(f"  [Inner Thoughts] {THOUGHTS}\r\n")
        child.expect_exact(f"  [Commands] {COMMANDS}\r\n")
        child.expect_exact(f"  [Results] {RESULTS}\r\n")
        child.expect_exact(f"MOSS: {REPLY}\r\n")
        child.expect_exact("You: ")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before
    assert "Ray dashboard" not in child.before


def test_reset_clears_the_history_and_turns_keep_their_plugin_fields(calc_model, monkeypatch):
    import alignment.tool_use

    seen: list[Conversation] = []
    real = alignment.tool_use.generate_with_tools

    def spy(model, tokenizer, contexts, *args, **kwargs):
        seen.extend(contexts)
        return real(model, tokenizer, contexts, *args, **kwargs)

    monkeypatch.setattr(alignment.tool_use, "generate_with_tools", spy)
    replies, out = _chat(calc_model, f"{QUESTION}\nAnd 4*5?\n/reset\n\n{QUESTION}\n/quit\nnever read\n")
    assert replies == 3 and [len(c.turns) for c in seen] == [1, 2, 1]
    assert seen[1].turns[0] == Turn(QUESTION, REPLY, THOUGHTS, COMMANDS, RESULTS)  # the history keeps every field
    assert out.count("(new conversation)") == 1 and out.count(f"MOSS: {REPLY}\n") == 2
    assert out.count(f"  [Commands] {COMMANDS}\n") == 2


def test_show_plugin_false_hides_the_fields(calc_model):
    replies, out = _chat(calc_model, f"{QUESTION}\n", "chat.show_plugin=false")
    assert replies == 1 and f"MOSS: {REPLY}\n" in out
    assert "hidden (chat.show_plugin=false)" in out
    assert not any(f"[{label}]" in out for label in ("Inner Thoughts", "Commands", "Results"))


def _fill(lab, model_dir: Path | None = None) -> list[str]:
    """Resolve ``chat.model``, putting each artifact its chain misses into the cache (the model's own
    as ``model_dir``): the stages that were missing, in order."""
    from experiments.runtime.cache import ArtifactCache

    missing = []
    while True:
        try:
            resolve_model(lab)
            return missing
        except NotCached as err:
            missing.append(err.stage)
            with ArtifactCache(err.root).put(err.stage, err.key, {}) as tmp:
                if err.stage == lab.chat.model and model_dir is not None:
                    shutil.copytree(model_dir, tmp, dirs_exist_ok=True)


def test_names_resolve_with_the_chains_keys(calc_model, tmp_path):
    cache = tmp_path / "cache"
    lab = _lab(f"cache_dir={cache}", "chat.model=pat")
    with pytest.raises(NotCached, match=r"chat\.model=pat: .* no PAT model \(stage pat\) .* missing from the "
                                        r"tokenizer on\); `python run\.py \+experiment=pat` builds it"):
        resolve_model(lab)
    assert _fill(lab, calc_model) == ["tokenizer", "sft", "pm", "pat"]
    chosen = resolve_model(lab)
    assert chosen.path.parent == cache.resolve() / "pat" and (chosen.tag, chosen.tag_from) == (100, "pat.inference_tag")
    assert resolve_model(_lab(f"cache_dir={cache}", "chat.model=pat", "chat.tag=60")).tag == 60
    for name in ("sft", "ppo", "dpo", "grpo", "rloo"):  # the rest of each chain is there now
        lab = _lab(f"cache_dir={cache}", f"chat.model={name}")
        assert _fill(lab) == ([] if name == "sft" else [name])
        assert resolve_model(lab).path.parent.name == name and resolve_model(lab).tag is None
    quark = _lab(f"cache_dir={cache}", "chat.model=quark")
    assert _fill(quark) == ["quark"]  # on the same PAT model; it answers at PAT's tag
    assert resolve_model(quark).path.parent.name == "quark" and resolve_model(quark).tag == 100
    # a seed the chain never ran with is another config: nothing of it is cached
    with pytest.raises(NotCached, match="tokenizer on"):
        resolve_model(_lab(f"cache_dir={cache}", "chat.model=sft", "data.world.seed=1"))

    # the command finds the same PAT model, and says which tag it uses
    out = subprocess.run([sys.executable, "run.py", "+experiment=chat", "chat.model=pat", f"cache_dir={cache}",
                          "eval.max_new_tokens=8", f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, env=ENV,
                         input="hello\n/quit\n", capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"Chatting with pat ({chosen.path})" in out.stdout
    assert "tag <quality: 100> (pat.inference_tag), no tools" in out.stdout and out.stdout.count("MOSS:") == 1


def test_model_path_is_the_older_spelling_of_a_directory(calc_model, tmp_path):
    assert resolve_model(_lab(f"chat.model_path={calc_model}")).path == calc_model.resolve()
    assert resolve_model(_lab(f"chat.model={calc_model}", f"chat.model_path={calc_model}")).name == str(calc_model)
    with pytest.raises(ValueError, match=r"chat\.model \(.*\) and chat\.model_path .* name different models"):
        resolve_model(_lab(f"chat.model={calc_model}", f"chat.model_path={tmp_path}"))
    with pytest.raises(ValueError, match=r"chat\.tag: 101"):
        from experiments.validation import validate

        validate(_lab(f"chat.model={calc_model}", "chat.tag=101"))
    shown = banner(ChatModel("pat", calc_model, 60, "chat.tag"), [], True)
    assert "tag <quality: 60> (chat.tag), no tools" in shown


@pytest.mark.parametrize("override, message", [
    ("chat.model=bogus", "config error: chat.model: 'bogus' is neither a name (sft, quark, pat, ppo, dpo, grpo, rloo:"),
    ("chat.model=ppo", "config error: chat.model=ppo: the cache {cache} holds no PPO policy (stage ppo)"),
    ("chat.model={empty}", "config error: chat.model: {empty} has no config.json"),
    ("chat.model={weightless}", "config error: chat.model: {weightless} has no weights"),
    ("chat.tools=[Calculate]", "config error: chat.model is required"),
    ("chat.model={empty} chat.tools=[Text2Image]", "config error: chat.tools: 'Text2Image'"),
], ids=["unknown-name", "not-cached", "no-config", "no-weights", "missing", "bad-tool"])
def test_a_bad_chat_model_fails_before_anything_loads(tmp_path, override, message):
    empty, weightless, cache = tmp_path / "empty", tmp_path / "weightless", tmp_path / "cache"
    empty.mkdir()
    weightless.mkdir()
    (weightless / "config.json").write_text("{}")
    fill = {"empty": empty, "weightless": weightless, "cache": cache}
    out = subprocess.run([sys.executable, "run.py", "+experiment=chat", f"cache_dir={cache}",
                          f"hydra.run.dir={tmp_path / 'run'}", *override.format(**fill).split()],
                         cwd=ROOT, env=ENV, input="hello\n", capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and message.format(**fill) in out.stderr, out.stderr[-3000:]
    assert "Chatting with" not in out.stdout


@pytest.mark.parametrize("preset", [[], ["model=smollm2"], ["algo.iterations=7", "algo.max_new_tokens=40"]])
@pytest.mark.parametrize("method", ["ppo", "grpo", "rloo"])
def test_the_chat_finds_an_rl_policy_under_the_key_its_own_run_gives_it(method, preset, tmp_path):
    """``+experiment=grpo`` trains with conf/algo/grpo.yaml sized by any model preset or ``algo.*``
    on the command line; the chat (whose algo is PPO's) reads each method's settings as compare does
    (``RunContext.for_method``: conf/rl_methods takes the budgets from ``algo.*``), so the keys agree."""
    from experiments.runtime.cache import Artifact, ArtifactCache
    from experiments.runtime.context import RunContext
    from experiments.stages.chain import STAGES

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        own = OmegaConf.to_object(compose(config_name="config", overrides=[f"+experiment={method}", *preset]))
    chat = _lab("chat.model=" + method, *preset)
    sft, pm = Artifact(tmp_path / "sft", True, {}), Artifact(tmp_path / "pm", True, {})
    own_ctx, chat_ctx = (RunContext(lab, tmp_path, ArtifactCache(tmp_path / "c"), None, "t") for lab in (own, chat))
    assert STAGES[method].key(own_ctx, sft, pm) == STAGES[method].key(chat_ctx.for_method(method), sft, pm)
