"""Head-to-head evaluation driver: policies generate on held-out test prompts with fixed
sampling; the gold judge and the preference model score every reply; pairs of policies get
win / tie / lose shares and win rates with bootstrap intervals (``alignment/statistics/winrate.py``).

Replies are cached by (model, prompts, quality tag, sampling, seed), so the jobs of a sweep
judge the same SFT replies and a later job reuses what an earlier one generated. Every run
writes the per-prompt scores to ``scores.json``: the sweep report pairs methods from them.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch

from actors.policy import PolicyActor
from actors.preference import PreferenceActor
from actors.reference import ReferenceActor
from alignment.atomic import write_json
from alignment.chat_format import Conversation
from alignment.data.formats import FilePrompt
from alignment.generation import RolloutSpec
from alignment.losses.kl import kl_estimate
from alignment.models.tokenizer import load_tokenizer
from alignment.rollout import Rollout, pack
from alignment.sequences import prompt_ids, scored_sequences, written_lengths
from alignment.statistics.winrate import length_controlled, outcomes, win_rate
from alignment.tool_use import tool_prompt
from alignment.world import WorldPrompt
from alignment.world.categories.tool_use import called, is_tool_task
from experiments.choices import eval_judges
from experiments.evaluation.judging import llm_outcomes, rm_scores
from experiments.evaluation.replies import Job, generate_many, rollouts, tool_rows
from experiments.evaluation.win_layout import win_entry
from experiments.runtime.context import RunContext
from experiments.runtime.engines import start_engines, uses_vllm
from experiments.runtime.specs import model_spec, strategy_spec

SCORES_FILE = "scores.json"
Prompt = Union[WorldPrompt, FilePrompt]  # a held-out prompt: the world's, or a file's


@dataclass
class Judged:
    """What the judges made of the evaluation replies.

    ``scores[judge][policy]`` holds a per-prompt score from each pointwise judge (gold, pm, rm);
    ``pairwise[judge]["a_vs_b"]`` per-prompt outcomes from a pairwise judge (llm);
    ``lengths[policy]`` each reply's length in tokens."""

    replies: dict[str, list[str]]
    scores: dict[str, dict[str, list[float]]]
    pairwise: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    lengths: dict[str, list[int]] = field(default_factory=dict)
    tool_calls: dict[str, list[bool | None]] = field(default_factory=dict)
    """Per policy and prompt: on a tool-use request of the world, whether the reply called the task's
    tool with well-formed commands; None on any other prompt. Empty when no prompt asks for a tool."""
    judge_shares: dict[str, dict[str, float]] = field(default_factory=dict)
    """A pairwise judge's ``tie_share``, ``unparsed_share`` and ``error_share`` (``LLMJudge.shares``)."""

    def mean(self, judge: str) -> dict[str, float]:
        return {name: sum(v) / len(v) for name, v in self.scores.get(judge, {}).items()}


def judge_jobs(ctx: RunContext, work: dict[str, tuple[Path, dict[str, Job]]], pm_path: Path, sft_path: Path,
               prompts: list[Prompt], judged: tuple[str, ...], pairs: list[tuple[str, str]] = ()) -> Judged:
    """Replies of every job in ``work`` (``generate_many``), judged by ``judge_replies``."""
    replies = generate_many(ctx, work)
    jobs = {name: job for _, named in work.values() for name, job in named.items()}
    return judge_replies(ctx, jobs, replies, pm_path, sft_path, prompts, judged, pairs)


