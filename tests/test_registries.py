"""The registries of swappable parts (advantage estimators, policy losses, KL estimators) and the
estimators themselves, checked by hand on small tensors; unknown names in the config fail before
anything starts."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import alignment.losses  # noqa: F401  (fills the registries)
from alignment.losses.gae import AdvantageInputs, gae, needs_values
from alignment.losses.group_advantages import GRPO_EPS
from alignment.losses.kl import kl_estimate
from alignment.losses.ppo import policy_loss
from alignment.losses.registry import (
    ADVANTAGE_ESTIMATORS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    PREFERENCE_LOSSES,
    Registry,
    RegistryError,
)
from experiments.config import PPOConfig, as_key, register

ROOT = Path(__file__).resolve().parents[1]
register()


def _lab(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="config", overrides=overrides))


def test_registries_are_complete_once_alignment_losses_is_imported():
    assert ADVANTAGE_ESTIMATORS.names() == ("gae", "grpo", "rloo")
    assert POLICY_LOSSES.names() == ("ppo_clip",)
    assert KL_ESTIMATORS.names() == ("k1", "k2", "k3")
    assert {"bradley_terry", "dpo", "ipo"} <= set(PREFERENCE_LOSSES.names())
    assert POLICY_LOSSES.get("ppo_clip") is policy_loss
    assert needs_values("gae") and not needs_values("grpo") and not needs_values("rloo")


def test_a_duplicate_name_raises_and_an_unknown_one_lists_the_valid_names():
    reg = Registry("widget")
    reg.register("a")(lambda: 1)
    with pytest.raises(RegistryError, match="'a' is registered twice"):
        reg.register("a")(lambda: 2)
    with pytest.raises(RegistryError, match="registered twice"):
        KL_ESTIMATORS.register("k1")(lambda lp, ref: lp)
    with pytest.raises(RegistryError, match="algo.kl_estimator: unknown KL estimator 'k4'; choose one of k1, k2, k3"):
        KL_ESTIMATORS.check("algo.kl_estimator", "k4")
    with pytest.raises(ValueError, match="choose one of gae, grpo, rloo"):
        ADVANTAGE_ESTIMATORS.get("foo")


def test_kl_estimators_by_hand():
    logprobs, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])  # r = ref - logp = [-0.5, 1]
    assert torch.allclose(kl_estimate(logprobs, ref, "k1"), torch.tensor([[0.5, -1.0]]))
    assert torch.allclose(kl_estimate(logprobs, ref, "k2"), torch.tensor([[0.125, 0.5]]))
    k3 = torch.tensor([[math.exp(-0.5) - 1 + 0.5, math.e - 1 - 1]])
    assert torch.allclose(kl_estimate(logprobs, ref, "k3"), k3)
    assert torch.equal(kl_estimate(logprobs, ref, "k3"), KL_ESTIMATORS.get("k3")(logprobs, ref))
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_estimate(logprobs, ref, "k4")


def test_registered_gae_is_the_gae_function():
    torch.manual_seed(0)
    rewards, values = torch.randn(3, 5), torch.randn(3, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]).float()
    adv, ret = ADVANTAGE_ESTIMATORS.get("gae")(AdvantageInputs(rewards, values, mask, rewards.sum(1),
                                                                gamma=0.9, lam=0.8))
    ref_adv, ref_ret = gae(rewards, values, mask, 0.9, 0.8)
    assert torch.equal(adv, ref_adv) and torch.equal(ret, ref_ret)
    with pytest.raises(ValueError, match="critic"):
        ADVANTAGE_ESTIMATORS.get("gae")(AdvantageInputs(rewards, None, mask, rewards.sum(1)))


# two groups of three responses; the third response of each group has two tokens, the others one
SCORES = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 4.0])
MASK = torch.tensor([[1, 0], [1, 0], [1, 1], [1, 0], [1, 0], [1, 1]]).float()


def _inputs(group_size: int = 3) -> AdvantageInputs:
    return AdvantageInputs(rewards=torch.zeros(6, 2), values=None, mask=MASK, scores=SCORES, group_size=group_size)


def test_grpo_standardises_within_each_group_and_puts_it_on_every_token():
    adv, returns = ADVANTAGE_ESTIMATORS.get("grpo")(_inputs())
    assert returns is None
    # group 1: mean 2, std 1; group 2: mean 4/3, std sqrt(16/3) (Bessel-corrected)
    s2 = math.sqrt(16 / 3)
    per = torch.tensor([-1 / (1 + GRPO_EPS), 0.0, 1 / (1 + GRPO_EPS),
                        (-4 / 3) / (s2 + GRPO_EPS), (-4 / 3) / (s2 + GRPO_EPS), (8 / 3) / (s2 + GRPO_EPS)])
    assert torch.allclose(adv, per[:, None] * MASK, atol=1e-6)
    assert adv[2, 1] == adv[2, 0] and adv[0, 1] == 0  # every response token, nothing past the response


def test_rloo_subtracts_the_mean_of_the_other_responses():
    adv, returns = ADVANTAGE_ESTIMATORS.get("rloo")(_inputs())
    assert returns is None
    per = torch.tensor([1 - 2.5, 2 - 2.0, 3 - 1.5, 0 - 2.0, 0 - 2.0, 4 - 0.0])
    assert torch.allclose(adv, per[:, None] * MASK)


@pytest.mark.parametrize("name", ["grpo", "rloo"])
def test_group_estimators_need_whole_groups_of_two(name):
    with pytest.raises(ValueError, match="group_size >= 2"):
        ADVANTAGE_ESTIMATORS.get(name)(_inputs(group_size=1))
    with pytest.raises(ValueError, match="groups of 4"):
        ADVANTAGE_ESTIMATORS.get(name)(_inputs(group_size=4))


def test_new_algo_keys_leave_the_default_cache_key_unchanged():
    key = as_key(PPOConfig())
    assert not {"advantage", "group_size", "kl_in", "policy_loss"} & set(key)
    assert as_key(PPOConfig(advantage="grpo", group_size=4))["group_size"] == 4


@pytest.mark.parametrize("preset, advantage, kl_in", [("grpo", "grpo", "loss"), ("rloo", "rloo", "reward")])
def test_grpo_and_rloo_presets_compose_and_validate(preset, advantage, kl_in):
    from experiments.runtime.roles import method_name
    from experiments.validation import validate

    lab = _lab([f"+experiment={preset}"])
    validate(lab)
    a = lab.algo
    assert lab.stage == preset and method_name(lab) == preset
    assert (a.advantage, a.group_size, a.kl_in, a.whiten_advantages) == (advantage, 4, kl_in, False)
    assert a.iterations == 40 and a.ptx_coef == 1.0  # ppo_tiny's settings underneath
    if preset == "grpo":
        assert (a.kl_estimator, a.beta) == ("k3", 0.04)
    ppo = _lab(["+experiment=ppo"])
    assert method_name(ppo) == "ppo" and (ppo.algo.advantage, ppo.algo.group_size) == ("gae", 1)


@pytest.mark.parametrize("override, message", [
    ("algo.advantage=foo", r"algo\.advantage: unknown advantage estimator 'foo'; choose one of gae, grpo, rloo"),
    ("algo.kl_estimator=k4", r"algo\.kl_estimator: unknown KL estimator 'k4'; choose one of k1, k2, k3"),
    ("algo.policy_loss=foo", r"algo\.policy_loss: .*ppo_clip"),
    ("algo.kl_in=both", r"algo\.kl_in: 'both'; choose one of reward, loss"),
    ("algo.group_size=0", r"algo\.group_size must be at least 1"),
    ("algo.group_size=3", r"algo\.rollout_batch_size \(32\).*algo\.group_size \(3\)"),
    ("algo.advantage=grpo", r"algo\.advantage=grpo .*algo\.group_size must be at least 2"),
])
def test_bad_algo_settings_fail_in_validate_naming_the_key(override, message):
    from experiments.validation import validate

    with pytest.raises(ValueError, match=message):
        validate(_lab(["+experiment=ppo", override]))


@pytest.mark.parametrize("override, names", [("algo.advantage=foo", "gae, grpo, rloo"),
                                             ("algo.kl_estimator=k4", "k1, k2, k3")])
def test_an_unknown_name_fails_through_run_py_before_ray_starts(override, names):
    started = time.time()
    out = subprocess.run([sys.executable, "run.py", "+experiment=grpo", override], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    key = override.split("=")[0]
    assert out.returncode != 0 and f"config error: {key}: unknown" in out.stderr and names in out.stderr
    assert "ray" not in (out.stdout + out.stderr).lower()  # nothing started
    assert time.time() - started < 60


def test_drivers_are_registered_for_grpo_and_rloo():
    from experiments.registry import DRIVERS
    from experiments.stages import ppo

    assert DRIVERS["grpo"] is ppo.run and DRIVERS["rloo"] is ppo.run and DRIVERS["ppo"] is ppo.run
