"""Token ids of a conversation that ends in a given reply, built the way generation builds them.

The preference model scores ``prompt ids + reply ids`` whether the reply came from a data file
or from the policy, so training and scoring see the same tokens.
"""

from __future__ import annotations

from alignment.chat_format import EOS_TOKEN, Conversation, generation_prompt


def prompt_ids(tokenizer, context: Conversation, quality: int | None = None) -> list[int]:
    return tokenizer(generation_prompt(context, quality), add_special_tokens=False)["input_ids"]


def reply_ids(tokenizer, reply: str) -> list[int]:
    """The reply as the model writes it after ``<|MOSS|>:``: a space, the body, ``<eom>``."""
    return tokenizer(f" {reply}{EOS_TOKEN}", add_special_tokens=False)["input_ids"]


def scored_sequence(tokenizer, context: Conversation, reply: str, max_length: int) -> list[int]:
    """Context plus reply, keeping the last ``max_length`` tokens (the score is read at the end)."""
    return (prompt_ids(tokenizer, context) + reply_ids(tokenizer, reply))[-max_length:]
