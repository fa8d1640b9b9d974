"""Batch size instead of decay (Smith, Kindermans, Ying & Le, 2017, "Don't decay the
learning rate, increase the batch size").

A step schedule (``step:step_size=S,gamma=G``) multiplies the learning rate by ``G < 1``
every ``S`` steps.  With ``grow_batch=CAP`` the training instead multiplies the batch
size by ``1/G`` at those points, as long as the batch stays within ``CAP``; past the cap
the rate takes the rest of the factor.  In phase ``k`` (the schedule's ``k``-th step)
the batch is ``B_k = min(round(B / G^k), CAP)`` and the rate ``lr * G^k * B_k / B``, so
``lr_k / B_k`` (the scale of the gradient noise, in Smith et al.'s argument) is the decay
schedule's ``lr * G^k / B`` in every phase.

The phases are placed by the examples seen, not by the updates made: phase ``k`` starts
where the decay schedule's ``k * S``-th step would start (its ``k * S * B``-th example,
counted per epoch as that schedule counts its steps), and the training ends where the
decay schedule's would, after the same epochs.  So both see the same examples in the
same order and the growing batch makes fewer parameter updates; a batch that starts in
a phase keeps that phase's size (cut short, as any, where an epoch or the training
ends).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from nos.optim.schedules import from_config


@dataclass(frozen=True)
class Batch:
    """One parameter update: the examples ``perm[start:start + size]`` of its epoch's
    order (fewer where the epoch or the training ends), at ``lr_factor`` times the base
    rate, in phase ``phase``."""

    start: int
    size: int
    lr_factor: float
    phase: int


@dataclass(frozen=True)
class GrowthPlan:
    """Every update of a training, epoch by epoch."""

    epochs: list[list[Batch]]

    @property
    def updates(self) -> int:
        return sum(len(epoch) for epoch in self.epochs)


def step_decay(schedule: Any) -> tuple[int, float]:
    """The ``step_size`` and ``gamma`` of a step schedule (a name, table or spec, as
    ``nos.optim.schedules.from_config`` takes them; defaults included); ValueError for
    any other schedule, or a gamma that does not decay the rate."""
    if isinstance(schedule, str):
        from nos.optim.schedules import parse_spec

        schedule = parse_spec(schedule)
    name = schedule.get("name") if isinstance(schedule, dict) else None
    if name != "step":
        raise ValueError("needs a step schedule (step:step_size=N,gamma=G) to replace its "
                         f"decay, got schedule {schedule!r}")
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = from_config(schedule, probe, None)
    if not 0 < scheduler.gamma < 1:
        raise ValueError(f"needs a step schedule that decays the rate (0 < gamma < 1), "
                         f"got gamma {scheduler.gamma!r}")
    return scheduler.step_size, scheduler.gamma


def phase_settings(phase: int, batch_size: int, gamma: float, cap: int) -> tuple[int, float]:
    """The batch size and the rate's factor in ``phase`` (0 is the first)."""
    size = min(round(batch_size / gamma ** phase), cap)
    return size, gamma ** phase * size / batch_size


def growth_plan(examples: int, batch_size: int, total_steps: int, schedule: Any,
                cap: int) -> GrowthPlan:
    """The updates of a training that grows its batch where ``schedule`` (a step schedule)
    would decay the rate, for ``examples`` training examples and the decay schedule's
    ``batch_size`` and ``total_steps`` (see the module)."""
    if cap < batch_size:
        raise ValueError(f"the largest batch ({cap}) must be at least the batch size "
                         f"({batch_size})")
    step_size, gamma = step_decay(schedule)
    per_epoch = math.ceil(examples / batch_size)  # the decay schedule's steps per epoch
    epochs: list[list[Batch]] = []
    while len(epochs) * per_epoch < total_steps:
        first = len(epochs) * per_epoch  # the decay schedule's first step of this epoch
        end = min(examples, (total_steps - first) * batch_size)  # where its last step ends
        batches, start = [], 0
        while start < end:
            phase = (first + start // batch_size) // step_size
            size, factor = phase_settings(phase, batch_size, gamma, cap)
            batches.append(Batch(start, min(size, end - start), factor, phase))
            start += size
        epochs.append(batches)
    return GrowthPlan(epochs)


def enter_batch(optimizer: torch.optim.Optimizer, lr: float, batch: Batch, examples: int,
                phases: list[dict]) -> None:
    """Set the rate of ``batch`` on every group and count the update (of ``examples``
    examples) in ``phases``: one record per phase, its batch size, rate, updates and
    examples."""
    rate = lr * batch.lr_factor
    for group in optimizer.param_groups:
        group["lr"] = rate
    if not phases or phases[-1]["phase"] != batch.phase:
        phases.append({"phase": batch.phase, "batch_size": batch.size, "lr": rate,
                       "updates": 0, "examples": 0})
    phases[-1]["updates"] += 1
    phases[-1]["examples"] += examples


__all__ = ["Batch", "GrowthPlan", "enter_batch", "growth_plan", "phase_settings", "step_decay"]
