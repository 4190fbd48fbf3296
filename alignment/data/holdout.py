"""How a prompt file too short for the configured counts is split into training and held-out prompts.

A judge-labelled preference model asks for ``n_train + n_val`` prompts. A file that holds fewer is
not an error: a share of it (:data:`HOLD_OUT_SHARE`, at least one prompt) is held out and the rest
trains, and the split says so. Only a file that cannot give both splits a prompt is refused, before
anything is sampled or trained.
"""

from __future__ import annotations

from dataclasses import dataclass

HOLD_OUT_SHARE = 0.1


@dataclass(frozen=True)
class PromptSplit:
    n_train: int  # the first n_train prompts train
    n_val: int  # the next n_val are held out (0: the held-out prompts come from elsewhere)
    note: str | None = None  # what was changed from the configured counts, for the log


def split_prompts(n: int, n_train: int, n_val: int, source: str, val_elsewhere: bool = False) -> PromptSplit:
    """The split of ``n`` prompts from ``source`` (a config key, for the messages) for ``n_train``
    training and ``n_val`` held-out prompts; ``val_elsewhere``: the held-out ones come from another
    file, so every prompt may train. Raises ValueError naming ``source`` when a split would be empty."""
    if val_elsewhere:
        if n < 1:
            raise ValueError(f"{source}: no prompts to train on")
        if n >= n_train:
            return PromptSplit(n_train, 0)
        return PromptSplit(n, 0, f"{source} holds {n} prompts, fewer than pm.n_prompts ({n_train}): "
                                 f"training on all {n}")
    if n >= n_train + n_val:
        return PromptSplit(n_train, n_val)
    hold = max(1, round(n * HOLD_OUT_SHARE))
    if n - hold < 1:
        raise ValueError(f"{source}: {n} prompt{'s' if n != 1 else ''} cannot give both a training and a "
                         f"held-out prompt (pm.n_prompts + pm.n_val_prompts = {n_train + n_val} wanted); "
                         "give at least 2 prompts, or a held-out preference file as pm.val_path")
    return PromptSplit(n - hold, hold, f"{source} holds {n} prompts, fewer than pm.n_prompts + pm.n_val_prompts "
                                       f"({n_train} + {n_val}): holding out {hold} ({HOLD_OUT_SHARE:.0%}) "
                                       f"and training on {n - hold}")
