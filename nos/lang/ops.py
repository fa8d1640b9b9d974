"""The meaning of every operation, in one table that every backend reads.

Each row gives an operation's arity, its documentation, its LaTeX form, and
three implementations with the same semantics:

- ``scalar``: on Python floats, for subexpressions that depend only on
  numbers, params and the step (folded once per step, not per element);
- ``tensor``: the per-tensor reference, on a tensor (and maybe a float);
- ``foreach``: the multi-tensor path, on lists of tensors (and maybe floats),
  one ``torch._foreach_*`` call per operation over all tensors of a group.

``tensor`` and ``foreach`` compute bit-identical results: where IEEE maths
offers two roundings (``s / x`` against ``s * (1 / x)``) both use the same.
Adding an operation is adding a row.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


def _np(fn: Callable, *args: float) -> float:
    with np.errstate(all="ignore"):
        return float(fn(*(np.float64(a) for a in args)))


# --- scalars: IEEE semantics (inf and nan, never an exception) ---------------


def _s_div(a: float, b: float) -> float:
    try:
        return a / b
    except ZeroDivisionError:
        return _np(np.divide, a, b)


def _s_pow(a: float, b: float) -> float:
    try:
        r = a**b
    except (OverflowError, ZeroDivisionError):
        return _np(np.power, a, b)
    return math.nan if isinstance(r, complex) else float(r)


def _s_max(a: float, b: float) -> float:
    return math.nan if a != a or b != b else max(a, b)


def _s_min(a: float, b: float) -> float:
    return math.nan if a != a or b != b else min(a, b)


def _s_sign(a: float) -> float:
    return a if a != a or a == 0 else math.copysign(1.0, a)


def _s_clip(x: float, c: float) -> float:
    return _s_min(_s_max(x, -c), c)


# --- tensors: the per-tensor reference ---------------------------------------


def _t_sub(a, b):
    if isinstance(a, torch.Tensor):
        return torch.sub(a, b)
    return torch.add(torch.neg(b), a)


def _t_div(a, b):
    if isinstance(a, torch.Tensor):
        return torch.div(a, b)
    return torch.mul(torch.reciprocal(b), a)


def _t_commutative(fn):
    def apply(a, b):
        return fn(a, b) if isinstance(a, torch.Tensor) else fn(b, a)

    return apply


def _t_maximum(a, b):
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.maximum(a, b)
    return torch.clamp_min(*((a, b) if isinstance(a, torch.Tensor) else (b, a)))


def _t_minimum(a, b):
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.minimum(a, b)
    return torch.clamp_max(*((a, b) if isinstance(a, torch.Tensor) else (b, a)))


def _t_sign(x):
    # torch.sign(nan) is 0: max(sign(x), min(x, -1)) is sign(x), or nan where x is nan
    return torch.maximum(torch.sign(x), torch.clamp_max(x, -1.0))


def square_root_exponent(exponent) -> bool:
    """torch computes x^0.5 and x^-0.5 as sqrt(x) and rsqrt(x), which differ from pow
    at -0 and -inf (rsqrt(-0) is -inf, pow(-0, -0.5) is inf; sqrt(-inf) is nan, pow(-inf,
    0.5) is inf); an exponent given as a tensor takes torch's true pow."""
    return isinstance(exponent, float) and abs(exponent) == 0.5


def exponent_tensor(x: torch.Tensor, exponent: float) -> torch.Tensor:
    return torch.full((), exponent, dtype=x.dtype, device=x.device)


def _t_pow(a, b):
    if isinstance(a, torch.Tensor) and square_root_exponent(b):
        b = exponent_tensor(a, b)
    return torch.pow(a, b)


def _t_clip(x, c):
    return _t_minimum(_t_maximum(_neg(c), x), c)


def _neg(c):
    return torch.neg(c) if isinstance(c, torch.Tensor) else -c


# --- lists: the multi-tensor path --------------------------------------------


def _f_sub(a, b):
    if isinstance(a, (list, tuple)):
        return torch._foreach_sub(a, b)
    return torch._foreach_add(torch._foreach_neg(b), a)


def _f_div(a, b):
    if isinstance(a, (list, tuple)):
        return torch._foreach_div(a, b)
    return torch._foreach_mul(torch._foreach_reciprocal(b), a)


def _f_commutative(fn):
    def apply(a, b):
        return fn(a, b) if isinstance(a, (list, tuple)) else fn(b, a)

    return apply


def _f_pow(a, b):
    if square_root_exponent(b):
        return [_t_pow(x, b) for x in a]
    return torch._foreach_pow(a, b)


def _f_maximum(a, b):
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return torch._foreach_maximum(a, b)
    return torch._foreach_clamp_min(*((a, b) if isinstance(a, (list, tuple)) else (b, a)))


def _f_minimum(a, b):
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return torch._foreach_minimum(a, b)
    return torch._foreach_clamp_max(*((a, b) if isinstance(a, (list, tuple)) else (b, a)))


def _f_neg(c):
    return torch._foreach_neg(c) if isinstance(c, (list, tuple)) else -c


