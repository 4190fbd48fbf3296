"""The reference actor: the frozen SFT model, for the per-token KL penalty of PPO and Quark."""

from __future__ import annotations

import torch

from actors.base import RoleActor
from actors.engine import StrategySpec, TrainingEngine
from alignment.data.batching import collate
from alignment.loss_mask import Encoded
from alignment.losses.logprobs import token_logprobs
from alignment.models.causal_lm import load_causal_lm
from alignment.models.shared_prefix import lm_hidden_states, output_head
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

    def label_logprobs(self, examples: list[Encoded]) -> list[torch.Tensor]:
        """Per example, ``[n, V]``: the reference's next-token log-distribution at each of its ``n``
        labelled tokens (``loss_mask`` 1, the first token aside: what the LM loss predicts), in order,
        for Quark's KL over the vocabulary."""
        batch = {k: v.to(self.device) for k, v in collate(examples, self.tokenizer.pad_token_id).items()}
        keep = batch["labels"][:, 1:] != -100
        with torch.inference_mode():
            hidden = lm_hidden_states(self.engine, batch["input_ids"], batch["attention_mask"])
            logp = torch.log_softmax(output_head(self.engine)(hidden[:, :-1][keep]).float(), dim=-1)
            parts = torch.split(logp, keep.sum(1).tolist())
        return [part.to("cpu", copy=True) for part in parts]  # plain tensors, made outside inference mode
