"""The CUDA paths, checked on the CPU (issue 34): what a reading of them found, each with a test that
fails without its fix. CUDA is faked where a path only asks torch or Ray about it (a monkeypatched
``torch.cuda``, ``ray.get_gpu_ids``); the ZeRO-3 lockstep runs for real, on two gloo ranks.
What needs a GPU to check is in ``docs/gpu.md`` and ``scripts/gpu_check.sh``."""

from __future__ import annotations

import socket
import types
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from actors import devices
from actors.engine import OptimConfig, StrategySpec, TrainingEngine
from tests.test_engine import _env, _finish, _spawn

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def _llama(seed: int = 0, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=layers,
                                        num_attention_heads=2, num_key_value_heads=2, intermediate_size=64))


# ------------------------------------------------------------------------ 1. DeepSpeed on cuda


def test_deepspeed_engine_on_an_unindexed_cuda_device_sets_an_indexed_one(monkeypatch):
    """``torch.cuda.set_device(torch.device("cuda"))`` raises "Expected a torch.device with a specified
    index"; the engine must pass ``cuda:N`` (the torch check itself runs here, the CUDA call is faked)."""
    from torch.cuda._utils import _get_device_index

    import actors.engine as engine_mod

    set_to = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: set_to.append(_get_device_index(d, optional=False)))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    configs = []

    def initialize(model, optimizer, lr_scheduler, config):
        configs.append(config)
        return types.SimpleNamespace(module=model), optimizer, None, lr_scheduler

    monkeypatch.setattr(engine_mod, "_import_deepspeed", lambda device: types.SimpleNamespace(initialize=initialize))
    eng = TrainingEngine(torch.nn.Linear(2, 2), OptimConfig(lr=1.0), StrategySpec(name="deepspeed", zero_stage=2),
                         torch.device("cuda"))
    assert set_to == [0] and eng.device == torch.device("cuda", 0)
    assert configs[0]["zero_optimization"]["stage"] == 2


# ------------------------------------------------------------- 2. the device Ray reserved, not the visible one


@pytest.mark.parametrize("ids, available, want", [
    ([], True, "cpu"),  # num_gpus=0 on a GPU node: Ray 2.60 leaves the GPUs visible; the actor stays off them
    (["3"], True, "cuda:0"),  # Ray narrows CUDA_VISIBLE_DEVICES to the reserved GPU: it is cuda:0
    ([1, 2], True, "cuda:0"),
    ([0], False, "cpu"),
    (None, True, "cuda:0"),  # not a Ray actor (LocalGroup): the first visible GPU, indexed
])
def test_device_follows_the_gpus_ray_reserved(monkeypatch, ids, available, want):
    monkeypatch.delenv(devices.NOSET, raising=False)
    assert devices.device_for(ids, available) == torch.device(want)


def test_noset_cuda_visible_devices_keeps_the_node_numbering(monkeypatch):
    monkeypatch.setenv(devices.NOSET, "1")
    assert devices.device_for(["2"], True) == torch.device("cuda", 2)


def test_an_actor_without_gpus_on_a_gpu_node_computes_on_the_cpu_and_hides_the_gpus(monkeypatch):
    """A role with ``num_gpus=0`` on a GPU node: ``torch.cuda.is_available()`` is true (faked here), Ray
    reserved nothing; the actor is on the CPU, in fp32, and vLLM or torch in it see no GPU."""
    from actors.base import RoleActor

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(devices, "in_ray_actor", lambda: True)
    monkeypatch.setattr(devices.ray, "get_gpu_ids", lambda: [])
    actor = RoleActor(0, 1, num_threads=torch.get_num_threads())
    assert actor.device == CPU
    import os

    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    monkeypatch.setattr(devices.ray, "get_gpu_ids", lambda: [1])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert RoleActor(0, 1, num_threads=torch.get_num_threads()).device == torch.device("cuda", 0)


# ------------------------------------------------------------------------ 3. ranks packed onto one GPU


def _lab(*overrides: str):
    from experiments.config import register

    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="config", overrides=["+experiment=ppo", *overrides]))


