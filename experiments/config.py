"""Structured configs: the schema that validates every key of the Hydra tree under conf/.

They are registered in Hydra's ConfigStore as ``lab_schema``; ``conf/config.yaml`` builds on
it, so an unknown key (``trainer.lrr=``) or a wrong type fails before any work starts, with
a message that names the key.
"""

import copy
import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from actors.resources import ActorResources

KEY = "key"
"""Field metadata for cache keys (``as_key``): ``"omit"`` never enters a key (it cannot change what a
stage makes); ``"if_set"`` enters only when it differs from its default, so an option added later
leaves the keys of artifacts made without it unchanged."""


def if_set(default: Any) -> Any:
    """A field with ``default`` that joins cache keys only when set to something else."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={KEY: "if_set"})
    return field(default=default, metadata={KEY: "if_set"})


def not_in_key(default: Any) -> Any:
    """A field with ``default`` that never joins a cache key."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={KEY: "omit"})
    return field(default=default, metadata={KEY: "omit"})


@dataclass
class ArchConfig:
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4
    max_position_embeddings: int = 512


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: List[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class ModelConfig:
    name: str = "tiny"  # "tiny": random-init Llama + BPE trained on the world; "pretrained": model.path
    path: Optional[str] = None  # local Hugging Face checkpoint directory (never downloaded)
    # "smollm2": model.path is SmolLM2-135M-Instruct, found or built in the artifact cache before Ray starts
    build: Optional[str] = if_set(None)
    vocab_size: int = 1024  # tiny tokenizer's BPE vocabulary
    arch: ArchConfig = field(default_factory=ArchConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    # "moss": MOSS's format and special tokens; "template": a pretrained chat model's own chat template
    chat_format: str = if_set("moss")


@dataclass
class WorldConfig:
    seed: int = 0  # the world itself; the run's ``seed`` drives sampling and init
    zh_share: float = 0.3
    turn_weights: List[float] = field(default_factory=lambda: [0.6, 0.3, 0.1])
    category_weights: Optional[Dict[str, float]] = None  # default: MOSS Table 5 mix
    tool_share: float = if_set(0.0)  # share of tool-use requests (MOSS §8: calculator, solver, search)
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    sft_source_weights: List[float] = field(default_factory=lambda: [1.0] * 6)


@dataclass
class DataConfig:
    source: str = "world"  # "world" or "moss_sft"
    path: Optional[str] = None  # MOSS-003 SFT .json/.jsonl when source=moss_sft
    n_train: int = 8000  # world conversations for SFT
    max_length: int = 384
    loss_on: List[str] = field(default_factory=lambda: ["moss", "inner_thoughts", "commands"])
    last_turn_only: bool = False
    world: WorldConfig = field(default_factory=WorldConfig)


@dataclass
class TrainerConfig:
    epochs: int = 1
    batch_size: int = 16  # global batch (sequences per optimizer step)
    lr: float = 4e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0
    max_steps: int = -1  # cap on optimizer steps; -1 for none
    # rows per forward/backward pass (gradient accumulation within a step; 0: the whole batch at once)
    micro_batch_size: int = if_set(0)
    # how a run goes, not what it makes: never in a cache key
    log_every: int = not_in_key(10)
    num_threads: int = not_in_key(2)  # torch CPU threads per actor
    # save the role's engine and the loop's place every N optimizer steps (0: never); an interrupted
    # stage of the same config resumes from its newest checkpoint by itself
    checkpoint_every: int = not_in_key(100)


@dataclass
class PMConfig:
    """Preference-model stage (MOSS §7.1): data, labeller and training."""

    n_prompts: int = 600  # world training prompts; 6 candidates and 15 labelled pairs each
    n_val_prompts: int = 60  # held-out (val split) prompts for accuracy and gold agreement
    labeller_temperature: float = 0.05
    data_path: Optional[str] = None  # preference JSONL instead of the world
    multi_response_path: Optional[str] = None  # multi-response JSONL instead of the world
    val_path: Optional[str] = None  # held-out preference file (real data), any format of data_format
    # the preference files' format: auto (detected from the first row), lab, hh, trl_conversational, trl_text
    data_format: str = if_set("auto")
    # where the labelled pairs come from: "auto" (pm.data_path / multi_response_path when set, else the
    # world's AI-feedback labeller), "world", "data" (the files), or "judge": the SFT model samples
    # pm.candidates replies per prompt of pm.prompts_path and judges.<pm.judge> labels every pair (MOSS §7.1)
    feedback: str = if_set("auto")
    judge: str = if_set("rm")  # rm | llm, with feedback=judge
    prompts_path: Optional[str] = if_set(None)  # feedback=judge: prompt file (default: the SFT data's prompts)
    prompts_format: str = if_set("auto")  # auto, prompt, messages, moss
    candidates: int = if_set(6)  # feedback=judge: replies sampled per prompt (all pairs labelled)
    drop_last_layer: bool = True  # the paper replaces the last decoder layer by the value head
    max_length: int = 384
    context_turns: int = 0  # the PM sees the last N turns (no meta-instruction); 0: the whole conversation
    # the first N world training prompts also get a reply sampled from the SFT model (eval sampling
    # settings) as a seventh candidate, as MOSS §7.1 mixes the SFT model's own samples into the
    # candidates: the PM then sees the SFT model's own mistakes, the replies PPO starts from
    sft_samples: int = if_set(0)
    # trainer.batch_size counts comparison groups: a prompt with its candidates and all their
    # labelled pairs (a pair from a preference file is a group of two)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


@dataclass
class PATConfig:
    """Preference-aware training (MOSS §7.2): tagging and fine-tuning."""

    n_train: int = 8000  # SFT conversations sampled, scored by the preference model and tagged
    n_buckets: int = 6
    rule: str = "quantile"  # "quantile" (equal frequency) or "fixed" (pat.thresholds)
    thresholds: Optional[List[float]] = None  # n_buckets - 1 ascending preference-model scores
    inference_tag: int = 100
    control_prompts: int = 48  # test prompts for the controllability curve (every tag)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


@dataclass
class QuarkConfig:
    """Quark (Lu et al., 2022), PAT made online: round 1 is PAT (``pat.*``); each later round samples
    replies to training prompts from the current model at tags drawn across the buckets, scores them
    with the preference model, adds them to the pool (the SFT data and every earlier round's samples),
    re-buckets the whole pool into ``pat.n_buckets`` quantile tags and fine-tunes on the tagged pool
    with a per-token KL penalty to the SFT model. Inference uses ``pat.inference_tag``."""

    rounds: int = 3  # round 1 is PAT; rounds 2.. sample, score, re-bucket and train
    prompts_per_round: int = 256  # training prompts sampled each round (world train prompts, from prompt_offset)
    samples_per_prompt: int = 2  # replies per prompt, each at its own tag drawn across the buckets
    prompt_offset: int = 5000  # world train prompts start here (the preference model's come first)
    kl_coef: float = 0.05  # weight of the per-token KL(policy || SFT) over the vocabulary (Quark's 0.05)
    entropy_coef: float = 0.0  # weight of Quark's entropy bonus (0: off)
    examples_per_round: int = 2000  # pool records each later round trains on, drawn anew; -1: the whole pool
    max_new_tokens: int = 96  # sampling of the pool's new replies
    temperature: float = 1.0
    top_p: float = 1.0
    # the optimiser of rounds 2.. (each round starts a fresh one from the previous round's model)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


@dataclass
class OptimizerConfig:
    lr: float = 1e-6
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    min_lr_ratio: float = 1.0  # 1.0: constant after warmup; < 1 decays to lr * min_lr_ratio (cosine)
    max_grad_norm: float = 1.0
    micro_batch_size: int = if_set(0)  # rollout rows per forward/backward pass of an update step (0: all)


@dataclass
class PPOConfig:
    """RLHF with PPO (MOSS §7.2): rollouts, KL-penalised preference-model reward, GAE, clipped updates."""

    iterations: int = 100  # rollout -> score -> advantages -> updates
    rollout_batch_size: int = 32  # responses per iteration (rollout_batch_size / group_size prompts), all ranks
    prompt_offset: int = 5000  # world train prompts start here (PM training uses the first ones)
    max_new_tokens: int = 96
    min_new_tokens: int = 0
    temperature: float = 1.0  # rollout sampling; log-probs are taken at the same temperature
    top_p: float = 1.0
    beta: float = 0.02  # KL penalty coefficient
    kl_estimator: str = "k1"  # k1 | k2 | k3
    clip: float = 0.2  # policy ratio clip
    value_clip: Optional[float] = 0.2
    gamma: float = 1.0
    lam: float = 0.95
    epochs: int = 1  # passes over each rollout batch
    mini_batches: int = 1  # optimizer steps per pass, per trainable role
    whiten_advantages: bool = True
    # the parts a method swaps, by registered name (alignment/losses/registry.py); +experiment=grpo / rloo set them
    advantage: str = if_set("gae")  # gae (needs the critic), grpo, rloo (group baselines: no critic role starts)
    group_size: int = if_set(1)  # responses per prompt, consecutive rows; rollout_batch_size counts responses
    kl_in: str = if_set("reward")  # reward: -beta * KL in the token rewards; loss: + beta * KL in the policy loss
    policy_loss: str = if_set("ppo_clip")
    normalize_reward: bool = True  # running mean/std of the preference-model score
    reward_clip: Optional[float] = 5.0  # clip of the (normalised) score
    # subtracted from the score of a reply that never ended (<eom>) before normalising, as TRL's
    # missing_eos_penalty; null: off
    missing_eos_penalty: Optional[float] = if_set(None)
    critic_init: str = "pm"  # "pm" (the preference model) or "sft" (new head on the SFT model)
    # rollout prompts from a file (default: the world's train prompts, or the SFT file's last human turns)
    prompts_path: Optional[str] = if_set(None)
    prompts_format: str = if_set("auto")  # auto, prompt, messages, moss
    ptx_coef: float = if_set(0.0)  # PPO-ptx: weight of the SFT loss mixed into each policy step (0: off)
    ptx_batch_size: int = 16  # SFT examples per iteration for that loss, over all policy ranks
    # policies saved along training (evenly spaced iterations, the final one apart) for the equal-KL table:
    # each is measured like every method's final point (experiments/equal_kl.py); 0: none
    path_points: int = 0
    policy_optim: OptimizerConfig = field(default_factory=OptimizerConfig)
    critic_optim: OptimizerConfig = field(default_factory=OptimizerConfig)
    # how a run goes, not what it makes: never in a cache key
    checkpoint_every: int = not_in_key(10)  # iterations; 0 disables
    keep_checkpoints: int = not_in_key(2)
    num_threads: int = not_in_key(2)  # torch CPU threads per actor
    # threads of the policy's update (0: num_threads): the other roles wait for it, so it may take their cores
    policy_update_threads: int = not_in_key(0)


@dataclass
class DPOConfig:
    """Direct preference optimisation (Rafailov et al., 2023) on the preference model's labelled pairs:
    the SFT model is the starting point and the frozen reference."""

    beta: float = 0.1  # strength of the pull to the reference (the implicit reward is beta * log-ratio)
    loss: str = "dpo"  # a preference loss of alignment.losses.registry: dpo (sigmoid), ipo, bradley_terry
    max_length: int = 384  # prompt + reply tokens of each sequence (the prompt's start and the reply's end go)
    n_prompts: int = -1  # the PM's first N training comparison groups (all their labelled pairs); -1: all
    # trainer.batch_size counts pairs (two sequences each)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


@dataclass
class StrategyConfig:
    name: str = "torch"  # "torch" or "deepspeed"
    zero_stage: int = 0
    offload: bool = False
    precision: str = "auto"  # "auto" (bf16 on GPU, fp32 on CPU), "fp32", "bf16"
    gradient_checkpointing: bool = False


@dataclass
class RayConfig:
    address: Optional[str] = None  # join this cluster; start a local one when null
    num_cpus: Optional[int] = None  # local cluster only
    include_dashboard: bool = True
    dashboard_host: str = "127.0.0.1"
    dashboard_port: Optional[int] = None  # None: 8265, or the next free port when another lab holds it
    colocate: bool = False  # PPO: rank i of every role shares one placement-group bundle (and its GPUs)
    reuse_actors: bool = True  # a stage's finished actors serve later stages of the run (no new processes)
    # the PPO loop (PPO, GRPO, RLOO): when an actor dies, start the roles afresh from the last checkpoint,
    # at most this many times per stage
    max_restarts: int = 2
    policy: ActorResources = field(default_factory=ActorResources)
    critic: ActorResources = field(default_factory=ActorResources)
    reference: ActorResources = field(default_factory=ActorResources)
    preference: ActorResources = field(default_factory=ActorResources)
    judge: ActorResources = field(default_factory=ActorResources)  # the reward-model judge (judges.rm)
    rollout: ActorResources = field(default_factory=ActorResources)  # vLLM engines (rollout.engine=vllm)


def cluster_args(r: RayConfig, engine: str = "hf") -> dict[str, Any]:
    """The keyword arguments of ``actors.session.init_ray`` from the ``ray`` settings. With vLLM
    engines (``engine``) a local cluster counts their CPUs on top of the machine's: the engines
    sample while the trainers wait and the reverse, threads on the same cores."""
    num_cpus = r.num_cpus
    if engine == "vllm" and r.address is None and num_cpus is None:
        num_cpus = (os.cpu_count() or 1) + math.ceil(r.rollout.num_cpus * r.rollout.num_actors)
    return {"address": r.address, "num_cpus": num_cpus, "include_dashboard": r.include_dashboard,
            "dashboard_host": r.dashboard_host, "dashboard_port": r.dashboard_port}


@dataclass
class LoggerConfig:
    wandb: bool = True
    project: str = "alignment-lab"
    entity: Optional[str] = None
    mode: str = "offline"  # WANDB_MODE in the environment overrides it
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)


@dataclass
class EvalConfig:
    n_prompts: int = 128  # held-out test prompts
    batch_size: int = 64
    max_new_tokens: int = 96
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 50  # transformers' default, which the MOSS demo's generate call kept; 0: none
    repetition_penalty: float = 1.02
    do_sample: bool = True
    evaluate_init: bool = True  # also judge the untrained model
    # held-out prompts from a file (auto, prompt, messages or moss format); default: the world's test prompts
    prompts_path: Optional[str] = not_in_key(None)
    prompts_format: str = not_in_key("auto")
    # judges of the head-to-head, each reported in its own row: gold (the world's judge, world prompts
    # only), pm (the run's preference model), rm (judges.rm), llm (judges.llm). Default: gold and pm on
    # the world's prompts, pm on a prompt file
    judges: Optional[List[str]] = not_in_key(None)


JUDGES = ("gold", "pm", "rm", "llm")


@dataclass
class RMJudgeConfig:
    """An independent reward model: a local Hugging Face sequence-classification directory with one
    score, its own tokenizer and chat template, hosted on a Ray actor (ray.judge)."""

    path: Optional[str] = None
    max_length: int = 1024
    batch_size: int = 16


@dataclass
class LLMJudgeConfig:
    """A judge behind an OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp, a hosted API).
    The key is read from the environment variable named by ``api_key_env``; it is never stored."""

    base_url: Optional[str] = None  # e.g. http://127.0.0.1:8000/v1
    model: Optional[str] = None
    api_key_env: Optional[str] = None  # e.g. OPENAI_API_KEY; null for a local server without a key
    concurrency: int = 8  # requests in flight
    timeout: float = 60.0  # seconds per request
    max_retries: int = 4  # retries with exponential backoff
    max_tokens: int = 16
    temperature: float = 0.0
    cache: bool = True  # verdicts kept on disk under <cache>/llm-judge/: a rerun asks nothing twice
    # a comparison fails when more of its items than this share end in an error (a refused request, or
    # garbage after max_retries); fewer are ties, counted as errors in results.json
    max_error_share: float = not_in_key(0.02)
    # who answers, for the verdict cache and the judge-labelled pairs' key; null: a digest of the
    # server's own listing of the model (set it when a server describes different weights alike)
    fingerprint: Optional[str] = None


@dataclass
class JudgesConfig:
    rm: RMJudgeConfig = field(default_factory=RMJudgeConfig)
    llm: LLMJudgeConfig = field(default_factory=LLMJudgeConfig)


@dataclass
class CompareConfig:
    # the methods trained and judged against SFT and each other (any of experiments.stages.chain.METHODS)
    methods: List[str] = field(default_factory=lambda: ["pat", "ppo"])
    concurrent: bool = True  # train the methods side by side; false: one after the other (for timing)
    max_parallel: int = 2  # with concurrent: how many methods train at once
    # the PPO loop's settings for GRPO and RLOO when compare trains them (PPO's are ``algo``):
    # conf/algo/grpo.yaml and rloo.yaml, placed here by conf/experiment/compare.yaml
    grpo: PPOConfig = field(default_factory=PPOConfig)
    rloo: PPOConfig = field(default_factory=PPOConfig)
    # torch threads per PAT actor once PPO has finished and left its cores (0: leave them as they are)
    pat_threads_after_ppo: int = 2
    # added to the OS niceness of PAT's actors while both run (Ray starts its workers at 15, so 10 puts
    # PAT at 19): PAT takes the CPU time PPO leaves idle (its policy generates on one core while the
    # other roles wait) rather than slowing PPO down
    pat_nice: int = 10


@dataclass
class BoNConfig:
    """Best-of-n (``+experiment=bon``): the SFT model samples ``n_max`` replies per held-out prompt
    once (eval sampling settings); the preference model picks the best of the first n, for each n."""

    n_max: int = 16  # samples per prompt; best-of-n_max is the method ``bon``
    ns: List[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])  # the curve's points


