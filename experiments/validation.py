"""Whether a run can go: the closed sets of the settings and ``validate``, the one place every
setting and every cross-field rule is checked before Ray starts. It reads the config and changes
nothing; the derived choices it checks are ``experiments.choices``', and the input files, the
judges' servers and the model a chat loads are ``experiments.preflight``'s."""

from __future__ import annotations

import re
from typing import Any

from alignment.data.formats import PREFERENCE_FORMATS, PROMPT_FORMATS
from alignment.pat import check_bucketing
from experiments.choices import eval_judges, pm_feedback, runs_rl_loop
from experiments.config import JUDGES, DPOConfig, LabConfig, PPOConfig, RayConfig

FEEDBACK = ("auto", "world", "data", "judge")
# the closed sets of the config, checked by ``validate`` before anything starts
MODELS = ("tiny", "pretrained")
DATA_SOURCES = ("world", "moss_sft")
STRATEGIES = ("torch", "deepspeed")
PRECISIONS = ("auto", "fp32", "bf16")
CRITIC_INITS = ("pm", "sft")
ENGINES = ("hf", "vllm")  # rollout.engine
SYNC_MODES = ("auto", "object_store", "nccl")  # rollout.sync
ENGINE_DTYPES = ("auto", "float32", "bfloat16", "float16")  # rollout.dtype
TOOL_CALLS = ("Calculate", "Solve", "Search")  # MOSS's tools the lab runs (alignment/tools); no Text2Image



def ranks_may_share_a_gpu(num_actors: int, gpus_per_rank: float) -> bool:
    """Whether Ray may put two of ``num_actors`` data-parallel ranks, each reserving ``gpus_per_rank``
    of a GPU (a role's ``num_gpus``, or a colocated bundle's sum), on the same GPU: it packs fractions
    of one GPU until they add up to 1, and NCCL refuses two ranks of one group on one device
    ("Duplicate GPU detected")."""
    return num_actors > 1 and 0 < gpus_per_rank <= 0.5


def shared_gpu_error(what: str, num_actors: int, gpus_per_rank: float) -> str | None:
    """Why ``what`` (e.g. ``ray.policy``) cannot run its ranks on those GPU shares, or None."""
    if not ranks_may_share_a_gpu(num_actors, gpus_per_rank):
        return None
    return (f"{what}: {num_actors} data-parallel ranks with {gpus_per_rank:g} GPU each: Ray may pack two of them "
            "onto one GPU, and NCCL takes no two ranks of a group on one device. Give each rank more than half "
            "a GPU (num_gpus > 0.5, or whole GPUs), or use one rank (num_actors=1)")

def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{key}: {value!r}; choose one of {', '.join(allowed)}")