def judge_replies(ctx: RunContext, jobs: dict[str, Job], replies: dict[str, list[str]], pm_path: Path,
                  sft_path: Path, prompts: list[Prompt], judged: tuple[str, ...],
                  pairs: list[tuple[str, str]] = ()) -> Judged:
    """``replies[name]`` (from anywhere: generated, cached or picked) to the prompts of ``jobs[name]``,
    scored by each judge of ``eval.judges``: the gold judge scores every job; the preference model and
    the reward model score the ``judged`` policies (those answering every prompt of ``prompts``), and
    every job when there is no gold judge; the LLM judge compares the ``pairs``. Reply lengths are
    counted in the policy's tokens. The per-prompt scores go to ``scores.json``."""
    judges = eval_judges(ctx.cfg)
    scores: dict[str, dict[str, list[float]]] = {}
    if "gold" in judges:
        scores["gold"] = {name: [ctx.world.judge(p, r) for p, r in zip(jobs[name].prompts, rs)]
                          for name, rs in replies.items()}
    # the model judges score the judged policies, and every job when no gold judge scores the rest
    # (PAT's controllability curve then reads theirs)
    scored = [n for n in jobs if n in judged or "gold" not in scores]
    items = {n: ([p.conversation() for p in jobs[n].prompts], replies[n]) for n in scored}
    if "pm" in judges or not ({"gold", "rm"} & set(judges)):
        scores["pm"] = pm_scores(ctx, pm_path, sft_path, items)
    if "rm" in judges:
        scores["rm"] = rm_scores(ctx, items)
    contexts = [p.conversation() for p in prompts]
    pairwise, shares = {}, {}
    if "llm" in judges and pairs:
        pairwise["llm"], shares["llm"] = llm_outcomes(ctx, contexts, replies, pairs)
    tok = load_tokenizer(str(sft_path))
    lengths = {name: written_lengths(tok, replies[name]) for name in judged}  # a tool's Results not counted
    tool_calls = {name: [called(p.task, r) if is_tool_task(p) else None for p, r in zip(jobs[name].prompts, rs)]
                  for name, rs in replies.items()}
    tool_calls = tool_calls if any(c is not None for v in tool_calls.values() for c in v) else {}
    out = Judged(replies, scores, pairwise, lengths, tool_calls, shares)
    write_scores(ctx, prompts, out, judged)
    return out


def pm_scores(ctx: RunContext, pm_path: Path, tokenizer_dir: Path,
              items: dict[str, tuple[list[Conversation], list[str]]], stage: str = "eval") -> dict[str, list[float]]:
    """The preference model's score of every reply, per policy (``items[name]``: the contexts and
    the replies to them); the scorer's cost joins ``stage``."""
    cfg = ctx.cfg
    tokenizer = load_tokenizer(str(tokenizer_dir))
    group = ctx.group(PreferenceActor, "preference", cfg.ray.preference, cfg.pm.trainer.num_threads, stage)
    try:
        group.call("init_model", str(pm_path), False, strategy_spec(cfg, cfg.ray.preference.num_gpus > 0))
        out = {}
        for name, (contexts, texts) in items.items():
            seqs = scored_sequences(tokenizer, contexts, texts, cfg.pm.max_length, cfg.pm.context_turns)
            out[name] = group.map_sharded("score", seqs, batch_size=cfg.eval.batch_size)
        return out
    finally:
        group.shutdown()


def _win(results: list[int], len_a: list[int] | None, len_b: list[int] | None, seed: int) -> dict[str, Any]:
    out = win_entry(win_rate(results, seed=seed))
    if len_a is not None and len_b is not None:
        out["lc"] = length_controlled(results, len_a, len_b, seed=seed)
    return out


def head_to_head(ctx: RunContext, judged: Judged, pairs: list[tuple[str, str]]) -> dict[str, dict[str, dict]]:
    """``{judge: {"a_vs_b": {value, ci, win, tie, lose, n, lc}}}`` for every pair and judge (the layout
    of ``results.json``); ``lc`` is the length-controlled win rate
    (``alignment.statistics.winrate.length_controlled``)."""
    seed = ctx.cfg.seed
    out: dict[str, dict[str, dict]] = {}
    for judge in eval_judges(ctx.cfg):
        for a, b in pairs:
            key = f"{a}_vs_{b}"
            if judge in judged.pairwise:
                results = judged.pairwise[judge].get(key)
            elif a in judged.scores.get(judge, {}) and b in judged.scores.get(judge, {}):
                results = outcomes(judged.scores[judge][a], judged.scores[judge][b])
            else:
                results = None
            if results:
                out.setdefault(judge, {})[key] = _win(results, judged.lengths.get(a), judged.lengths.get(b), seed)
    return out


def method_results(ctx: RunContext, judged: Judged, wins: dict[str, dict[str, dict]],
                   policies: tuple[str, ...]) -> dict[str, Any]:
    """What every method's ``results.json`` holds about its head-to-head: the win rates per judge
    (``win_rate.<judge>.<a>_vs_<b>``, each with its length-controlled twin under ``lc``), each
    policy's mean reply length in tokens, its mean gold score on the world's prompts, and each judge's
    ``judge_shares`` (:func:`judge_shares`)."""
    out: dict[str, Any] = {"win_rate": wins, "judges": list(wins), "judge_shares": judge_shares(judged, wins),
                           "length": {p: sum(judged.lengths[p]) / len(judged.lengths[p]) for p in policies}}
    if "gold" in judged.scores:
        out["gold"] = {p: v for p, v in judged.mean("gold").items() if p in policies}
        if judged.tool_calls:
            out["tool_use"] = tool_use_results(judged, [p.split("_vs_") for p in wins.get("gold", {})], policies,
                                               ctx.cfg.seed)
    return out


