"""The table of stages: each stage's name, the upstream artifacts it needs, its cache key and its
build. The chat finds a model's chain in the cache with these keys, ``compare`` trains its methods
with these builds, and the key tests read the same table; a new method is a file of its own and a
row here (the rows after the chain's shared stages, ``CHAIN``, are :data:`METHODS`, in the order the
reports give them).

The chain's root is the tokenizer (``tokenizer_stage``); every other stage needs some of
``tokenizer``, ``sft`` and ``pm``. A key and a build take the run's context as the method sees it
(``RunContext.for_method``) and the upstream artifacts in the order of ``needs``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.choices import CHAIN  # the stages every method builds on; every other row of STAGES is a method
from experiments.runtime.cache import Artifact
from experiments.runtime.context import RunContext
from experiments.stages import bon, dpo, pat, pm, ppo, quark, sft

ROOT = "tokenizer"  # the chain's first artifact (``experiments.stages.sft.tokenizer_stage``)


@dataclass(frozen=True)
class Stage:
    """One stage of the chain. ``key`` is ``None`` where the product is not one cache entry
    (best-of-n's draw is an evaluation job of the SFT model); ``run`` is its ``+experiment=<name>``
    driver (``experiments.registry.DRIVERS``); ``product`` names what it makes (the chat's words);
    ``tagged``: its model answers at PAT's quality tag (``pat.inference_tag``)."""

    name: str
    needs: tuple[str, ...]
    key: Callable[..., str] | None
    build: Callable[..., Any]
    run: Callable[[RunContext], dict[str, Any]]
    product: str
    tagged: bool = False

    def upstream(self, made: dict[str, Any]) -> list[Any]:
        """The artifacts this stage needs, from ``made`` (``{stage: artifact}``), in ``needs``' order."""
        return [made[name] for name in self.needs]


def _sft_key(ctx: RunContext, tokenizer: Path) -> str:
    return ctx.cache_key("sft", sft.sft_payload(ctx.cfg, tokenizer))


def _sft_build(ctx: RunContext, tokenizer: Path) -> Artifact:
    return sft.sft_stage(ctx)  # the SFT stage finds its tokenizer by itself (cached)


def _pm_key(ctx: RunContext, sft: Artifact) -> str:
    return ctx.cache_key("pm", pm.pm_payload(ctx, sft))


def _pat_key(ctx: RunContext, sft: Artifact, pm: Artifact) -> str:
    return pat.pat_key(ctx, sft, pm)[0]


def _rl_key(ctx: RunContext, sft: Artifact, pm: Artifact) -> str:
    return ppo.ppo_key(ctx, sft, pm)[0]


def _dpo_key(ctx: RunContext, sft: Artifact) -> str:
    return dpo.dpo_key(ctx, sft)[0]


STAGES: dict[str, Stage] = {
    "sft": Stage("sft", (ROOT,), _sft_key, _sft_build, sft.run, "SFT checkpoint"),
    "pm": Stage("pm", ("sft",), _pm_key, pm.pm_stage, pm.run, "preference model"),
    "quark": Stage("quark", ("sft", "pm", "pat"), quark.quark_key, quark.quark_stage, quark.run,  # PAT is its round 1
                   "Quark model", tagged=True),
    "pat": Stage("pat", ("sft", "pm"), _pat_key, pat.pat_stage, pat.run, "PAT model", tagged=True),
    "ppo": Stage("ppo", ("sft", "pm"), _rl_key, ppo.ppo_stage, ppo.run, "PPO policy"),
    # DPO learns from the preference model's labelled pairs, not from the model
    "dpo": Stage("dpo", ("sft",), _dpo_key, dpo.dpo_stage, dpo.run, "DPO policy"),
    # GRPO and RLOO: the PPO loop with algo.advantage=grpo|rloo and no critic (conf/algo/<name>.yaml;
    # compare.<name> as algo in a compare run and in the chat)
    "grpo": Stage("grpo", ("sft", "pm"), _rl_key, ppo.ppo_stage, ppo.run, "GRPO policy"),
    "rloo": Stage("rloo", ("sft", "pm"), _rl_key, ppo.ppo_stage, ppo.run, "RLOO policy"),
    "bon": Stage("bon", ("sft", "pm"), None, bon.draw, bon.run, "best-of-n draw"),
}
METHODS: tuple[str, ...] = tuple(name for name in STAGES if name not in CHAIN)
"""Every method the lab trains and compares (``compare.methods``), in the order the reports give them:
the one place that lists them."""


def chain_of(name: str) -> list[str]:
    """The stages ``name`` is built from, upstream first, ending with ``name`` (the root not included)."""
    order: list[str] = []

    def visit(stage: str) -> None:
        if stage == ROOT or stage in order:
            return
        for need in STAGES[stage].needs:
            visit(need)
        order.append(stage)

    visit(name)
    return order
