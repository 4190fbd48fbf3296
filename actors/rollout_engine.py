"""The rollout engine role (``rollout.engine=vllm``): a vLLM engine in a Ray actor that samples
for the policy and takes the policy's weights after each update.

Its sampling calls are the policy's own (``actors.sampling.SamplingRole``: ``generate``,
``generate_tools``, ``sample``), so a driver hands it the same work. Weights come in whole
through Ray's object store (``load_weights``), or, on GPUs, by an NCCL broadcast from policy
rank 0 (``init_broadcast`` / ``receive_broadcast``). With ``sleep`` / ``wake_up`` (GPU) an
engine colocated with the policy frees its memory while the trainers run.
"""

from __future__ import annotations

import time

import torch

from actors.base import RoleActor
from actors.sampling import SamplingRole
from alignment.generation import Generator
from alignment.models.tokenizer import load_tokenizer
from alignment.vllm_generation import EngineSpec, VLLMGenerator, build_llm, load_weights


class RolloutEngineActor(RoleActor, SamplingRole):
    whole_batches = True

    def setup_distributed(self, where: tuple[str, int]) -> None:
        """Engines are not a data-parallel group: each runs its own vLLM engine (and vLLM sets up its
        own process group for tensor parallelism)."""

    def init_model(self, spec: EngineSpec) -> dict[str, float]:
        """Start the engine on ``spec.path``; returns its start-up time and parameter count."""
        t0 = time.perf_counter()
        self.tokenizer = load_tokenizer(spec.tokenizer_path)
        self.llm = build_llm(spec)
        self.spec = spec
        return {"start_s": time.perf_counter() - t0}

    def tensor_parallel_size(self) -> int:
        return self.spec.tensor_parallel_size

    def weight_dtype(self) -> str:
        """The dtype the engine holds its weights in (``rollout.dtype`` resolved): what a sync sends."""
        return str(self.llm.model_config.dtype).removeprefix("torch.")

    def generator(self) -> Generator:
        return VLLMGenerator(self.llm, self.tokenizer)

    def load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> float:
        """Load named tensors (transformers' names) into the engine; returns the seconds it took."""
        t0 = time.perf_counter()
        load_weights(self.llm, weights)
        return time.perf_counter() - t0

    def init_broadcast(self, host: str, port: int, rank_offset: int, world_size: int) -> None:
        """GPU: join the NCCL group of the weight broadcast (policy rank 0 is rank 0)."""
        self.llm.collective_rpc("lab_init_broadcast", args=(host, port, rank_offset, world_size))

    def receive_broadcast(self, metas: list[tuple[str, str, tuple[int, ...]]]) -> float:
        """GPU: receive one broadcast of the policy's weights; returns the seconds it took."""
        t0 = time.perf_counter()
        self.llm.collective_rpc("lab_receive_broadcast", args=(metas,))
        self.llm.reset_prefix_cache()
        return time.perf_counter() - t0

    def sleep(self, level: int = 1) -> None:
        """GPU with ``enable_sleep_mode``: free the GPU until ``wake_up``: level 1 keeps a copy of the
        weights on the CPU, level 2 drops them (a full sync follows) and the KV cache either way."""
        self.llm.sleep(level=level)

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Take the GPU memory back: ``["weights"]`` (before a sync), ``["kv_cache"]``, or all."""
        self.llm.wake_up(tags=tags)