def validate_inputs(lab: LabConfig) -> None:
    """Settings of the user's data and judges: formats, feedback, the judges' keys."""
    _choice("pm.data_format", lab.pm.data_format, PREFERENCE_FORMATS)
    for key, fmt in (("pm.prompts_format", lab.pm.prompts_format), ("eval.prompts_format", lab.eval.prompts_format),
                     ("algo.prompts_format", lab.algo.prompts_format)):
        _choice(key, fmt, PROMPT_FORMATS)
    _choice("pm.feedback", lab.pm.feedback, FEEDBACK)
    _choice("pm.judge", lab.pm.judge, ("rm", "llm"))
    feedback = pm_feedback(lab)
    if feedback == "data" and not (lab.pm.data_path or lab.pm.multi_response_path):
        raise ValueError("pm.feedback=data needs pm.data_path or pm.multi_response_path")
    if feedback == "data" and not lab.pm.val_path:
        raise ValueError("pm.val_path: preference data from files needs a held-out preference file")
    if feedback == "judge" and lab.pm.candidates < 2:
        raise ValueError(f"pm.candidates: {lab.pm.candidates}; at least 2 replies per prompt to compare")
    if feedback == "judge" and not lab.eval.do_sample:
        raise ValueError("pm.feedback=judge samples its candidates with the eval.* settings, and eval.do_sample is "
                         "false: every candidate would be the same reply")
    e = lab.eval
    if e.do_sample and not (e.temperature > 0 and 0 < e.top_p <= 1 and e.top_k >= 0):
        raise ValueError("eval.temperature must be > 0, eval.top_p in (0, 1] and eval.top_k >= 0 (0: no top-k), got "
                         f"{e.temperature}, {e.top_p}, {e.top_k}")
    judges = eval_judges(lab)
    if not judges:
        raise ValueError("eval.judges is empty; list at least one of " + ", ".join(JUDGES))
    for j in judges:
        _choice("eval.judges", j, JUDGES)
    if len(set(judges)) != len(judges):
        raise ValueError(f"eval.judges: {judges} names a judge twice")
    if "gold" in judges and lab.eval.prompts_path is not None:
        raise ValueError("eval.judges: the gold judge knows only the world's prompts, and eval.prompts_path is "
                         f"set ({lab.eval.prompts_path}); use pm, rm or llm")
    used = set(judges) | ({lab.pm.judge} if feedback == "judge" else set())
    if "rm" in used and not lab.judges.rm.path:
        raise ValueError("judges.rm.path is required by the rm judge: a local sequence-classification directory")
    llm = lab.judges.llm
    if "llm" in used:
        for key in ("base_url", "model"):
            if not getattr(llm, key):
                raise ValueError(f"judges.llm.{key} is required by the llm judge")
    if llm.api_key_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", llm.api_key_env):
        raise ValueError("judges.llm.api_key_env must be the NAME of an environment variable that holds the key "
                         "(letters, digits, underscores), never the key itself")
    if llm.concurrency < 1 or llm.timeout <= 0 or llm.max_retries < 0 or llm.max_tokens < 1:
        raise ValueError("judges.llm: concurrency and max_tokens must be at least 1, timeout > 0, max_retries >= 0 "
                         f"(got {llm.concurrency}, {llm.max_tokens}, {llm.timeout}, {llm.max_retries})")
    if not 0.0 <= llm.max_error_share < 1.0:
        raise ValueError(f"judges.llm.max_error_share must lie in [0, 1), got {llm.max_error_share}")


def validate_algo(a: PPOConfig, key: str = "algo") -> None:
    """The RL loop's swappable parts (checked against the registries of ``alignment.losses``) and its
    grouping: ``algo.group_size`` responses per prompt, grpo / rloo need groups of at least 2
    (``key``: where the settings sit, ``compare.grpo`` for compare's GRPO)."""
    # importing any module of alignment.losses imports them all (its __init__), filling the registries
    from alignment.losses.gae import needs_values
    from alignment.losses.registry import ADVANTAGE_ESTIMATORS, KL_ESTIMATORS, POLICY_LOSSES

    ADVANTAGE_ESTIMATORS.check(f"{key}.advantage", a.advantage)
    POLICY_LOSSES.check(f"{key}.policy_loss", a.policy_loss)
    KL_ESTIMATORS.check(f"{key}.kl_estimator", a.kl_estimator)
    _choice(f"{key}.kl_in", a.kl_in, ("reward", "loss"))
    if a.group_size < 1:
        raise ValueError(f"{key}.group_size must be at least 1, got {a.group_size}")
    if a.rollout_batch_size % a.group_size:
        raise ValueError(f"{key}.rollout_batch_size ({a.rollout_batch_size}) counts responses: it must be a "
                         f"multiple of {key}.group_size ({a.group_size})")
    if not needs_values(a.advantage) and a.group_size < 2:
        raise ValueError(f"{key}.advantage={a.advantage} compares the responses to one prompt: {key}.group_size "
                         f"must be at least 2, got {a.group_size}")