@pytest.mark.parametrize("overrides, match", [
    (["ray.policy.num_actors=2", "ray.policy.num_gpus=0.5", "ray.critic.num_actors=2", "ray.critic.num_gpus=1",
      "ray.reference.num_actors=2", "ray.preference.num_actors=2"], "ray.policy: 2 data-parallel ranks with 0.5 GPU"),
    (["ray.reference.num_actors=2", "ray.reference.num_gpus=0.25"], "ray.reference: 2 data-parallel ranks"),
    (["ray.colocate=true", *(f"ray.{r}.num_actors=2" for r in ("policy", "critic", "reference", "preference")),
      *(f"ray.{r}.num_gpus=0.1" for r in ("policy", "critic", "reference", "preference"))],
     "ray.colocate: 2 data-parallel ranks with 0.4 GPU"),
])
def test_data_parallel_ranks_on_fractions_of_one_gpu_are_refused(overrides, match):
    from experiments.validation import validate

    with pytest.raises(ValueError, match=match):
        validate(_lab(*overrides))


@pytest.mark.parametrize("overrides", [
    ["ray.policy.num_gpus=0.5"],  # one rank on half a GPU: nothing to collide with
    ["ray.policy.num_actors=2", "ray.policy.num_gpus=0.6", "ray.critic.num_actors=2", "ray.critic.num_gpus=1",
     "ray.reference.num_actors=2", "ray.preference.num_actors=2"],  # two 0.6 shares never fit one GPU
    ["ray.colocate=true", *(f"ray.{r}.num_actors=2" for r in ("policy", "critic", "reference", "preference")),
     *(f"ray.{r}.num_gpus=0.25" for r in ("policy", "critic", "reference", "preference"))],  # a whole GPU each
])
def test_ranks_that_cannot_share_a_gpu_pass(overrides):
    from experiments.validation import validate

    validate(_lab(*overrides))


# ----------------------------------------------------------------- 5. gradient checkpointing runs


def test_a_loaded_model_trains_in_training_mode_and_checkpoints(tmp_path):
    """transformers 5 loads in eval mode, where checkpointing is skipped: the engine puts a trainable
    model in training mode, and the decoder layers run again in the backward pass (recomputed)."""
    from transformers import LlamaForCausalLM

    _llama().save_pretrained(tmp_path)
    model = LlamaForCausalLM.from_pretrained(tmp_path)
    assert not model.training  # what transformers 5 does
    eng = TrainingEngine(model, OptimConfig(lr=1e-3), StrategySpec(gradient_checkpointing=True), CPU)
    assert eng.module.training
    calls = []
    eng.module.model.layers[0].mlp.register_forward_pre_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    eng.backward(eng.forward(input_ids=ids, labels=ids).loss)
    assert len(calls) == 2, "checkpointing recomputes the layer in the backward pass"
    eng.step()


def test_a_frozen_engine_has_no_optimizer_and_no_gradients():
    eng = TrainingEngine(_llama(), None, StrategySpec(), CPU)
    assert eng.optimizer is None and eng.scheduler is None and eng.trainable_params == 0
    assert not eng.module.training and eng.lr == 0.0
    with pytest.raises(RuntimeError, match="frozen"):
        eng.step()


# ------------------------------------------------------------------------ 6. KL at iteration 0 in bf16


def test_kl_to_the_reference_is_zero_at_the_first_iteration_in_bf16(tmp_path, tokenizer):
    """The policy (torch strategy, bf16: fp32 weights under autocast, the LM head outside it) and the
    reference from the same checkpoint give the same log-probs: k3 is 0, not 0.002-0.03 a token."""
    from actors.policy import ModelSpec, PolicyActor
    from actors.reference import ReferenceActor
    from alignment.generation import RolloutSpec
    from alignment.losses.kl import kl_estimate
    from alignment.losses.masked import masked_mean
    from tests.builders import save_sft_and_pm

    sft, _ = save_sft_and_pm(tmp_path, tokenizer, hidden=64, intermediate=128)
    threads = torch.get_num_threads()
    spec = StrategySpec(bf16=True)
    policy = PolicyActor(0, 1, threads)
    policy.init_model(ModelSpec(tokenizer_path=str(sft), path=str(sft)), spec, OptimConfig(lr=1e-3))
    reference = ReferenceActor(0, 1, threads)
    reference.init_model(str(sft), strategy=spec)
    prompts = [[5, 6, 7, 8, 9], [5, 6, 7, 10], [11, 12, 13, 14, 15, 16]]
    rollout, _ = policy.rollout(prompts, RolloutSpec(max_new_tokens=12), seed=0)
    kl = kl_estimate(rollout.logprobs, reference.logprobs(rollout), "k3")
    assert masked_mean(kl, rollout.response_mask).item() < 1e-4
    # the older spelling, bf16 alone, means the torch strategy in bf16 too
    reference.init_model(str(sft), bf16=True)
    assert masked_mean(kl_estimate(rollout.logprobs, reference.logprobs(rollout), "k3"),
                       rollout.response_mask).item() < 1e-4


