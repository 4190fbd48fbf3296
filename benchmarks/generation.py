"""Generation throughput of the two engines (``rollout.engine=hf|vllm``) and the weight-sync time.

Random-weight Llama models (the tiny and medium configs of ``benchmarks/ppo_iteration.py``, and
models shaped like SmolLM2-135M ("100m") and Qwen2.5-0.5B ("0.5b")), prompts of 32 random tokens,
exactly ``--new-tokens`` new tokens per row (no stop), temperature 1; both engines sample through
the lab's generation interface (``HFGenerator.sample`` / ``VLLMGenerator.sample``), in one process.

    python benchmarks/generation.py                                   # every size, batch 32 and 256
    python benchmarks/generation.py --sizes tiny medium --batches 32  # a part
    python benchmarks/generation.py --json out.json                   # the rows, for docs/BENCHMARKS.md

Prints, per size and batch, the tokens/s of each engine (the median of ``--repeats`` timed calls
after a short warm-up call; vLLM's start-up apart), then the sync table: the seconds to hand the
policy's weights to a vLLM engine (state dict to the CPU, then vLLM's in-place reload, as
``rollout.sync=object_store`` does inside each engine actor). On a GPU it adds the HBM roofline:
each decode step reads every weight and the batch's KV cache once, so tokens/s cannot pass
``batch / ((weight bytes + KV bytes) / bandwidth)``; ``--bandwidth-gbs`` sets the device's
bandwidth (default: H200, 4,800 GB/s).

vLLM needs its own venv (``scripts/setup_vllm.sh``): run this with ``.venv-vllm/bin/python``.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ppo_iteration import CONFIGS as PPO_CONFIGS  # noqa: E402

SIZES = {
    **PPO_CONFIGS,
    "100m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                 num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True),  # SmolLM2-135M's shape
    "0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),  # Qwen2.5-0.5B's shape
}
PROMPT_LEN = 32


class _Ids:
    """The least of a tokenizer the generators need: ids in, ids out (no text is decoded here)."""

    pad_token_id = 0
    eos_token_id = 1


def save_model(name: str, root: Path, dtype: torch.dtype) -> tuple[Path, int]:
    """A random-weight Llama of size ``name`` saved under ``root``; its parameter count."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**SIZES[name], max_position_embeddings=512, pad_token_id=0, eos_token_id=1, bos_token_id=1)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(dtype)
    path = root / name
    model.save_pretrained(path)
    return path, sum(p.numel() for p in model.parameters())


