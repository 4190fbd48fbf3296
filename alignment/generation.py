"""Sampling replies from a causal LM with transformers' ``generate`` (KV cache on)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from alignment.chat_format import reply_text


@dataclass(frozen=True)
class SamplingSpec:
    """Fixed sampling settings; the defaults are the released MOSS demo's."""

    max_new_tokens: int = 96
    temperature: float = 0.7
    top_p: float = 0.8
    repetition_penalty: float = 1.02
    do_sample: bool = True


@torch.no_grad()
def generate_replies(
    model, tokenizer, prompts: Sequence[str], spec: SamplingSpec, batch_size: int = 32, seed: int = 0
) -> list[str]:
    """Generate one reply per prompt text (each ending ``<|MOSS|>:``); returns the reply bodies."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(device) for k, v in enc.items()}
        kwargs = dict(max_new_tokens=spec.max_new_tokens, do_sample=spec.do_sample,
                      repetition_penalty=spec.repetition_penalty, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id)
        if spec.do_sample:
            kwargs.update(temperature=spec.temperature, top_p=spec.top_p)
        gen = model.generate(**enc, **kwargs)
        new = gen[:, enc["input_ids"].size(1):]
        texts = tokenizer.batch_decode(new, skip_special_tokens=False)
        out.extend(reply_text(t) for t in texts)
    model.train(was_training)
    return out
