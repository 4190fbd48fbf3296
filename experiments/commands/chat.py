"""Chat driver: talk to a trained policy in the terminal, as MOSS's CLI demo did.
``python run.py +experiment=chat chat.model=pat`` (or ``sft``, ``ppo``, ``dpo``, or a model directory).

``chat.model`` names this config's model in the lab's cache, found with the chain's own keys
(``experiments.stages.sft``, ``pm``, ``pat``, ``ppo``, ``dpo``: the artifact ``+experiment=pat`` would
reuse), or a model directory. Both are checked by ``experiments.validation.validate`` before anything
loads; a name whose artifact is not cached fails naming the command that builds it.

The model loads in this process (no Ray). Each line you type is a human turn of one MOSS-format
conversation, kept across turns; the reply is sampled with the evaluation's settings (``eval.*``),
under PAT's tag ``chat.tag`` (with ``chat.model=pat`` and no tag, ``pat.inference_tag``). With
``chat.tools`` (``[Calculate, Solve, Search]``) the meta-instruction switches those tools on and
every reply goes through the two passes of tool use (``alignment.tool_use``); its Inner Thoughts,
Commands and Results are printed before it unless ``chat.show_plugin=false``, and kept in the
history either way. ``/reset`` starts a new conversation; ``/quit``, end of input (Ctrl-D) or
Ctrl-C leaves.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from alignment.chat_format import (
    PLAIN_META,
    ROLE_TOKENS,
    SPECIAL_TOKENS,
    Conversation,
    Section,
    ToolSwitch,
    Turn,
    meta_instruction,
    quality_tag,
)
from alignment.models.model_dir import check_model_dir
from alignment.template_format import prompt_text
from experiments.config import LabConfig
from experiments.runtime.cache import ArtifactCache

if TYPE_CHECKING:  # the drivers' modules import torch and Ray: they load when a chat needs them
    from experiments.runtime.context import RunContext
    from experiments.stages.chain import Stage



def chat_names() -> dict[str, Stage]:
    """``chat.model``'s names: every model of the stage table (``experiments.stages.chain.STAGES``)
    that is one cache entry, each built by ``+experiment=<name>``. (The table imports the stages, so
    it is read when a name is resolved, not when the chat module loads.)"""
    from experiments.stages.chain import STAGES

    return {name: s for name, s in STAGES.items() if s.key is not None and name != "pm"}
PLUGIN = (Section.INNER_THOUGHTS, Section.COMMANDS, Section.RESULTS)
LABELS = {Section.INNER_THOUGHTS: "Inner Thoughts", Section.COMMANDS: "Commands", Section.RESULTS: "Results"}
COMMANDS_HELP = "/reset starts a new conversation; /quit or Ctrl-D leaves."


@dataclass(frozen=True)
class ChatModel:
    """The policy a chat talks to: what ``chat.model`` said, its directory, and PAT's tag (and the
    key that set the tag: ``chat.tag`` or ``pat.inference_tag``)."""

    name: str
    path: Path
    tag: int | None = None
    tag_from: str | None = None


class NotCached(ValueError):
    """``chat.model`` names a model this config's chain has not built (or not all the way)."""

    def __init__(self, name: str, stage: str, key: str, root: Path):
        self.name, self.stage, self.key, self.root = name, stage, key, root
        from experiments.stages.chain import STAGES

        what = STAGES[stage].product if stage in STAGES else stage
        upstream = "" if stage == name else f" (its chain is missing from the {what} on)"
        super().__init__(f"chat.model={name}: the cache {root} holds no {STAGES[name].product} (stage {name}) for "
                         f"this config{upstream}; `python run.py +experiment={name}` builds it (give the chat the "
                         "overrides that run had: the cache is keyed by the config)")


class _Missing(LookupError):
    def __init__(self, stage: str, key: str):
        super().__init__(stage, key)
        self.stage, self.key = stage, key


class _ReadOnlyCache(ArtifactCache):
    """The cache as the chat sees it: a stage asked to build its artifact raises ``_Missing``."""

    def put(self, stage: str, key: str, payload: dict[str, Any]):  # type: ignore[override]
        raise _Missing(stage, key)


