"""What every role actor shares: its rank in the role's group and torch.distributed set-up."""

from __future__ import annotations

import gc
import hashlib
import os
import resource
import socket
from collections.abc import Callable, Sequence
from typing import Any

import torch
from ray.util import get_node_ip_address

from actors.devices import actor_device
from actors.engine import OptimConfig, StrategySpec, TrainingEngine, free_cached_memory
from alignment.models.causal_lm import LoraSpec, apply_lora
from alignment.models.tokenizer import load_tokenizer
from alignment.models.value_head import load_value_model


class RoleActor:
    """Base of the role actors. One process per rank; ranks of a role form one process group."""

    def __init__(self, rank: int, world_size: int, num_threads: int = 2, nice: int = 0):
        self.rank, self.world_size = rank, world_size
        if nice:  # added to the worker's own (Ray starts workers at 15); before torch's threads, which inherit it
            os.nice(nice)
        torch.set_num_threads(num_threads)
        self.device = actor_device()  # what Ray reserved (an indexed cuda:N), else the CPU
        self.tokens_generated = 0  # counted by the roles that sample
        self._cpu_base = 0.0  # CPU time counts from here (``reset_usage``)

    def set_num_threads(self, num_threads: int) -> None:
        """Change this process's torch CPU threads (between calls: an actor runs one call at a time)."""
        torch.set_num_threads(num_threads)

    def num_threads(self) -> int:
        return torch.get_num_threads()

    def pid(self) -> int:
        """This rank's process id (fault injection kills it: ``benchmarks/faults.py``)."""
        return os.getpid()

    def node_id(self) -> str:
        """The id of the Ray node this rank runs on (fault injection removes it: ``faults.py --lose-node``)."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def usage(self) -> dict[str, float]:
        """What this process has cost since it started or since ``reset_usage``: CPU seconds, peak
        resident memory, peak GPU memory, tokens sampled, and the parameter updates of its current
        engine (optimizer steps x trainable parameters; an actor lent to a new stage has dropped
        the old one, see ``unload``)."""
        ru = resource.getrusage(resource.RUSAGE_SELF)
        gpu = torch.cuda.max_memory_allocated() / 2**20 if self.device.type == "cuda" else 0.0
        engine = getattr(self, "engine", None)
        updates = engine.global_step * engine.trainable_params if engine is not None else 0
        return {"cpu_s": ru.ru_utime + ru.ru_stime - self._cpu_base, "peak_rss_mb": _peak_rss_mb(ru),
                "gpu_peak_mb": gpu, "tokens_generated": float(self.tokens_generated),
                "param_updates": float(updates)}

    def reset_usage(self) -> None:
        """Count ``usage`` from now on: an actor reused by a later stage reports that stage's cost
        only (peak memory restarts from the current footprint where Linux allows it)."""
        ru = resource.getrusage(resource.RUSAGE_SELF)
        self._cpu_base = ru.ru_utime + ru.ru_stime
        self.tokens_generated = 0
        try:  # "5" resets the process's peak resident set (VmHWM) to its current size
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def unload(self) -> None:
        """Drop the model, its engine and tokenizer (an idle actor kept for a later stage holds no
        weights); the next ``init_model`` loads afresh."""
        for name in ("engine", "model", "tokenizer"):
            if hasattr(self, name):
                delattr(self, name)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def master_address(self) -> tuple[str, int]:
        """This node's IP and a free port, for rank 0 to host the rendezvous. The IP is the one Ray
        reaches the node by: ``gethostbyname(gethostname())`` is often 127.0.1.1 (Debian's /etc/hosts),
        which no other node can reach."""
        ip = get_node_ip_address()
        with socket.socket() as s:
            s.bind(("", 0))
            return ip, s.getsockname()[1]

    def setup_distributed(self, where: tuple[str, int]) -> None:
        """Join the role's process group (nccl on GPU, gloo on CPU) hosted at rank 0's ``where``
        (address, port)."""
        addr, port = where
        os.environ.update(MASTER_ADDR=addr, MASTER_PORT=str(port), RANK=str(self.rank),
                          WORLD_SIZE=str(self.world_size), LOCAL_RANK="0")
        if self.world_size > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend, rank=self.rank, world_size=self.world_size)


class TrainableActor(RoleActor):
    """A role actor whose model trains through ``self.engine`` (a ``TrainingEngine``)."""

    engine: TrainingEngine

    def save_checkpoint(self, ckpt_dir: str) -> None:
        """Model, optimizer, scheduler and step, for ``resume``. Collective: every rank calls it."""
        self.engine.save_checkpoint(ckpt_dir)

    def load_checkpoint(self, ckpt_dir: str) -> int:
        """Restore a ``save_checkpoint`` directory; returns the restored optimizer step."""
        self.engine.load_checkpoint(ckpt_dir)
        return self.engine.global_step

    def micro_batches(self, n_rows: int) -> int:
        """How many micro-batches one step's ``n_rows`` rows are cut into: ``micro_batch_size`` rows at
        most in each (``OptimConfig.micro_batch_size``; 0: one pass over the whole batch)."""
        size = self.engine.optim_cfg.micro_batch_size
        return max(1, -(-n_rows // size)) if size > 0 and n_rows > 0 else 1

    def accumulate(self, micro: Sequence[tuple[Any, float]],
                   loss_fn: Callable[[Any], tuple[torch.Tensor, dict[str, Any]]]) -> dict[str, float]:
        """The gradient of one optimizer step's loss, one micro-batch at a time (gradient
        accumulation): ``micro`` holds each micro-batch and its share of the step's loss (its rows'
        or tokens' share of the batch's, so that the shares sum to 1), and ``loss_fn(m)`` is the same
        mean over ``m`` alone. The weighted sum of their gradients is the whole batch's gradient.
        Returns ``loss_fn``'s stats weighted by the shares. The caller steps the optimizer."""
        stats: dict[str, float] = {}
        for i, (m, share) in enumerate(micro):
            loss, st = loss_fn(m)
            self.engine.backward(loss if len(micro) == 1 else loss * share, boundary=i == len(micro) - 1)
            for k, v in st.items():
                stats[k] = stats.get(k, 0.0) + share * float(v)
        return stats

    def minibatch_steps(self, epochs: int, parts: Sequence[tuple[Any, ...]],
                        loss_fn: Callable[..., tuple[torch.Tensor, dict[str, Any]]],
                        micro: Callable[[tuple[Any, ...]], list[tuple[tuple[Any, ...], float]]] | None = None,
                        ) -> dict[str, float]:
        """``epochs`` passes over ``parts``, one optimizer step per part of ``loss_fn(*part)`` (the loss
        and its stats); with ``micro``, a part's gradient is accumulated over ``micro(part)`` (its
        micro-batches and their shares: ``accumulate``). Returns each stat's mean over the steps that
        reported it (the engine's step stats, such as the learning rate and gradient norm, included)."""
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for _ in range(epochs):
            for part in parts:
                stats = self.accumulate(micro(part) if micro is not None else [(part, 1.0)], lambda p: loss_fn(*p))
                for k, v in {**stats, **self.engine.step()}.items():
                    sums[k] = sums.get(k, 0.0) + v
                    counts[k] = counts.get(k, 0) + 1
        # the update's activations stay in torch's cache otherwise: a colocated vLLM engine that wakes
        # its KV cache next, or another role on the GPU, could not have them
        free_cached_memory(self.device)
        return {k: v / counts[k] for k, v in sums.items()}

    def weights_digest(self) -> str:
        """SHA-256 of this rank's parameters (equal across data-parallel ranks after every step)."""
        return _digest(p.detach() for p in self.engine.module.parameters())

    def optimizer_digest(self) -> str:
        """SHA-256 of this rank's optimizer state tensors and step (to check a resume restored it)."""
        state = self.engine.optimizer.state_dict()["state"]
        tensors = [v for k in sorted(state) for _, v in sorted(state[k].items()) if torch.is_tensor(v)]
        return _digest(iter(tensors)) + f":{self.engine.global_step}"