def judge_shares(judged: Judged, wins: dict[str, dict[str, dict]]) -> dict[str, dict[str, float]]:
    """Per judge, its outcomes that decided nothing, by cause, as shares of all its outcomes: ``tie_share``
    (equal scores; for the LLM judge, two valid answers that disagree), ``unparsed_share`` (an answer
    without a verdict) and ``error_share`` (a request that failed); only the LLM judge has the last two."""
    out = {}
    for judge, by_pair in wins.items():
        if judge in judged.judge_shares:
            out[judge] = dict(judged.judge_shares[judge])
            continue
        n = sum(w["n"] for w in by_pair.values())
        ties = sum(w["tie"] * w["n"] for w in by_pair.values())
        out[judge] = {"tie_share": ties / n if n else 0.0, "unparsed_share": 0.0, "error_share": 0.0}
    return out


def tool_use_results(judged: Judged, pairs: list[list[str]], policies: tuple[str, ...], seed: int) -> dict[str, Any]:
    """The tool-use requests apart: how many, each policy's share of replies that call the task's tool
    and its mean gold score there and on the other prompts, and the gold win rate of every pair on
    each part (``win_rate`` on tool-use requests, ``win_rate_other`` on the rest), with intervals."""
    def part(name: str, tool: bool) -> list[float]:
        return [s for s, c in zip(judged.scores["gold"][name], judged.tool_calls[name]) if (c is not None) == tool]

    out: dict[str, Any] = {"n": sum(c is not None for c in judged.tool_calls[policies[0]]),
                           "share": {}, "gold": {}, "gold_other": {}, "win_rate": {}, "win_rate_other": {}}
    for p in policies:
        calls = [c for c in judged.tool_calls[p] if c is not None]
        out["share"][p] = sum(calls) / len(calls)
        out["gold"][p] = statistics.fmean(part(p, True))
        out["gold_other"][p] = statistics.fmean(part(p, False)) if part(p, False) else None
    for a, b in pairs:
        if [c is None for c in judged.tool_calls[a]] != [c is None for c in judged.tool_calls[b]]:
            continue  # not the same prompts
        out["win_rate"][f"{a}_vs_{b}"] = _win(outcomes(part(a, True), part(b, True)), None, None, seed)
        if part(a, False):
            out["win_rate_other"][f"{a}_vs_{b}"] = _win(outcomes(part(a, False), part(b, False)), None, None, seed)
    return out


def samples(prompts: list[Any], replies: dict[str, list[str]], names: tuple[str, ...], n: int = 6) -> list[dict]:
    return [{"prompt": p.text, **{name: replies[name][i] for name in names}} for i, p in enumerate(prompts[:n])]


def method_metrics(results: dict[str, Any]) -> dict[str, float]:
    """The flat scalars of ``method_results`` for the tracker: ``win_rate/<judge>/<a>_vs_<b>``,
    ``eval/gold_<policy>`` and ``eval/length_<policy>``."""
    flat = {f"win_rate/{judge}/{pair}": w["value"] for judge, d in results["win_rate"].items() for pair, w in d.items()}
    flat |= {f"eval/gold_{name}": v for name, v in results.get("gold", {}).items()}
    tools = results.get("tool_use", {})
    flat |= {f"eval/tool_share_{name}": v for name, v in tools.get("share", {}).items()}
    flat |= {f"eval/tool_gold_{name}": v for name, v in tools.get("gold", {}).items()}
    return flat | {f"eval/length_{name}": v for name, v in results["length"].items()}


def write_scores(ctx: RunContext, prompts: list[Prompt], judged: Judged, policies: tuple[str, ...]) -> Path:
    """Per-prompt scores of each judged policy by every judge, for pairing across runs."""
    path = ctx.run_dir / SCORES_FILE
    body: dict[str, Any] = {"seed": ctx.cfg.seed, "prompts": [p.uid for p in prompts]}
    for judge, by_policy in judged.scores.items():
        body[judge] = {k: by_policy[k] for k in policies if k in by_policy}
    body["lengths"] = judged.lengths
    if judged.tool_calls:  # per prompt: None off tool requests, else whether the reply called the tool
        body["tool_calls"] = {k: v for k, v in judged.tool_calls.items() if k in policies}
    if judged.pairwise:
        body["pairwise"] = judged.pairwise
    write_json(path, body)
    return path