def cached_model(lab: LabConfig, name: str) -> Path:
    """The directory of this config's ``name`` model (:func:`chat_names`) in the cache, found with
    the chain's own keys (each stage's as the method sees the config: ``RunContext.for_method``);
    raises ``NotCached`` at the first stage of its chain that is missing."""
    from experiments.runtime.cache import Artifact, cache_root
    from experiments.runtime.context import RunContext
    from experiments.stages.chain import ROOT, STAGES, chain_of
    from experiments.stages.sft import tokenizer_stage

    root = cache_root(lab.cache_dir)
    ctx = RunContext(lab, root, _ReadOnlyCache(root), tracker=None, run_tag="chat")  # type: ignore[arg-type]

    try:
        made: dict[str, Any] = {ROOT: tokenizer_stage(ctx)}
    except _Missing as missing:
        raise NotCached(name, missing.stage, missing.key, root) from None
    except FileNotFoundError as err:  # model.name=pretrained without its directory: "model.path: ..."
        raise ValueError(str(err)) from None
    for stage in chain_of(name):  # each stage's key from the artifacts found upstream of it
        key = STAGES[stage].key(ctx.for_method(stage), *STAGES[stage].upstream(made))
        path = ctx.cache.get(stage, key)
        if path is None:
            raise NotCached(name, stage, key, root)
        made[stage] = Artifact(path, True, {})
    return made[name].path


def resolve_model(lab: LabConfig) -> ChatModel:
    """The model ``chat.model`` names (or ``chat.model_path``, its older spelling for a directory),
    checked without loading it; raises ``ValueError`` naming the key."""
    c = lab.chat
    tag_from = "chat.tag" if c.tag is not None else None
    names = chat_names()
    if c.model is None:
        if c.model_path is None:
            raise ValueError(f"chat.model is required: {', '.join(names)} (this config's model in the cache, "
                             "e.g. chat.model=pat after `bash scripts/run.sh`) or a model directory")
        path = check_model_dir("chat.model_path", c.model_path)
        return ChatModel(str(path), path, c.tag, tag_from)
    tag = c.tag
    if c.model in names:
        path = cached_model(lab, c.model).resolve()
        if names[c.model].tagged and tag is None:
            tag, tag_from = lab.pat.inference_tag, "pat.inference_tag"
    else:
        path = check_model_dir("chat.model", c.model, f"neither a name ({', '.join(names)}: this config's model "
                               "in the cache) nor a directory")
    if c.model_path is not None and Path(c.model_path).expanduser().resolve() != path:
        raise ValueError(f"chat.model ({c.model}) and chat.model_path ({c.model_path}) name different models; "
                         "set chat.model only")
    return ChatModel(c.model, path, tag, tag_from)


def plugin_fields(transcript: str) -> dict[Section, str | None]:
    """The Inner Thoughts, Commands and Results of a tool-use transcript (what the model and the
    program wrote after the prompt's ``<|Inner Thoughts|>:``; a leading role token is read too):
    each field's text up to its close token (or any special token), stripped; ``None`` when absent
    or empty."""
    text = transcript if transcript.lstrip().startswith(tuple(ROLE_TOKENS.values())) \
        else f"{ROLE_TOKENS[Section.INNER_THOUGHTS]}:{transcript}"
    out: dict[Section, str | None] = {}
    for section in PLUGIN:
        opener = f"{ROLE_TOKENS[section]}:"
        at = text.find(opener)
        if at < 0:
            out[section] = None
            continue
        body = text[at + len(opener):]
        ends = [i for t in SPECIAL_TOKENS if (i := body.find(t)) >= 0]
        out[section] = body[: min(ends, default=len(body))].strip() or None
    return out


def plugin_lines(fields: dict[Section, str | None]) -> list[str]:
    """The fields as printed before the reply: ``  [Commands] ...``, continuation lines indented."""
    lines = []
    for section in PLUGIN:
        body = fields.get(section)
        if body is None:
            continue
        label = f"  [{LABELS[section]}] "
        first, *rest = body.splitlines()
        lines += [label + first, *(" " * len(label) + r for r in rest)]
    return lines


