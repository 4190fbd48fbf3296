"""Batches for training: length-bucketed shuffling and padding of encoded conversations."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import torch

from alignment.loss_mask import Encoded


def collate(examples: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example; ``labels`` are -100 where the mask is off."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        attn[row, :n] = 1
        mask = torch.tensor(e.loss_mask, dtype=torch.bool)
        labels[row, :n] = torch.where(mask, ids[row, :n], torch.full_like(ids[row, :n], -100))
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