def frontier_points(ctx: RunContext, name: str, model_path: Path, sft_path: Path, pm_path: Path,
                    prompts: list[Prompt], tags: list[int | None], threads: int | None = None) -> list[dict[str, Any]]:
    """Reward against KL to the SFT model, one point per quality tag (``None``: no tag).

    The policy samples as PPO does (``algo`` temperature and length, no top-p), so the mean of
    ``sum_t log pi(y_t) - log pi_SFT(y_t)`` over its samples estimates KL(pi || pi_SFT). The SFT
    model sees the prompt without the tag. Each point holds that KL, the gold score and the
    preference-model score of the same samples (their means, and per prompt in ``golds`` and
    ``pms``). ``name`` labels the actors (``<name>-frontier-policy``); ``threads``: their torch
    threads (default ``trainer.num_threads``; less when several measurements share the cores)."""
    cfg, a = ctx.cfg, ctx.cfg.algo
    threads = threads or cfg.trainer.num_threads
    tok = load_tokenizer(str(sft_path))
    spec = RolloutSpec(max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_p=1.0)
    plain = [prompt_ids(tok, p.conversation()) for p in prompts]
    policy = ctx.group(PolicyActor, f"{name}-frontier-policy", cfg.ray.policy, threads, "eval")
    reference = ctx.group(ReferenceActor, f"{name}-frontier-reference", cfg.ray.reference, threads, "eval")
    scorer = ctx.group(PreferenceActor, f"{name}-frontier-preference", cfg.ray.preference,
                       min(threads, cfg.pm.trainer.num_threads), "eval")
    engines = None
    try:
        inits = (policy.submit("init_model", None, spec=model_spec(cfg, model_path, str(model_path)),
                               strategy=strategy_spec(cfg, cfg.ray.policy.num_gpus > 0), optim=None)
                 + reference.submit("init_model", None, path=str(sft_path),
                                    strategy=strategy_spec(cfg, cfg.ray.reference.num_gpus > 0))
                 + scorer.submit("init_model", None, path=str(pm_path), drop_last_layer=False,
                                 strategy=strategy_spec(cfg, cfg.ray.preference.num_gpus > 0)))
        if uses_vllm(cfg):
            engines = start_engines(ctx, model_path, f"{name}-frontier-rollout", "eval",
                                    after=lambda: policy.wait(inits))
        else:
            policy.wait(inits)
        tools = tool_rows(cfg, [p.conversation() for p in prompts])
        if any(tools):  # tool requests sample through the tools; the tag follows their <|MOSS|>: (so the
            # reference sees it too, outside the response mask)
            plain = [tok(tool_prompt(p.conversation()), add_special_tokens=False)["input_ids"] if t else ids
                     for p, t, ids in zip(prompts, tools, plain)]
        points = []
        for tag in tags:
            ids = [head if t else prompt_ids(tok, p.conversation(), tag) for p, t, head in zip(prompts, tools, plain)]
            parts = rollouts(policy, ids, tools, spec, cfg.seed, cfg.tools.max_calls, quality=tag, engines=engines)
            sampled = Rollout.cat([p[0] for p in parts], tok.pad_token_id)
            texts = [t for p in parts for t in p[1]]
            responses = [row[len(p):] for row, p in zip(sampled.token_lists(), ids)]
            masks = [m[:len(r)] for m, r in zip(sampled.response_mask.long().tolist(), responses)]
            untagged = pack(plain, responses, [[0.0] * len(r) for r in responses], tok.pad_token_id, masks)
            ref = torch.cat(reference.wait(reference.submit(
                "logprobs", [(r,) for r in untagged.split(reference.size)], temperature=spec.temperature)))
            kl = (kl_estimate(sampled.logprobs, ref, "k1") * sampled.response_mask).sum(1)
            seqs = scored_sequences(tok, [p.conversation() for p in prompts], texts, cfg.pm.max_length,
                                    cfg.pm.context_turns)
            pm = scorer.map_sharded("score", seqs, batch_size=cfg.eval.batch_size)
            gold = [ctx.world.judge(p, t) for p, t in zip(prompts, texts)] if ctx.on_world else None
            points.append({"tag": tag, "kl": kl.mean().item(), "gold": sum(gold) / len(gold) if gold else None,
                           "pm": sum(pm) / len(pm), "n": len(prompts),
                           # per prompt, for win rates against SFT's samples and the equal-KL table
                           "golds": gold, "pms": list(pm)})
            print(f"KL: {name}{'' if tag is None else f' <quality: {tag}>'}: {points[-1]['kl']:.3f} nats to SFT over "
                  f"{len(prompts)} samples ({len(points)}/{len(tags)})", flush=True)
        return points
    finally:
        for g in (policy, reference, scorer, engines):
            if g is not None:
                g.shutdown()
