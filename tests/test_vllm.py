"""vLLM as the rollout engine (``rollout.engine=vllm``): the engines' greedy replies equal the
policy's own before and after a PPO update (weights synced through the object store, whole or,
with LoRA, only the adapted layers), their sampled log-probs equal the trainer's, and PPO with
tools runs end to end on the engines.

vLLM pins its own transformers, so these run in the venv of ``scripts/setup_vllm.sh``
(``scripts/test.sh`` runs them there); elsewhere they are skipped, saying why."""

from __future__ import annotations

import json

import pytest
import torch

from alignment.vllm_generation import vllm_available
from tests.builders import save_sft_and_pm

OK, WHY = vllm_available()
pytestmark = pytest.mark.skipif(not OK, reason=f"vLLM does not import here ({WHY}); scripts/test.sh runs these "
                                               "tests in the venv of scripts/setup_vllm.sh")

PROMPTS = ["<|Human|>: What is 3 plus 4?<eoh>\n<|MOSS|>:", "<|Human|>: Tell me about cats.<eoh>\n<|MOSS|>:",
           "<|Human|>: 你好<eoh>\n<|MOSS|>:"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer):
    """A small random SFT checkpoint (head size 32, which vLLM's CPU attention takes) and a
    preference model made from it."""
    return save_sft_and_pm(tmp_path_factory.mktemp("vllm_models"), tokenizer, hidden=64, intermediate=128)


def vllm_ctx(tmp_path, lora: bool):
    from experiments.config import ActorResources
    from tests.test_ppo_loop import make_ctx

    ctx = make_ctx(tmp_path, iterations=1, run_tag="vllm-lora" if lora else "vllm-test")
    cfg = ctx.cfg
    cfg.rollout.engine = "vllm"
    cfg.ray.rollout = ActorResources(num_actors=1, num_cpus=0.25)
    cfg.algo.policy_optim.lr = 0.05  # one step must change what the policy says
    cfg.algo.checkpoint_every = 0
    cfg.model.lora.enabled = lora
    return ctx


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_after_a_policy_update_vllm_greedy_equals_hf_greedy(ray_address, tmp_path, checkpoints, lora):
    from alignment.generation import RolloutSpec, SamplingSpec
    from alignment.models.tokenizer import load_tokenizer
    from experiments.runtime.roles import start_roles
    from experiments.stages.ppo import PPOTrainer

    sft, pm = checkpoints
    ctx = vllm_ctx(tmp_path, lora)
    roles = start_roles(ctx, sft, pm)
    greedy = SamplingSpec(max_new_tokens=24, do_sample=False, repetition_penalty=1.0)
    try:
        assert roles.engines is not None and roles.engines.size == 1

        def replies() -> tuple[list[str], list[str]]:
            return (roles.engines.call("generate", PROMPTS, greedy, 8, 0)[0],
                    roles.policy.call("generate", PROMPTS, greedy, 8, 0)[0])

        def engine_sample() -> tuple[list[list[int]], list[list[float]]]:  # seeded: the same draw each time
            return tuple(roles.engines.call("sample", ids, probe, 5)[0][:2])

        ids = load_tokenizer(str(sft))(PROMPTS, add_special_tokens=False)["input_ids"]
        probe = RolloutSpec(max_new_tokens=16)
        engine, hf = replies()
        assert engine == hf  # the same checkpoint, the same greedy continuation
        before = engine_sample()
        trainer = PPOTrainer(ctx, roles, load_tokenizer(str(sft)))
        if lora:  # only the adapted layers travel: q, k, v and o of every decoder layer
            names = [n for n, _ in roles.policy.call("named_weights", only_lora=True)[0]]
            assert trainer.sync.only_lora and len(names) == 2 * 4
            assert all(".self_attn." in n and n.endswith(".weight") and "lora" not in n for n in names)
        metrics = trainer.step()  # rollout on the engine, update, then the sync
        assert metrics["time/sync_s"] > 0
        # the old log-probs are the trainer's; vLLM's own agree with them in fp32
        assert 0 <= metrics["rollout/logprob_gap"] < 1e-3
        # the update reached the engine: its seeded draw (tokens, or their log-probs) moved ...
        after = engine_sample()
        assert after[0] != before[0] or max(abs(a - b) for ra, rb in zip(after[1], before[1])
                                            for a, b in zip(ra, rb)) > 1e-3
        # ... to the trainer's updated weights: the next rollout's log-probs agree with the trainer's
        assert trainer.step()["rollout/logprob_gap"] < 1e-3
        engine_after, hf_after = replies()  # (a random model's greedy text may not change in one step)
        assert engine_after == hf_after  # the engine says what the updated policy says
    finally:
        roles.shutdown()
        ctx.close()


