"""The Hydra tree and its schema: presets compose, typos and bad types fail naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from experiments.config import LabConfig, register

CONF = str(Path(__file__).resolve().parents[1] / "conf")
ROOT = Path(__file__).resolve().parents[1]
register()


def _compose(overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_sft_preset_composes_into_the_schema():
    cfg = _compose(["+experiment=sft"])
    lab = OmegaConf.to_object(cfg)
    assert isinstance(lab, LabConfig)
    assert lab.stage == "sft" and lab.model.name == "tiny" and lab.strategy.name == "torch"
    assert lab.trainer.lr == pytest.approx(4e-3)


@pytest.mark.parametrize("group", ["strategy=deepspeed_zero2", "trainer=sft_paper", "model=pretrained"])
def test_group_options_compose(group):
    cfg = _compose(["+experiment=sft", group])
    assert OmegaConf.is_config(cfg)


def test_typo_in_a_key_fails_naming_it():
    with pytest.raises(Exception) as err:
        _compose(["+experiment=sft", "trainer.lrr=1e-3"])
    text = f"{err.value} {err.value.__cause__}"
    assert "lrr" in text


def test_wrong_type_fails_naming_the_key():
    with pytest.raises(Exception) as err:
        _compose(["+experiment=sft", "trainer.lr=fast"])
    assert "trainer.lr" in f"{err.value} {err.value.__cause__}"


def test_unknown_key_in_a_yaml_is_rejected():
    cfg = _compose(["+experiment=sft"])
    with pytest.raises((ConfigKeyError, ValidationError)):
        OmegaConf.merge(cfg, OmegaConf.create({"data": {"n_trian": 5}}))


def test_cli_prints_the_composed_config_and_rejects_typos():
    out = subprocess.run([sys.executable, "run.py", "+experiment=sft", "--cfg", "job"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "stage: sft" in out.stdout and "zero_stage: 0" in out.stdout
    bad = subprocess.run([sys.executable, "run.py", "+experiment=sft", "trainer.lrr=1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "trainer.lrr" in bad.stderr + bad.stdout
    none = subprocess.run([sys.executable, "run.py"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert none.returncode != 0 and "+experiment=sft" in none.stderr
    zero = subprocess.run([sys.executable, "run.py", "+experiment=sft", "trainer.batch_size=0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert zero.returncode != 0 and "config error: trainer.batch_size must be at least 1" in zero.stderr


@pytest.mark.parametrize("sweep", sorted((ROOT / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_wandb_sweeps_drive_run_py_with_valid_overrides(sweep):
    """Every W&B sweep parameter is a schema key, and each value composes with the sweep's preset."""
    spec = OmegaConf.to_container(OmegaConf.load(sweep))
    assert spec["program"] == "run.py" and "${args_no_hyphens}" in spec["command"]
    fixed = [a for a in spec["command"] if "=" in a and not a.startswith("$")]
    for key, p in spec["parameters"].items():
        for value in p["values"]:
            lab = OmegaConf.to_object(_compose([*fixed, f"{key}={value}"]))
            node = lab
            for part in key.split("."):
                node = getattr(node, part)
            assert node == value


@pytest.mark.parametrize("preset", ["compare", "report"])
def test_compare_and_report_presets_compose(preset):
    lab = OmegaConf.to_object(_compose([f"+experiment={preset}", "sweep_dir=/tmp/x"]))
    assert lab.stage == preset
    if preset == "compare":  # PPO's four roles and PAT's trainer fit on 2 CPUs together
        r = lab.ray
        assert r.policy.num_cpus + r.critic.num_cpus + r.reference.num_cpus + r.preference.num_cpus \
            + r.policy.num_cpus + r.preference.num_cpus <= 2


