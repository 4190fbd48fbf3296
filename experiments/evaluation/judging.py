"""The run's judges beyond the gold judge and its own preference model: an independent reward
model (``judges.rm``, on a Ray actor) and an LLM behind an OpenAI-compatible endpoint
(``judges.llm``). Each is configured once under ``judges.*`` and used wherever the run judges:
the head-to-head evaluation (``eval.judges``) and AI feedback for the preference model
(``pm.feedback=judge``).

Reward models score one reply at a time; the LLM judge compares two replies to the same prompt,
asked in both orders (``alignment/judges/llm.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from actors.reward_model import RewardModelActor
from alignment.chat_format import Conversation
from alignment.judges.llm import LLMJudge, LLMJudgeSpec, PairItem
from alignment.judges.reward_model import check_reward_model
from experiments.config import LabConfig
from experiments.runtime.context import RunContext

LLM_CACHE = "llm-judge/verdicts.sqlite"


def llm_spec(cfg: LabConfig) -> LLMJudgeSpec:
    j = cfg.judges.llm
    return LLMJudgeSpec(base_url=j.base_url, model=j.model, api_key_env=j.api_key_env, concurrency=j.concurrency,
                        timeout=j.timeout, max_retries=j.max_retries, max_tokens=j.max_tokens,
                        temperature=j.temperature, max_error_share=j.max_error_share,
                        fingerprint=j.fingerprint)


def llm_judge(cfg: LabConfig, cache_root: Path) -> LLMJudge:
    """The configured LLM judge; its verdicts are kept under ``<cache>/llm-judge/`` (``judges.llm.cache``)."""
    return LLMJudge(llm_spec(cfg), cache_root / LLM_CACHE if cfg.judges.llm.cache else None)


def check_judges(cfg: LabConfig, names: Sequence[str], cache_root: Path) -> None:
    """Reach every judge in ``names`` before anything trains: the reward model's directory is read
    (no weights), the LLM judge's server is asked for its models and one judging request. Raises
    ValueError naming the key."""
    if "rm" in names:
        try:
            check_reward_model(cfg.judges.rm.path)
        except ValueError as err:
            raise ValueError(f"judges.rm.path: {err}") from None
    if "llm" in names:
        try:
            with LLMJudge(llm_spec(cfg)) as judge:  # no verdict cache: the test answer is not kept
                judge.check()
        except RuntimeError as err:
            raise ValueError(f"judges.llm: {err}") from None


def rm_scores(ctx: RunContext, items: dict[str, tuple[Sequence[Conversation], Sequence[str]]],
              stage: str = "eval") -> dict[str, list[float]]:
    """The reward model's score of every reply (``items[name]``: contexts and the replies to them)."""
    cfg = ctx.cfg
    group = ctx.group(RewardModelActor, "judge", cfg.ray.judge, cfg.trainer.num_threads, stage)
    try:
        group.call("init_model", cfg.judges.rm.path, bf16=cfg.ray.judge.num_gpus > 0)
        return {name: group.map_sharded("score", list(zip(contexts, texts)), max_length=cfg.judges.rm.max_length,
                                        batch_size=cfg.judges.rm.batch_size)
                for name, (contexts, texts) in items.items()}
    finally:
        group.shutdown()


def llm_outcomes(ctx: RunContext, contexts: Sequence[Conversation], replies: dict[str, list[str]],
                 pairs: Sequence[tuple[str, str]]) -> tuple[dict[str, list[int]], dict[str, float]]:
    """``{"a_vs_b": outcomes}`` for every pair: +1 where the LLM judge prefers a's reply in both
    orders, -1 where it prefers b's in both, 0 otherwise (one batch of requests for all pairs); and the
    judge's tie, unparsed and error shares over them (``LLMJudge.shares``)."""
    items = [PairItem(c, ra, rb) for a, b in pairs for c, ra, rb in zip(contexts, replies[a], replies[b])]
    with llm_judge(ctx.cfg, ctx.cache.root) as judge:
        verdicts = judge.compare(items, desc="llm judge")
    n = len(contexts)
    out = {f"{a}_vs_{b}": verdicts[i * n:(i + 1) * n] for i, (a, b) in enumerate(pairs)}
    ctx.tracker.summary({f"llm_judge/{k}": v for k, v in (judge.stats | judge.shares()).items()})
    return out, judge.shares()