@dataclass
class ToolsConfig:
    """MOSS's tools (§8): multi-pass inference wherever the lab generates replies (evaluation, PAT's
    and the preference model's sampling, the chat command) for prompts whose meta-instruction
    switches tools on; each Commands field runs at most ``max_calls`` calls."""

    enabled: bool = if_set(False)
    max_calls: int = if_set(8)


@dataclass
class RolloutConfig:
    """The generation engine (``alignment.generation``; ``experiments/runtime/engines.py``): transformers'
    ``generate`` in the policy's own actors (``hf``, the default), or vLLM engines in their own Ray
    actors (``vllm``: ``ray.rollout`` places them), for PPO/GRPO/RLOO rollouts, evaluation, the
    preference model's candidates, best-of-n and the passes of tool use."""

    engine: str = if_set("hf")  # hf | vllm
    tensor_parallel_size: int = if_set(1)  # GPUs per engine
    dtype: str = if_set("auto")  # auto (bfloat16 on GPUs, float32 on the CPU), float32, bfloat16, float16
    sync: str = not_in_key("auto")  # auto (nccl between own GPUs, else object_store) | object_store | nccl
    gpu_memory_utilization: float = not_in_key(0.5)  # share of each GPU for an engine's weights and KV cache
    kv_cache_gib: float = not_in_key(1.0)  # the CPU backend's KV-cache space per engine
    max_model_len: Optional[int] = not_in_key(None)  # an engine's longest sequence (null: the model's own)
    enforce_eager: bool = not_in_key(True)  # no CUDA graphs: starts in seconds (False: faster decoding on GPUs)


