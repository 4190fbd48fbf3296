"""Registries of the parts a method swaps: advantage estimators, policy losses, KL estimators and
preference losses. Each part registers itself by name with a decorator in its own file; the
config names it, and the name is checked against the registry before anything starts.

    @ADVANTAGE_ESTIMATORS.register("gae")
    def gae(...): ...

A name registered twice is an error, and so is a name nobody registered (the message lists the
valid ones). The registries fill as their modules are imported; ``alignment.losses`` imports them
all, so ``names()`` is complete once ``alignment.losses`` is imported.

One call signature per registry (tensors on the left-aligned response grid ``[B, R]``):

* ``ADVANTAGE_ESTIMATORS`` (``algo.advantage``): ``fn(inputs: AdvantageInputs) -> (advantages [B, R],
  returns [B, R] or None)``; ``AdvantageInputs`` (``alignment.losses.gae``) holds the token rewards,
  the critic's values (or None), the response mask, the sequence rewards ``[B]``, ``group_size``,
  ``gamma`` and ``lam``. An estimator that needs the critic's values sets ``fn.needs_values = True``
  (``gae``); the others (``grpo``, ``rloo``) run without a critic.
* ``POLICY_LOSSES`` (``algo.policy_loss``): ``fn(logprobs, old_logprobs, advantages, mask, clip) ->
  (loss scalar, stats: dict[str, scalar tensor])``.
* ``KL_ESTIMATORS`` (``algo.kl_estimator``): ``fn(logprobs, ref_logprobs) -> per-token KL(pi || pi_ref)
  [B, R]`` from the sampled tokens' log-probs.
* ``PREFERENCE_LOSSES``: see ``alignment.losses.pairwise`` and ``alignment.losses.dpo``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class RegistryError(ValueError):
    """A duplicate registration, or a name that is not registered."""


class Registry(Generic[F]):
    """Named functions of one kind (``kind`` names it in messages, e.g. "advantage estimator")."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator: register the function under ``name`` (an error if the name is taken)."""

        def add(fn: F) -> F:
            if name in self._items:
                raise RegistryError(f"{self.kind} {name!r} is registered twice "
                                    f"({_where(self._items[name])} and {_where(fn)})")
            self._items[name] = fn
            return fn

        return add

    def get(self, name: str) -> F:
        if name not in self._items:
            raise RegistryError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self.names())}")
        return self._items[name]

    def check(self, key: str, name: str) -> None:
        """Raise a ValueError naming the config ``key`` unless ``name`` is registered."""
        if name not in self._items:
            raise RegistryError(f"{key}: unknown {self.kind} {name!r}; choose one of {', '.join(self.names())}")

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._items))

    def __contains__(self, name: object) -> bool:
        return name in self._items


def _where(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', '?')}"


ADVANTAGE_ESTIMATORS: Registry[Callable[..., Any]] = Registry("advantage estimator")
POLICY_LOSSES: Registry[Callable[..., Any]] = Registry("policy loss")
KL_ESTIMATORS: Registry[Callable[..., Any]] = Registry("KL estimator")
PREFERENCE_LOSSES: Registry[Callable[..., Any]] = Registry("preference loss")