@pytest.mark.parametrize("override, key", [
    ("pm.trainer.batch_size=0", "pm.trainer.batch_size"),
    ("trainer.log_every=0", "trainer.log_every"),
    ("pat.trainer.max_steps=0", "pat.trainer.max_steps"),
    ("data.world.test_fraction=0", "data.world.test_fraction"),
    ("pat.n_buckets=150", "pat.n_buckets"),
    ("pat.inference_tag=120", "pat.inference_tag"),
    ("pat.control_prompts=0", "pat.control_prompts"),
    ("pat.rule=median", "pat.rule"),
    ("pat.rule=fixed", "pat.thresholds"),
])
def test_settings_no_stage_can_run_with_fail_before_anything_starts(override, key):
    from experiments.validation import validate

    validate(OmegaConf.to_object(_compose(["+experiment=pat"])))  # the preset itself is fine
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        validate(OmegaConf.to_object(_compose(["+experiment=pat", override])))


@pytest.mark.parametrize("override, match", [
    ("compare.methods=[pat,sft]", r"compare\.methods: 'sft'; choose one of quark, pat, ppo, dpo, grpo, rloo, bon"),
    ("compare.methods=[ppo,ppo]", r"compare\.methods: \['ppo', 'ppo'\] names a method twice"),
    ("compare.methods=[]", r"compare\.methods is empty"),
    ("compare.max_parallel=0", r"compare\.max_parallel"),
    ("compare.grpo.group_size=3", r"compare\.grpo\.rollout_batch_size \(32\).*compare\.grpo\.group_size \(3\)"),
    ("compare.rloo.kl_estimator=k4", r"compare\.rloo\.kl_estimator: unknown KL estimator 'k4'; choose one of k1, k2"),
    ("compare.grpo.advantage=gae", r"compare\.grpo\.advantage: 'gae'"),
])
def test_compare_methods_and_their_settings_are_checked(override, match):
    from experiments.preflight import check_methods
    from experiments.validation import validate

    methods = "compare.methods=[pat,ppo,dpo,grpo,rloo,bon]"
    lab = OmegaConf.to_object(_compose(["+experiment=compare", methods]))
    validate(lab)
    check_methods(lab.compare.methods)
    assert (lab.compare.grpo.advantage, lab.compare.rloo.advantage, lab.algo.advantage) == ("grpo", "rloo", "gae")
    assert lab.compare.grpo.kl_in == "loss" and lab.compare.rloo.kl_in == "reward"
    overrides = ["+experiment=compare", *([] if override.startswith("compare.methods") else [methods]), override]
    with pytest.raises(ValueError, match=match):  # the methods' names against the stage table, in preflight
        bad = OmegaConf.to_object(_compose(overrides))
        validate(bad)
        check_methods(bad.compare.methods)


def test_the_methods_are_the_rows_of_the_stage_table_after_the_chain():
    # a new method is a stage file and a row of experiments.stages.chain.STAGES (and its config): no other list
    from experiments.registry import DRIVERS
    from experiments.reports.sweep import METHODS as REPORTED
    from experiments.stages.chain import CHAIN, METHODS, STAGES

    assert METHODS == ("quark", "pat", "ppo", "dpo", "grpo", "rloo", "bon")  # the reports' order: pairs are named by it
    assert REPORTED is METHODS and set(METHODS) | set(CHAIN) == set(STAGES) and set(METHODS) <= set(DRIVERS)


def test_ppo_cross_key_limits_name_the_keys():
    from experiments.stages.ppo import check

    lab = OmegaConf.to_object(_compose(["+experiment=ppo"]))
    check(lab.algo, lab.ray)
    lab.algo.reward_clip = 0.0
    with pytest.raises(ValueError, match=r"algo\.reward_clip"):
        check(lab.algo, lab.ray)
    lab.algo.reward_clip, lab.algo.mini_batches, lab.ray.policy.num_actors = None, 4, 2
    lab.algo.rollout_batch_size = 6  # 3 rows per policy rank, fewer than 4 mini-batches
    with pytest.raises(ValueError, match=r"ray\.policy\.num_actors.*algo\.mini_batches"):
        check(lab.algo, lab.ray)