def validate_rl(a: PPOConfig, r: RayConfig, key: str = "algo", zero3: bool = False) -> None:
    """The PPO loop's settings against each other and against the roles' ranks (``key``: where the
    settings sit, ``compare.grpo`` for compare's GRPO; ``zero3``: DeepSpeed ZeRO-3, whose ranks must
    run the same forward passes)."""
    from alignment.losses.gae import needs_values

    _choice(f"{key}.critic_init", a.critic_init, CRITIC_INITS)
    for name in ("iterations", "rollout_batch_size", "epochs", "mini_batches", "max_new_tokens", "ptx_batch_size"):
        if getattr(a, name) < 1:
            raise ValueError(f"{key}.{name} must be at least 1, got {getattr(a, name)}")
    if a.ptx_coef < 0:
        raise ValueError(f"{key}.ptx_coef must be >= 0, got {a.ptx_coef}")
    for name in ("clip", "beta"):
        if getattr(a, name) < 0 or (name == "clip" and a.clip == 0):
            raise ValueError(f"{key}.{name} must be {'> 0' if name == 'clip' else '>= 0'}, got {getattr(a, name)}")
    if not (a.temperature > 0 and 0 < a.top_p <= 1):
        raise ValueError(f"{key}.temperature must be > 0 and top_p in (0, 1], got {a.temperature}, {a.top_p}")
    for name in ("reward_clip", "value_clip"):
        if getattr(a, name) is not None and getattr(a, name) <= 0:
            raise ValueError(f"{key}.{name} must be > 0 or null (no clipping), got {getattr(a, name)}")
    if a.missing_eos_penalty is not None and a.missing_eos_penalty < 0:
        raise ValueError(f"{key}.missing_eos_penalty must be >= 0 or null (off), got {a.missing_eos_penalty}")
    for role in ("policy", "critic", "reference", "preference") if needs_values(a.advantage) else \
            ("policy", "reference", "preference"):
        n, need = getattr(r, role).num_actors, a.mini_batches if role in ("policy", "critic") else 1
        if a.rollout_batch_size // n < need:
            raise ValueError(f"{key}.rollout_batch_size ({a.rollout_batch_size}) gives each of the {n} ranks of "
                             f"ray.{role}.num_actors fewer than {need} rows ({key}.mini_batches: {a.mini_batches})")
        if zero3 and n > 1 and role in ("policy", "critic"):
            _lockstep_steps(a, key, role, n)


def _lockstep_steps(a: PPOConfig, key: str, role: str, n: int) -> None:
    """Under ZeRO-3 every forward pass is a collective of the role's ranks, so each of their update
    steps must run the same passes: equal rows per rank and step (hence equal micro-batches), and
    PPO-ptx examples in every policy step (a step without any skips the SFT pass the others run)."""
    steps = n * a.mini_batches
    if a.rollout_batch_size % steps:
        raise ValueError(f"{key}.rollout_batch_size ({a.rollout_batch_size}) does not split evenly over ray.{role}."
                         f"num_actors x {key}.mini_batches ({n} x {a.mini_batches}): under ZeRO-3 every rank's "
                         "every step must run the same forward passes")
    if role == "policy" and a.ptx_coef and a.ptx_batch_size < steps:
        raise ValueError(f"{key}.ptx_batch_size ({a.ptx_batch_size}) is below ray.policy.num_actors x "
                         f"{key}.mini_batches ({n} x {a.mini_batches}): under ZeRO-3 every rank's every step needs "
                         "PPO-ptx examples, or its SFT forward pass is missing from the others' collective")


def partitions_weights(lab: LabConfig) -> bool:
    """Whether the run's trainers partition their weights (DeepSpeed ZeRO-3): then every forward pass
    is a collective of a role's ranks."""
    return lab.strategy.name == "deepspeed" and lab.strategy.zero_stage == 3


