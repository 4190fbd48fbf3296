"""Keeping the ranks of a ZeRO-3 group in step.

Under DeepSpeed ZeRO-3 every forward pass gathers each layer's weights from all ranks of the
group, so every rank must run the same number of passes, whatever its own data: a rank that runs
one pass fewer leaves the others waiting for ever. Where the number of passes depends on a rank's
data (how many batches its share makes, whether its rows share a prefix, when its replies stop)
the ranks agree on it first, with one small all-reduce. ``lockstep=False`` (one rank, or weights
that are not partitioned) costs nothing.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _device() -> torch.device:
    """Where a collective's tensor lives: NCCL takes CUDA tensors only, gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agreed_max(value: int, lockstep: bool) -> int:
    """The largest ``value`` over the ranks (``value`` itself without ``lockstep``)."""
    if not lockstep:
        return value
    t = torch.tensor([value], dtype=torch.long, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def agreed_all(flag: bool, lockstep: bool) -> bool:
    """Whether ``flag`` holds on every rank (``flag`` itself without ``lockstep``)."""
    return bool(flag) if not lockstep else -agreed_max(-int(bool(flag)), True) == 1
