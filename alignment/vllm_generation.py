"""The vLLM engine behind the generation interface (``rollout.engine=vllm``).

:func:`build_llm` starts an in-process vLLM engine on a saved checkpoint directory (the lab's own
tokenizer does the text; vLLM sees token ids only), and :class:`VLLMGenerator` runs the two calls
of ``alignment.generation.Generator`` on it. :class:`WeightSync` is the worker extension through
which the trainers' weights reach the engine (``LLM.collective_rpc``).

Settings that keep vLLM equal to transformers' ``generate`` where it matters:

* every request carries its own seed, drawn from torch's global generator, so a caller seeds both
  engines the same way (``torch.manual_seed``) and a rerun samples the same replies;
* the sampled tokens' log-probs are the processed ones (after temperature), the quantity the
  transformers engine returns; the trainers recompute them anyway (``PolicyActor.score_rollout``);
* the prefix cache is reset after every weight update: cached keys and values of the old weights
  would otherwise answer a repeated prompt.

vLLM is imported only here and in ``actors/rollout_engine.py``; nothing else of the lab needs it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from alignment.generation import RolloutSpec, SamplingSpec


@dataclass(frozen=True)
class EngineSpec:
    """How to start one engine: its checkpoint, tokenizer, and the engine's own settings."""

    path: str  # a saved checkpoint directory (config + weights)
    tokenizer_path: str
    tensor_parallel_size: int = 1
    dtype: str = "auto"  # "auto": bfloat16 on a GPU, float32 on the CPU (vLLM's CPU backend wants fp32 here)
    gpu_memory_utilization: float = 0.5  # share of the GPU for weights + KV cache (colocated: leave room)
    kv_cache_gib: float = 1.0  # the CPU backend's KV-cache space
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    enforce_eager: bool = True  # no CUDA graphs / torch.compile (start-up in seconds, not minutes)
    enable_sleep_mode: bool = False  # GPU only: free weights and KV cache while the trainers run
    seed: int = 0


def vllm_available() -> tuple[bool, str]:
    """Whether vLLM imports here, and why not."""
    try:
        import vllm  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any import failure means "not usable here"
        return False, f"{type(err).__name__}: {err}"
    return True, ""


def build_llm(spec: EngineSpec) -> Any:
    """An in-process vLLM engine (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: the weights can be reached
    and loaded directly) on ``spec.path``, without vLLM's tokenizer, with :class:`WeightSync`."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    on_gpu = torch.cuda.is_available()
    if not on_gpu:  # else the CPU backend reserves most of the machine's memory for its KV cache
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, round(spec.kv_cache_gib)))  # this engine's, in GiB
        # its threads as many as the actor's torch threads, unpinned: the engine shares the cores with
        # the trainers' actors, as every role does
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    from vllm import LLM

    dtype = spec.dtype if spec.dtype != "auto" else ("bfloat16" if on_gpu else "float32")
    kwargs: dict[str, Any] = dict(
        model=spec.path, skip_tokenizer_init=True, dtype=dtype, enforce_eager=spec.enforce_eager,
        tensor_parallel_size=spec.tensor_parallel_size, seed=spec.seed, max_model_len=spec.max_model_len,
        logprobs_mode="processed_logprobs", worker_extension_cls=f"{__name__}.WeightSync",
        enable_prefix_caching=True,
        # tensor parallelism: one worker process per GPU of the actor's bundle; else the worker runs here
        distributed_executor_backend="mp" if spec.tensor_parallel_size > 1 else "uni",
    )
    if on_gpu:
        kwargs.update(gpu_memory_utilization=spec.gpu_memory_utilization, enable_sleep_mode=spec.enable_sleep_mode)
    else:
        # a prefill split over steps rewinds each seeded request's generator, which vLLM 0.32's CPU
        # generators cannot do ("CPU Generator does not use offset"): whole prefills only
        kwargs.update(enable_chunked_prefill=False)
    return LLM(**kwargs)


def _seeds(n: int, seed: int | None) -> list[int]:
    """One request seed per row, from torch's global generator (seeded first when ``seed`` is given)."""
    if seed is not None:
        torch.manual_seed(seed)
    return torch.randint(0, 2**31 - 1, (n,)).tolist()


