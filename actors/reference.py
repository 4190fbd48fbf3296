"""The reference actor: the frozen SFT model, for the per-token KL penalty of PPO."""

from __future__ import annotations

import torch

from actors.base import RoleActor
from alignment.losses.logprobs import token_logprobs
from alignment.models.causal_lm import load_causal_lm
from alignment.models.tokenizer import load_tokenizer
from alignment.rollout import Rollout, response_logits, response_tokens


class ReferenceActor(RoleActor):
    def init_model(self, path: str, bf16: bool = False) -> None:
        self.tokenizer = load_tokenizer(path)
        model = load_causal_lm(path, self.tokenizer)
        if bf16:
            model = model.to(torch.bfloat16)
        self.model = model.to(self.device).eval().requires_grad_(False)

    def logprobs(self, rollout: Rollout, temperature: float = 1.0) -> torch.Tensor:
        """``[B, R]`` log-probs of the rollout's response tokens under the reference model."""
        ro = rollout.to(self.device)
        with torch.inference_mode():  # no autograd bookkeeping in the pass
            out = token_logprobs(response_logits(self.model, ro), response_tokens(ro), temperature)
        return out.to("cpu", copy=True)  # one copy, made outside inference mode: a plain tensor for autograd
