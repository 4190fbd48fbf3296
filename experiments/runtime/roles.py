"""The RL loop's roles: policy, critic, reference and preference model (and the vLLM engines), each a
group of actors, placed (colocated or not) and loaded from the SFT and preference checkpoints."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.critic import CriticActor
from actors.group import LocalGroup, RoleGroup, colocated_pg
from actors.policy import PolicyActor
from actors.preference import PreferenceActor
from actors.reference import ReferenceActor
from alignment.losses.gae import needs_values
from experiments.choices import RL_STAGES
from experiments.runtime.context import RunContext
from experiments.runtime.engines import start_engines, uses_vllm
from experiments.runtime.specs import lora_spec, model_spec, optim_config, strategy_spec


def method_name(cfg: Any) -> str:
    """What the run's policy, cache stage and results are named after: the stage (ppo, grpo, rloo),
    or ppo when another driver (compare) runs the loop."""
    return cfg.stage if cfg.stage in RL_STAGES else "ppo"


@dataclass
class Roles:
    """The four PPO roles, each a group of actors (``RoleGroup``) or one in-process rank (``LocalGroup``);
    ``critic`` is None when the advantage estimator needs no values (grpo, rloo); ``engines`` are the
    vLLM rollout engines (``rollout.engine=vllm``), else None."""

    policy: RoleGroup
    critic: RoleGroup | None
    reference: RoleGroup
    preference: RoleGroup
    pg: Any = field(default=None, repr=False)
    engines: RoleGroup | None = None

    def shutdown(self) -> None:
        """Every group, then the shared placement group, even when one of them fails to shut down (it
        is reported, not raised: this runs in ``finally`` blocks, where it would hide the cause)."""
        for g in (self.policy, self.critic, self.reference, self.preference, self.engines):
            if g is not None:
                try:
                    g.shutdown()
                except Exception as err:  # noqa: BLE001
                    print(f"warning: shutting down {g.role} failed: {type(err).__name__}: {err}", flush=True)
        if self.pg is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self.pg)
            self.pg = None


def start_roles(ctx: RunContext, sft: Path, pm: Path, local: bool = False) -> Roles:
    """Place the roles (Ray actors, or in this process with ``local``) and load their models; the
    critic only when the advantage estimator needs values."""
    cfg, a = ctx.cfg, ctx.cfg.algo
    r = cfg.ray
    if local and uses_vllm(cfg):
        raise ValueError("rollout.engine=vllm needs Ray actors for its engines; the in-process roles (local) "
                         "sample with hf")
    pg, with_critic = None, needs_values(a.advantage)
    if local:
        policy, critic, reference, preference = (
            LocalGroup(cls, name, a.num_threads) if cls is not None else None for cls, name in
            ((PolicyActor, "policy"), (CriticActor if with_critic else None, "critic"), (ReferenceActor, "reference"),
             (PreferenceActor, "preference")))
        roles = Roles(policy, critic, reference, preference)
    else:
        if r.colocate:
            if ctx.pool is not None:  # idle groups of earlier stages hold resources the bundle needs
                ctx.pool.evict()
            pg = colocated_pg([r.policy, *([r.critic] if with_critic else []), r.reference, r.preference,
                               *([r.rollout] if uses_vllm(cfg) else [])])

        def group(cls: type, name: str, res: Any) -> RoleGroup:  # colocated roles are not pooled
            return ctx.group(cls, name, res, a.num_threads, method_name(cfg), pg=pg)

        roles = Roles(group(PolicyActor, "policy", r.policy),
                      group(CriticActor, "critic", r.critic) if with_critic else None,
                      group(ReferenceActor, "reference", r.reference),
                      group(PreferenceActor, "preference", r.preference), pg)
    steps = a.iterations * a.epochs * a.mini_batches
    critic_path = pm if a.critic_init == "pm" else sft
    inits = [
        (roles.policy, roles.policy.submit(
            "init_model", None, spec=model_spec(cfg, sft, str(sft)),
            strategy=strategy_spec(cfg, r.policy.num_gpus > 0), optim=optim_config(a.policy_optim, steps))),
        *([(roles.critic, roles.critic.submit(
            "init_model", None, path=str(critic_path), drop_last_layer=cfg.pm.drop_last_layer,
            strategy=strategy_spec(cfg, r.critic.num_gpus > 0), optim=optim_config(a.critic_optim, steps),
            seed=cfg.seed, lora=lora_spec(cfg)))]
          if roles.critic is not None else []),
        (roles.reference, roles.reference.submit(
            "init_model", None, path=str(sft), strategy=strategy_spec(cfg, r.reference.num_gpus > 0))),
        (roles.preference, roles.preference.submit(
            "init_model", None, path=str(pm), drop_last_layer=False,
            strategy=strategy_spec(cfg, r.preference.num_gpus > 0))),
    ]
    try:
        def loaded() -> None:
            for g, refs in inits:
                g.wait(refs)

        if uses_vllm(cfg):  # the engines start from the SFT checkpoint, as the policy does
            roles.engines = start_engines(ctx, sft, "rollout", method_name(cfg), pg=pg, after=loaded)
        else:
            loaded()
    except BaseException:  # a role that failed to load (a lost actor): let no group outlive the attempt
        roles.shutdown()
        raise
    return roles