# ---------------------------------------------------------------------------------- 7. memory


def test_an_update_returns_the_cached_gpu_memory(monkeypatch):
    """After the update's steps the CUDA cache is emptied (a colocated engine wakes its KV cache next)."""
    from actors.base import TrainableActor

    freed = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: freed.append(True))
    actor = TrainableActor.__new__(TrainableActor)
    actor.device = torch.device("cuda", 0)
    actor.engine = types.SimpleNamespace(backward=lambda loss, boundary=True: None, step=lambda: {"lr": 0.1})
    stats = actor.minibatch_steps(1, [(1.0,), (3.0,)], lambda x: (torch.tensor(x), {"x": x}))
    assert stats == {"x": 2.0, "lr": pytest.approx(0.1)} and freed == [True]


def test_sampling_without_logprobs_keeps_no_logits(monkeypatch):
    """A bf16 policy recomputes the old log-probs: its sampling asks ``generate`` for no logits."""
    from alignment.generation import RolloutSpec, sample_responses

    model = _llama()
    seen = []
    original = type(model).generate

    def generate(self, *args, **kwargs):
        seen.append((kwargs["output_logits"], kwargs["synced_gpus"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "generate", generate)
    ids, lps = sample_responses(model, [[1, 2, 3]], RolloutSpec(max_new_tokens=4), 0, 63, logprobs=False)
    assert seen == [(False, False)] and all(x != x for x in lps[0])  # NaN: recomputed by the caller
    ids2, lps2 = sample_responses(model, [[1, 2, 3]], RolloutSpec(max_new_tokens=4), 0, 63)
    assert ids2 == ids and all(x <= 0 for x in lps2[0])


# ------------------------------------------------------------------------ 8. multi-node and vLLM


def test_master_address_is_the_node_ip_not_a_loopback_alias(monkeypatch):
    import actors.base as base

    monkeypatch.setattr(socket, "gethostbyname", lambda _: "127.0.1.1")  # Debian's /etc/hosts
    monkeypatch.setattr(base, "get_node_ip_address", lambda: "10.0.0.7")
    actor = base.RoleActor(0, 1, num_threads=torch.get_num_threads())
    ip, port = actor.master_address()
    assert ip == "10.0.0.7" and port > 0


def test_a_broadcast_that_never_completes_times_out_with_an_error(monkeypatch):
    """A receiver that failed mid-broadcast leaves the sender's NCCL kernel waiting: rank 0 must not
    block for ever in ``synchronize``."""
    class Never:
        def record(self) -> None:
            pass

        def query(self) -> bool:
            return False

    monkeypatch.setattr(torch.cuda, "Event", Never)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: pytest.fail("an unbounded synchronize"))
    with pytest.raises(TimeoutError, match="weight broadcast"):
        devices.synchronize(0.05, "policy rank 0: the weight broadcast")


def test_policy_broadcast_uses_the_bounded_wait(monkeypatch):
    import actors.policy as policy_mod
    from actors.policy import PolicyActor

    waited = []
    monkeypatch.setattr(policy_mod, "synchronize", lambda timeout_s, what: waited.append(timeout_s))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: None)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: pytest.fail("an unbounded synchronize"))
    actor = PolicyActor.__new__(PolicyActor)
    actor.rank = 0
    actor.engine = TrainingEngine(torch.nn.Linear(2, 2), None, StrategySpec(), CPU)
    sent = []
    actor._broadcast = types.SimpleNamespace(broadcast=lambda t, src, stream: sent.append(t.shape))
    actor.broadcast_weights(timeout_s=7.0)
    assert waited == [7.0] and len(sent) == 2