def _stage_keys(tmp_path, overrides: list[str]) -> dict[str, str]:
    """The cache key of every stage for the config ``+experiment=compare`` composes with ``overrides``
    (the same upstream artifacts for all: what differs is the stage's own settings)."""
    from experiments.runtime.cache import Artifact, ArtifactCache
    from experiments.runtime.context import RunContext
    from experiments.stages.chain import ROOT, STAGES

    lab = OmegaConf.to_object(_compose(["+experiment=compare", "ray.reuse_actors=false", *overrides]))
    ctx = RunContext(lab, tmp_path, ArtifactCache(tmp_path / "cache"), tracker=None, run_tag="keys")
    made = {ROOT: tmp_path / "tokenizer", "sft": Artifact(tmp_path / "sft", False, {}),
            "pm": Artifact(tmp_path / "pm", False, {})}
    return {s: STAGES[s].key(ctx.for_method(s), *STAGES[s].upstream(made))
            for s in ("sft", "pm", "pat", "ppo", "grpo", "dpo")}


@pytest.mark.parametrize("override", [
    "trainer.num_threads=1", "trainer.log_every=3", "pm.trainer.num_threads=1", "pm.trainer.log_every=3",
    "pat.trainer.num_threads=2", "dpo.trainer.num_threads=1", "algo.num_threads=1", "algo.checkpoint_every=3",
    "algo.keep_checkpoints=5", "algo.policy_update_threads=2", "compare.grpo.num_threads=1",
    "ray.policy.num_cpus=1", "ray.reference.num_actors=2", "logger.wandb=false", "eval.judges=[gold]",
    "compare.max_parallel=1", "resume=true", "rollout.sync=object_store", "rollout.kv_cache_gib=4",
    "rollout.gpu_memory_utilization=0.3", "rollout.enforce_eager=false", "ray.rollout.num_actors=2",
])
def test_settings_that_cannot_change_results_reuse_every_stage(tmp_path, override):
    assert _stage_keys(tmp_path, [override]) == _stage_keys(tmp_path, [])


@pytest.mark.parametrize("override, changed", [
    ("trainer.lr=1e-3", {"sft"}),  # the stage's own setting changes its key; the others see it through its path
    ("pm.trainer.lr=7e-4", {"pm"}),  # DPO learns from the labelled pairs (pm.* data settings), not the PM
    ("pm.n_prompts=100", {"pm", "dpo"}),  # the pairs DPO learns from
    ("pat.n_buckets=5", {"pat"}),
    ("algo.beta=0.05", {"ppo"}),
    ("compare.grpo.beta=0.05", {"grpo"}),
    ("dpo.beta=0.2", {"dpo"}),
    ("seed=1", {"sft", "pm", "pat", "ppo", "grpo", "dpo"}),
    ("rollout.engine=vllm", {"ppo", "grpo"}),  # another engine's rollouts; SFT, PM, PAT and DPO sample none
])
def test_settings_that_change_results_change_exactly_their_stages(tmp_path, override, changed):
    base, new = _stage_keys(tmp_path, []), _stage_keys(tmp_path, [override])
    assert {s for s in base if base[s] != new[s]} == changed


