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

Most operations are element-wise.  A *reduction* (``reduce``) reads a whole
parameter tensor: ``"all"`` gives one number per tensor (``norm``, ``mean``, ...),
``"row"`` and ``"col"`` average over the last or the second-to-last dimension,
keeping it (a tensor of fewer than two dimensions is seen as a column, (n, 1)).
A *matrix* function reads the parameter's 2-D view (``newton_schulz``).  Their
results broadcast back against the parameter's shape.

A *global* reduction (``reduce="global"``: ``gsum``, ``gnorm``, ...) reads every
parameter the optimizer steps, in every group: its ``tensor``/``foreach`` forms give
one partial value per tensor, and :func:`combine` joins the partials of all tensors.
A few functions are shorthand (``desugar``): ``dot``, ``cosine``, ``clip_gnorm``,
``winmax`` and ``winmin`` are written out in the core operations before compiling
(:mod:`nos.lang.desugar`).
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


def _s_where(c: float, a: float, b: float) -> float:
    return a if c != 0 else b  # a nan condition is nonzero, as torch.where(c != 0, ...)


def _s_lerp(a: float, b: float, w: float) -> float:
    """torch.lerp's formula: a + w (b - a) for |w| < 0.5, else b - (b - a) (1 - w)."""
    return a + w * (b - a) if abs(w) < 0.5 else b - (b - a) * (1.0 - w)


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


_COMPARE = {"lt": (torch.lt, torch.gt), "le": (torch.le, torch.ge), "gt": (torch.gt, torch.lt),
            "ge": (torch.ge, torch.le), "eq": (torch.eq, torch.eq), "ne": (torch.ne, torch.ne)}


def _t_compare(name: str):
    """1 where the comparison holds, else 0, in the tensor's dtype (a scalar may come first)."""
    fn, flipped = _COMPARE[name]

    def apply(a, b):
        if isinstance(a, torch.Tensor):
            out = fn(a, b)
            like = a if not isinstance(b, torch.Tensor) else torch.promote_types(a.dtype, b.dtype)
        else:
            out, like = flipped(b, a), b
        return out.to(like if isinstance(like, torch.dtype) else like.dtype)

    return apply


def _t_where(c, a, b):
    """a where c is nonzero (nan included), else b; always a new tensor, never an operand."""
    cond = c != 0 if isinstance(c, torch.Tensor) else torch.tensor(c != 0)
    like = a if isinstance(a, torch.Tensor) else b
    if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
        return torch.where(cond, torch.tensor(a, dtype=c.dtype), torch.tensor(b, dtype=c.dtype))
    out = torch.where(cond, a, b)
    return out if out.dtype == like.dtype else out.to(like.dtype)


def _t_lerp(a, b, w):
    if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
        a = torch.full_like(w, a)  # only the weight is a tensor
    if not isinstance(a, torch.Tensor):
        a = torch.full_like(b, a)
    elif not isinstance(b, torch.Tensor):
        b = torch.full_like(a, b)
    elif a.shape != b.shape:
        a, b = torch.broadcast_tensors(a, b)
    return torch.lerp(a, b, w)


def _t_rms(x):
    """The root mean square of the tensor's elements, norm(x) / sqrt(numel)."""
    return torch.linalg.vector_norm(x) / math.sqrt(max(x.numel(), 1))


def _t_rowmean(x):
    """The mean over the last dimension, kept as 1."""
    return x.mean(dim=-1, keepdim=True) if x.dim() >= 2 else x.clone()


def _t_colmean(x):
    """The mean over the second-to-last dimension, kept as 1."""
    return x.mean(dim=-2, keepdim=True) if x.dim() >= 2 else x.clone()


def newton_schulz(x, a, b, c, steps, eps, bits):
    """torch.optim.Muon's orthogonalisation of the 2-D x, computed in the dtype ``bits``
    names (16: bfloat16, 32: float32, 64: float64, 0: x's own): x / max(norm(x), eps),
    then ``steps`` of X <- a X + (b A + c A A) X, A = X X^T (on the transpose of a tall
    x); the result in x's dtype."""
    if x.dim() != 2:
        raise ValueError(f"newton_schulz needs a 2-D tensor, got shape {tuple(x.shape)}")
    if steps != int(steps) or not 0 <= steps < 100:
        raise ValueError(f"newton_schulz steps must be a whole number in [0, 100), got {steps}")
    dtypes = {0: x.dtype, 16: torch.bfloat16, 32: torch.float32, 64: torch.float64}
    if bits not in dtypes:
        raise ValueError(f"newton_schulz bits must be 0, 16, 32 or 64, got {bits:g}")
    o = x.to(dtypes[bits], copy=True)
    tall = x.size(0) > x.size(1)
    if tall:
        o = o.T
    o.div_(o.norm().clamp(min=eps))
    for _ in range(int(steps)):
        gram = o @ o.T
        gram_update = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        o = torch.addmm(o, gram_update, o, beta=a)
    if tall:
        o = o.T
    return o.to(x.dtype)


