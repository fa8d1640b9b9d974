"""Regularized evolution (Real et al. 2019, "Regularized Evolution for Image
Classifier Architecture Search").

The population holds the last ``population`` told (tokens, reward) pairs:
every ``tell`` appends, and the oldest fall out (aging), however good they
were.  The first ``population`` proposals are the ``seeds`` and then random
token lists; after that each proposal is a one-token mutation of the best of
``sample_size`` members drawn at random (a tournament).

The search is asynchronous: ``ask`` may run ahead of ``tell``.  Until anything
has been told there is nobody to mutate, so such proposals stay random; once
the population has members, tournaments draw from whatever it holds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .base import Controller, age_population, check_number, register


@dataclass(frozen=True)
class EvolutionConfig:
    """Settings of regularized evolution; ``seeds`` are token lists or snippet lists."""

    population: int = 20
    sample_size: int = 5
    seeds: tuple = ()

    def __post_init__(self) -> None:
        owner = "controller 'evolution'"
        check_number(owner, "population", self.population, 1, integer=True)
        check_number(owner, "sample_size", self.sample_size, 1, self.population, integer=True)
        if not isinstance(self.seeds, (list, tuple)):
            raise ValueError(f"{owner}: 'seeds' must be a list of token lists or of "
                             f"snippet lists, got {self.seeds!r}")
        seeds = tuple(tuple(s) if isinstance(s, (list, tuple)) else s for s in self.seeds)
        object.__setattr__(self, "seeds", seeds)


@register
class Evolution(Controller):
    """Regularized evolution: tournament selection, one-token mutation, aging."""

    name = "evolution"
    config_class = EvolutionConfig

    def __init__(self, space, seed: int = 0, **settings):
        super().__init__(space, seed, **settings)
        self.seeds = [self._seed_tokens(i, s) for i, s in enumerate(self.config.seeds)]
        self.rng = np.random.default_rng(seed)
        self.population: deque[tuple[tuple[int, ...], float]] = deque()
        self.best: tuple[tuple[int, ...], float] | None = None

    def _seed_tokens(self, index: int, seed: Sequence) -> tuple[int, ...]:
        if not isinstance(seed, tuple):
            raise ValueError(f"controller 'evolution': seeds[{index}] must be a list, got {seed!r}")
        try:
            if seed and all(isinstance(c, str) for c in seed):
                return self.space.tokens_from_choices(seed)
            return self.space.validate(seed)
        except ValueError as err:
            raise ValueError(f"controller 'evolution': seeds[{index}]: {err}") from None

    def _propose(self, n: int) -> list[tuple[int, ...]]:
        return [self._next(self.asked + i) for i in range(n)]

    def _next(self, index: int) -> tuple[int, ...]:
        if index < len(self.seeds) and index < self.config.population:
            return self.seeds[index]
        if index < self.config.population or not self.population:
            return self.space.sample(self.rng)
        return self.mutate(self._tournament())

    def _tournament(self) -> tuple[int, ...]:
        size = min(self.config.sample_size, len(self.population))
        picked = self.rng.choice(len(self.population), size=size, replace=False)
        # the first of equals wins: the oldest, as a stable tie-break
        winner = max(sorted(picked), key=lambda i: self.population[i][1])
        return self.population[winner][0]

    def mutate(self, tokens: tuple[int, ...]) -> tuple[int, ...]:
        """``tokens`` with one position changed to another valid value."""
        mutable = [p for p, n in enumerate(self.space.decisions) if n > 1]
        if not mutable:
            return tokens
        position = mutable[int(self.rng.integers(len(mutable)))]
        shift = 1 + int(self.rng.integers(self.space.decisions[position] - 1))
        child = list(tokens)
        child[position] = (child[position] + shift) % self.space.decisions[position]
        return tuple(child)

    def _learn(self, tokens: list[tuple[int, ...]], rewards: list[float]) -> dict:
        members = zip(tokens, rewards, strict=True)
        self.best, stats = age_population(self.population, self.best, members,
                                          self.config.population)
        return stats

    def _state(self) -> dict:
        return {
            "rng": self.rng.bit_generator.state,
            "population": [[list(t), r] for t, r in self.population],
            "best": None if self.best is None else [list(self.best[0]), self.best[1]],
        }

    def _load_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.population = deque((tuple(int(v) for v in t), float(r))
                                for t, r in state["population"])
        best = state["best"]
        self.best = None if best is None else (tuple(int(v) for v in best[0]), float(best[1]))