def banner(chosen: ChatModel, tools: list[str], show_plugin: bool) -> str:
    what = str(chosen.path) if chosen.name == str(chosen.path) else f"{chosen.name} ({chosen.path})"
    tag = f"tag {quality_tag(chosen.tag)} ({chosen.tag_from})" if chosen.tag is not None else "no quality tag"
    if tools:
        shown = "shown" if show_plugin else "hidden (chat.show_plugin=false)"
        extra = f", tools: {', '.join(tools)}; Inner Thoughts, Commands and Results {shown}"
    else:
        extra = ", no tools"
    return f"Chatting with {what}\n  {tag}{extra}. {COMMANDS_HELP}"


def _read_line(stdin: TextIO, stdout: TextIO, prompt: str) -> str | None:
    """A line of input, or ``None`` at its end; the terminal's own through ``input`` (line editing)."""
    if stdin is sys.stdin and stdout is sys.stdout and prompt:
        try:
            return input(prompt)
        except EOFError:
            return None
    stdout.write(prompt)
    stdout.flush()
    line = stdin.readline()
    return line or None


def chat(cfg: LabConfig, chosen: ChatModel, stdin: TextIO, stdout: TextIO) -> int:
    """Read turns from ``stdin`` and write replies to ``stdout`` until ``/quit``, end of input or
    Ctrl-C; returns the number of replies."""
    from alignment.generation import generate_replies
    from alignment.models.causal_lm import load_causal_lm
    from alignment.models.tokenizer import load_tokenizer
    from alignment.tool_use import generate_with_tools
    from alignment.tools import DISPLAY_NAMES
    from experiments.runtime.specs import sampling_spec

    c = cfg.chat
    tokenizer = load_tokenizer(str(chosen.path))
    model = load_causal_lm(str(chosen.path), tokenizer)
    display = {call: name for name, call in DISPLAY_NAMES.items()}
    meta = meta_instruction(ToolSwitch(enabled=frozenset(display[t] for t in c.tools))) if c.tools else PLAIN_META
    spec = sampling_spec(cfg)
    interactive = stdin.isatty()
    if interactive and stdin is sys.stdin:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    print(banner(chosen, c.tools, c.show_plugin), file=stdout, flush=True)
    turns: list[Turn] = []
    replies = 0
    try:
        while (line := _read_line(stdin, stdout, "You: " if interactive else "")) is not None:
            text = line.strip()
            if text in ("/quit", "/exit"):
                break
            if text == "/reset":
                turns = []
                print("(new conversation)", file=stdout, flush=True)
                continue
            if not text:
                continue
            conv = Conversation(meta, (*turns, Turn(text, "")))
            seed = cfg.seed + replies
            if c.tools:
                out = generate_with_tools(model, tokenizer, [conv], spec, quality=chosen.tag,
                                          max_calls=cfg.tools.max_calls, seed=seed)[0][0]
                fields = plugin_fields(out.transcript)
                if out.results is not None:  # what the program wrote, as it wrote it
                    fields[Section.RESULTS] = out.results
                if c.show_plugin:
                    for shown in plugin_lines(fields):
                        print(shown, file=stdout)
                turn = Turn(text, out.reply, inner_thoughts=fields[Section.INNER_THOUGHTS],
                            commands=fields[Section.COMMANDS], results=fields[Section.RESULTS], quality=chosen.tag)
            else:
                reply = generate_replies(model, tokenizer, [prompt_text(tokenizer, conv, chosen.tag)], spec,
                                         seed=seed)[0][0]
                turn = Turn(text, reply, quality=chosen.tag)
            print(f"MOSS: {turn.moss}", file=stdout, flush=True)
            turns.append(turn)
            replies += 1
    except KeyboardInterrupt:
        pass
    if interactive:
        print(file=stdout, flush=True)  # the shell's prompt starts on a line of its own
    return replies


def run(ctx: RunContext) -> dict[str, Any]:
    """``+experiment=chat``."""
    chosen = resolve_model(ctx.cfg)
    replies = chat(ctx.cfg, chosen, sys.stdin, sys.stdout)
    return {"model": chosen.name, "path": str(chosen.path), "tag": chosen.tag, "replies": replies}
