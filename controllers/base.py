"""The interface every controller shares, and the registry of controllers.

A controller proposes token lists of a :class:`~nos.search.space.Space` (``ask``) and
learns from the rewards their rules earned (``tell``).  ``ask`` may be called
several times before the matching ``tell``: the search is asynchronous, and
proposals are told back in whatever order their evaluations finish.

Each controller's settings are one frozen dataclass (``Controller.config_class``),
checked once in the constructor: an unknown setting is a ValueError that lists
the allowed ones.  ``state_dict`` holds only tensors, numbers, strings, None and
lists/tuples/dicts of those, so it round-trips through ``torch.save`` and
``torch.load(weights_only=True)``; it includes the random state, so a restored
controller continues exactly as the original would have.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from nos.search.space import Space


@dataclass(frozen=True)
class Proposal:
    """One proposed rule: its tokens and their text (``space.to_text(tokens)``)."""

    tokens: tuple[int, ...]
    text: str


@dataclass(frozen=True)
class NoSettings:
    """A controller without settings."""


class Controller(abc.ABC):
    """Proposes token lists and learns from their rewards."""

    name: ClassVar[str]
    config_class: ClassVar[type] = NoSettings

    def __init__(self, space: Space, seed: int = 0, **settings: Any):
        if not isinstance(space, Space):
            raise TypeError(f"space must be a nos.search.space.Space, got {type(space).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"{self.name}: seed must be an integer, got {seed!r}")
        self.space = space
        self.seed = seed
        self.config = make_config(self.config_class, settings, owner=f"controller {self.name!r}")
        self.asked = 0
        self.told = 0

    # --- the search loop's side ------------------------------------------------------

    def ask(self, n: int) -> list[Proposal]:
        """``n`` new proposals."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"ask: n must be an integer >= 0, got {n!r}")
        proposals = [self._proposal(tokens) for tokens in self._propose(n)]
        self.asked += n
        return proposals

    def tell(self, proposals: Sequence[Proposal], rewards: Sequence[float]) -> dict:
        """Learn from the rewards of evaluated proposals; returns stats for logging."""
        proposals = list(proposals)
        rewards = [float(r) for r in rewards]
        if len(proposals) != len(rewards):
            raise ValueError(f"tell: {len(proposals)} proposals but {len(rewards)} rewards")
        for reward in rewards:
            if not math.isfinite(reward):
                raise ValueError(f"tell: rewards must be finite, got {reward}")
        keys = [self._key(p) for p in proposals]
        stats = self._learn(keys, rewards) if keys else {}
        self.told += len(keys)
        return {"told": self.told, **stats}

    def _key(self, proposal: Proposal):
        """What ``_learn`` receives for a told proposal: its valid tokens."""
        return self.space.validate(proposal.tokens)

    def _proposal(self, tokens: Sequence[int]) -> Proposal:
        tokens = self.space.validate(tokens)
        return Proposal(tokens, self.space.to_text(tokens))

    @abc.abstractmethod
    def _propose(self, n: int) -> list[tuple[int, ...]]:
        """``n`` token lists."""

    @abc.abstractmethod
    def _learn(self, tokens: list[tuple[int, ...]], rewards: list[float]) -> dict:
        """Update from a non-empty batch of (valid) tokens and finite rewards."""

    # --- checkpoints -------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "controller": self.name,
            "decisions": list(self.space.decisions),
            "config": config_to_dict(self.config),
            "seed": self.seed,
            "asked": self.asked,
            "told": self.told,
            **self._state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a state from a controller of the same name, space and settings."""
        if state.get("controller") != self.name:
            raise ValueError(f"state is of controller {state.get('controller')!r}, "
                             f"not {self.name!r}")
        if list(state.get("decisions", ())) != list(self.space.decisions):
            raise ValueError(f"state is for a space with decisions {state.get('decisions')}, "
                             f"this one has {list(self.space.decisions)}")
        mine = config_to_dict(self.config)
        theirs = state.get("config", {})
        differ = sorted(k for k in mine if _plain(mine[k]) != _plain(theirs.get(k)))
        if differ:
            raise ValueError(f"state was saved with other settings: {', '.join(differ)}")
        self.seed = int(state["seed"])
        self.asked = int(state["asked"])
        self.told = int(state["told"])
        self._load_state(state)

    @abc.abstractmethod
    def _state(self) -> dict:
        """The controller's own state (random state included)."""

    @abc.abstractmethod
    def _load_state(self, state: dict) -> None:
        """Restore what :meth:`_state` saved."""


# --- settings ---------------------------------------------------------------------------


def make_config(config_class: type, settings: dict, owner: str) -> Any:
    """``config_class(**settings)``, with unknown keys refused by name."""
    allowed = [f.name for f in dataclasses.fields(config_class)]
    for key in settings:
        if key not in allowed:
            listed = ", ".join(allowed) if allowed else "none"
            raise ValueError(f"{owner}: unknown setting '{key}'; allowed: {listed}")
    return config_class(**settings)


def config_to_dict(config: Any) -> dict:
    return {f.name: _plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively, so a config compares equal after a round trip."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def check_number(owner: str, key: str, value: Any, low: float, high: float = math.inf,
                 integer: bool = False, low_open: bool = False) -> None:
    """ValueError naming ``key`` unless ``value`` is a number in ``[low, high]``."""
    kinds = (int,) if integer else (int, float)
    ok = isinstance(value, kinds) and not isinstance(value, bool)
    if ok:
        ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        what = "an integer" if integer else "a number"
        bracket = "(" if low_open else "["
        raise ValueError(f"{owner}: '{key}' must be {what} in {bracket}{low}, {high}], "
                         f"got {value!r}")


# --- the registry -----------------------------------------------------------------------

_REGISTRY: dict[str, type[Controller]] = {}


def register(cls: type[Controller]) -> type[Controller]:
    """Class decorator: make a controller available to :func:`make_controller`."""
    _REGISTRY[cls.name] = cls
    return cls


def controller_names() -> list[str]:
    return list(_REGISTRY)


def make_controller(name: str, space: Space, seed: int = 0, **settings: Any) -> Controller:
    """The controller called ``name`` over ``space``."""
    if name not in _REGISTRY:
        listed = ", ".join(repr(n) for n in _REGISTRY)
        raise ValueError(f"unknown controller {name!r}; allowed: {listed}")
    return _REGISTRY[name](space, seed=seed, **settings)


def age_population(population: deque, best: tuple | None, members, size: int
                   ) -> tuple[tuple | None, dict]:
    """Regularized evolution's population: each (key, reward) joins and the oldest leave
    past ``size``, however good; returns the best ever told and the stats of a tell."""
    for member in members:
        population.append(member)
        if len(population) > size:
            population.popleft()
        if best is None or member[1] > best[1]:
            best = member
    rewards = [r for _, r in population]
    return best, {"population": len(population), "population_mean": sum(rewards) / len(rewards),
                  "population_best": max(rewards), "best_reward": best[1]}  # type: ignore[index]
