"""The critic actor: a value model (initialised from the preference model by default) that
estimates per-token values and trains on the returns (clipped value loss)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from actors.base import ValueModelActor, token_shares
from alignment.losses.masked import masked_mean
from alignment.losses.ppo import explained_variance, value_loss
from alignment.models.shared_prefix import last_hidden_states
from alignment.rollout import Rollout, at_responses


@dataclass(frozen=True)
class CriticSpec:
    value_clip: float | None = 0.2
    epochs: int = 1
    mini_batches: int = 1


class CriticActor(ValueModelActor):
    """The PPO critic; ``init_model`` (``ValueModelActor``) loads it from the preference model or SFT."""

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

        def loss_fn(mb: Rollout, old_mb: torch.Tensor, ret_mb: torch.Tensor) -> tuple[torch.Tensor, dict]:
            loss, st = value_loss(self._values(mb), old_mb, ret_mb, mb.response_mask, spec.value_clip)
            return loss, {"value_loss": loss.detach(), **st}

        parts = list(zip(ro.split(spec.mini_batches), torch.tensor_split(old_values, spec.mini_batches),
                         torch.tensor_split(returns, spec.mini_batches)))
        def micro(part: tuple[Rollout, torch.Tensor, torch.Tensor]) -> list[tuple[tuple, float]]:
            k = self.micro_batches(part[0].sequences.size(0))  # a token-mean loss: token shares
            rows = list(zip(part[0].split(k), torch.tensor_split(part[1], k), torch.tensor_split(part[2], k)))
            return list(zip(rows, token_shares([r[0].response_mask for r in rows])))

        stats = {f"critic/{k}": v for k, v in self.minibatch_steps(spec.epochs, parts, loss_fn, micro).items()}
        mask = ro.response_mask
        stats["critic/explained_variance"] = explained_variance(old_values, returns, mask).item()
        stats["critic/value_mean"] = masked_mean(old_values, mask).item()
        return stats | {"tokens": mask.sum().item()}