def combine(name: str, partials: list[torch.Tensor], count: int) -> torch.Tensor:
    """A global reduction's value from the partial values of every tensor (``count``
    elements in all), in float64 on the first partial's device: sums add, norms join as
    the norm of the norms (as ``torch.nn.utils.clip_grad_norm_``), maxima take the max."""
    device = partials[0].device
    stacked = torch.stack([p.to(device=device, dtype=torch.float64).reshape(())
                           for p in partials])
    if name in ("gsum", "gmean"):
        total = stacked.sum()
        return total / max(count, 1) if name == "gmean" else total
    if name in ("gnorm", "grms"):
        norm = torch.linalg.vector_norm(stacked)
        return norm / math.sqrt(max(count, 1)) if name == "grms" else norm
    return stacked.amax()


def _per_tensor(fn):
    """The multi-tensor form of an operation that has no torch._foreach_ form."""

    def apply(*args):
        lists = [a for a in args if isinstance(a, (list, tuple))]
        n = len(lists[0])
        return [fn(*(a[i] if isinstance(a, (list, tuple)) else a for a in args))
                for i in range(n)]

    return apply


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
    reduce: str = ""  # "all": one number per tensor; "row", "col": over one dimension;
    # "global": one number for all the parameters (tensor/foreach give partials, see combine)
    matrix: bool = False  # reads the parameter's 2-D view
    desugar: bool = False  # shorthand, written out by nos.lang.desugar before compiling

    @property
    def elementwise(self) -> bool:
        return not self.reduce and not self.matrix and not self.desugar


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
        Op("where", 3, "where(c, a, b)", "a where c is nonzero (nan included), else b",
           _fn("where"), _s_where, _t_where, _per_tensor(_t_where)),
        Op("lerp", 3, "lerp(a, b, w)", "a + w (b - a), as torch.lerp (b - (b - a) (1 - w) "
           "for |w| >= 0.5)", _fn("lerp"), _s_lerp, _t_lerp, _per_tensor(_t_lerp)),
        Op("sum", 1, "sum(x)", "the sum of the tensor's elements", lambda a: rf"\sum {a}",
           None, torch.sum, _per_tensor(torch.sum), reduce="all"),
        Op("mean", 1, "mean(x)", "the mean of the tensor's elements",
           lambda a: rf"\overline{{{a}}}", None, torch.mean, _per_tensor(torch.mean),
           reduce="all"),
        Op("norm", 1, "norm(x)", "the tensor's 2-norm, sqrt(sum(x^2))",
           lambda a: rf"\left\|{a}\right\|", None, torch.linalg.vector_norm,
           torch._foreach_norm, reduce="all"),
        Op("rms", 1, "rms(x)", "root mean square, norm(x) / sqrt(numel)",
           lambda a: rf"\mathrm{{rms}}\left({a}\right)", None, _t_rms, _per_tensor(_t_rms),
           reduce="all"),
        Op("amax", 1, "amax(x)", "the tensor's largest element (nan if any is nan)",
           _fn("amax"), None, torch.amax, _per_tensor(torch.amax), reduce="all"),
        Op("rowmean", 1, "rowmean(x)",
           "mean over the last dimension, kept as 1 (a 1-D tensor is a column: x itself)",
           lambda a: rf"\overline{{{a}}}^{{\,\mathrm{{row}}}}", None, _t_rowmean,
           _per_tensor(_t_rowmean), reduce="row"),
        Op("colmean", 1, "colmean(x)",
           "mean over the second-to-last dimension, kept as 1 (a 1-D tensor: its mean)",
           lambda a: rf"\overline{{{a}}}^{{\,\mathrm{{col}}}}", None, _t_colmean,
           _per_tensor(_t_colmean), reduce="col"),
        Op("newton_schulz", 7, "newton_schulz(x, a, b, c, steps, eps, bits)",
           "Muon's orthogonalisation of the 2-D x: x / max(norm(x), eps), then steps of "
           "X <- a X + (b A + c A^2) X, A = X X^T, computed in bits (16: bfloat16, 32, 64, "
           "0: the parameter's dtype)",
           lambda *a: rf"\operatorname{{NS}}_{{{a[4]}}}\left({a[0]}\right)", None,
           newton_schulz, _per_tensor(newton_schulz), constant_args=(1, 2, 3, 4, 5, 6),
           matrix=True),
        # reductions over every parameter the optimizer steps (all groups)
        Op("gsum", 1, "gsum(x)", "the sum of x over every parameter the optimizer steps",
           lambda a: rf"\sum_{{\mathcal{{W}}}} {a}", None, torch.sum, _per_tensor(torch.sum),
           reduce="global"),
        Op("gmean", 1, "gmean(x)", "the mean of x over every parameter the optimizer steps",
           lambda a: rf"\overline{{{a}}}^{{\,\mathcal{{W}}}}", None, torch.sum,
           _per_tensor(torch.sum), reduce="global"),
        Op("gnorm", 1, "gnorm(x)", "the global 2-norm of x over every parameter the "
           "optimizer steps (the norm of the tensors' norms)",
           lambda a: rf"\left\|{a}\right\|_{{\mathcal{{W}}}}", None, torch.linalg.vector_norm,
           torch._foreach_norm, reduce="global"),
        Op("grms", 1, "grms(x)", "gnorm(x) / sqrt(the number of elements of all parameters)",
           lambda a: rf"\mathrm{{rms}}_{{\mathcal{{W}}}}\left({a}\right)", None,
           torch.linalg.vector_norm, torch._foreach_norm, reduce="global"),
        Op("gamax", 1, "gamax(x)", "the largest element of x over every parameter the "
           "optimizer steps", lambda a: rf"\max_{{\mathcal{{W}}}} {a}", None, torch.amax,
           _per_tensor(torch.amax), reduce="global"),
        # shorthand (nos.lang.desugar)
        Op("dot", 2, "dot(a, b)", "the tensor's dot product, sum(a * b)",
           lambda a, b: rf"\langle {a}, {b} \rangle", None, desugar=True),
        Op("cosine", 2, "cosine(a, b)", "cosine similarity per tensor, dot(a, b) / "
           "(max(norm(a), 1e-8) max(norm(b), 1e-8)), as torch's cosine_similarity",
           _fn("cos"), None, desugar=True),
        Op("clip_gnorm", 2, "clip_gnorm(x, c)", "x scaled to a global norm of at most c: "
           "x min(1, c / (gnorm(x) + 1e-6)), as torch.nn.utils.clip_grad_norm_",
           _fn(r"clip_{\mathcal{W}}"), None, constant_args=(1,), desugar=True),
        Op("winmax", 2, "winmax(x, n)", "the largest of the last n values of x (a number per "
           "tensor): a window of n kept numbers", lambda a, n: rf"\max_{{{n}}}\left({a}\right)",
           None, constant_args=(1,), desugar=True),
        Op("winmin", 2, "winmin(x, n)", "the smallest of the last n values of x (shares its "
           "window with winmax(x, n))", lambda a, n: rf"\min_{{{n}}}\left({a}\right)", None,
           constant_args=(1,), desugar=True),
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

_COMPARISON_ROWS = [  # name, text, LaTeX, scalar meaning
    ("lt", "<", "<", lambda a, b: a < b), ("le", "<=", r"\le", lambda a, b: a <= b),
    ("gt", ">", ">", lambda a, b: a > b), ("ge", ">=", r"\ge", lambda a, b: a >= b),
    ("eq", "==", "=", lambda a, b: a == b), ("ne", "!=", r"\ne", lambda a, b: a != b),
]
for _name, _text, _symbol, _holds in _COMPARISON_ROWS:
    OPS[_name] = Op(_name, 2, f"x {_text} y",
                    "comparison: 1 where it holds, else 0 (false for nan, but nan != x)",
                    (lambda sym: lambda a, b: f"{a} {sym} {b}")(_symbol),
                    (lambda f: lambda a, b: float(f(a, b)))(_holds), _t_compare(_name),
                    _per_tensor(_t_compare(_name)))

COMPARISONS = frozenset({"lt", "le", "gt", "ge", "eq", "ne"})
OPERATORS = frozenset({"add", "sub", "mul", "div", "pow", "neg"}) | COMPARISONS
FUNCTIONS = {name: op for name, op in OPS.items() if name not in OPERATORS}
