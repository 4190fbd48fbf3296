"""One trainable model behind a single interface, for plain torch (optionally DDP) or DeepSpeed ZeRO 0-3.

The caller owns the loop: ``forward`` -> ``backward`` -> ``step`` once per optimizer step (no gradient
accumulation inside the engine). DeepSpeed is imported lazily, only on the deepspeed path, and works on
CPU through its ``cpu`` accelerator (``DS_ACCELERATOR=cpu``) with a gloo process group.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

_TORCH_STATE = "engine_state.pt"


@dataclass
class OptimConfig:
    lr: float
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = 0
    total_steps: int = 1
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    max_grad_norm: float = 1.0
    micro_batch_size: int = 0  # rows per forward/backward pass within one step (0: the whole batch at once)


@dataclass
class StrategySpec:
    name: str = "torch"  # "torch" | "deepspeed"
    zero_stage: int = 0  # 0..3, deepspeed only
    offload: bool = False  # ZeRO-offload of optimizer states to CPU (deepspeed only, stage >= 1)
    bf16: bool = False
    gradient_checkpointing: bool = False


def lr_lambda(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warmup 0 -> 1 over ``warmup_steps``, then cosine 1 -> ``min_lr_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps
    progress = min(max((step - warmup_steps) / max(1, total_steps - warmup_steps), 0.0), 1.0)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable params split in two groups: no weight decay on biases and norm weights (any 1-d param)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or name.endswith("bias") or "norm" in name.lower()
        (no_decay if skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("model has no trainable parameters")
    return groups


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _import_deepspeed(device: torch.device) -> Any:
    """Import deepspeed with the accelerator matching ``device`` and make sure a process group exists."""
    if device.type == "cpu" or not torch.cuda.is_available():
        # Must happen before the first deepspeed import: the accelerator is chosen once and cached.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    accel = get_accelerator().device_name()
    if accel != device.type:
        raise RuntimeError(
            f"DeepSpeed accelerator is {accel!r} but the engine device is {device}; set DS_ACCELERATOR "
            "before deepspeed is first imported in this process"
        )
    if not dist.is_initialized():
        single = {"MASTER_ADDR": "127.0.0.1", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
        for key, value in single.items():
            os.environ.setdefault(key, value)
        if "MASTER_PORT" not in os.environ:
            os.environ["MASTER_PORT"] = str(_free_port())
        deepspeed.init_distributed(dist_backend="gloo" if device.type == "cpu" else "nccl")
    return deepspeed


def indexed(device: torch.device | str) -> torch.device:
    """``device`` with an index on CUDA (``cuda`` -> ``cuda:<current>``): ``torch.cuda.set_device``,
    DDP's ``device_ids`` and NCCL refuse a CUDA device without one."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def free_cached_memory(device: torch.device) -> None:
    """Return the CUDA caching allocator's unused blocks to the driver (another process on the GPU,
    e.g. a colocated vLLM engine waking its KV cache, can then have them); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _enable_checkpointing(model: torch.nn.Module) -> None:
    enable = getattr(model, "activation_checkpointing_enable", None) or getattr(
        model, "gradient_checkpointing_enable", None
    )
    if enable is None or not getattr(model, "supports_gradient_checkpointing", True):
        log.warning("%s does not support gradient checkpointing; ignoring", type(model).__name__)
        return
    enable()


class TrainingEngine:
    """Wraps ``model`` with AdamW + warmup/cosine LambdaLR, grad clipping and the chosen strategy.

    With ``optim=None`` the engine is frozen (a scorer: the reference, a preference model that only
    scores, a policy that only generates): no optimizer, scheduler or gradients, eval mode, and under
    DeepSpeed no master weights or optimizer states (ZeRO-3 still partitions the weights; stages
    1-2, which only partition optimizer states, become stage 0). A trainable engine puts its model in
    training mode: transformers 5 returns ``from_pretrained`` models in eval mode, where gradient
    checkpointing does nothing.
    """

    def __init__(
        self, model: torch.nn.Module, optim: OptimConfig | None, strategy: StrategySpec, device: torch.device
    ) -> None:
        if strategy.name not in ("torch", "deepspeed"):
            raise ValueError(f"unknown strategy {strategy.name!r}; choose 'torch' or 'deepspeed'")
        self.optim_cfg, self.spec, self.device = optim, strategy, indexed(device)
        self.frozen = optim is None
        self.global_step = 0
        if self.frozen:
            model.requires_grad_(False).eval()
        else:
            model.train()
        self.trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if strategy.gradient_checkpointing and not self.frozen:
            _enable_checkpointing(model)
        if strategy.name == "torch":
            if strategy.zero_stage or strategy.offload:
                log.warning("zero_stage/offload only apply to strategy 'deepspeed'; ignored on 'torch'")
            model.to(self.device)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        if optim is not None:
            self.optimizer = torch.optim.AdamW(
                param_groups(model, optim.weight_decay), lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps
            )
            schedule = partial(
                lr_lambda,
                warmup_steps=optim.warmup_steps,
                total_steps=optim.total_steps,
                min_lr_ratio=optim.min_lr_ratio,
            )
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self._ds: Any = None
        # ZeRO-3 over several ranks gathers each layer's weights from every rank in every forward
        # pass: the ranks must run the same number of passes (``alignment.lockstep``)
        self.lockstep = (strategy.name == "deepspeed" and strategy.zero_stage == 3 and dist.is_initialized()
                         and dist.get_world_size() > 1)
        if strategy.name == "deepspeed":
            self._init_deepspeed(model)
        else:
            self._model = model
            self._wrapped: torch.nn.Module = model
            if not self.frozen and dist.is_initialized() and dist.get_world_size() > 1:
                ids = [self.device.index] if self.device.type == "cuda" else None
                self._wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def _init_deepspeed(self, model: torch.nn.Module) -> None:
        spec = self.spec
        if spec.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"ZeRO stage must be 0..3, got {spec.zero_stage}")
        if spec.offload and spec.zero_stage == 0:
            raise ValueError("ZeRO stage 0 cannot offload optimizer states; use stage 1, 2 or 3")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # before the nccl process group is created
        deepspeed = _import_deepspeed(self.device)
        # frozen: no optimizer, so nothing for stages 1-2 to partition; ZeRO-3 still splits the weights
        stage = spec.zero_stage if not self.frozen or spec.zero_stage == 3 else 0
        zero: dict[str, Any] = {"stage": stage}
        if spec.offload and not self.frozen:
            zero["offload_optimizer"] = {"device": "cpu"}
        config = {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": self.optim_cfg.max_grad_norm if self.optim_cfg is not None else 0.0,
            "zero_optimization": zero,
            "bf16": {"enabled": spec.bf16},
            # offload with a client torch.optim.AdamW (instead of DeepSpeedCPUAdam) is refused without this
            "zero_force_ds_cpu_optimizer": False,
            "steps_per_print": 2**31 - 1,
        }
        self._ds, _, _, _ = deepspeed.initialize(
            model=model, optimizer=self.optimizer, lr_scheduler=self.scheduler, config=config
        )

    @property
    def module(self) -> torch.nn.Module:
        """The unwrapped model (under ZeRO-3 its parameters are partitioned)."""
        return self._ds.module if self._ds is not None else self._model

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"]) if self.optimizer is not None else 0.0

    def _trainable(self, what: str) -> None:
        if self.frozen:
            raise RuntimeError(f"{what}: this engine is frozen (built without an optimizer config); it only "
                               "runs forward passes")

    def precision(self) -> contextlib.AbstractContextManager:
        """The numerics of ``forward``, for passes that call ``module`` directly (sampling): bf16
        autocast on the torch path with ``bf16``; DeepSpeed keeps bf16 weights, so nothing there."""
        if self._ds is not None or not self.spec.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self._ds is not None:
            return self._ds(*args, **kwargs)
        with self.precision():
            return self._wrapped(*args, **kwargs)

    __call__ = forward

    def backward(self, loss: torch.Tensor, boundary: bool = True) -> None:
        """Add ``loss``'s gradient; ``boundary`` False: more micro-batches of this step follow
        (DeepSpeed then defers its gradient reduction to the last)."""
        self._trainable("backward")
        if self._ds is not None:
            self._ds.set_gradient_accumulation_boundary(boundary)
            self._ds.backward(loss)
        else:
            loss.backward()

    def step(self) -> dict[str, float]:
        """Clip, optimizer step, scheduler step, zero grads. ``grad_norm`` is the pre-clip global norm."""
        self._trainable("step")
        lr = self.lr
        if self._ds is None:
            params = [p for p in self._model.parameters() if p.requires_grad]
            norm = torch.nn.utils.clip_grad_norm_(params, self.optim_cfg.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        else:
            pre = None
            if self.spec.zero_stage == 0 and not self.spec.bf16:
                # plain fp32 stage 0 clips with torch and discards the norm: get_global_grad_norm() is None
                grads = [p.grad for p in self._ds.module.parameters() if p.grad is not None]
                pre = torch.linalg.vector_norm(torch.stack([g.detach().float().norm() for g in grads]))
            self._ds.step()
            norm = self._ds.get_global_grad_norm()
            norm = pre if norm is None else norm
        self.global_step += 1
        return {"grad_norm": float(norm) if norm is not None else float("nan"), "lr": lr}

    def save_checkpoint(self, ckpt_dir: str | os.PathLike[str]) -> None:
        """Model + optimizer + scheduler + step, for resuming. Collective: call on every rank."""
        self._trainable("save_checkpoint")
        ckpt_dir = Path(ckpt_dir)
        if self._ds is not None:
            self._ds.save_checkpoint(str(ckpt_dir), client_state={"global_step": self.global_step})
            return
        if _is_rank0():
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            state = {
                "model": self._model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "global_step": self.global_step,
            }
            torch.save(state, ckpt_dir / _TORCH_STATE)
        _barrier()

    def load_checkpoint(self, ckpt_dir: str | os.PathLike[str]) -> None:
        """Restore what ``save_checkpoint`` wrote (same strategy and world size). Call on every rank.

        Under ZeRO-3 load into a freshly built engine, not one that has already trained/saved.
        """
        if self._ds is not None:
            path, client = self._ds.load_checkpoint(str(ckpt_dir))
            if path is None:
                raise FileNotFoundError(f"no DeepSpeed checkpoint found in {ckpt_dir}")
            self.global_step = int(client.get("global_step", 0))
            return
        state = torch.load(Path(ckpt_dir) / _TORCH_STATE, map_location=self.device, weights_only=True)
        self._model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.global_step = int(state["global_step"])

    def gathered(self) -> contextlib.AbstractContextManager:
        """The full parameters inside the block: gathered under ZeRO-3 (collective: every rank
        enters), as they are otherwise."""
        if self._ds is not None and self.spec.zero_stage == 3:
            import deepspeed

            return deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None)
        return contextlib.nullcontext()

    def save_model(
        self, path: str | os.PathLike[str], save_fn: Callable[[torch.nn.Module, str], Any]
    ) -> None:
        """Rank 0 calls ``save_fn(module, path)`` with the unwrapped module holding full weights.

        Under ZeRO-3 the parameters are gathered around the call (collective: call on every rank).
        E.g. ``save_fn=lambda m, p: m.save_pretrained(p)``.
        """
        with self.gathered():
            if _is_rank0():
                save_fn(self.module, str(path))
        _barrier()