def timed(fn, repeats: int, warmup=None) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after one call of ``warmup`` (default ``fn``):
    first-call allocations and kernel selection stay out of the figure."""
    (warmup or fn)()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def roofline(cfg: dict, n_params: int, batch: int, new_tokens: int, bytes_per: int, bandwidth_gbs: float) -> float:
    """Upper bound on decode tokens/s: weights plus the batch's KV cache (at the mean context length)
    read once per step, over the device's bandwidth."""
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads", heads)
    head_dim = cfg["hidden_size"] // heads
    context = PROMPT_LEN + new_tokens / 2
    kv = batch * context * cfg["num_hidden_layers"] * 2 * kv_heads * head_dim * bytes_per
    step_s = (n_params * bytes_per + kv) / (bandwidth_gbs * 1e9)
    return batch / step_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--batches", nargs="+", type=int, default=[32, 256])
    ap.add_argument("--engines", nargs="+", default=["hf", "vllm"], choices=["hf", "vllm"])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bandwidth-gbs", type=float, default=4800.0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    from alignment.generation import HFGenerator, RolloutSpec

    on_gpu = torch.cuda.is_available()
    dtype = torch.bfloat16 if on_gpu else torch.float32
    device = "cuda" if on_gpu else "cpu"
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {args.threads} threads, torch "
          f"{torch.__version__}, {'GPU ' + torch.cuda.get_device_name() if on_gpu else 'CPU'}, {dtype}; prompts of "
          f"{PROMPT_LEN} tokens, {args.new_tokens} new tokens each", flush=True)
    spec = RolloutSpec(max_new_tokens=args.new_tokens, ignore_eos=True)
    warm = RolloutSpec(max_new_tokens=4, ignore_eos=True)  # the warm-up: 8 rows, 4 tokens
    rows, syncs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sizes:
            path, n_params = save_model(name, Path(tmp), dtype)
            engines = {}
            if "hf" in args.engines:
                from transformers import LlamaForCausalLM

                model = LlamaForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
                engines["hf"] = HFGenerator(model, _Ids())
            llm, start_s = None, None
            if "vllm" in args.engines:
                from alignment.vllm_generation import EngineSpec, VLLMGenerator, build_llm, load_weights

                t0 = time.perf_counter()
                # 2 GiB of KV cache holds batch 256 x 64 tokens of the 0.5B model (0.4 GiB) on the CPU
                llm = build_llm(EngineSpec(path=str(path), tokenizer_path=str(path), kv_cache_gib=2,
                                           gpu_memory_utilization=0.3))
                start_s = time.perf_counter() - t0
                engines["vllm"] = VLLMGenerator(llm, _Ids())
            for batch in args.batches:
                prompts = torch.randint(2, SIZES[name]["vocab_size"], (batch, PROMPT_LEN)).tolist()
                row = {"size": name, "params": n_params, "batch": batch}
                for engine, gen in engines.items():
                    seconds = timed(lambda gen=gen, p=prompts: gen.sample(p, spec, 1, seed=0), args.repeats,
                                    warmup=lambda gen=gen, p=prompts: gen.sample(p[:8], warm, 1, seed=0))
                    row[f"{engine}_tok_s"] = batch * args.new_tokens / seconds
                if on_gpu:
                    row["roofline_tok_s"] = roofline(SIZES[name], n_params, batch, args.new_tokens, 2,
                                                     args.bandwidth_gbs)
                rows.append(row)
                cells = "  ".join(f"{k.removesuffix('_tok_s')} {v:9.1f} tok/s" for k, v in row.items()
                                  if k.endswith("_tok_s"))
                speedup = f"  vllm/hf {row['vllm_tok_s'] / row['hf_tok_s']:.2f}x" if len(engines) == 2 else ""
                print(f"{name:>6} ({n_params / 1e6:7.1f}M)  batch {batch:>4}  {cells}{speedup}", flush=True)
            if llm is not None:
                from transformers import LlamaForCausalLM

                source = LlamaForCausalLM.from_pretrained(path, dtype=dtype).to(device)

                def sync(source=source, llm=llm) -> None:
                    load_weights(llm, [(n, t.detach().to("cpu", copy=True)) for n, t in source.state_dict().items()])

                seconds = timed(sync, args.repeats)
                mb = sum(t.numel() * t.element_size() for t in source.state_dict().values()) / 2**20
                syncs.append({"size": name, "params": n_params, "mb": mb, "sync_s": seconds, "start_s": start_s})
                print(f"{name:>6}: vLLM start-up {start_s:.1f} s; weight sync {seconds:.3f} s for {mb:.0f} MiB",
                      flush=True)
                del source, sync
            # free this size's engines before the next one starts (the CPU backend sizes its KV cache by the
            # memory left free)
            if llm is not None:
                llm.llm_engine.engine_core.shutdown()
            del llm, engines
            gc.collect()
    print("\n| size | params | batch | " + " | ".join(f"{e} tok/s" for e in args.engines)
          + (" | roofline tok/s" if on_gpu else "") + (" | vLLM / HF |" if len(args.engines) == 2 else " |"))
    for r in rows:
        cells = [f"{r[f'{e}_tok_s']:,.0f}" for e in args.engines]
        if on_gpu:
            cells.append(f"{r['roofline_tok_s']:,.0f}")
        if len(args.engines) == 2:
            cells.append(f"{r['vllm_tok_s'] / r['hf_tok_s']:.2f}×")
        print(f"| {r['size']} | {r['params'] / 1e6:.1f}M | {r['batch']} | " + " | ".join(cells) + " |")
    if syncs:
        print("\n| size | weights | vLLM start-up | sync |")
        for s in syncs:
            print(f"| {s['size']} | {s['mb']:.0f} MiB | {s['start_s']:.1f} s | {s['sync_s']:.3f} s |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "syncs": syncs}, indent=1))


if __name__ == "__main__":
    main()
