"""Batches for training: length-bucketed shuffling and padding of encoded conversations."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from alignment.loss_mask import Encoded


def pad_right(seqs: Sequence[Sequence[int]], pad_value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists to the longest one; returns ``(ids, attention_mask)``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_value, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
        attn[row, : len(s)] = 1
    return ids, attn


def collate(examples: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example; ``labels`` are -100 where the mask is off."""
    ids, attn = pad_right([e.input_ids for e in examples], pad_id)
    masks, _ = pad_right([e.loss_mask for e in examples], 0)
    labels = torch.where(masks.bool(), ids, torch.full_like(ids, -100))
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def bucketed_batches(
    examples: Sequence[Encoded], batch_size: int, rng: random.Random, bucket_factor: int = 8
) -> Iterator[list[Encoded]]:
    """One epoch of batches: shuffle, sort within chunks by length (less padding), shuffle batches."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    chunk = batch_size * bucket_factor
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start:start + chunk], key=lambda i: len(examples[i].input_ids))
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    rng.shuffle(batches)
    for b in batches:
        yield [examples[i] for i in b]


def shard(items: Sequence[Any], n: int) -> list[list[Any]]:
    """Split ``items`` into ``n`` contiguous, near-equal shards."""
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (i < extra)
        out.append(list(items[start:end]))
        start = end
    return out
