"""The critic actor: a value model (initialised from the preference model by default) that
estimates per-token values, turns rewards into GAE advantages, and trains on the returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from actors.base import TrainableActor
from actors.engine import OptimConfig, StrategySpec, TrainingEngine
from alignment.losses.gae import gae
from alignment.losses.masked import masked_mean
from alignment.losses.ppo import explained_variance, value_loss
from alignment.models.tokenizer import load_tokenizer
from alignment.models.value_head import load_value_model
from alignment.rollout import Rollout, response_values


@dataclass(frozen=True)
class CriticSpec:
    gamma: float = 1.0
    lam: float = 0.95
    value_clip: float | None = 0.2
    epochs: int = 1
    mini_batches: int = 1


class CriticActor(TrainableActor):
    def init_model(self, path: str, drop_last_layer: bool, strategy: StrategySpec, optim: OptimConfig,
                   seed: int = 0) -> int:
        """A value model from ``path``: a preference model keeps its head; an SFT model gets a new one."""
        torch.manual_seed(seed)
        self.tokenizer = load_tokenizer(path)
        model = load_value_model(path, drop_last_layer=drop_last_layer)
        model.config.pad_token_id = self.tokenizer.pad_token_id
        self.engine = TrainingEngine(model, optim, strategy, self.device)
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

    def _values(self, ro: Rollout) -> torch.Tensor:
        """``[B, R]`` values, through the engine (so DDP / DeepSpeed see the forward pass)."""
        out = self.engine(input_ids=ro.sequences, attention_mask=ro.attention_mask, output_hidden_states=True)
        values = self.engine.module.score(out.hidden_states[-1]).squeeze(-1)  # final, normed hidden state
        return response_values(values.float(), ro)

    def update(self, rollout: Rollout, rewards: torch.Tensor, spec: CriticSpec) -> dict:
        """Values of the rollout, GAE advantages and returns from ``rewards``, then the value-loss
        updates. With one epoch of one mini-batch the values come from the training forward pass
        itself (no separate inference pass). Returns advantages, returns and stats."""
        ro, rewards = rollout.to(self.device), rewards.to(self.device)
        mask = ro.response_mask
        if spec.mini_batches == 1:
            first = self._values(ro)
            old_values = first.detach()
        else:
            with torch.no_grad():
                old_values = self._values(ro)
        advantages, returns = gae(rewards, old_values, mask, spec.gamma, spec.lam)
        stats: dict[str, float] = {}
        n = 0
        for epoch in range(spec.epochs):
            parts = zip(ro.split(spec.mini_batches), *(torch.tensor_split(x, spec.mini_batches)
                                                       for x in (old_values, returns)))
            for mb, old_mb, ret_mb in parts:
                values = first if (epoch == 0 and spec.mini_batches == 1) else self._values(mb)
                loss, st = value_loss(values, old_mb, ret_mb, mb.response_mask, spec.value_clip)
                self.engine.backward(loss)
                step = self.engine.step()
                n += 1
                for k, v in {"value_loss": loss.item(), **{k: float(v) for k, v in st.items()}, **step}.items():
                    stats[k] = stats.get(k, 0.0) + v
        stats = {f"critic/{k}": v / n for k, v in stats.items()}
        stats["critic/explained_variance"] = explained_variance(old_values, returns, mask).item()
        stats["critic/value_mean"] = masked_mean(old_values, mask).item()
        stats["tokens"] = mask.sum().item()
        return {"advantages": advantages.cpu(), "returns": returns.cpu(), "stats": stats}