def test_max_model_len_reaches_the_engine():
    from experiments.runtime.engines import engine_spec
    from experiments.validation import validate

    lab = _lab("rollout.engine=vllm", "rollout.max_model_len=4096")
    assert engine_spec(lab, "/m").max_model_len == 4096
    assert engine_spec(_lab("rollout.engine=vllm"), "/m").max_model_len is None
    with pytest.raises(ValueError, match="rollout.max_model_len"):
        validate(_lab("rollout.engine=vllm", "rollout.max_model_len=0"))


# ----------------------------------------------------------------- 4. ZeRO-3 ranks in lockstep

ZERO3_SCRIPT = """
    import json, sys
    import torch, torch.distributed as dist
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification
    from actors.engine import OptimConfig, StrategySpec, TrainingEngine
    from alignment.generation import HFGenerator, RolloutSpec, SamplingSpec, generate_replies
    from alignment.models.shared_prefix import lm_hidden_states

    dist.init_process_group("gloo")
    rank, out = dist.get_rank(), sys.argv[1]
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, intermediate_size=64, pad_token_id=0)
    torch.manual_seed(0)
    spec = StrategySpec(name="deepspeed", zero_stage=3)
    eng = TrainingEngine(LlamaForCausalLM(cfg), OptimConfig(lr=1e-3), spec, torch.device("cpu"))

    class Tok:  # what generate_replies and the samplers read of a tokenizer
        eos_token, eos_token_id, pad_token_id, pad_token = "e", 63, 0, None
        all_special_tokens = ["e"]

        def __call__(self, texts, **kw):
            ids = [[5 + (ord(c) % 50) for c in t] for t in texts]
            width = max(map(len, ids))
            return {"input_ids": torch.tensor([[0] * (width - len(i)) + i for i in ids]),
                    "attention_mask": torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])}

        def batch_decode(self, rows, **kw):
            return ["x" for _ in rows]

    gen = HFGenerator(eng.module, Tok(), synced_gpus=eng.lockstep)
    # unequal stop points: rank 0 stops at once (its stop ids are every token), rank 1 runs 12 steps
    stop = list(range(64)) if rank == 0 else 63
    ids, _ = gen.sample([[1, 2, 3], [4, 5]], RolloutSpec(max_new_tokens=12, min_new_tokens=0), stop, seed=rank)
    # unequal prefixes: rank 0's rows share 20 tokens (two passes), rank 1's none (one pass)
    rows = torch.tensor([[7] * 20 + [1, 2], [7] * 20 + [3, 4]]) if rank == 0 else torch.tensor([[1] * 22, [2] * 22])
    hidden = lm_hidden_states(eng, rows, torch.ones_like(rows))
    eng.backward(hidden.float().pow(2).mean())
    eng.step()

    # a per-rank number of generate calls: 3 prompts at 2 a batch on rank 0, 1 on rank 1
    texts = ["abc", "de", "fgh"] if rank == 0 else ["ij"]
    replies, _ = generate_replies(HFGenerator(eng.module, Tok(), synced_gpus=eng.lockstep), Tok(), texts,
                                  SamplingSpec(max_new_tokens=3), batch_size=2)
    # the preference model's scoring: a per-rank number of batches (5 rows vs 1 at batch 2)
    torch.manual_seed(0)
    pm_cfg = LlamaConfig(**{k: v for k, v in cfg.to_dict().items() if k not in ("id2label", "label2id")},
                         num_labels=1)
    pm = TrainingEngine(LlamaForSequenceClassification(pm_cfg), None, spec, torch.device("cpu"))  # frozen
    from actors.preference import PreferenceActor
    actor = PreferenceActor.__new__(PreferenceActor)
    actor.engine, actor.device = pm, torch.device("cpu")
    actor.tokenizer = Tok()
    seqs = [[1, 2, 3], [4, 5], [6], [7, 8, 9, 10], [11]] if rank == 0 else [[12, 13]]
    scores = actor.score(seqs, batch_size=2)
    json.dump({"lockstep": eng.lockstep, "frozen_lockstep": pm.lockstep, "n_ids": [len(i) for i in ids],
               "replies": len(replies), "scores": len(scores)}, open(f"{out}/rank{rank}.json", "w"))
    dist.barrier()
    dist.destroy_process_group()
"""


