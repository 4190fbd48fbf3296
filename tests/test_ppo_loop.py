"""The PPO loop on Ray actors: data-parallel ranks stay identical, the policy starts at the
reference (KL 0), and a resumed run continues from the saved iteration and optimizer state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.builders import save_sft_and_pm


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer):
    """A small random SFT checkpoint and a preference model made from it (mechanics, not quality)."""
    return save_sft_and_pm(tmp_path_factory.mktemp("ppo_models"), tokenizer)


def make_ctx(tmp_path: Path, n_ranks: int = 1, iterations: int = 3, run_tag: str = "ppo-test"):
    from experiments.config import ActorResources, LabConfig
    from experiments.runtime.cache import ArtifactCache
    from experiments.runtime.context import RunContext
    from experiments.runtime.tracking import Tracker

    cfg = LabConfig(stage="ppo")
    cfg.logger.wandb = False
    a = cfg.algo
    a.iterations, a.rollout_batch_size, a.max_new_tokens, a.checkpoint_every = iterations, 4, 8, 1
    a.policy_optim.lr = a.critic_optim.lr = 1e-3
    a.policy_optim.warmup_ratio = a.critic_optim.warmup_ratio = 0.0
    a.num_threads = 1
    cfg.ray.policy = ActorResources(num_actors=n_ranks, num_cpus=0.25)
    cfg.ray.critic = ActorResources(num_actors=n_ranks, num_cpus=0.25)
    cfg.ray.reference = ActorResources(num_actors=1, num_cpus=0.25)
    cfg.ray.preference = ActorResources(num_actors=1, num_cpus=0.25)
    tracker = Tracker(tmp_path / "run", cfg.logger, {}, job_type="ppo")
    return RunContext(cfg, tmp_path / "run", ArtifactCache(tmp_path / "cache"), tracker, run_tag=run_tag)


def test_two_data_parallel_ranks_per_trainable_role_stay_identical(ray_address, tmp_path, checkpoints):
    from experiments.runtime.roles import start_roles
    from experiments.stages.ppo import PPOTrainer

    sft, pm = checkpoints
    ctx = make_ctx(tmp_path, n_ranks=2)
    roles = start_roles(ctx, sft, pm)
    try:
        start = {name: getattr(roles, name).call("weights_digest") for name in ("policy", "critic")}
        trainer = PPOTrainer(ctx, roles, _tokenizer(sft))
        first = trainer.step()
        # the policy starts as the reference: the sampled tokens' KL is zero up to float error
        assert abs(first["ppo/kl_per_token"]) < 1e-4
        assert first["policy/clip_frac"] == 0.0  # one epoch: ratio 1 at the only update
        trainer.step()
        for name in ("policy", "critic"):
            digests = getattr(roles, name).call("weights_digest")
            assert digests[0] == digests[1], f"{name} ranks diverged"
            assert digests[0] != start[name][0], f"{name} did not train"
        second = trainer.step()
        assert second["ppo/kl"] != 0.0
        for key in ("ppo/reward", "ppo/gold", "policy/entropy", "policy/approx_kl", "critic/value_loss",
                    "critic/explained_variance", "time/generate_s", "time/tokens_per_s", "ppo/response_length"):
            assert key in second and second[key] == second[key], key  # present and not NaN
    finally:
        roles.shutdown()
        ctx.close()
        ctx.tracker.finish()


def test_resume_continues_from_saved_iteration_and_optimizer_state(ray_address, tmp_path, checkpoints):
    from experiments.runtime.roles import start_roles
    from experiments.stages.ppo import PPOTrainer
    from experiments.stages.ppo import checkpoints as list_checkpoints

    sft, pm = checkpoints
    ctx = make_ctx(tmp_path, iterations=3)
    ckpt_root = tmp_path / "ckpt"
    roles = start_roles(ctx, sft, pm)
    try:
        trainer = PPOTrainer(ctx, roles, _tokenizer(sft), ckpt_root)
        trainer.train(until=2)  # "interrupted" after two iterations
        saved = {name: getattr(roles, name).call("optimizer_digest")[0] for name in ("policy", "critic")}
        weights = roles.policy.call("weights_digest")[0]
        moments = trainer.moments.state_dict()
    finally:
        roles.shutdown()
    assert [p.name for p in list_checkpoints(ckpt_root)] == ["iter_000001", "iter_000002"]

    roles = start_roles(ctx, sft, pm)
    try:
        resumed = PPOTrainer(ctx, roles, _tokenizer(sft), ckpt_root)
        assert resumed.restore() == ckpt_root / "iter_000002"
        assert resumed.iteration == 2
        assert resumed.moments.state_dict() == moments
        for name in ("policy", "critic"):
            assert getattr(roles, name).call("optimizer_digest")[0] == saved[name]
        assert roles.policy.call("weights_digest")[0] == weights
        final = resumed.train(until=3)
        assert resumed.iteration == 3
        # keep_checkpoints=2 keeps the newest two
        assert [p.name for p in list_checkpoints(ckpt_root)] == ["iter_000002", "iter_000003"]
        # resuming a run that died after its last checkpoint runs nothing and still has its final metrics
        again = PPOTrainer(ctx, roles, _tokenizer(sft), ckpt_root)
        assert again.restore() == ckpt_root / "iter_000003"
        resumed_final = again.train(until=3)
        assert resumed_final.keys() == final.keys() and final["ppo/iteration"] == 3
        assert (resumed_final["ppo/kl"], resumed_final["ppo/reward"]) == (final["ppo/kl"], final["ppo/reward"])
    finally:
        roles.shutdown()
        ctx.close()
        ctx.tracker.finish()


def _tokenizer(path: Path):
    from alignment.models.tokenizer import load_tokenizer

    return load_tokenizer(str(path))


def test_colocated_roles_train_with_deepspeed_zero2(ray_address, tmp_path, checkpoints):
    """All four roles in one placement-group bundle, the trainable ones on DeepSpeed ZeRO-2."""
    from actors.reference import ReferenceActor
    from experiments.config import ActorResources
    from experiments.runtime.roles import start_roles
    from experiments.stages.ppo import PPOTrainer

    sft, pm = checkpoints
    ctx = make_ctx(tmp_path)
    ctx.cfg.ray.colocate = True
    ctx.cfg.strategy.name, ctx.cfg.strategy.zero_stage = "deepspeed", 2
    # an earlier stage's idle group holds the test cluster's 2 CPUs; the bundle needs them
    ctx.group(ReferenceActor, "reference", ActorResources(num_actors=1, num_cpus=2), 1, "sft").shutdown()
    assert ctx.pool.idle == 1
    roles = start_roles(ctx, sft, pm)
    try:
        assert ctx.pool.idle == 0
        assert roles.pg is not None and all(g.pg is roles.pg for g in (roles.policy, roles.critic))
        before = roles.policy.call("weights_digest")[0]
        trainer = PPOTrainer(ctx, roles, _tokenizer(sft))
        stats = [trainer.step() for _ in range(2)]
        assert roles.policy.call("weights_digest")[0] != before
        assert all(s["policy/grad_norm"] > 0 and s["critic/grad_norm"] > 0 for s in stats)
    finally:
        roles.shutdown()
        ctx.close()
        ctx.tracker.finish()


def test_widen_gives_a_stages_live_and_later_actors_more_threads(ray_address, tmp_path):
    """``compare`` hands PPO's cores to PAT when PPO finishes: live actors of the stage change their
    torch threads between calls, actors it starts afterwards start with the new count, and other
    stages keep theirs."""
    import ray

    from actors.reference import ReferenceActor

    ctx = make_ctx(tmp_path)
    res = ctx.cfg.ray.reference
    live = ctx.group(ReferenceActor, "reference", res, 1, "pat")
    other = ctx.group(ReferenceActor, "reference", res, 1, "ppo")
    try:
        assert ray.get(live.actors[0].num_threads.remote()) == 1
        ctx.widen("pat", 2)
        later = ctx.group(ReferenceActor, "scorer", res, 1, "pat")
        try:
            assert [ray.get(g.actors[0].num_threads.remote()) for g in (live, later, other)] == [2, 2, 1]
        finally:
            later.shutdown()
    finally:
        live.shutdown()
        other.shutdown()
        ctx.close()


def test_pipelined_loop_equals_the_plain_loop(ray_address, tmp_path, checkpoints):
    """``iterate`` overlaps each rollout with the previous critic update; the weights it reaches
    and the metrics it reports are those of whole iterations run one after the other."""
    from experiments.runtime.roles import start_roles
    from experiments.stages.ppo import PPOTrainer

    sft, pm = checkpoints
    ctx = make_ctx(tmp_path)
    outcomes = []
    for pipelined in (False, True):
        roles = start_roles(ctx, sft, pm)
        try:
            trainer = PPOTrainer(ctx, roles, _tokenizer(sft))
            rows = list(trainer.iterate(3)) if pipelined else [trainer.step() for _ in range(3)]
            digests = tuple(getattr(roles, name).call("weights_digest")[0] for name in ("policy", "critic"))
            outcomes.append((digests, [(r["ppo/iteration"], r["ppo/reward"], r["critic/value_loss"]) for r in rows]))
        finally:
            roles.shutdown()
    ctx.close()
    ctx.tracker.finish()
    assert outcomes[0] == outcomes[1]
    assert [it for it, _, _ in outcomes[1][1]] == [1, 2, 3]


def test_ptx_adds_the_sft_loss_of_its_examples_to_the_policy_step(tmp_path, checkpoints, world):
    """PPO-ptx: with zero advantages the surrogate has no gradient, so the policy moves only when
    ``ptx_coef`` > 0, and then it lowers the SFT loss of the examples it was given."""
    import torch

    from actors.engine import OptimConfig, StrategySpec
    from actors.policy import ModelSpec, PolicyActor, PolicyUpdateSpec
    from alignment.generation import RolloutSpec
    from alignment.loss_mask import LossPolicy, encode_many
    from alignment.sequences import prompt_ids

    sft, _ = checkpoints
    tok = _tokenizer(sft)
    examples = encode_many(world.sft_conversations(8, [0, 0, 0, 0, 0, 1]), tok, LossPolicy.from_names(["moss"]))
    prompts = [prompt_ids(tok, p.conversation()) for p in world.prompts("train", 4)]
    outcomes, threads = {}, torch.get_num_threads()
    for coef in (0.0, 1.0):
        actor = PolicyActor(0, 1, threads)  # in this process: keep its thread count
        actor.init_model(ModelSpec(tokenizer_path=str(sft), path=str(sft)), StrategySpec(),
                         OptimConfig(lr=1e-2, total_steps=1, min_lr_ratio=1.0))
        rollout, _ = actor.rollout(prompts, RolloutSpec(max_new_tokens=6), seed=0)
        with torch.no_grad():
            before = actor.lm_loss(examples)[0].item()
        digest = actor.weights_digest()
        stats = actor.ppo_update(rollout, torch.zeros(rollout.response_mask.shape), examples,
                                 PolicyUpdateSpec(ptx_coef=coef))
        with torch.no_grad():
            after = actor.lm_loss(examples)[0].item()
        outcomes[coef] = (actor.weights_digest() != digest, before, after, stats)
    moved, before, after, stats = outcomes[0.0]
    assert not moved and after == before and "policy/ptx_loss" not in stats
    moved, before, after, stats = outcomes[1.0]
    assert moved and after < before
    assert abs(stats["policy/ptx_loss"] - before) < 1e-4  # the loss it added was the examples' SFT loss


def test_grpo_runs_two_policy_ranks_without_a_critic(ray_address, tmp_path, checkpoints):
    """GRPO: groups of responses to one prompt, no critic role at all (no actor, no update, no
    checkpoint), the KL to the reference in the policy's loss (zero at the first update, where the
    policy is the reference); checkpoints and resume work without the critic."""
    import math

    import ray

    from experiments.runtime.roles import start_roles
    from experiments.stages.ppo import PPOTrainer
    from experiments.stages.ppo import checkpoints as list_checkpoints

    sft, pm = checkpoints
    ctx = make_ctx(tmp_path, n_ranks=2, iterations=2, run_tag="grpo-test")
    ctx.cfg.stage = "grpo"
    a = ctx.cfg.algo
    a.advantage, a.group_size, a.kl_in, a.kl_estimator, a.beta = "grpo", 2, "loss", "k3", 0.04
    a.whiten_advantages = False
    ckpt_root = tmp_path / "ckpt"
    roles = start_roles(ctx, sft, pm)
    try:
        assert roles.critic is None
        names = [x["name"] for x in ray.util.list_named_actors(all_namespaces=True)]
        assert any(n.startswith("grpo-test/policy") for n in names)
        assert not any(n.startswith("grpo-test") and "critic" in n for n in names), names
        trainer = PPOTrainer(ctx, roles, _tokenizer(sft), ckpt_root)
        batch = trainer.prompt_batch(0)  # 4 responses: 2 prompts, each twice in a row
        assert len(batch.ids) == 4 and batch.ids[0] == batch.ids[1] != batch.ids[2] == batch.ids[3]
        rows = list(trainer.iterate(2))
        assert [r["ppo/iteration"] for r in rows] == [1, 2]
        assert abs(rows[0]["policy/kl_loss"]) < 1e-5  # the policy is the reference at the first update
        for r in rows:
            assert not any(k.startswith("critic/") for k in r)
            for key in ("ppo/reward", "ppo/kl", "policy/policy_loss", "policy/kl_loss", "policy/entropy",
                        "ppo/advantage_std"):
                assert math.isfinite(r[key]), key
        digests = roles.policy.call("weights_digest")
        assert digests[0] == digests[1], "policy ranks diverged"
        saved = list_checkpoints(ckpt_root)
        assert [p.name for p in saved] == ["iter_000001", "iter_000002"]
        assert not (saved[-1] / "critic").exists() and (saved[-1] / "policy").exists()
        resumed = PPOTrainer(ctx, roles, _tokenizer(sft), ckpt_root)
        assert resumed.restore() == saved[-1] and resumed.iteration == 2
        assert resumed.train(until=2)["ppo/iteration"] == 2
    finally:
        roles.shutdown()
        ctx.close()
        ctx.tracker.finish()


def test_kl_in_the_loss_is_zero_while_the_policy_is_the_reference(tmp_path, checkpoints, world):
    """``kl_in=loss``: the policy's update adds ``kl_coef`` times the k3 KL to the reference's
    log-probs; with the policy still the reference that term is 0. Without reference log-probs there is none."""
    import torch

    from actors.engine import OptimConfig, StrategySpec
    from actors.policy import ModelSpec, PolicyActor, PolicyUpdateSpec
    from actors.reference import ReferenceActor
    from alignment.generation import RolloutSpec
    from alignment.sequences import prompt_ids

    sft, _ = checkpoints
    tok = _tokenizer(sft)
    prompts = [prompt_ids(tok, p.conversation()) for p in world.prompts("train", 2) for _ in range(2)]
    threads = torch.get_num_threads()
    actor = PolicyActor(0, 1, threads)
    actor.init_model(ModelSpec(tokenizer_path=str(sft), path=str(sft)), StrategySpec(),
                     OptimConfig(lr=1e-2, total_steps=1, min_lr_ratio=1.0))
    reference = ReferenceActor(0, 1, threads)
    reference.init_model(str(sft))
    rollout, _ = actor.rollout(prompts, RolloutSpec(max_new_tokens=6), seed=0)
    ref_logprobs = reference.logprobs(rollout)
    spec = PolicyUpdateSpec(kl_coef=0.04, kl_estimator="k3")
    stats = actor.ppo_update(rollout, torch.zeros(rollout.response_mask.shape), None, spec, ref_logprobs)
    assert abs(stats["policy/kl_loss"]) < 1e-6
    assert "policy/kl_loss" not in actor.ppo_update(rollout, torch.zeros(rollout.response_mask.shape), None, spec)


def test_ranks_without_ptx_examples_join_the_mean_of_those_with_them():
    """With fewer PTX examples than policy ranks a rank reports no ``ptx_loss``: the mean over ranks
    takes it from the ranks that have it, instead of failing with KeyError."""
    from experiments.runtime.loop import rank_mean

    joined = rank_mean([{"policy/ptx_loss": 2.0, "policy/loss": 1.0, "tokens": 3.0},
                        {"policy/loss": 3.0, "tokens": 1.0}], "tokens")
    assert joined == {"policy/ptx_loss": 2.0, "policy/loss": 1.5}


def test_ptx_loss_is_averaged_over_the_steps_that_had_examples(tmp_path, checkpoints, world):
    """Two mini-batches and one PTX example: only the first step adds an SFT loss, and the logged
    ``ptx_loss`` is that loss, not half of it. An update that fails leaves the actor's thread count
    and train mode as they were."""
    from actors.engine import OptimConfig, StrategySpec
    from actors.policy import ModelSpec, PolicyActor, PolicyUpdateSpec
    from alignment.generation import RolloutSpec, SamplingSpec, generate_replies
    from alignment.loss_mask import LossPolicy, encode_many
    from alignment.sequences import prompt_ids

    sft, _ = checkpoints
    tok = _tokenizer(sft)
    examples = encode_many(world.sft_conversations(1, [0, 0, 0, 0, 0, 1]), tok, LossPolicy.from_names(["moss"]))
    prompts = [prompt_ids(tok, p.conversation()) for p in world.prompts("train", 4)]
    threads = torch.get_num_threads()
    actor = PolicyActor(0, 1, threads)
    actor.init_model(ModelSpec(tokenizer_path=str(sft), path=str(sft)), StrategySpec(),
                     OptimConfig(lr=0.0, total_steps=2, min_lr_ratio=1.0))
    rollout, _ = actor.rollout(prompts, RolloutSpec(max_new_tokens=6), seed=0)
    with torch.no_grad():
        sft_loss = actor.lm_loss(examples)[0].item()
    stats = actor.ppo_update(rollout, torch.zeros(rollout.response_mask.shape), examples,
                             PolicyUpdateSpec(ptx_coef=1.0, mini_batches=2))
    assert abs(stats["policy/ptx_loss"] - sft_loss) < 1e-4

    other = 1 if threads > 1 else 2
    with pytest.raises(RuntimeError):  # advantages of the wrong shape
        actor.ppo_update(rollout, torch.zeros(3, 99), None, PolicyUpdateSpec(num_threads=other))
    assert torch.get_num_threads() == threads
    model = actor.engine.module
    model.train()
    with pytest.raises(ValueError):  # generate rejects a negative temperature
        generate_replies(model, tok, ["<|Human|>: hi<eoh>\n<|MOSS|>:"], SamplingSpec(temperature=-1.0), seed=0)
    assert model.training


def test_bf16_rollouts_carry_the_engines_own_log_probs(checkpoints, world):
    """With bf16 the sampler (one token at a time, KV cache) and the update's forward pass round
    differently; the rollout's old log-probs are the engine's, so the first ratio is exactly 1."""
    from actors.engine import OptimConfig, StrategySpec
    from actors.policy import ModelSpec, PolicyActor
    from alignment.generation import RolloutSpec
    from alignment.losses.logprobs import token_logprobs
    from alignment.rollout import response_logits, response_tokens
    from alignment.sequences import prompt_ids

    sft, _ = checkpoints
    tok = _tokenizer(sft)
    prompts = [prompt_ids(tok, p.conversation()) for p in world.prompts("train", 6)]
    actor = PolicyActor(0, 1, torch.get_num_threads())
    actor.init_model(ModelSpec(tokenizer_path=str(sft), path=str(sft)), StrategySpec(bf16=True), OptimConfig(lr=0.0))
    rollout, _ = actor.rollout(prompts, RolloutSpec(max_new_tokens=12), seed=0)
    with torch.no_grad():
        recomputed = token_logprobs(response_logits(actor.engine, rollout), response_tokens(rollout), 1.0)
    mask = rollout.response_mask.bool()
    assert mask.any() and torch.equal(rollout.logprobs[mask], recomputed[mask])
