"""The critic actor: a value model (initialised from the preference model by default) that
estimates per-token values and trains on the returns (clipped value loss)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from actors.base import TrainableActor
from actors.engine import OptimConfig, StrategySpec, TrainingEngine
from alignment.losses.masked import masked_mean
from alignment.losses.ppo import explained_variance, value_loss
from alignment.models.shared_prefix import last_hidden_states
from alignment.models.tokenizer import load_tokenizer
from alignment.models.value_head import load_value_model
from alignment.rollout import Rollout, at_responses


@dataclass(frozen=True)
class CriticSpec:
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
        hidden = last_hidden_states(self.engine, ro.sequences, ro.attention_mask)  # final, normed
        values = self.engine.module.score(hidden).squeeze(-1)
        return at_responses(values.float(), ro)

    @torch.no_grad()
    def values(self, rollout: Rollout) -> torch.Tensor:
        """``[B, R]`` values of the states before each response token (the rollout's old values)."""
        return self._values(rollout.to(self.device)).cpu()

    def update(self, rollout: Rollout, old_values: torch.Tensor, returns: torch.Tensor,
               spec: CriticSpec) -> dict[str, float]:
        """Clipped value-loss updates towards ``returns``: ``spec.epochs`` passes of
        ``spec.mini_batches`` optimizer steps over this rank's share. Returns mean stats."""
        ro = rollout.to(self.device)
        old_values, returns = old_values.to(self.device), returns.to(self.device)
        sums: dict[str, float] = {}
        n = 0
        for _ in range(spec.epochs):
            parts = zip(ro.split(spec.mini_batches), torch.tensor_split(old_values, spec.mini_batches),
                        torch.tensor_split(returns, spec.mini_batches))
            for mb, old_mb, ret_mb in parts:
                loss, st = value_loss(self._values(mb), old_mb, ret_mb, mb.response_mask, spec.value_clip)
                self.engine.backward(loss)
                step = self.engine.step()
                n += 1
                for k, v in {"value_loss": loss.item(), **{k: float(v) for k, v in st.items()}, **step}.items():
                    sums[k] = sums.get(k, 0.0) + v
        mask = ro.response_mask
        stats = {f"critic/{k}": v / n for k, v in sums.items()}
        stats["critic/explained_variance"] = explained_variance(old_values, returns, mask).item()
        stats["critic/value_mean"] = masked_mean(old_values, mask).item()
        return stats | {"tokens": mask.sum().item()}