@pytest.mark.parametrize("experiment, override, match", [
    ("ppo", "algo.kl_estimator=k4", r"algo\.kl_estimator: unknown KL estimator 'k4'"),
    ("ppo", "algo.clip=-1", r"algo\.clip must be > 0, got -1"),
    ("ppo", "algo.critic_init=random", r"algo\.critic_init: 'random'; choose one of pm, sft"),
    ("ppo", "algo.temperature=0", r"algo\.temperature must be > 0"),
    ("sft", "eval.top_k=-1", r"eval\.temperature must be > 0, eval\.top_p in \(0, 1\] and eval\.top_k >= 0"),
    ("ppo", "ray.policy.num_actors=4 algo.rollout_batch_size=2", r"algo\.rollout_batch_size \(2\) gives each of the 4"),
    ("ppo", "ray.colocate=true ray.critic.num_actors=2", r"ray\.colocate .* same num_actors"),
    ("compare", "compare.methods=[pat,grpo] compare.grpo.clip=0", r"compare\.grpo\.clip must be > 0"),
    ("sft", "strategy.precision=fp16", r"strategy\.precision: 'fp16'; choose one of auto, fp32, bf16"),
    ("sft", "strategy.name=fsdp", r"strategy\.name: 'fsdp'; choose one of torch, deepspeed"),
    ("sft", "strategy.name=deepspeed strategy.zero_stage=4", r"strategy\.zero_stage: 4"),
    ("sft", "strategy.zero_stage=2", r"strategy\.zero_stage and strategy\.offload are DeepSpeed's"),
    ("sft", "model.name=gpt5", r"model\.name: 'gpt5'; choose one of tiny, pretrained"),
    ("sft", "data.source=web", r"data\.source: 'web'; choose one of world, moss_sft"),
    ("sft", "ray.policy.num_actors=0", r"ray\.policy: num_actors must be at least 1"),
    ("ppo", "rollout.engine=sglang", r"rollout\.engine: 'sglang'; choose one of hf, vllm"),
    ("ppo", "rollout.engine=vllm rollout.sync=nccl", r"rollout\.sync=nccl broadcasts over GPUs"),
    ("ppo", "rollout.engine=vllm rollout.sync=nccl ray.policy.num_gpus=0.5 ray.rollout.num_gpus=0.5",
     r"rollout\.sync=nccl needs the policy and the engines on whole GPUs"),
    ("ppo", "rollout.engine=vllm rollout.tensor_parallel_size=2", r"rollout\.tensor_parallel_size=2 needs that many"),
    ("ppo", "ray.rollout.num_actors=0", r"ray\.rollout: num_actors must be at least 1"),
    ("ppo", "rollout.engine=vllm ray.colocate=true ray.rollout.num_actors=2", r"ray\.colocate .* same num_actors"),
    ("sft", "judges.llm.max_error_share=1.5", r"judges\.llm\.max_error_share must lie in \[0, 1\), got 1\.5"),
])
def test_late_checked_settings_now_fail_in_validate(experiment, override, match):
    from experiments.validation import validate

    validate(OmegaConf.to_object(_compose([f"+experiment={experiment}"])))
    with pytest.raises(ValueError, match=match):
        validate(OmegaConf.to_object(_compose([f"+experiment={experiment}", *override.split()])))


@pytest.mark.parametrize("override, message", [
    ("algo.clip=-1", "config error: algo.clip must be > 0, got -1"),
    ("strategy.precision=fp16", "config error: strategy.precision: 'fp16'"),
])
def test_a_bad_setting_fails_in_seconds_with_nothing_started(tmp_path, override, message):
    import time

    started = time.time()
    out = subprocess.run([sys.executable, "run.py", "+experiment=ppo", override, f"cache_dir={tmp_path / 'cache'}",
                          f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and message in out.stderr
    assert "Ray dashboard" not in out.stdout and not (tmp_path / "cache").exists()  # no Ray, nothing trained
    assert time.time() - started < 10


def test_vllm_engine_where_vllm_does_not_import_fails_before_ray(tmp_path):
    from alignment.vllm_generation import vllm_available

    if vllm_available()[0]:
        pytest.skip("vLLM imports in this venv (tests/test_vllm.py runs the engine)")
    out = subprocess.run([sys.executable, "run.py", "+experiment=ppo", "rollout.engine=vllm",
                          f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "config error: rollout.engine=vllm: vLLM does not import here" in out.stderr
    assert "setup_vllm.sh" in out.stderr and "Ray dashboard" not in out.stdout and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("overrides, shares, sync", [
    ([], False, "object_store"),  # the CPU
    (["ray.policy.num_gpus=1", "ray.rollout.num_gpus=1"], False, "nccl"),  # GPUs of their own
    (["ray.policy.num_gpus=0.5", "ray.rollout.num_gpus=0.3"], True, "object_store"),  # shares of one GPU
    (["ray.colocate=true", "ray.policy.num_gpus=1", "ray.rollout.num_gpus=1"], True, "object_store"),
])
def test_engines_on_a_shared_gpu_start_one_at_a_time_and_sync_through_the_store(overrides, shares, sync):
    """Where an engine's GPU may hold another process, engines start after the other roles, one at a
    time (vLLM's memory profiling), and NCCL is never picked (it takes no two ranks on one device)."""
    from experiments.runtime.engines import shares_gpu, sync_mode

    cfg = OmegaConf.to_object(_compose(["+experiment=ppo", "rollout.engine=vllm", *overrides]))
    assert (shares_gpu(cfg), sync_mode(cfg)) == (shares, sync)
    hf = OmegaConf.to_object(_compose(["+experiment=ppo", *overrides]))
    assert not shares_gpu(hf)