def test_zero3_ranks_stay_in_step_with_unequal_stop_points_prefixes_and_batches(tmp_path):
    """Two gloo ranks under ZeRO-3, each forward pass a collective: generation that stops at different
    steps, a shared-prefix pass on one rank only, and different numbers of generate calls and scoring
    batches must all finish (without the lockstep they wait for ever: the test's timeout)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2", "DS_ACCELERATOR": "cpu"}
    procs = [_spawn(ZERO3_SCRIPT, tmp_path, str(tmp_path), env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                    log=f"rank{r}") for r in range(2)]
    try:
        r0, r1 = (_finish(p, tmp_path / f"rank{i}.json") for i, p in enumerate(procs))
    finally:  # a rank left waiting for the other must not outlive the test
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
    assert r0["lockstep"] and r1["lockstep"] and r0["frozen_lockstep"]
    assert r0["n_ids"] == [1, 1] and max(r1["n_ids"]) > 1  # they did stop at different steps
    assert (r0["replies"], r1["replies"]) == (3, 1) and (r0["scores"], r1["scores"]) == (5, 1)


class _CountingEngine:
    """An engine in lockstep (``synced_gpus``) that answers every pass with " ok<eom>" and counts its calls."""

    synced_gpus = True

    def __init__(self, tokenizer):
        self.tok, self.calls = tokenizer, []

    def sample(self, prompts, spec, stop, seed):
        self.calls.append(len(prompts))
        reply = self.tok(" ok<eom>", add_special_tokens=False)["input_ids"]
        return [list(reply) for _ in prompts], [[-1.0] * len(reply) for _ in prompts]

    def until(self, texts, spec, stop):
        self.calls.append(len(texts))
        return [" ok<eom>" for _ in texts], 2 * len(texts)


def _another_rank_still_passing(monkeypatch):
    """``agreed_max`` as it answers a rank whose peer still has rows to continue in every pass."""
    import alignment.tool_use as tool_use

    monkeypatch.setattr(tool_use, "agreed_max", lambda value, lockstep: max(value, 1) if lockstep else value)


def test_tool_passes_stay_in_step_with_a_rank_that_needs_more(monkeypatch, tokenizer):
    """Tool use takes a data-dependent number of passes. Under ZeRO-3 a rank whose replies are done
    keeps sampling (a filler row, dropped) while its peer still passes, for rollouts and for the
    evaluation's replies alike; its own replies are what they would have been."""
    from alignment.chat_format import Conversation, Turn
    from alignment.generation import RolloutSpec, SamplingSpec
    from alignment.tool_use import MAX_PASSES, generate_with_tools, sample_with_tools

    prompt = tokenizer("<|Human|>: hi<eoh>\n<|MOSS|>:", add_special_tokens=False)["input_ids"]
    alone = _CountingEngine(tokenizer)
    alone.synced_gpus = False
    want = sample_with_tools(alone, tokenizer, [prompt], [None], RolloutSpec(max_new_tokens=8), seed=0)
    _another_rank_still_passing(monkeypatch)
    eng = _CountingEngine(tokenizer)
    got = sample_with_tools(eng, tokenizer, [prompt], [None], RolloutSpec(max_new_tokens=8), seed=0)
    assert got == want and len(alone.calls) == 1
    assert len(eng.calls) == MAX_PASSES + 1  # its plain row was done after pass 0; it kept step with its peer

    conv = Conversation("You are MOSS.\n- Calculator: enabled. API: Calculate(expression)", [Turn("1+1?", "")])
    eng = _CountingEngine(tokenizer)
    replies, _ = generate_with_tools(eng, tokenizer, [conv], SamplingSpec(max_new_tokens=8), batch_size=4)
    assert len(eng.calls) == MAX_PASSES and replies[0].reply == "ok"


def test_a_rank_whose_share_has_no_tool_rows_still_passes_with_its_peers(monkeypatch, tokenizer):
    """The batch has tool rows but this rank's share has none: under ZeRO-3 it still takes the tool
    passes (its peers do), not the one-pass plain path; alone, it takes the plain path as before."""
    from actors.sampling import SamplingRole
    from alignment.generation import RolloutSpec
    from alignment.tool_use import MAX_PASSES

    class Role(SamplingRole):
        def __init__(self, gen):
            self.tokenizer, self.gen, self.tokens_generated, self.rank = tokenizer, gen, 0, 0

        def generator(self):
            return self.gen

    prompt = tokenizer("<|Human|>: hi<eoh>\n<|MOSS|>:", add_special_tokens=False)["input_ids"]
    alone = _CountingEngine(tokenizer)
    alone.synced_gpus = False
    want = Role(alone).sample([prompt], RolloutSpec(max_new_tokens=8), seed=0, tools=[None])
    _another_rank_still_passing(monkeypatch)
    eng = _CountingEngine(tokenizer)
    got = Role(eng).sample([prompt], RolloutSpec(max_new_tokens=8), seed=0, tools=[None])
    assert len(alone.calls) == 1 and len(eng.calls) == MAX_PASSES + 1
    assert got[0] == want[0] and got[3] == want[3]  # the same reply, sampled in step with the peer


