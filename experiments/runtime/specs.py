"""What the drivers hand the actors, built from the config: the training strategy, the model to
load, the evaluation's sampling settings and an optimizer's schedule. One place for each, used by
every stage."""

from __future__ import annotations

from pathlib import Path
from typing import Union

from actors.engine import OptimConfig, StrategySpec
from actors.policy import ModelSpec
from alignment.generation import SamplingSpec
from alignment.models.causal_lm import ArchSpec, LoraSpec
from experiments.config import LabConfig, OptimizerConfig, TrainerConfig, as_plain


def strategy_spec(cfg: LabConfig, use_gpu: bool) -> StrategySpec:
    """The training strategy of a role (``strategy.*``); ``precision=auto`` means bf16 on a GPU."""
    precision = cfg.strategy.precision
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"strategy.precision: {precision!r}; choose auto, fp32 or bf16")
    bf16 = precision == "bf16" or (precision == "auto" and use_gpu)
    return StrategySpec(name=cfg.strategy.name, zero_stage=cfg.strategy.zero_stage, offload=cfg.strategy.offload,
                        bf16=bf16, gradient_checkpointing=cfg.strategy.gradient_checkpointing)


def model_spec(cfg: LabConfig, tokenizer_dir: Path, path: str | None = None) -> ModelSpec:
    """The policy to load: the checkpoint at ``path``, else ``model.path`` for a pretrained model, else
    a new model of ``model.arch``; with the run's LoRA settings and seed."""
    return ModelSpec(
        tokenizer_path=str(tokenizer_dir),
        path=path if path is not None else (cfg.model.path if cfg.model.name == "pretrained" else None),
        arch=ArchSpec(**as_plain(cfg.model.arch)), lora=lora_spec(cfg), seed=cfg.seed,
    )


def lora_spec(cfg: LabConfig) -> LoraSpec:
    """The run's LoRA settings (``model.lora``), for the policy and the value models alike."""
    return LoraSpec(**as_plain(cfg.model.lora))


def sampling_spec(cfg: LabConfig) -> SamplingSpec:
    """The evaluation's fixed sampling settings (``eval.*``)."""
    e = cfg.eval
    return SamplingSpec(max_new_tokens=e.max_new_tokens, temperature=e.temperature, top_p=e.top_p, top_k=e.top_k,
                        repetition_penalty=e.repetition_penalty, do_sample=e.do_sample)


def optim_config(o: Union[TrainerConfig, OptimizerConfig], steps: int) -> OptimConfig:
    """An optimizer and its schedule over ``steps`` from a stage's trainer (``trainer``, ``pm.trainer``,
    ...) or a PPO role's optimizer settings (``algo.policy_optim``, ``algo.critic_optim``)."""
    return OptimConfig(lr=o.lr, weight_decay=o.weight_decay, warmup_steps=int(o.warmup_ratio * steps),
                       total_steps=steps, min_lr_ratio=o.min_lr_ratio, max_grad_norm=o.max_grad_norm,
                       micro_batch_size=o.micro_batch_size)
