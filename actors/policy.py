"""The policy actor: holds the trainable causal LM; trains it (SFT now, PPO later) and generates."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from actors.base import RoleActor
from actors.engine import OptimConfig, StrategySpec, TrainingEngine
from alignment.data.batching import collate
from alignment.generation import SamplingSpec, generate_replies
from alignment.loss_mask import Encoded
from alignment.losses.lm import masked_lm_loss
from alignment.models.causal_lm import ArchSpec, LoraSpec, apply_lora, build_tiny, load_causal_lm, mergeable
from alignment.models.tokenizer import load_tokenizer


@dataclass
class ModelSpec:
    """What to build: the tiny model (``path`` None) or a local checkpoint, and its tokenizer."""

    tokenizer_path: str
    path: str | None = None
    arch: ArchSpec = field(default_factory=ArchSpec)
    lora: LoraSpec = field(default_factory=LoraSpec)
    seed: int = 0


class PolicyActor(RoleActor):
    def init_model(self, spec: ModelSpec, strategy: StrategySpec, optim: OptimConfig | None) -> int:
        """Build the model and its engine; returns the number of trainable parameters."""
        self.tokenizer = load_tokenizer(spec.tokenizer_path)
        if spec.path is None:
            model = build_tiny(spec.arch, self.tokenizer, seed=spec.seed)
        else:
            model = load_causal_lm(spec.path, self.tokenizer)
        model = apply_lora(model, spec.lora)
        torch.manual_seed(spec.seed + self.rank)
        self.engine = TrainingEngine(model, optim or OptimConfig(lr=0.0), strategy, self.device)
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

    def sft_step(self, examples: list[Encoded]) -> dict[str, float]:
        """One optimizer step of masked next-token loss on this rank's share of the batch."""
        batch = {k: v.to(self.device) for k, v in collate(examples, self.tokenizer.pad_token_id).items()}
        out = self.engine.forward(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss, n_tokens = masked_lm_loss(out.logits, batch["labels"])
        self.engine.backward(loss)
        stats = self.engine.step()
        return {"loss": loss.item(), "tokens": float(n_tokens), **stats}

    def generate(self, prompts: list[str], sampling: SamplingSpec, batch_size: int, seed: int) -> list[str]:
        return generate_replies(self.engine.module, self.tokenizer, prompts, sampling, batch_size, seed + self.rank)

    def save(self, path: str) -> None:
        """Write a plain ``save_pretrained`` directory (LoRA merged) with the tokenizer; rank 0 writes."""

        def save_fn(module: Any, out: str) -> None:
            mergeable(module).save_pretrained(out)
            self.tokenizer.save_pretrained(out)

        self.engine.save_model(path, save_fn)
