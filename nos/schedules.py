"""Learning-rate schedules by name, from configs and from Python.

The schedules of the seed article: the Transformer's warm-up, cosine
annealing, SGDR warm restarts (Loshchilov & Hutter, 2017), cyclical learning
rates (Smith, 2017) and linear warm-up followed by cosine.  Each is built on
``torch.optim.lr_scheduler`` where torch has it; only the Transformer's
formula is written here (as a ``LambdaLR``).  Schedulers step once per
optimizer step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim import lr_scheduler

LRScheduler = lr_scheduler.LRScheduler


def _transformer(opt, total, d_model: float = 512, warmup: float = 4000, scale: float = 1.0):
    def factor(step: int) -> float:
        s = step + 1  # LambdaLR starts at 0; the formula at 1
        return scale * d_model ** -0.5 * min(s ** -0.5, s * warmup ** -1.5)

    return lr_scheduler.LambdaLR(opt, factor)


def _cosine(opt, total, eta_min: float = 0.0):
    return lr_scheduler.CosineAnnealingLR(opt, T_max=_need(total), eta_min=eta_min)


def _sgdr(opt, total, T_0: int = 10, T_mult: int = 1, eta_min: float = 0.0):  # noqa: N803
    return lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=int(T_0), T_mult=int(T_mult),
                                                    eta_min=eta_min)


def _cyclical(opt, total, base_lr: float = 1e-3, max_lr: float = 1e-2,
              step_size_up: int = 100, mode: str = "triangular", gamma: float = 1.0):
    return lr_scheduler.CyclicLR(opt, base_lr=base_lr, max_lr=max_lr,
                                 step_size_up=int(step_size_up), mode=mode, gamma=gamma,
                                 cycle_momentum=False)


def _warmup_cosine(opt, total, warmup: int = 100, start_factor: float = 0.01,
                   eta_min: float = 0.0):
    total = _need(total)
    warmup = int(min(warmup, total - 1)) if total > 1 else 0
    if warmup <= 0:
        return lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=eta_min)
    first = lr_scheduler.LinearLR(opt, start_factor=start_factor, end_factor=1.0,
                                  total_iters=warmup)
    second = lr_scheduler.CosineAnnealingLR(opt, T_max=total - warmup, eta_min=eta_min)
    return lr_scheduler.SequentialLR(opt, [first, second], milestones=[warmup])


def _constant(opt, total):
    return lr_scheduler.LambdaLR(opt, lambda step: 1.0)


def _step(opt, total, step_size: int = 100, gamma: float = 0.1):
    return lr_scheduler.StepLR(opt, step_size=int(step_size), gamma=gamma)


def _exponential(opt, total, gamma: float = 0.999):
    return lr_scheduler.ExponentialLR(opt, gamma=gamma)


def _need(total: int | None) -> int:
    if total is None:
        raise ValueError("this schedule needs total_steps")
    return int(total)


SCHEDULES: dict[str, Callable[..., LRScheduler]] = {
    "constant": _constant,
    "transformer": _transformer,
    "cosine": _cosine,
    "sgdr": _sgdr,
    "cyclical": _cyclical,
    "warmup_cosine": _warmup_cosine,
    "step": _step,
    "exponential": _exponential,
}


def schedule_names() -> list[str]:
    return list(SCHEDULES)


def make_scheduler(name: str, optimizer: torch.optim.Optimizer, total_steps: int | None = None,
                   **options: Any) -> LRScheduler:
    """A scheduler by name; unknown names and options are refused with the allowed ones."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; known: {', '.join(SCHEDULES)}")
    build = SCHEDULES[name]
    allowed = list(build.__code__.co_varnames[2:build.__code__.co_argcount])
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r} for schedule {name!r}; "
                         f"allowed: {', '.join(allowed) or 'none'}")
    return build(optimizer, total_steps, **options)


def from_config(cfg: dict | str | None, optimizer: torch.optim.Optimizer,
                total_steps: int | None) -> LRScheduler | None:
    """``None``, a name (``"cosine"``) or a table (``{"name": "sgdr", "T_0": 10}``)."""
    if cfg is None:
        return None
    if isinstance(cfg, str):
        return make_scheduler(cfg, optimizer, total_steps)
    if "name" not in cfg:
        raise ValueError(f"a schedule table needs a 'name'; known: {', '.join(SCHEDULES)}")
    options = {k: v for k, v in cfg.items() if k != "name"}
    return make_scheduler(cfg["name"], optimizer, total_steps, **options)


def sgdr_cycle_ends(T_0: int, T_mult: int, total_steps: int) -> list[int]:  # noqa: N803
    """Scheduler steps (counted from 1) at which each SGDR cycle ends, within total_steps."""
    ends, length, end = [], int(T_0), 0
    while end + length <= total_steps:
        end += length
        ends.append(end)
        length *= max(1, int(T_mult))
    return ends


def lr_at(cfg: dict | str | None, base_lr: float, total_steps: int, steps: int) -> list[float]:
    """The learning rate at each of the first ``steps`` steps (for plots and tests)."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=base_lr)
    scheduler = from_config(cfg, opt, total_steps)
    values = []
    for _ in range(steps):
        values.append(opt.param_groups[0]["lr"])
        opt.step()
        if scheduler is not None:
            scheduler.step()
    return values


__all__ = ["from_config", "lr_at", "make_scheduler", "schedule_names", "sgdr_cycle_ends"]