def validate_resources(lab: LabConfig) -> None:
    """The roles' resources, and colocation's rule that every role has the same number of ranks."""
    r = lab.ray
    if r.max_restarts < 0:
        raise ValueError(f"ray.max_restarts must be >= 0, got {r.max_restarts}")
    for role in ("policy", "critic", "reference", "preference", "judge", "rollout"):
        res = getattr(r, role)
        if res.num_actors < 1 or res.num_cpus < 0 or res.num_gpus < 0:
            raise ValueError(f"ray.{role}: num_actors must be at least 1 and num_cpus, num_gpus >= 0, got "
                             f"{res.num_actors}, {res.num_cpus}, {res.num_gpus}")
    colocated = r.colocate and runs_rl_loop(lab.stage)  # then a bundle's sum counts, below
    for role in ("judge",) if colocated else ("policy", "critic", "reference", "preference", "judge"):
        res = getattr(r, role)  # the roles' ranks form NCCL groups (the engines' do not)
        why = shared_gpu_error(f"ray.{role}", res.num_actors, res.num_gpus)
        if why is not None:
            raise ValueError(why)
    if colocated:
        from alignment.losses.gae import needs_values

        roles = ("policy", "critic", "reference", "preference") if needs_values(lab.algo.advantage) else \
            ("policy", "reference", "preference")
        roles += ("rollout",) if lab.rollout.engine == "vllm" else ()
        sizes = {role: getattr(r, role).num_actors for role in roles}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"ray.colocate puts rank i of every role on one bundle: the roles need the same "
                             f"num_actors, got {sizes}")
        bundle_gpus = sum(getattr(r, role).num_gpus for role in roles)
        why = shared_gpu_error("ray.colocate", r.policy.num_actors, bundle_gpus)
        if why is not None:
            raise ValueError(f"{why} (a colocated bundle holds {' + '.join(roles)})")


def validate_rollout(lab: LabConfig) -> None:
    """The generation engine's settings (``rollout.*``); whether vLLM imports is ``preflight``'s."""
    r, res = lab.rollout, lab.ray.rollout
    _choice("rollout.engine", r.engine, ENGINES)
    _choice("rollout.sync", r.sync, SYNC_MODES)
    _choice("rollout.dtype", r.dtype, ENGINE_DTYPES)
    if r.tensor_parallel_size < 1:
        raise ValueError(f"rollout.tensor_parallel_size must be at least 1, got {r.tensor_parallel_size}")
    if r.engine != "vllm":
        return
    if r.tensor_parallel_size > 1 and res.num_gpus < r.tensor_parallel_size:
        raise ValueError(f"rollout.tensor_parallel_size={r.tensor_parallel_size} needs that many GPUs per engine: "
                         f"set ray.rollout.num_gpus (now {res.num_gpus})")
    if r.sync == "nccl" and (res.num_gpus == 0 or lab.ray.policy.num_gpus == 0):
        raise ValueError("rollout.sync=nccl broadcasts over GPUs: ray.policy.num_gpus and ray.rollout.num_gpus must "
                         "be > 0 (on the CPU use rollout.sync=object_store or auto)")
    if r.sync == "nccl" and (lab.ray.colocate or res.num_gpus < 1 or lab.ray.policy.num_gpus < 1):
        raise ValueError("rollout.sync=nccl needs the policy and the engines on whole GPUs of their own (no "
                         "ray.colocate, num_gpus >= 1): NCCL takes no two ranks on one device; use "
                         "rollout.sync=object_store or auto")
    if not 0 < r.gpu_memory_utilization <= 1:
        raise ValueError(f"rollout.gpu_memory_utilization must be in (0, 1], got {r.gpu_memory_utilization}")
    if r.kv_cache_gib <= 0:
        raise ValueError(f"rollout.kv_cache_gib must be > 0, got {r.kv_cache_gib}")
    if r.max_model_len is not None and r.max_model_len < 1:
        raise ValueError(f"rollout.max_model_len must be >= 1 or null (the model's own), got {r.max_model_len}")
    if lab.stage == "chat":
        raise ValueError("rollout.engine=vllm: the chat command generates in its own process with transformers; "
                         "leave rollout.engine=hf")


