"""What every role that samples shares: replies, replies through the tools, and rollouts, on the
role's ``alignment.generation.Generator`` (the policy's transformers model, or a vLLM engine)."""

from __future__ import annotations

import contextlib
from typing import Any

from alignment.chat_format import Conversation
from alignment.generation import Generator, RolloutSpec, SamplingSpec, generate_replies, in_lockstep
from alignment.rollout import sample_to_first_special
from alignment.template_format import prompt_text, reply_of
from alignment.tool_use import generate_with_tools, sample_with_tools


class SamplingRole:
    """Mixin of a role actor with a tokenizer and a generator. ``whole_batches``: the engine takes
    every prompt of a call at once (vLLM schedules its own batches)."""

    tokenizer: Any
    tokens_generated: int
    rank: int
    whole_batches = False

    def generator(self) -> Generator:
        raise NotImplementedError

    def sampling_context(self) -> contextlib.AbstractContextManager:
        """The numerics to sample in (the policy's: those its engine trains with)."""
        return contextlib.nullcontext()

    def _batch(self, batch_size: int, n: int) -> int:
        return max(n, 1) if self.whole_batches else batch_size

    def generate(self, prompts: list[str], sampling: SamplingSpec, batch_size: int, seed: int) -> list[str]:
        """One reply body per prompt text (a generation prompt: ``reply_to`` writes it)."""
        with self.sampling_context():
            replies, n_tokens = generate_replies(self.generator(), self.tokenizer, prompts, sampling,
                                                 self._batch(batch_size, len(prompts)), seed + self.rank)
        self.tokens_generated += n_tokens
        return replies

    def reply_to(self, contexts: list[Conversation], sampling: SamplingSpec, batch_size: int, seed: int,
                 quality: int | None = None) -> list[str]:
        """``generate`` for conversations, each prompted in the tokenizer's own format (MOSS's, or the
        model's chat template), ``quality`` the tag that opens the reply."""
        return self.generate([prompt_text(self.tokenizer, c, quality) for c in contexts], sampling, batch_size, seed)

    def generate_tools(self, contexts: list[Conversation], sampling: SamplingSpec, batch_size: int, seed: int,
                       quality: int | None = None, max_calls: int = 8) -> list[str]:
        """``generate`` with MOSS's tools (``alignment.tool_use``): the enabled tools run between the
        passes; each reply is a plugin reply (Inner Thoughts, Commands, Results, MOSS)."""
        with self.sampling_context():
            replies, n_tokens = generate_with_tools(self.generator(), self.tokenizer, contexts, sampling, quality,
                                                    max_calls, self._batch(batch_size, len(contexts)),
                                                    seed + self.rank)
        self.tokens_generated += n_tokens
        return [r.plugin for r in replies]

    def sample(self, prompts: list[list[int]], spec: RolloutSpec, seed: int,
               tools: list[frozenset[str] | None] | None = None, max_calls: int = 8, quality: int | None = None,
               ) -> tuple[list[list[int]], list[list[float]], list[list[int]] | None, list[str]]:
        """A response to each prompt (token ids): the response ids, their log-probs, the action mask
        (None: every token sampled) and the reply texts. With ``tools`` (per row: the enabled tools,
        or None for a plain reply) the rows with tools go through the passes of tool use
        (``alignment.tool_use.sample_with_tools``): what the tools wrote is in the responses but
        outside the mask; ``quality`` is the PAT tag the program writes after their ``<|MOSS|>:``."""
        tok, gen = self.tokenizer, self.generator()
        masks = None
        with self.sampling_context():
            # ranks in lockstep (ZeRO-3) take one path whatever their share: a rank whose rows are all
            # plain still goes through the tool passes when the batch has tools, as its peers do
            if tools is not None and (any(t is not None for t in tools) or in_lockstep(gen)):
                responses, logprobs, masks, texts = sample_with_tools(gen, tok, prompts, tools, spec, max_calls,
                                                                      seed + self.rank, quality=quality)
            else:
                # a reply ends at its first special token (<eom>, or a stray <eoh>, role prefix...):
                # the tokens after it are not the reply the preference model scores
                responses, logprobs = sample_to_first_special(gen, tok, prompts, spec, seed + self.rank)
                texts = [reply_of(tok, t) for t in tok.batch_decode(responses, skip_special_tokens=False)]
        self.tokens_generated += sum(len(r) for r in responses)
        return responses, logprobs, masks, texts