def test_engine_samples_carry_the_policys_log_probs_and_stop_ids(ray_address, checkpoints):
    """``sample`` on vLLM: each response stops at (and keeps) its first stop id, and its log-probs
    are the model's under softmax(logits / T), as the transformers engine's are."""
    from alignment.generation import RolloutSpec
    from alignment.losses.logprobs import token_logprobs
    from alignment.models.causal_lm import load_causal_lm
    from alignment.models.tokenizer import load_tokenizer
    from alignment.rollout import pack, response_logits, response_tokens
    from alignment.vllm_generation import EngineSpec, VLLMGenerator, build_llm

    sft, _ = checkpoints
    tok = load_tokenizer(str(sft))
    llm = build_llm(EngineSpec(path=str(sft), tokenizer_path=str(sft)))
    gen = VLLMGenerator(llm, tok)
    prompts = tok(PROMPTS * 4, add_special_tokens=False)["input_ids"]
    stop = tok.convert_tokens_to_ids("<eom>")
    spec = RolloutSpec(max_new_tokens=32, temperature=0.8)
    ids, lps = gen.sample(prompts, spec, [stop, tok.eos_token_id], seed=3)
    assert ids == gen.sample(prompts, spec, [stop, tok.eos_token_id], seed=3)[0]  # seeded: reproducible
    for row in ids:
        ends = [i for i, t in enumerate(row) if t in (stop, tok.eos_token_id)]
        assert ends in ([], [len(row) - 1]) and (ends or len(row) == 32)
    model = load_causal_lm(str(sft), tok).eval()
    ro = pack(prompts, ids, lps, tok.pad_token_id)
    with torch.no_grad():
        ours = token_logprobs(response_logits(model, ro), response_tokens(ro), 0.8) * ro.response_mask
    assert torch.allclose(ours, ro.logprobs, atol=1e-4)
    fixed = gen.sample(prompts[:3], RolloutSpec(max_new_tokens=12, ignore_eos=True), stop, seed=0)[0]
    assert [len(r) for r in fixed] == [12, 12, 12]
    # more prompt tokens than one engine step takes (a 32-row PPO batch with tools): whole prefills, one
    # after another (a chunked prefill of a seeded request fails on vLLM's CPU backend)
    long = torch.randint(20, len(tok) - 20, (48, 300), generator=torch.Generator().manual_seed(0)).tolist()
    rows = gen.sample(long, RolloutSpec(max_new_tokens=8), stop, seed=1)[0]
    assert len(rows) == 48 and rows == gen.sample(long, RolloutSpec(max_new_tokens=8), stop, seed=1)[0]


TINY = ["data.world.tool_share=0.4", "tools.enabled=true", "data.n_train=400", "trainer.batch_size=8",
        "pm.n_prompts=12", "pm.n_val_prompts=6", "eval.n_prompts=16", "eval.max_new_tokens=24",
        "algo.iterations=2", "algo.rollout_batch_size=8", "algo.max_new_tokens=16", "logger.wandb=false",
        "ray.policy.num_cpus=0.75", "ray.rollout.num_cpus=0.25"]


def test_ppo_with_tools_runs_on_vllm_engines(ray_address, tmp_path):
    from tests.lab import run_lab

    run = tmp_path / "run"
    out = run_lab(ray_address, run, tmp_path / "cache", "+experiment=ppo", "rollout.engine=vllm", *TINY)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ppo = [m for m in metrics if "ppo/iteration" in m]
    assert len(ppo) == 2 and all(m["time/sync_s"] > 0 and m["rollout/logprob_gap"] < 1e-3 for m in ppo)
    assert all(0 <= m["ppo/tool_calls"] <= 1 for m in ppo)  # tool rows went through the passes on the engine
    results = json.loads((run / "results.json").read_text())
    w = results["win_rate"]["gold"]["ppo_vs_sft"]
    assert "PPO vs SFT" in out.stdout and 0 <= w["ci"][0] <= w["value"] <= w["ci"][1] <= 1
    assert results["tool_use"]["n"] > 0
    assert "engine: vllm" in (run / "resolved_config.yaml").read_text()
