"""Sampling replies from a causal LM: the generation interface and its transformers engine.

Everything that samples goes through a :class:`Generator`, which has two calls:

* ``until``: texts in, each one's continuation to a stop id out (evaluation, the preference
  model's candidates, best-of-n, the passes of tool use);
* ``sample``: token ids in, response ids and their log-probs out (PPO, GRPO and RLOO rollouts).

:class:`HFGenerator` runs them with transformers' ``generate`` (KV cache on), the lab's default;
``alignment.vllm_generation.VLLMGenerator`` runs them on a vLLM engine (``rollout.engine=vllm``).
The functions below take a model or a generator (:func:`as_generator`). Both engines draw their
randomness from torch's global generator, so a caller seeds with ``torch.manual_seed``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from alignment.lockstep import agreed_max
from alignment.losses.logprobs import token_logprobs
from alignment.template_format import reply_of


@dataclass(frozen=True)
class SamplingSpec:
    """Fixed sampling settings; the defaults are the released MOSS demo's. Its ``generate`` call set
    temperature, top-p and the repetition penalty and left top-k at transformers' default of 50, so
    ``top_k`` is 50 here, passed to every engine (0: no top-k)."""

    max_new_tokens: int = 96
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 50
    repetition_penalty: float = 1.02
    do_sample: bool = True


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in eval mode for the block; its train/eval mode comes back even on an exception."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@runtime_checkable
class Generator(Protocol):
    """A generation engine over one model (see the module docstring)."""

    def until(self, texts: Sequence[str], spec: SamplingSpec, stop: list[int]) -> tuple[list[str], int]:
        """Each text's continuation until one of the ``stop`` ids (kept), decoded with special
        tokens, and the number of tokens generated."""
        ...

    def sample(self, prompts: Sequence[Sequence[int]], spec: RolloutSpec, stop: int | Sequence[int],
               seed: int | None) -> tuple[list[list[int]], list[list[float]]]:
        """Each prompt's response ids (to and with the first stop id) and their log-probs under
        ``softmax(logits / temperature)``; ``seed=None`` goes on with torch's current state."""
        ...