@pytest.mark.parametrize("overrides, match", [
    (["algo.ptx_batch_size=2"], r"algo\.ptx_batch_size \(2\) is below ray\.policy\.num_actors x algo\.mini_batches"),
    (["algo.rollout_batch_size=34"], r"algo\.rollout_batch_size \(34\) does not split evenly over ray\.policy"),
])
def test_zero3_refuses_update_steps_whose_passes_differ_by_rank(overrides, match):
    from experiments.validation import validate

    ranks = ["strategy=deepspeed_zero3", "ray.policy.num_actors=2"]
    validate(_lab(*ranks))  # the preset itself keeps its ranks in step
    validate(_lab("algo.ptx_batch_size=2"))  # one rank: nothing to keep in step
    with pytest.raises(ValueError, match=match):
        validate(_lab(*ranks, *overrides))


def test_saving_a_lora_policy_copies_no_model(tmp_path, tokenizer, monkeypatch):
    """The merged checkpoint equals ``mergeable``'s, written without a deep copy of the model (under
    ZeRO-3 the model is gathered in full for the save: a copy would double that)."""
    import copy

    from transformers import AutoModelForCausalLM

    from alignment.models.causal_lm import ArchSpec, LoraSpec, apply_lora, build_tiny, mergeable, save_merged

    model = apply_lora(build_tiny(ArchSpec(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2),
                                  tokenizer), LoraSpec(enabled=True, r=4, alpha=8))
    for n, p in model.named_parameters():  # non-trivial adapters
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    expected = mergeable(model).state_dict()
    deepcopy = copy.deepcopy

    def no_module_copies(x, *a, **k):
        assert not isinstance(x, torch.nn.Module), "the model was copied"
        return deepcopy(x, *a, **k)

    monkeypatch.setattr(copy, "deepcopy", no_module_copies)
    save_merged(model, str(tmp_path / "m"))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m", local_files_only=True).state_dict()
    assert loaded.keys() == expected.keys()
    for n, t in expected.items():
        torch.testing.assert_close(loaded[n], t)
    assert any("lora_" in n for n, _ in model.named_parameters())  # the live model keeps its adapters


FROZEN_DS_SCRIPT = """
    import json, sys
    import torch
    from actors.engine import StrategySpec, TrainingEngine
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, intermediate_size=64)
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))
    out = {}
    for name, stage in (("torch", 0), ("deepspeed", 2)):
        torch.manual_seed(0)
        eng = TrainingEngine(LlamaForCausalLM(cfg), None, StrategySpec(name=name, zero_stage=stage),
                             torch.device("cpu"))
        with torch.no_grad():
            out[name] = eng.forward(input_ids=ids).logits.tolist()
    ds = eng._ds
    json.dump({"same": torch.allclose(torch.tensor(out["torch"]), torch.tensor(out["deepspeed"]), atol=1e-5),
               "stage": ds.zero_optimization_stage(), "optimizer": ds.optimizer is not None,
               "grads": any(p.requires_grad for p in ds.module.parameters())}, open(sys.argv[1] + "/r.json", "w"))
"""


def test_a_frozen_deepspeed_engine_holds_no_optimizer_and_scores_as_torch(tmp_path):
    """A scorer under ``strategy=deepspeed_zero2``: DeepSpeed without an optimizer (no master weights,
    no optimizer states), as stage 0, and the same outputs as the torch engine."""
    r = _finish(_spawn(FROZEN_DS_SCRIPT, tmp_path, str(tmp_path), env={**_env(), "DS_ACCELERATOR": "cpu"}),
                tmp_path / "r.json")
    assert r == {"same": True, "stage": 0, "optimizer": False, "grads": False}