def validate(lab: LabConfig) -> None:
    """Fail before anything starts, naming the key, the value and what is allowed, on settings no
    stage can run with: the one place every setting and every cross-field rule is checked (the
    input files and judges are ``experiments.preflight``'s)."""
    _choice("model.name", lab.model.name, MODELS)
    _choice("data.source", lab.data.source, DATA_SOURCES)
    _choice("strategy.name", lab.strategy.name, STRATEGIES)
    _choice("strategy.precision", lab.strategy.precision, PRECISIONS)
    _choice("model.chat_format", lab.model.chat_format, ("moss", "template"))
    for key, t in (("trainer", lab.trainer), ("pm.trainer", lab.pm.trainer), ("pat.trainer", lab.pat.trainer),
                   ("dpo.trainer", lab.dpo.trainer), ("quark.trainer", lab.quark.trainer),
                   ("algo.policy_optim", lab.algo.policy_optim),
                   ("algo.critic_optim", lab.algo.critic_optim)):
        if t.micro_batch_size < 0:
            raise ValueError(f"{key}.micro_batch_size: {t.micro_batch_size}; at least 0 (0: the whole batch at once)")
    if not 0 <= lab.strategy.zero_stage <= 3:
        raise ValueError(f"strategy.zero_stage: {lab.strategy.zero_stage}; choose 0, 1, 2 or 3 (DeepSpeed ZeRO)")
    if lab.strategy.name == "torch" and (lab.strategy.zero_stage or lab.strategy.offload):
        raise ValueError("strategy.zero_stage and strategy.offload are DeepSpeed's: set strategy.name=deepspeed")
    validate_resources(lab)
    validate_rollout(lab)
    if lab.tools.max_calls < 1:
        raise ValueError(f"tools.max_calls must be at least 1, got {lab.tools.max_calls}")
    for name in lab.chat.tools:
        _choice("chat.tools", name, TOOL_CALLS)
    if lab.chat.tag is not None and not 0 <= lab.chat.tag <= 100:
        raise ValueError(f"chat.tag: {lab.chat.tag}; a quality tag from 0 to 100, or null")
    for key, t in (("trainer", lab.trainer), ("pm.trainer", lab.pm.trainer), ("pat.trainer", lab.pat.trainer),
                   ("dpo.trainer", lab.dpo.trainer), ("quark.trainer", lab.quark.trainer)):
        for name in ("epochs", "batch_size", "log_every", "num_threads"):
            if getattr(t, name) < 1:
                raise ValueError(f"{key}.{name} must be at least 1, got {getattr(t, name)}")
        if t.checkpoint_every < 0:
            raise ValueError(f"{key}.checkpoint_every must be >= 0 (0: never), got {t.checkpoint_every}")
        if t.max_steps == 0 or t.max_steps < -1:
            raise ValueError(f"{key}.max_steps: {t.max_steps}; at least 1, or -1 for no cap")
    w = lab.data.world
    if not 0.0 <= w.tool_share < 1.0:
        raise ValueError(f"data.world.tool_share: {w.tool_share}; a share in [0, 1)")
    if not (w.val_fraction > 0 and w.test_fraction > 0 and w.val_fraction + w.test_fraction < 1):
        raise ValueError(f"data.world.val_fraction ({w.val_fraction}) and data.world.test_fraction "
                         f"({w.test_fraction}) must each be > 0 and sum to less than 1")
    try:
        check_bucketing(lab.pat.n_buckets, lab.pat.rule, lab.pat.thresholds)
    except ValueError as err:  # its messages start with the argument, named as under pat.*
        raise ValueError(f"pat.{err}") from None
    if not 0 <= lab.pat.inference_tag <= 100:
        raise ValueError(f"pat.inference_tag: {lab.pat.inference_tag}; a quality tag from 0 to 100")
    if lab.pat.control_prompts < 1:
        raise ValueError(f"pat.control_prompts must be at least 1, got {lab.pat.control_prompts}")
    validate_compare(lab)
    if lab.bon.n_max < 1:
        raise ValueError(f"bon.n_max must be at least 1, got {lab.bon.n_max}")
    if not lab.bon.ns:
        raise ValueError("bon.ns is empty; list the n of each best-of-n point, e.g. [1, 2, 4, 8, 16]")
    for n in lab.bon.ns:
        if not 1 <= n <= lab.bon.n_max:
            raise ValueError(f"bon.ns: {n}; each n must be between 1 and bon.n_max ({lab.bon.n_max})")
    if (lab.stage == "bon" or lab.stage == "compare" and "bon" in lab.compare.methods) and lab.bon.n_max > 1 \
            and not lab.eval.do_sample:
        raise ValueError("best-of-n samples its candidates with the eval.* settings, and eval.do_sample is false: "
                         "every candidate would be the same reply")
    validate_algo(lab.algo)
    if runs_rl_loop(lab.stage):
        validate_rl(lab.algo, lab.ray, zero3=partitions_weights(lab))
    validate_dpo(lab)
    validate_quark(lab)
    validate_inputs(lab)


