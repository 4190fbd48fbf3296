"""The reward-model judge actor: an independent reward model from a local directory that scores
(context, reply) pairs in its own chat format (see ``alignment.judges.reward_model``)."""

from __future__ import annotations

import torch

from actors.base import RoleActor
from alignment.chat_format import Conversation
from alignment.judges.reward_model import load_reward_model, rm_text, score_texts


class RewardModelActor(RoleActor):
    def init_model(self, path: str, bf16: bool = False) -> int:
        """Load the reward model at ``path`` (float32, or bfloat16 with ``bf16``) onto this actor's
        device; returns its parameter count."""
        model, self.tokenizer = load_reward_model(path, torch.bfloat16 if bf16 else torch.float32)
        self.model = model.to(self.device)
        return sum(p.numel() for p in self.model.parameters())

    def score(self, items: list[tuple[Conversation, str]], max_length: int = 1024,
              batch_size: int = 16) -> list[float]:
        """The reward of each (context, reply), in order."""
        texts = [rm_text(self.tokenizer, context, reply) for context, reply in items]
        return score_texts(self.model, self.tokenizer, texts, max_length=max_length, batch_size=batch_size)
