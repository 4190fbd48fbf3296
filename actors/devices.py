"""Which device a role actor computes on: the GPU Ray reserved for it, never one that is merely visible.

Ray 2.60 leaves ``CUDA_VISIBLE_DEVICES`` as it is for an actor that reserves no GPU, so
``torch.cuda.is_available()`` is true in every actor of a GPU node. An actor without a reservation
that trusted it would land on ``cuda:0`` beside the roles that reserved that GPU (two NCCL ranks on
one device, a vLLM engine taking half of a GPU it was never given). The device follows
``ray.get_gpu_ids()`` instead, and an actor without GPUs hides the node's GPUs from itself.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import ray
import torch

NOSET = "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"


def device_for(gpu_ids: Sequence[int | str] | None, cuda_available: bool) -> torch.device:
    """The device of a process that Ray gave ``gpu_ids`` (None: not a Ray actor, e.g. ``LocalGroup``,
    which takes the first visible GPU). Always an indexed ``cuda:N`` on a GPU: ``torch.cuda.set_device``
    and NCCL want one. Ray narrows ``CUDA_VISIBLE_DEVICES`` to the reserved GPUs, so the first is
    ``cuda:0``, unless ``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES`` keeps the node's numbering."""
    if not cuda_available:
        return torch.device("cpu")
    if gpu_ids is None:
        return torch.device("cuda", 0)
    if not gpu_ids:
        return torch.device("cpu")
    return torch.device("cuda", int(gpu_ids[0]) if os.environ.get(NOSET) else 0)


def in_ray_actor() -> bool:
    """Whether this process is a Ray actor (not a driver, not a plain process)."""
    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None


def actor_device() -> torch.device:
    """This actor's device (``device_for`` what Ray reserved). Call before anything touches CUDA: an
    actor that reserved no GPU sets ``CUDA_VISIBLE_DEVICES`` empty, so that neither torch nor a vLLM
    engine in it can reach the node's GPUs."""
    ids = None
    if in_ray_actor():
        ids = list(ray.get_gpu_ids())
        if not ids:
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
    return device_for(ids, torch.cuda.is_available())


SYNC_TIMEOUT_S = 600.0  # a weight broadcast of a 70B model over NVLink takes seconds, not minutes


def synchronize(timeout_s: float, what: str, poll_s: float = 0.005) -> None:
    """``torch.cuda.synchronize()`` with a deadline: wait for the work queued on the current stream,
    and raise ``TimeoutError`` naming ``what`` when it is not done in ``timeout_s``. An NCCL
    broadcast whose receivers failed (a loader exception in a vLLM worker mid-broadcast) never
    completes, and a plain synchronize would block the actor for ever, every later call with it."""
    event = torch.cuda.Event()
    event.record()
    deadline = time.monotonic() + timeout_s
    while not event.query():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: the GPU work queued for it was not done after {timeout_s:g} s (a receiver "
                               "that failed mid-broadcast leaves NCCL waiting for it); this actor's CUDA stream "
                               "is blocked, so the run stops here")
        time.sleep(poll_s)
