"""Schedules against the seed's closed-form formulas, on a real torch SGD.

Each case drives ``torch.optim.SGD`` on one parameter and reads the group's
lr before every step, so entry t of a sequence is the lr used by optimizer
step t (after t scheduler steps).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from nos.optim.schedules import (
    check,
    from_config,
    make_scheduler,
    parse_spec,
    schedule_names,
    sgdr_cycle_ends,
)

LR = 0.1


def _sgd(lr: float = LR) -> torch.optim.SGD:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def lr_sequence(cfg: dict | str, steps: int, total: int | None = None,
                lr: float = LR) -> list[float]:
    opt = _sgd(lr)
    scheduler = from_config(cfg, opt, total)
    values = []
    for _ in range(steps):
        values.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return values


# The formulas, written from the papers rather than from torch.

def transformer(t: int, lr: float, d_model: float, warmup: int, scale: float) -> float:
    s = t + 1
    return lr * scale * d_model ** -0.5 * min(s ** -0.5, s * warmup ** -1.5)


def cosine(t: int, lr: float, eta_min: float, T: int) -> float:  # noqa: N803
    return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * t / T)) / 2


def sgdr(t: int, lr: float, eta_min: float, T_0: int, T_mult: int) -> float:  # noqa: N803
    T_cur, T_i = t, T_0  # noqa: N806
    while T_cur >= T_i:
        T_cur, T_i = T_cur - T_i, T_i * T_mult  # noqa: N806
    return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * T_cur / T_i)) / 2


def cyclical(t: int, base_lr: float, max_lr: float, step_size: int, mode: str,
             gamma: float = 1.0) -> float:
    cycle = math.floor(1 + t / (2 * step_size))
    x = abs(t / step_size - 2 * cycle + 1)
    scale = {"triangular": 1.0, "triangular2": 1 / 2 ** (cycle - 1), "exp_range": gamma ** t}[mode]
    return base_lr + (max_lr - base_lr) * max(0.0, 1 - x) * scale


def warmup_cosine(t: int, lr: float, warmup: int, start_factor: float, eta_min: float,
                  total: int) -> float:
    if t < warmup:
        return lr * (start_factor + (1 - start_factor) * t / warmup)
    return cosine(t - warmup, lr, eta_min, total - warmup)


CASES: list[tuple[str, dict | str, int | None, int, Callable[[int], float]]] = [
    ("constant", "constant", None, 20, lambda t: LR),
    ("transformer", {"name": "transformer", "d_model": 64, "warmup": 10, "scale": 2.0}, None, 40,
     lambda t: transformer(t, LR, 64, 10, 2.0)),
    ("transformer defaults", "transformer", None, 30, lambda t: transformer(t, LR, 512, 4000, 1.0)),
    ("cosine", {"name": "cosine", "eta_min": 0.01}, 20, 21, lambda t: cosine(t, LR, 0.01, 20)),
    ("cosine by name", "cosine", 13, 14, lambda t: cosine(t, LR, 0.0, 13)),
    ("sgdr T_mult=2", {"name": "sgdr", "T_0": 3, "T_mult": 2, "eta_min": 1e-3}, None, 50,
     lambda t: sgdr(t, LR, 1e-3, 3, 2)),
    ("sgdr T_mult=1", {"name": "sgdr", "T_0": 7}, None, 30, lambda t: sgdr(t, LR, 0.0, 7, 1)),
    ("sgdr T_mult=3", {"name": "sgdr", "T_0": 2, "T_mult": 3}, None, 60,
     lambda t: sgdr(t, LR, 0.0, 2, 3)),
    ("sgdr by name is one cycle", "sgdr", 16, 16, lambda t: cosine(t, LR, 0.0, 16)),
    ("cyclical triangular", {"name": "cyclical", "base_lr": 0.01, "max_lr": 0.1,
                             "step_size_up": 4}, None, 40,
     lambda t: cyclical(t, 0.01, 0.1, 4, "triangular")),
    ("cyclical triangular2", {"name": "cyclical", "base_lr": 0.01, "max_lr": 0.1,
                              "step_size_up": 3, "mode": "triangular2"}, None, 40,
     lambda t: cyclical(t, 0.01, 0.1, 3, "triangular2")),
    ("cyclical exp_range", {"name": "cyclical", "base_lr": 0.01, "max_lr": 0.1,
                            "step_size_up": 5, "mode": "exp_range", "gamma": 0.97}, None, 40,
     lambda t: cyclical(t, 0.01, 0.1, 5, "exp_range", 0.97)),
    ("cyclical defaults", "cyclical", 80, 80, lambda t: cyclical(t, LR, 4 * LR, 10, "triangular")),
    ("warmup_cosine", {"name": "warmup_cosine", "warmup": 5, "start_factor": 0.1,
                       "eta_min": 1e-3}, 20, 21,
     lambda t: warmup_cosine(t, LR, 5, 0.1, 1e-3, 20)),
    ("warmup_cosine defaults", "warmup_cosine", 40, 41,
     lambda t: warmup_cosine(t, LR, 2, 0.01, 0.0, 40)),
    ("warmup_cosine without warm-up", {"name": "warmup_cosine", "warmup": 0}, 9, 10,
     lambda t: cosine(t, LR, 0.0, 9)),
    ("step", {"name": "step", "step_size": 4, "gamma": 0.5}, None, 20,
     lambda t: LR * 0.5 ** (t // 4)),
    ("exponential", {"name": "exponential", "gamma": 0.9}, None, 20, lambda t: LR * 0.9 ** t),
]


@pytest.mark.parametrize(("cfg", "total", "steps", "formula"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_schedule_matches_the_closed_form(cfg, total, steps, formula):
    got = lr_sequence(cfg, steps, total)
    want = [formula(t) for t in range(steps)]
    assert got == pytest.approx(want, rel=0, abs=1e-12)


def test_every_schedule_is_covered_and_runs_by_name():
    covered = {case[1] if isinstance(case[1], str) else case[1]["name"] for case in CASES}
    assert covered == set(schedule_names())
    for name in schedule_names():
        assert len(lr_sequence(name, 5, total=10)) == 5


def test_sgdr_restarts_at_the_papers_steps():
    lrs = lr_sequence({"name": "sgdr", "T_0": 3, "T_mult": 2}, 50)
    assert [t for t in range(50) if lrs[t] == LR] == [0, 3, 9, 21, 45]


def _brute_force_cycle_ends(T_0: int, T_mult: int, total: int) -> list[int]:  # noqa: N803
    # Within a cycle the lr strictly falls, so a cycle ends where the next lr
    # does not: it jumps up, or stays at lr after a one-step cycle (T_0 = 1).
    lrs = lr_sequence({"name": "sgdr", "T_0": T_0, "T_mult": T_mult}, total + 1)
    return [t for t in range(1, total + 1) if lrs[t] >= lrs[t - 1]]


@pytest.mark.parametrize(("T_0", "T_mult", "total"), [
    (3, 2, 50), (3, 2, 21), (3, 2, 20), (5, 1, 23), (5, 1, 25), (2, 3, 60), (1, 2, 40),
    (10, 2, 9), (4, 1, 4),
])
def test_sgdr_cycle_ends_against_the_lr_sequence(T_0, T_mult, total):  # noqa: N803
    assert sgdr_cycle_ends(T_0, T_mult, total) == _brute_force_cycle_ends(T_0, T_mult, total)


def test_sgdr_cycle_ends_values():
    assert sgdr_cycle_ends(3, 2, 50) == [3, 9, 21, 45]
    assert sgdr_cycle_ends(10, 1, 35) == [10, 20, 30]
    assert sgdr_cycle_ends(10, 2, 9) == []


def test_cyclical_defaults_to_each_groups_lr():
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.1},
                           {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.02}])
    scheduler = make_scheduler("cyclical", opt, step_size_up=2)
    for _ in range(2):
        opt.step()
        scheduler.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.4, 0.08], abs=1e-12)


def test_integral_floats_are_accepted_as_counts():
    assert lr_sequence({"name": "sgdr", "T_0": 4.0, "T_mult": 2.0}, 12) == pytest.approx(
        [sgdr(t, LR, 0.0, 4, 2) for t in range(12)], rel=0, abs=1e-12)


def test_from_config_none_and_no_mutation():
    assert from_config(None, _sgd(), 10) is None
    cfg = {"name": "sgdr", "T_0": 3}
    from_config(cfg, _sgd(), 10)
    assert cfg == {"name": "sgdr", "T_0": 3}


@pytest.mark.parametrize(("call", "words"), [
    (lambda: make_scheduler("cosin", _sgd(), 10),
     ["'cosin'", "constant", "transformer", "cosine", "sgdr", "cyclical", "warmup_cosine"]),
    (lambda: from_config("nope", _sgd(), 10), ["'nope'", "cosine"]),
    (lambda: from_config({"name": "sgdr", "T0": 10}, _sgd(), 10),
     ["'T0'", "'sgdr'", "T_0", "T_mult", "eta_min"]),
    (lambda: make_scheduler("cosine", _sgd(), 10, warmup=3), ["'warmup'", "eta_min"]),
    (lambda: make_scheduler("constant", _sgd(), 10, gamma=0.5), ["'gamma'", "none"]),
    (lambda: make_scheduler("cosine", _sgd()), ["total_steps", "'cosine'"]),
    (lambda: from_config("warmup_cosine", _sgd(), None), ["total_steps"]),
    (lambda: make_scheduler("sgdr", _sgd()), ["T_0", "total_steps"]),
    (lambda: make_scheduler("sgdr", _sgd(), T_0=2.5), ["T_0", "2.5"]),
    (lambda: make_scheduler("sgdr", _sgd(), T_0=4, T_mult=0), ["T_mult", "0"]),
    (lambda: make_scheduler("cyclical", _sgd(), mode="sine"),
     ["'sine'", "triangular", "triangular2", "exp_range"]),
    (lambda: make_scheduler("cyclical", _sgd(), base_lr=0.1, max_lr=0.05), ["max_lr", "0.05"]),
    (lambda: make_scheduler("warmup_cosine", _sgd(), 10, warmup=10), ["warmup", "10"]),
    (lambda: make_scheduler("transformer", _sgd(), d_model=-1), ["d_model", "-1"]),
    (lambda: make_scheduler("cosine", _sgd(), 0), ["total_steps", "0"]),
    (lambda: from_config({"T_0": 3}, _sgd(), 10), ["'name'", "sgdr"]),
    (lambda: from_config(3, _sgd(), 10), ["int", "3"]),
    (lambda: sgdr_cycle_ends(0, 2, 10), ["T_0", "0"]),
    (lambda: make_scheduler("cosine", _sgd(), 10, eta_min="x"), ["eta_min", "number", "'x'"]),
    (lambda: make_scheduler("sgdr", _sgd(), 10, eta_min=math.nan), ["eta_min", "finite"]),
    (lambda: make_scheduler("cyclical", _sgd(), 10, mode=3), ["mode", "text", "3"]),
    (lambda: make_scheduler("cyclical", _sgd(), 10, cycle_momentum=1), ["cycle_momentum"]),
    (lambda: make_scheduler("step", _sgd(), 10, gamma=True), ["gamma", "True"]),
    (lambda: check("sgdr:T_0=5,T_x=2"), ["'T_x'", "'sgdr'", "T_mult"]),
    (lambda: check("sgdr:T_0"), ["'T_0'", "key=value"]),
    (lambda: check("sgdr:T_0=five"), ["T_0", "'five'"]),
    (lambda: check("cyclical:max_lr=0.01", lr=0.1), ["max_lr", "0.01"]),
    (lambda: check("warmup_cosine:warmup=50", total_steps=40), ["warmup", "50"]),
])
def test_errors_name_the_bad_value(call, words):
    with pytest.raises(ValueError) as err:
        call()
    for word in words:
        assert word in str(err.value)


def test_the_command_line_form_of_a_schedule():
    assert parse_spec("cosine") == {"name": "cosine"}
    assert parse_spec("sgdr:T_0=50,T_mult=2") == {"name": "sgdr", "T_0": 50, "T_mult": 2}
    assert parse_spec("cyclical:mode=exp_range,gamma=0.99,cycle_momentum=false,") == {
        "name": "cyclical", "mode": "exp_range", "gamma": 0.99, "cycle_momentum": False}
    assert check("sgdr:T_0=50,T_mult=2") == {"name": "sgdr", "T_0": 50, "T_mult": 2}
    assert check({"name": "cosine"}) == {"name": "cosine"} and check(None) is None
    assert check("cyclical:max_lr=0.01") == {"name": "cyclical", "max_lr": 0.01}  # rate unknown
    assert lr_sequence(check("sgdr:T_0=4,T_mult=2"), 12) == lr_sequence(
        {"name": "sgdr", "T_0": 4, "T_mult": 2}, 12)