def _f_sign(x):
    out = torch._foreach_sign(x)
    torch._foreach_maximum_(out, torch._foreach_clamp_max(x, -1.0))
    return out


def _f_clip(x, c):
    return _f_minimum(_f_maximum(_f_neg(c), x), c)


# --- the schedule primitives (scalars of the step) ----------------------------


def step_fraction(t: float, total: float) -> float:
    """s = t - 1 (0 at the first step), clamped to T."""
    return min(max(t - 1.0, 0.0), total)


def linear_decay(t: float, total: float) -> float:
    s = step_fraction(t, total)
    return max(0.0, (total - s) / total)


def cosine_decay(n: float, t: float, total: float) -> float:
    s = step_fraction(t, total)
    return 0.5 * (1.0 + math.cos(2.0 * math.pi * n * s / total))


def restart_decay(n: float, t: float, total: float) -> float:
    s = step_fraction(t, total)
    return 0.5 * (1.0 + math.cos(math.pi * ((n * s) % total) / total))  # mod: floored


@dataclass(frozen=True)
class Op:
    name: str
    arity: int
    signature: str
    doc: str
    latex: Callable[..., str]
    scalar: Callable[..., float] | None  # None: always a tensor (random ops)
    tensor: Callable | None = None
    foreach: Callable | None = None
    constant_args: tuple[int, ...] = ()  # argument positions that must not depend on tensors
    schedule: bool = False  # scalar(*args, t, T): reads the step and the total
    random: bool = False  # draws from the optimizer's generator


def _fn(name: str) -> Callable[..., str]:
    return lambda *a: rf"\operatorname{{{name}}}\left({', '.join(a)}\right)"


OPS: dict[str, Op] = {
    op.name: op
    for op in [
        # operators
        Op("add", 2, "x + y", "sum", lambda a, b: f"{a} + {b}", lambda a, b: a + b,
           _t_commutative(torch.add), _f_commutative(torch._foreach_add)),
        Op("sub", 2, "x - y", "difference", lambda a, b: f"{a} - {b}", lambda a, b: a - b,
           _t_sub, _f_sub),
        Op("mul", 2, "x * y", "product", lambda a, b: rf"{a} \cdot {b}", lambda a, b: a * b,
           _t_commutative(torch.mul), _f_commutative(torch._foreach_mul)),
        Op("div", 2, "x / y", "quotient", lambda a, b: rf"\frac{{{a}}}{{{b}}}", _s_div,
           _t_div, _f_div),
        Op("pow", 2, "x ^ y", "power", lambda a, b: f"{{{a}}}^{{{b}}}", _s_pow,
           _t_pow, _f_pow),
        Op("neg", 1, "-x", "negation", lambda a: f"-{a}", lambda a: -a,
           torch.neg, torch._foreach_neg),
        # functions
        Op("exp", 1, "exp(x)", "exponential", lambda a: f"e^{{{a}}}",
           lambda a: _np(np.exp, a), torch.exp, torch._foreach_exp),
        Op("log", 1, "log(x)", "natural logarithm", lambda a: rf"\log\left({a}\right)",
           lambda a: _np(np.log, a), torch.log, torch._foreach_log),
        Op("sqrt", 1, "sqrt(x)", "square root", lambda a: rf"\sqrt{{{a}}}",
           lambda a: _np(np.sqrt, a), torch.sqrt, torch._foreach_sqrt),
        Op("abs", 1, "abs(x)", "absolute value", lambda a: rf"\left|{a}\right|",
           abs, torch.abs, torch._foreach_abs),
        Op("sign", 1, "sign(x)", "sign: -1, 0 or 1 (nan for nan)", _fn("sign"),
           _s_sign, _t_sign, _f_sign),
        Op("clip", 2, "clip(x, c)", "clamp x to [-c, c]", _fn("clip"),
           _s_clip, _t_clip, _f_clip),
        Op("max", 2, "max(x, y)", "element-wise maximum", _fn("max"),
           _s_max, _t_maximum, _f_maximum),
        Op("min", 2, "min(x, y)", "element-wise minimum", _fn("min"),
           _s_min, _t_minimum, _f_minimum),
        Op("drop", 2, "drop(x, p)",
           "dropout: zero each element with probability p, scale the rest by 1/(1-p)",
           _fn("drop"), None, constant_args=(1,), random=True),
        Op("cd", 1, "cd(n)", "cyclical decay 0.5 * (1 + cos(2 pi n s / T)), s = t - 1",
           lambda n: rf"\mathrm{{cd}}_{{{n}}}", cosine_decay, constant_args=(0,),
           schedule=True),
        Op("rd", 1, "rd(n)",
           "restart decay 0.5 * (1 + cos(pi ((n s) mod T) / T)), s = t - 1, mod in [0, T)",
           lambda n: rf"\mathrm{{rd}}_{{{n}}}", restart_decay, constant_args=(0,),
           schedule=True),
    ]
}

OPERATORS = frozenset({"add", "sub", "mul", "div", "pow", "neg"})
FUNCTIONS = {name: op for name, op in OPS.items() if name not in OPERATORS}