class VLLMGenerator:
    """``alignment.generation.Generator`` on a vLLM ``LLM`` (see the module docstring)."""

    def __init__(self, llm: Any, tokenizer: Any):
        self.llm, self.tokenizer = llm, tokenizer

    def _run(self, prompts: Sequence[Sequence[int]], params: list[Any]) -> list[Any]:
        from vllm.inputs import TokensPrompt

        if not prompts:
            return []
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
        return [o.outputs[0] for o in outs]

    def until(self, texts: Sequence[str], spec: SamplingSpec, stop: list[int]) -> tuple[list[str], int]:
        from vllm import SamplingParams

        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
        sample = spec.do_sample
        params = [SamplingParams(max_tokens=spec.max_new_tokens, temperature=spec.temperature if sample else 0.0,
                                 top_p=spec.top_p if sample else 1.0, top_k=spec.top_k if sample else 0,
                                 repetition_penalty=spec.repetition_penalty,
                                 stop_token_ids=list(stop), seed=s, detokenize=False)
                  for s in _seeds(len(ids), None)]
        outs = [list(o.token_ids) for o in self._run(ids, params)]
        return ([self.tokenizer.decode(t, skip_special_tokens=False) for t in outs],
                sum(len(t) for t in outs))

    def sample(self, prompts: Sequence[Sequence[int]], spec: RolloutSpec, stop: int | Sequence[int],
               seed: int | None) -> tuple[list[list[int]], list[list[float]]]:
        from vllm import SamplingParams

        stops = [stop] if isinstance(stop, int) else list(stop)
        params = [SamplingParams(max_tokens=spec.max_new_tokens, min_tokens=spec.min_new_tokens,
                                 temperature=spec.temperature, top_p=spec.top_p, top_k=0,
                                 stop_token_ids=[] if spec.ignore_eos else stops, ignore_eos=spec.ignore_eos,
                                 logprobs=0, seed=s, detokenize=False)
                  for s in _seeds(len(prompts), seed)]
        ids, lps = [], []
        for o in self._run(prompts, params):
            toks = list(o.token_ids)
            ids.append(toks)
            lps.append([float(step[t].logprob) for step, t in zip(o.logprobs, toks)])
        return ids, lps


FUSED = ({"q_proj", "k_proj", "v_proj"}, {"gate_proj", "up_proj"})
"""Projections vLLM fuses into one weight: a partial update must bring all of a group or none."""


def adapted_layers_suffice(lora_targets: Iterable[str]) -> bool:
    """Whether an engine can take only the LoRA-adapted layers of an update: every group of fused
    projections is adapted whole or not at all."""
    targets = set(lora_targets)
    return all(targets >= g or not (targets & g) for g in FUSED)


def load_weights(llm: Any, weights: Iterable[tuple[str, torch.Tensor]]) -> int:
    """Load named tensors (transformers' parameter names) into every worker of ``llm``; the prefix
    cache is reset after. Returns the number of tensors loaded."""
    n = llm.collective_rpc("lab_load_weights", args=(list(weights),))[0]
    llm.reset_prefix_cache()
    return n


def broadcast_group(host: str, port: int, rank: int, world_size: int, device: torch.device) -> Any:
    """An NCCL communicator outside torch.distributed's default group (rank 0 hosts it): policy rank 0
    and every engine worker, for the weight broadcast (GPUs only)."""
    from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
    from vllm.distributed.utils import StatelessProcessGroup

    group = StatelessProcessGroup.create(host=host, port=port, rank=rank, world_size=world_size)
    return PyNcclCommunicator(group, device=device)


class WeightSync:
    """vLLM worker extension (``worker_extension_cls``): the calls the trainers' weights come in by.
    Its methods carry a ``lab_`` prefix so that none shadows a method of vLLM's worker."""

    def lab_load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> int:
        """Tensors sent whole (through Ray's object store on the CPU), in checkpoint format: vLLM's
        in-place reload fuses and repacks them as its loader does (the CPU backend repacks its linear
        layers, so a plain ``model.load_weights`` would not do)."""
        self.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)
        return len(weights)

    def lab_init_broadcast(self, host: str, port: int, rank_offset: int, world_size: int) -> None:
        """Join the NCCL group in which policy rank 0 (rank 0) broadcasts to the engines' workers."""
        self._lab_comm = broadcast_group(host, port, rank_offset + torch.distributed.get_rank(), world_size,
                                         self.device)

    def lab_receive_broadcast(self, metas: list[tuple[str, str, tuple[int, ...]]]) -> int:
        """Receive each (name, dtype, shape) of the broadcast, in order, as the reload consumes it."""

        def received() -> Iterable[tuple[str, torch.Tensor]]:
            for name, dtype, shape in metas:
                t = torch.empty(shape, dtype=getattr(torch, dtype), device=self.device)
                self._lab_comm.broadcast(t, src=0, stream=torch.cuda.current_stream())
                yield name, t

        self.reload_weights(weights_iterator=received(), is_checkpoint_format=True)
        torch.cuda.synchronize()
        return len(metas)