def validate_compare(lab: LabConfig) -> None:
    c = lab.compare
    if not 0 <= c.pat_nice <= 19:
        raise ValueError(f"compare.pat_nice: {c.pat_nice}; a Linux nice value from 0 to 19")
    if c.max_parallel < 1:
        raise ValueError(f"compare.max_parallel must be at least 1, got {c.max_parallel}")
    # compare.methods' names are checked in preflight (check_methods): the stage table lists the methods
    if lab.stage == "compare":
        for m in ("grpo", "rloo"):
            if m in c.methods:
                validate_algo(getattr(c, m), f"compare.{m}")
                validate_rl(getattr(c, m), lab.ray, f"compare.{m}", partitions_weights(lab))
                if getattr(c, m).advantage != m:
                    raise ValueError(f"compare.{m}.advantage: {getattr(c, m).advantage!r}; compare's {m.upper()} "
                                     f"runs the {m} advantage estimator")


def validate_dpo(lab: LabConfig) -> None:
    d = lab.dpo
    if not d.beta > 0:
        raise ValueError(f"dpo.beta must be > 0, got {d.beta}")
    if d.max_length < 2:
        raise ValueError(f"dpo.max_length must be at least 2, got {d.max_length}")
    if d.n_prompts == 0 or d.n_prompts < -1:
        raise ValueError(f"dpo.n_prompts: {d.n_prompts}; at least 1, or -1 for all the PM's groups")
    trains = lab.stage == "dpo" or lab.stage == "compare" and "dpo" in lab.compare.methods
    if trains or d.loss != DPOConfig.loss:  # the losses' modules import torch: only when needed
        import alignment.losses.dpo  # noqa: F401  (registers the preference losses)
        from alignment.losses.registry import PREFERENCE_LOSSES

        PREFERENCE_LOSSES.check("dpo.loss", d.loss)


def validate_quark(lab: LabConfig) -> None:
    """Quark's settings (``quark.*``); its buckets and inference tag are PAT's, checked above."""
    q = lab.quark
    if q.rounds < 2:
        raise ValueError(f"quark.rounds must be at least 2 (round 1 is PAT: +experiment=pat), got {q.rounds}")
    for name in ("prompts_per_round", "samples_per_prompt", "max_new_tokens"):
        if getattr(q, name) < 1:
            raise ValueError(f"quark.{name} must be at least 1, got {getattr(q, name)}")
    for name in ("kl_coef", "entropy_coef", "prompt_offset"):
        if getattr(q, name) < 0:
            raise ValueError(f"quark.{name} must be >= 0, got {getattr(q, name)}")
    if q.examples_per_round == 0 or q.examples_per_round < -1:
        raise ValueError(f"quark.examples_per_round: {q.examples_per_round}; at least 1, or -1 for the whole pool")
    if not (q.temperature > 0 and 0 < q.top_p <= 1):
        raise ValueError(f"quark.temperature must be > 0 and quark.top_p in (0, 1], got {q.temperature}, {q.top_p}")
