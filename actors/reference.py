"""The reference actor: the frozen SFT model, for the per-token KL penalty of PPO."""

from __future__ import annotations

import torch

from actors.base import RoleActor
from actors.engine import StrategySpec, TrainingEngine
from alignment.losses.logprobs import token_logprobs
from alignment.models.causal_lm import load_causal_lm
from alignment.models.tokenizer import load_tokenizer
from alignment.rollout import Rollout, response_logits, response_tokens


class ReferenceActor(RoleActor):
    def init_model(self, path: str, bf16: bool = False, strategy: StrategySpec | None = None) -> None:
        """The SFT model at ``path`` behind a frozen engine of the policy's ``strategy`` (no optimizer):
        the same numerics as the policy's forward pass, so that the KL between identical weights is
        zero at the first iteration. (Cast to pure bf16 while the torch policy keeps fp32 weights
        under autocast, it would differ by 0.002-0.03 nats a token, a systematic k3 penalty.)
        ``bf16`` alone means the torch strategy in bf16."""
        self.tokenizer = load_tokenizer(path)
        model = load_causal_lm(path, self.tokenizer)
        self.engine = TrainingEngine(model, None, strategy or StrategySpec(bf16=bf16), self.device)

    def logprobs(self, rollout: Rollout, temperature: float = 1.0) -> torch.Tensor:
        """``[B, R]`` log-probs of the rollout's response tokens under the reference model."""
        ro = rollout.to(self.device)
        with torch.inference_mode():  # no autograd bookkeeping in the pass
            out = token_logprobs(response_logits(self.engine, ro), response_tokens(ro), temperature)
        return out.to("cpu", copy=True)  # one copy, made outside inference mode: a plain tensor for autograd