class HFGenerator:
    """The transformers engine: ``generate`` with the KV cache, on ``model`` as it is (its train or
    eval mode comes back after each call).

    ``synced_gpus`` (ZeRO-3 over several ranks, whose every forward pass is collective): a rank whose
    replies have all stopped goes on running forward passes until every rank's have, and every rank
    makes as many ``generate`` calls as the rank with the most (``alignment.lockstep``). Without
    ``logprobs`` ``sample`` returns NaN log-probs and keeps no per-step logits (a caller that
    recomputes them, as a bf16 policy does, spares the ``[B, R, V]`` tensor)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, synced_gpus: bool = False, logprobs: bool = True):
        self.model, self.tokenizer = model, tokenizer
        self.synced_gpus, self.logprobs = synced_gpus, logprobs

    def until(self, texts: Sequence[str], spec: SamplingSpec, stop: list[int]) -> tuple[list[str], int]:
        with no_autograd(self.synced_gpus), eval_mode(self.model):
            return generate_until(self.model, self.tokenizer, texts, spec, stop, self.synced_gpus)

    def sample(self, prompts: Sequence[Sequence[int]], spec: RolloutSpec, stop: int | Sequence[int],
               seed: int | None) -> tuple[list[list[int]], list[list[float]]]:
        return sample_responses(self.model, prompts, spec, self.tokenizer.pad_token_id, stop, seed,
                                synced_gpus=self.synced_gpus, logprobs=self.logprobs)


def in_lockstep(gen: Any) -> bool:
    """Whether ``gen`` samples on a ZeRO-3 rank whose every forward pass is collective (its calls
    must match its peers': ``alignment.lockstep``)."""
    return bool(getattr(gen, "synced_gpus", False))


def as_generator(model: Any, tokenizer: Any) -> Generator:
    """``model`` itself when it is a :class:`Generator`, else the transformers engine over it."""
    return model if isinstance(model, Generator) else HFGenerator(model, tokenizer)


def generate_replies(
    model, tokenizer, prompts: Sequence[str], spec: SamplingSpec, batch_size: int = 32, seed: int = 0
) -> tuple[list[str], int]:
    """Generate one reply per prompt text (each ending ``<|MOSS|>:``) with ``model`` (a model or a
    :class:`Generator`), ``batch_size`` prompts at a time; returns the reply bodies and the number
    of tokens generated (each reply up to and including its end token)."""
    gen = as_generator(model, tokenizer)
    torch.manual_seed(seed)
    out: list[str] = []
    n_tokens = 0
    # ranks in lockstep (ZeRO-3) make as many calls as the rank with the most; a spare call generates
    # after the end token and is dropped
    n_calls = agreed_max(-(-len(prompts) // batch_size), in_lockstep(gen))
    for b in range(n_calls):
        part = prompts[b * batch_size:(b + 1) * batch_size]
        texts, n = gen.until(part or [tokenizer.eos_token], spec, [tokenizer.eos_token_id])
        if part:
            out.extend(reply_of(tokenizer, t) for t in texts)
            n_tokens += n
    return out, n_tokens


def generate_until(model, tokenizer, texts: Sequence[str], spec: SamplingSpec,
                   stop: list[int], synced_gpus: bool = False) -> tuple[list[str], int]:
    """One batched ``generate`` call (the caller seeds and sets eval mode): each text's continuation
    until one of the ``stop`` ids, decoded with special tokens and without padding, and the number of
    tokens generated (each row up to and including its first stop id)."""
    enc = tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False)
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items()}
    kwargs = dict(max_new_tokens=spec.max_new_tokens, do_sample=spec.do_sample,
                  repetition_penalty=spec.repetition_penalty, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=stop, synced_gpus=synced_gpus)
    if spec.do_sample:
        kwargs.update(temperature=spec.temperature, top_p=spec.top_p, top_k=spec.top_k)
    new = model.generate(**enc, **kwargs)[:, enc["input_ids"].size(1):]
    ended = torch.isin(new, torch.tensor(stop, device=new.device)).long()
    n_tokens = int(((ended.cumsum(1) - ended) == 0).sum())  # no stop id strictly before
    decoded = tokenizer.batch_decode(new, skip_special_tokens=False)
    return [t.replace(tokenizer.pad_token, "") if tokenizer.pad_token else t for t in decoded], n_tokens


@dataclass(frozen=True)
class RolloutSpec:
    """How PPO samples: plain sampling (temperature 1, no top-p) keeps the behaviour policy equal
    to the policy being trained; ``min_new_tokens`` = ``max_new_tokens`` forces fixed lengths."""

    max_new_tokens: int = 96
    temperature: float = 1.0
    top_p: float = 1.0
    min_new_tokens: int = 0
    ignore_eos: bool = False  # always ``max_new_tokens`` tokens, ``<eom>`` or not (benchmarks)


def no_autograd(partitioned: bool = False) -> AbstractContextManager:
    """No autograd bookkeeping for a pass whose results leave as Python lists: inference mode, or,
    for ZeRO-3 weights partitioned over ranks (``partitioned``), ``no_grad``: the weights it gathers
    for the first time and keeps (the small, persistent ones) would otherwise be inference tensors,
    which the next training pass cannot save for backward."""
    return torch.no_grad() if partitioned else torch.inference_mode()


def sample_responses(
    model, prompts: Sequence[Sequence[int]], spec: RolloutSpec, pad_id: int, eos_id: int | Sequence[int],
    seed: int | None = 0, synced_gpus: bool = False, logprobs: bool = True,
) -> tuple[list[list[int]], list[list[float]]]:
    """Sample one response per prompt (token ids) with ``generate`` and the KV cache.

    Returns the response ids (up to and including the first ``eos_id``; several stop ids may be
    given) and their log-probs under ``softmax(logits / temperature)``, read from the logits
    ``generate`` already computed, one step at a time (never a ``[B, R, V]`` float32 copy of them
    all). ``seed=None`` goes on with the current RNG state. ``synced_gpus``: ZeRO-3 over several
    ranks (see ``HFGenerator``). Without ``logprobs`` the log-probs are NaN and ``generate`` keeps
    no logits.
    """
    with no_autograd(synced_gpus), eval_mode(model):  # only Python lists and ints leave
        return _sample_responses(model, prompts, spec, pad_id, eos_id, seed, synced_gpus, logprobs)


def _sample_responses(model, prompts: Sequence[Sequence[int]], spec: RolloutSpec, pad_id: int,
                      eos_id: int | Sequence[int], seed: int | None, synced_gpus: bool = False,
                      logprobs: bool = True) -> tuple[list[list[int]], list[list[float]]]:
    stops = [eos_id] if isinstance(eos_id, int) else list(eos_id)
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, p in enumerate(prompts):  # left padding: every prompt ends where generation starts
        ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
        attn[i, width - len(p):] = 1
    if seed is not None:
        torch.manual_seed(seed)
    out = model.generate(
        input_ids=ids.to(device), attention_mask=attn.to(device), max_new_tokens=spec.max_new_tokens,
        min_new_tokens=spec.min_new_tokens, do_sample=True, temperature=spec.temperature, top_p=spec.top_p,
        top_k=0, pad_token_id=pad_id, eos_token_id=None if spec.ignore_eos else eos_id, output_logits=logprobs,
        return_dict_in_generate=True, synced_gpus=synced_gpus,
    )
    new = out.sequences[:, width:]
    if logprobs:  # step by step: one [B, V] float32 log-softmax at a time
        lps = torch.stack([token_logprobs(step, new[:, j], spec.temperature) for j, step in enumerate(out.logits)],
                          1) if out.logits else new.new_zeros(new.shape, dtype=torch.float)
    else:
        lps = torch.full(new.shape, float("nan"))
    ended = torch.zeros_like(new) if spec.ignore_eos else torch.isin(new, torch.tensor(stops, device=new.device)).long()
    # a token is real if no eos came strictly before it (so the eos itself is kept)
    real = (ended.cumsum(1) - ended) == 0
    lengths = real.sum(1).tolist()
    return ([row[:n] for row, n in zip(new.tolist(), lengths)],
            [row[:n] for row, n in zip(lps.tolist(), lengths)])
