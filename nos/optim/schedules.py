"""Learning-rate schedules by name, from configs and from Python.

The schedules of the seed article (Ruder, "Optimization for Deep Learning
Highlights in 2017"): the Transformer's warm-up, cosine annealing, SGDR warm
restarts (Loshchilov & Hutter, 2017), cyclical learning rates (Smith, 2017)
and linear warm-up followed by cosine, plus step and exponential decay.

Each schedule is a ``torch.optim.lr_scheduler`` scheduler; torch's own class
is used wherever it has the schedule and only the Transformer's formula is
written here (as a ``LambdaLR``).  Schedulers are stepped once per optimizer
step, and their base learning rate (``lr`` below) is the optimizer group's
``lr``.  Reading ``SCHEDULES`` is reading the list of what is offered; each
builder's keyword-only parameters are the options its schedule accepts.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import lr_scheduler

LRScheduler = lr_scheduler.LRScheduler

CYCLICAL_MODES = ("triangular", "triangular2", "exp_range")


def _constant(opt: torch.optim.Optimizer, total: int | None) -> LRScheduler:
    """``lr`` at every step."""
    return lr_scheduler.LambdaLR(opt, _one)


def _transformer(opt: torch.optim.Optimizer, total: int | None, *, d_model: float = 512,
                 warmup: int = 4000, scale: float = 1.0) -> LRScheduler:
    """``lr * scale * d_model^-0.5 * min(s^-0.5, s * warmup^-1.5)``, s = 1, 2, ...

    Linear warm-up for ``warmup`` steps, then decay with the inverse square
    root of the step (Vaswani et al., 2017, "Attention is all you need", 5.3).
    """
    _positive("d_model", d_model)
    warmup = _positive_int("warmup", warmup)

    def factor(step: int) -> float:
        s = step + 1  # LambdaLR counts from 0, the formula from 1
        return scale * d_model ** -0.5 * min(s ** -0.5, s * warmup ** -1.5)

    return lr_scheduler.LambdaLR(opt, factor)


def _cosine(opt: torch.optim.Optimizer, total: int | None, *,
            eta_min: float = 0.0) -> LRScheduler:
    """``eta_min + (lr - eta_min) * (1 + cos(pi * t / T)) / 2``, T = total_steps.

    Cosine annealing (Loshchilov & Hutter, 2017, "SGDR", without restarts).
    """
    return lr_scheduler.CosineAnnealingLR(opt, T_max=_need_total("cosine", total),
                                          eta_min=eta_min)


def _sgdr(opt: torch.optim.Optimizer, total: int | None, *, T_0: int | None = None,  # noqa: N803
          T_mult: int = 1, eta_min: float = 0.0) -> LRScheduler:
    """``eta_min + (lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2``.

    SGD with warm restarts (Loshchilov & Hutter, 2017): T_cur counts the
    steps since the last restart; the i-th cycle lasts T_i = T_0 * T_mult^i
    steps, so restarts come at T_0, T_0 + T_0 * T_mult, ...  T_0 defaults to
    total_steps (a single cycle).  ``sgdr_cycle_ends`` lists the cycle ends.
    """
    if T_0 is None:
        if total is None:
            raise ValueError("schedule 'sgdr' needs T_0 (or total_steps to default it to)")
        T_0 = total  # noqa: N806
    return lr_scheduler.CosineAnnealingWarmRestarts(
        opt, T_0=_positive_int("T_0", T_0), T_mult=_positive_int("T_mult", T_mult),
        eta_min=eta_min)


def _cyclical(opt: torch.optim.Optimizer, total: int | None, *, base_lr: float | None = None,
              max_lr: float | None = None, step_size_up: int | None = None,
              mode: str = "triangular", gamma: float = 1.0,
              cycle_momentum: bool = False) -> LRScheduler:
    """Cyclical learning rates (Smith, 2017, "Cyclical learning rates for training NNs").

    triangular: ``base_lr + (max_lr - base_lr) * max(0, 1 - x)`` with
    ``cycle = floor(1 + t / (2 * step_size_up))`` and
    ``x = |t / step_size_up - 2 * cycle + 1|``; triangular2 halves the
    amplitude each cycle, exp_range scales it by ``gamma^t``.  base_lr
    defaults to the group's lr, max_lr to 4 * base_lr (Smith's advice that
    base_lr be a third to a quarter of max_lr), step_size_up to
    total_steps // 8 (four cycles) or torch's 2000.
    """
    if mode not in CYCLICAL_MODES:
        raise ValueError(f"unknown cyclical mode {mode!r}; allowed: {', '.join(CYCLICAL_MODES)}")
    groups = len(opt.param_groups)
    base = [g["lr"] for g in opt.param_groups] if base_lr is None else [base_lr] * groups
    peak = [4 * lr for lr in base] if max_lr is None else [max_lr] * groups
    if any(top <= low for low, top in zip(base, peak, strict=True)):
        raise ValueError(f"max_lr must exceed base_lr, got max_lr={peak} and base_lr={base}")
    if step_size_up is None:
        step_size_up = max(1, total // 8) if total is not None else 2000
    return lr_scheduler.CyclicLR(opt, base_lr=base, max_lr=peak,
                                 step_size_up=_positive_int("step_size_up", step_size_up),
                                 mode=mode, gamma=gamma, cycle_momentum=cycle_momentum)


def _warmup_cosine(opt: torch.optim.Optimizer, total: int | None, *, warmup: int | None = None,
                   start_factor: float = 0.01, eta_min: float = 0.0) -> LRScheduler:
    """Linear warm-up, then cosine annealing over the remaining steps.

    ``lr * (start_factor + (1 - start_factor) * t / warmup)`` for t < warmup,
    then ``eta_min + (lr - eta_min) * (1 + cos(pi * (t - warmup) / (T - warmup))) / 2``
    with T = total_steps (Goyal et al., 2017 warm-up; Loshchilov & Hutter, 2017).
    warmup defaults to 5% of total_steps (Goyal et al. warm up 5 of 90 epochs).
    """
    total = _need_total("warmup_cosine", total)
    warmup = total // 20 if warmup is None else _int("warmup", warmup)
    if not 0 <= warmup < total:
        raise ValueError(f"warmup must be in [0, total_steps={total}), got {warmup}")
    if not 0 < start_factor <= 1:
        raise ValueError(f"start_factor must be in (0, 1], got {start_factor}")
    cosine = lr_scheduler.CosineAnnealingLR(opt, T_max=total - warmup, eta_min=eta_min)
    if warmup == 0:
        return cosine
    linear = lr_scheduler.LinearLR(opt, start_factor=start_factor, end_factor=1.0,
                                   total_iters=warmup)
    return lr_scheduler.SequentialLR(opt, [linear, cosine], milestones=[warmup])


def _step(opt: torch.optim.Optimizer, total: int | None, *, step_size: int = 100,
          gamma: float = 0.1) -> LRScheduler:
    """``lr * gamma^floor(t / step_size)``: step decay."""
    return lr_scheduler.StepLR(opt, step_size=_positive_int("step_size", step_size), gamma=gamma)


def _exponential(opt: torch.optim.Optimizer, total: int | None, *,
                 gamma: float = 0.999) -> LRScheduler:
    """``lr * gamma^t``: exponential decay."""
    return lr_scheduler.ExponentialLR(opt, gamma=gamma)


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
    """The names ``make_scheduler`` and ``from_config`` accept."""
    return list(SCHEDULES)


def schedule_options(name: str) -> list[str]:
    """The options schedule ``name`` accepts."""
    return list(_options(_lookup(name)))


def make_scheduler(name: str, optimizer: torch.optim.Optimizer, total_steps: int | None = None,
                   **options: Any) -> LRScheduler:
    """The schedule ``name`` on ``optimizer``, to be stepped once per optimizer step.

    Unknown names and options are refused with the allowed ones listed, and a
    missing required option (total_steps for cosine) is named.
    """
    build = _lookup(name)
    allowed = _options(build)
    kinds = _option_kinds(build)
    for key, value in options.items():
        if key not in allowed:
            raise ValueError(f"unknown option {key!r} for schedule {name!r}; "
                             f"allowed: {', '.join(allowed) or 'none'}")
        _check_kind(key, value, kinds[key])
    if total_steps is not None:
        total_steps = _positive_int("total_steps", total_steps)
    return build(optimizer, total_steps, **options)


def from_config(cfg: dict | str | None, optimizer: torch.optim.Optimizer,
                total_steps: int | None) -> LRScheduler | None:
    """``None``, a name (``"cosine"``) or a table (``{"name": "sgdr", "T_0": 10}``)."""
    if cfg is None:
        return None
    if isinstance(cfg, str):
        return make_scheduler(cfg, optimizer, total_steps)
    if not isinstance(cfg, dict):
        raise ValueError(f"a schedule is a name or a table, got {type(cfg).__name__} {cfg!r}")
    if "name" not in cfg:
        raise ValueError(f"schedule table {cfg!r} needs a 'name'; known: {', '.join(SCHEDULES)}")
    options = {key: value for key, value in cfg.items() if key != "name"}
    return make_scheduler(cfg["name"], optimizer, total_steps, **options)


def parse_spec(text: str) -> dict:
    """``NAME`` or ``NAME:key=value,key=value`` (``sgdr:T_0=50,T_mult=2``) as a table.

    Values are read as integers, numbers, ``true``/``false`` or else left as text;
    ``check`` then refuses what the schedule cannot use.
    """
    name, _, options = text.partition(":")
    config: dict[str, Any] = {"name": name.strip()}
    for item in options.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"option {item.strip()!r} of {text!r} is not key=value")
        config[key.strip()] = _option_value(value.strip())
    return config


def _option_value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


CHECK_TOTAL_STEPS = 1_000_000  # stands in for total_steps when a schedule is checked early


def check(cfg: dict | str | None, total_steps: int | None = None,
          lr: float | None = None) -> dict | None:
    """``cfg`` (None, a name, ``NAME:key=value,...`` or a table) as None or a table, once
    ``from_config`` accepts it; the ValueError of ``from_config`` otherwise.

    The schedule is built and stepped on a throw-away optimizer, so every check of a
    name, an option or its value is the one training would meet.  Without
    ``total_steps`` a long run is assumed, and without ``lr`` a tiny rate, so that
    options bounded by the run's length or its rate are checked once those are known.
    """
    if cfg is None:
        return None
    if isinstance(cfg, str):
        cfg = parse_spec(cfg)
    if not isinstance(cfg, dict):
        raise ValueError(f"a schedule is a name or a table, got {type(cfg).__name__} {cfg!r}")
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-12 if lr is None else lr)
    scheduler = from_config(cfg, probe, CHECK_TOTAL_STEPS if total_steps is None else total_steps)
    for _ in range(2):  # the first steps reach what construction alone does not
        probe.step()
        scheduler.step()
    return dict(cfg)


def sgdr_cycle_ends(T_0: int, T_mult: int, total_steps: int) -> list[int]:  # noqa: N803
    """Where each SGDR cycle ends, as the number of scheduler steps taken so far.

    The cycles last T_0, T_0 * T_mult, T_0 * T_mult^2, ... steps, so they end
    after T_0, T_0 + T_0 * T_mult, ... steps; only ends <= total_steps are
    listed.  After that many steps the learning rate restarts at ``lr``, so
    these are the moments a snapshot ensemble (Huang et al., 2017) saves the
    model.
    """
    T_0, T_mult = _positive_int("T_0", T_0), _positive_int("T_mult", T_mult)  # noqa: N806
    ends, end, length = [], T_0, T_0
    while end <= total_steps:
        ends.append(end)
        length *= T_mult
        end += length
    return ends


def _one(step: int) -> float:
    return 1.0


def _lookup(name: str) -> Callable[..., LRScheduler]:
    if not isinstance(name, str) or name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; known: {', '.join(SCHEDULES)}")
    return SCHEDULES[name]


def _options(build: Callable[..., LRScheduler]) -> dict[str, Any]:
    return {p.name: p.default for p in inspect.signature(build).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _option_kinds(build: Callable[..., LRScheduler]) -> dict[str, str]:
    """Each option's annotation, as text (``"float"``, ``"int | None"``, ``"str"``)."""
    return {p.name: str(p.annotation) for p in inspect.signature(build).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _check_kind(key: str, value: Any, kind: str) -> None:
    """ValueError unless ``value`` fits the option's annotation (None where it allows it)."""
    if value is None and "None" in kind:
        return
    if "bool" in kind:
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false, got {value!r}")
    elif "str" in kind:
        if not isinstance(value, str):
            raise ValueError(f"{key} must be text, got {value!r}")
    elif "int" in kind and "float" not in kind:
        _int(key, value)
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be a number, got {value!r}")
    elif not math.isfinite(value):
        raise ValueError(f"{key} must be finite, got {value!r}")


def _need_total(name: str, total: int | None) -> int:
    if total is None:
        raise ValueError(f"schedule {name!r} needs total_steps")
    return total


def _int(key: str, value: Any) -> int:
    """``value`` as an int: TOML and the CLI may give ``10.0`` for ``10``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{key} must be an integer, got {value!r}")
        value = int(value)
    return value


def _positive_int(key: str, value: Any) -> int:
    value = _int(key, value)
    if value < 1:
        raise ValueError(f"{key} must be a positive integer, got {value}")
    return value


def _positive(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{key} must be a positive number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{key} must be finite, got {value!r}")
    return float(value)


__all__ = ["SCHEDULES", "check", "from_config", "make_scheduler", "parse_spec", "schedule_names",
           "schedule_options", "sgdr_cycle_ends"]
