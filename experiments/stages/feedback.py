"""AI feedback on real prompts, as MOSS §7.1 made it (``pm.feedback=judge``): the SFT model samples
``pm.candidates`` replies per prompt on its policy actors, and a judge (``pm.judge``: the reward
model ``judges.rm`` or the LLM ``judges.llm``) labels every pair of them. The labelled comparison
groups are an artifact in the cache (``feedback/<key>/groups.json``, written atomically), so a
sweep samples and labels once.

Prompts come from ``pm.prompts_path``, or else from the SFT data: the last human turn of each
MOSS-003 conversation, or the world's training prompts. The first ``pm.n_prompts`` train the
preference model; without ``pm.val_path`` the next ``pm.n_val_prompts`` are held out to validate it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from typing import Any

from tqdm.auto import tqdm

from alignment.atomic import write_json
from alignment.chat_format import Conversation, Turn, generation_prompt
from alignment.data.formats import FilePrompt, load_prompts
from alignment.data.preference import ComparisonGroup, ranked_pairs
from alignment.judges.llm import QUESTION, SYSTEM_PROMPT, LLMJudge, PairItem
from experiments.evaluation.judging import llm_judge, llm_spec, rm_scores
from experiments.evaluation.replies import Job, generate_with, sampling_key
from experiments.runtime.cache import Artifact
from experiments.runtime.context import RunContext

STAGE = "feedback"
FILE = "groups.json"


def feedback_contexts(ctx: RunContext) -> list[Conversation]:
    """The prompts to sample and label: training ones, then (without ``pm.val_path``) held-out ones."""
    pm = ctx.cfg.pm
    n = pm.n_prompts + (0 if pm.val_path else pm.n_val_prompts)
    if pm.prompts_path:
        return [p.context for p in load_prompts(pm.prompts_path, pm.prompts_format)][:n]
    if not ctx.world_data:
        return [FilePrompt.last_turn_of(c).context for c in ctx.sft_conversations(n)]
    return [p.conversation() for p in ctx.world.prompts("train", n, offset=1000)]


def feedback_payload(ctx: RunContext, sft: Artifact, contexts: list[Conversation]) -> dict[str, Any]:
    cfg = ctx.cfg
    digest = hashlib.sha256(json.dumps([generation_prompt(c) for c in contexts], ensure_ascii=False).encode())
    sampling = sampling_key(cfg)
    if cfg.pm.judge == "rm":
        judge: dict[str, Any] = {"rm": cfg.judges.rm.path, "max_length": cfg.judges.rm.max_length,
                                 "bf16": cfg.ray.judge.num_gpus > 0}
    else:
        llm = cfg.judges.llm
        question = hashlib.sha256((SYSTEM_PROMPT + QUESTION).encode()).hexdigest()
        judge = {"llm": llm.model, "base_url": llm.base_url, "max_tokens": llm.max_tokens,
                 "temperature": llm.temperature, "question": question}
        with LLMJudge(llm_spec(cfg)) as server:  # who answers: two servers of one name may serve other weights
            judge["fingerprint"] = server.fingerprint()
    return {"sft": str(sft.path), "prompts": digest.hexdigest(), "candidates": cfg.pm.candidates,
            "sampling": sampling, "seed": cfg.seed, "judge": judge}


def label(ctx: RunContext, contexts: list[Conversation], candidates: list[list[str]]) -> list[ComparisonGroup]:
    """One comparison group per prompt with every pair the judge decides (ties and identical replies
    carry no preference; a prompt may end up with no pair)."""
    cfg = ctx.cfg
    if cfg.pm.judge == "rm":
        flat = [(c, r) for c, cands in zip(contexts, candidates) for r in cands]
        scores = rm_scores(ctx, {"candidates": ([c for c, _ in flat], [r for _, r in flat])}, stage="pm")
        scores = scores["candidates"]
        k = cfg.pm.candidates
        return [ComparisonGroup(c, tuple(cands), ranked_pairs(scores[i * k:(i + 1) * k]))
                for i, (c, cands) in enumerate(zip(contexts, candidates))]
    pairs = [(i, a, b) for i, cands in enumerate(candidates)
             for a, b in itertools.combinations(range(len(cands)), 2) if cands[a] != cands[b]]
    with llm_judge(cfg, ctx.cache.root) as judge:
        verdicts = judge.compare([PairItem(contexts[i], candidates[i][a], candidates[i][b]) for i, a, b in pairs],
                                 desc="pm: llm feedback")
    ctx.tracker.summary({f"pm/llm_judge/{k}": v for k, v in (judge.stats | judge.shares()).items()})
    decided: list[list[tuple[int, int]]] = [[] for _ in contexts]
    for (i, a, b), v in zip(pairs, verdicts):
        if v:
            decided[i].append((a, b) if v > 0 else (b, a))
    return [ComparisonGroup(c, tuple(cands), tuple(p)) for c, cands, p in zip(contexts, candidates, decided)]


def _to_json(g: ComparisonGroup) -> dict[str, Any]:
    return {"context": dataclasses.asdict(g.context), "candidates": list(g.candidates),
            "pairs": [list(p) for p in g.pairs]}


def _from_json(d: dict[str, Any]) -> ComparisonGroup:
    ctx = d["context"]
    conv = Conversation(ctx["meta_instruction"], tuple(Turn(**t) for t in ctx["turns"]))
    return ComparisonGroup(conv, tuple(d["candidates"]), tuple((int(c), int(r)) for c, r in d["pairs"]))


def judge_feedback(ctx: RunContext, sft: Artifact) -> list[ComparisonGroup]:
    """Every prompt's labelled comparison group, in prompt order: from the cache, or sampled from
    the SFT model and labelled by the judge now."""
    cfg = ctx.cfg
    contexts = feedback_contexts(ctx)
    payload = feedback_payload(ctx, sft, contexts)
    key = ctx.cache_key(STAGE, payload)
    hit = ctx.cache.get(STAGE, key) if cfg.use_cache else None
    if hit is not None:
        print(f"PM: reusing cached judge feedback {hit}", flush=True)
        return [_from_json(d) for d in json.loads((hit / FILE).read_text())]
    k = cfg.pm.candidates
    prompts = [FilePrompt.from_context(c) for c in contexts for _ in range(k)]
    with tqdm(total=len(prompts), desc="pm: candidates") as bar:
        replies = generate_with(ctx, sft.path, {"pm-candidates": Job(prompts)}, "pm-samples", bar,
                                stage="pm")["pm-candidates"]
    groups = label(ctx, contexts, [replies[i * k:(i + 1) * k] for i in range(len(contexts))])
    with ctx.cache.put(STAGE, key, payload) as tmp:
        write_json(tmp / FILE, [_to_json(g) for g in groups])
    n_pairs = sum(len(g.pairs) for g in groups)
    print(f"PM: {cfg.pm.judge} judge labelled {n_pairs} pairs over {len(groups)} prompts "
          f"({k} candidates each)", flush=True)
    return groups
