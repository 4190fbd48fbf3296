"""A judge-labelled preference model with a prompt file shorter than pm.n_prompts + pm.n_val_prompts
holds out a share, says so and trains on the rest; only a file that cannot give both splits a prompt
fails, before anything trains."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from alignment.chat_format import Conversation, Turn
from alignment.data.holdout import split_prompts
from alignment.data.preference import ComparisonGroup
from experiments.runtime.cache import Artifact, ArtifactCache
from experiments.runtime.context import RunContext
from tests.builders import write_prompts
from tests.test_config import _compose


def _judge_lab(prompts, extra=()):
    return OmegaConf.to_object(_compose(["+experiment=pm", "pm.feedback=judge", "pm.judge=rm",
                                         "judges.rm.path=/nonexistent/rm", f"pm.prompts_path={prompts}",
                                         "pm.n_prompts=600", "pm.n_val_prompts=60", *extra]))


def test_a_short_prompt_file_holds_out_a_share_and_trains_on_the_rest(tmp_path, monkeypatch, capsys):
    import experiments.stages.pm as pm_driver

    groups = [ComparisonGroup(Conversation("", (Turn(f"q{i}", ""),)), ("a", "b"), ((0, 1),)) for i in range(8)]
    monkeypatch.setattr(pm_driver, "judge_feedback", lambda ctx, sft: groups)
    lab = _judge_lab(tmp_path / "prompts.jsonl")
    (tmp_path / "run").mkdir()
    ctx = RunContext(lab, tmp_path / "run", ArtifactCache(tmp_path / "cache"), tracker=None, run_tag="short")
    train, val, gold = pm_driver.comparison_groups(ctx, Artifact(tmp_path / "sft", False, {}))
    assert [g.context for g in train] == [g.context for g in groups[:7]]
    assert [g.context for g in val] == [g.context for g in groups[7:]] and gold is None
    out = capsys.readouterr().out
    assert "pm.prompts_path holds 8 prompts" in out and "holding out 1" in out


@pytest.mark.parametrize("n, expected", [(8, (7, 1)), (40, (36, 4)), (660, (600, 60)), (2000, (600, 60)), (2, (1, 1))])
def test_split_holds_out_ten_percent_and_at_least_one(n, expected):
    split = split_prompts(n, 600, 60, "pm.prompts_path")
    assert (split.n_train, split.n_val) == expected
    assert (split.note is None) == (n >= 660)


def test_with_a_held_out_file_every_prompt_trains():
    assert split_prompts(8, 600, 60, "pm.prompts_path", val_elsewhere=True).n_train == 8


def test_a_file_that_cannot_give_both_splits_fails_in_preflight(tmp_path, world):
    from experiments.preflight import preflight

    lab = _judge_lab(write_prompts(tmp_path / "one.jsonl", world, 1))
    with pytest.raises(ValueError, match=r"pm\.prompts_path: 1 prompt cannot give both a training and a held-out"):
        preflight(lab, tmp_path / "cache")