def token_shares(masks: Sequence[torch.Tensor]) -> list[float]:
    """Each micro-batch's share of a token-mean loss: its tokens (mask sum) over all of them."""
    return shares_of([float(m.sum()) for m in masks])


def shares_of(counts: Sequence[float]) -> list[float]:
    """Each micro-batch's share of a mean over ``counts`` (its tokens, its pairs): its count over
    all of them, equal shares when there is nothing to count."""
    total = sum(counts)
    return [c / total for c in counts] if total > 0 else [1.0 / len(counts)] * len(counts)


def _peak_rss_mb(ru: resource.struct_rusage) -> float:
    """Peak resident memory: ``VmHWM`` (resettable, see ``reset_usage``) where /proc has it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return ru.ru_maxrss / 1024


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class ValueModelActor(TrainableActor):
    """A trainable role whose model is a value model (a causal LM with a scalar head): the
    preference model and the critic."""

    def init_model(self, path: str, drop_last_layer: bool, strategy: StrategySpec, optim: OptimConfig | None = None,
                   seed: int = 0, lora: LoraSpec | None = None) -> int:
        """A value model from ``path``: a preference model keeps its head; an SFT model gets a new one.
        Without ``optim`` it only scores. With ``lora`` enabled (and ``optim``) the decoder trains LoRA
        adapters and the head trains in full. Returns the number of trainable parameters."""
        torch.manual_seed(seed)
        self.tokenizer = load_tokenizer(path)
        model = load_value_model(path, drop_last_layer=drop_last_layer)
        model.config.pad_token_id = self.tokenizer.pad_token_id
        if optim is not None and lora is not None:
            model = apply_lora(model, lora, task_type="SEQ_CLS")
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.engine = TrainingEngine(model, optim, strategy, self.device)  # frozen without ``optim``
        return n_params