@dataclass
class ChatConfig:
    """``+experiment=chat``: talk to a policy in the terminal (``experiments/commands/chat.py``)."""

    # sft, pat, ppo or dpo: this config's model in the cache, as the chain (+experiment=pat, ppo, dpo)
    # keys it; anything else: a model directory (config.json, weights and tokenizer)
    model: Optional[str] = None
    # the directory that loads: filled in from chat.model by preflight (chat.resolve_model); set by
    # hand it is the older spelling of chat.model=<dir>
    model_path: Optional[str] = None
    tag: Optional[int] = None  # PAT's quality tag (0..100); null: none, or pat.inference_tag with chat.model=pat
    tools: List[str] = field(default_factory=list)  # call names switched on: Calculate, Solve, Search
    show_plugin: bool = True  # print each reply's Inner Thoughts, Commands and Results before it


@dataclass
class LabConfig:
    stage: str = MISSING  # set by an experiment preset: +experiment=sft
    seed: int = 0
    cache_dir: Optional[str] = None  # default: $ALIGNMENT_LAB_CACHE or ~/.cache/alignment-lab
    use_cache: bool = True
    # every stage continues an interrupted run of the same config from its newest checkpoint;
    # false: start afresh (that config's checkpoints are dropped)
    resume: bool = True
    sweep_dir: Optional[str] = None  # +experiment=report: the multirun dir to report on
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    pm: PMConfig = field(default_factory=PMConfig)
    pat: PATConfig = field(default_factory=PATConfig)
    algo: PPOConfig = field(default_factory=PPOConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    quark: QuarkConfig = field(default_factory=QuarkConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    judges: JudgesConfig = field(default_factory=JudgesConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    bon: BoNConfig = field(default_factory=BoNConfig)
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    chat: ChatConfig = field(default_factory=ChatConfig)
    extra: Dict[str, Any] = field(default_factory=dict)  # free-form notes, logged with the run


def as_plain(node: Any) -> Any:
    """A config dataclass as plain dicts and lists (for cache keys and logging)."""
    return dataclasses.asdict(node) if dataclasses.is_dataclass(node) else node


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING


def as_key(node: Any) -> Any:
    """``as_plain`` for a cache key: fields marked ``not_in_key`` are left out, and fields marked
    ``if_set`` are left out while they hold their default."""
    if not dataclasses.is_dataclass(node):
        return node
    out = {}
    for f in dataclasses.fields(node):
        value, rule = getattr(node, f.name), f.metadata.get(KEY)
        if rule == "omit" or (rule == "if_set" and value == _default(f)):
            continue
        out[f.name] = as_key(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
    return out


PATH_SUFFIXES = ("path", "_dir")
"""A config field whose name ends so holds a user path (``model.path``, ``pm.val_path``, ``cache_dir``...)."""
_VAR = re.compile(r"\$(\w+|\{[^}]*\})")


def expand_user_paths(node: Any, prefix: str = "") -> None:
    """Expand ``~`` and ``$VARS`` in every path field of the config tree ``node``, in place: the one place
    where user paths are expanded, before anything reads them. A variable that is not set fails, naming
    the key and the variable."""
    for f in dataclasses.fields(node):
        value, key = getattr(node, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            expand_user_paths(value, f"{key}.")
        elif isinstance(value, str) and f.name.endswith(PATH_SUFFIXES):
            expanded = os.path.expanduser(os.path.expandvars(value))
            unset = _VAR.search(expanded)
            if unset is not None:
                raise ValueError(f"{key}: {value!r} names the environment variable {unset.group(1).strip('{}')}, "
                                 "which is not set")
            setattr(node, f.name, expanded)


def register() -> None:
    """Register the schema with Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="lab_schema", node=LabConfig)
    groups = {"model": ModelConfig, "data": DataConfig, "trainer": TrainerConfig, "pm": PMConfig, "pat": PATConfig,
              "algo": PPOConfig, "dpo": DPOConfig, "quark": QuarkConfig,
              "strategy": StrategyConfig, "ray": RayConfig, "logger": LoggerConfig}
    for group, node in groups.items():
        cs.store(group=group, name=f"{group}_schema", node=node)
