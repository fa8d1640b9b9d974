"""Random search: token lists drawn uniformly; the baseline every search must beat."""

from __future__ import annotations

import numpy as np

from .base import Controller, register


@register
class RandomSearch(Controller):
    """Uniform over token lists; ``tell`` only counts."""

    name = "random"

    def __init__(self, space, seed: int = 0, **settings):
        super().__init__(space, seed, **settings)
        self.rng = np.random.default_rng(seed)
        self.best_reward: float | None = None

    def _propose(self, n: int) -> list[tuple[int, ...]]:
        return [self.space.sample(self.rng) for _ in range(n)]

    def _learn(self, tokens: list[tuple[int, ...]], rewards: list[float]) -> dict:
        best = max(rewards)
        self.best_reward = best if self.best_reward is None else max(self.best_reward, best)
        return {"reward_mean": sum(rewards) / len(rewards), "best_reward": self.best_reward}

    def _state(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "best_reward": self.best_reward}

    def _load_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.best_reward = state["best_reward"]
