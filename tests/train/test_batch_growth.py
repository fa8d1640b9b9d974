"""Batch size instead of decay (nos.train.batch_growth): the plan of phases, and the batch
sizes and rates a training really uses, against the step decay it replaces."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

import nos
from nos.train.batch_growth import growth_plan, phase_settings
from nos.train.evaluation import evaluate

SEEN: list[tuple[int, float]] = []  # (batch size, clock) of every training forward pass


class Recorder(nn.Module):
    """A linear classifier with a clock: a parameter that only the rule ``1`` moves, by
    ``-lr`` at each update, so the clock's steps are the rates the updates used."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.clock = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            SEEN.append((len(x), float(self.clock.detach())))
        return self.linear(x) + 0 * self.clock


@dataclass(frozen=True)
class Recorded(nos.Task):
    name: ClassVar[str] = "recorded"
    batch_size: ClassVar[int] = 10
    epochs: ClassVar[int] = 4

    def make_data(self) -> nos.TaskData:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(130, 3, generator=generator)
        y = (x[:, 0] > 0).long()
        return nos.TaskData(x[:100], y[:100], x[100:115], y[100:115], x[115:], y[115:])

    def build_model(self) -> nn.Module:
        return Recorder()


def used(**settings) -> tuple[nos.EvalResult, list[int], list[float]]:
    """Train the rule ``1`` (every parameter moves by -lr per update) and return the result,
    the batch size of every update and the rate of every update but the last."""
    SEEN.clear()
    result = evaluate("1", Recorded(), lr=0.4, schedule="step:step_size=10,gamma=0.5",
                      device="cpu", **settings)
    assert result.status == "ok", result.error
    sizes = [size for size, _ in SEEN]
    rates = [round(a - b, 5) for (_, a), (_, b) in zip(SEEN, SEEN[1:])]
    return result, sizes, rates


def test_the_plan_multiplies_the_batch_where_the_rate_would_be_divided():
    # 100 examples, batches of 10: 10 steps an epoch, decayed by 0.5 every epoch (4 epochs)
    plan = growth_plan(100, 10, 40, "step:step_size=10,gamma=0.5", cap=40)
    assert [[b.size for b in epoch] for epoch in plan.epochs] == [
        [10] * 10, [20] * 5, [40, 40, 20], [40, 40, 20]]
    assert [epoch[0].lr_factor for epoch in plan.epochs] == [1, 1, 1, 0.5]  # capped: decay
    assert [b.start for b in plan.epochs[2]] == [0, 40, 80]
    assert plan.updates == 21
    assert phase_settings(3, 10, 0.5, 1000) == (80, 1.0)  # no cap reached: never decays


def test_a_fractional_budget_ends_where_the_decay_schedule_ends():
    # 2.5 epochs: the decay schedule makes 25 steps; the plan stops at its 25th step's example
    plan = growth_plan(100, 10, 25, {"name": "step", "step_size": 10, "gamma": 0.5}, cap=40)
    assert [sum(b.size for b in epoch) for epoch in plan.epochs] == [100, 100, 50]
    assert [b.size for b in plan.epochs[2]] == [40, 10]


def test_training_uses_the_planned_batches_and_rates_with_fewer_updates():
    decayed, decay_sizes, decay_rates = used(epochs=4)
    assert decay_sizes == [10] * 40 and decayed.steps == 40 and decayed.phases == []
    assert decay_rates == [round(0.4 * 0.5 ** (i // 10), 5) for i in range(39)]

    grown, sizes, rates = used(epochs=4, grow_batch=40)
    assert sizes == [10] * 10 + [20] * 5 + [40, 40, 20] * 2
    assert rates == [0.4] * 18 + [0.2] * 2
    assert grown.steps == 21 < decayed.steps
    assert [(p["batch_size"], p["lr"], p["updates"], p["examples"]) for p in grown.phases] == [
        (10, 0.4, 10, 100), (20, 0.4, 5, 100), (40, 0.4, 3, 100), (40, 0.2, 3, 100)]


@pytest.mark.parametrize("settings, message", [
    ({"grow_batch": 40}, "needs a step schedule"),
    ({"grow_batch": 40, "schedule": "cosine"}, "needs a step schedule"),
    ({"grow_batch": 40, "schedule": "step:gamma=2"}, "decays the rate"),
    ({"grow_batch": 0, "schedule": "step"}, "whole number >= 1"),
    ({"grow_batch": 5, "schedule": "step"}, "at least the batch size 10"),
])
def test_bad_settings_are_refused_before_any_training(settings, message):
    SEEN.clear()
    with pytest.raises(ValueError, match=message) as err:
        evaluate("1", Recorded(), lr=0.4, epochs=1, device="cpu", **settings)
    assert str(err.value).startswith("grow_batch ")
    assert SEEN == []
