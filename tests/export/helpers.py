"""What the export tests share: loading a written module from its file, the rules they run,
and the agreement check.

Agreement.  Two values agree when neither is finite (nan, +inf and -inf all mean the
element diverged, in both), or both are and ``|a - e| <= TOLERANCE * max(|e|, scale)``:
for a parameter, scale is the largest magnitude the reference element has had so far
(its initial value included), since a step's rounding is that of the values added into
it and a parameter crossing zero keeps the error of its larger past; for a buffer, the
largest magnitude in its tensor.  TOLERANCE is 1e-10.  What the exports compute differs
from nos.Optimizer only in rounding: nos's compiler folds the update into the step
(``addcdiv``), fuses ``a * x + b * y`` and applies the parts of a sum as separate steps,
and the optax export computes with XLA's maths.  Measured over the named rules, the
semantics rules and the 200 random rules (100 steps, float64), the largest scaled error is
4.1e-12 for the torch export (``exp(log(abs(cd(0.5))) / (drop(0.1 * w, 0.5) + 1e-8)) -
-2``: an exponent of 1e8 times a rounding) and 8e-15 for the optax export (the named
rules and the 100 random rules that draw nothing, 50 steps).  With the named rules of
torch.optim's keywords and the rules of CONSTRUCTS (special values): 1.2e-14 (torch) and
1.5e-14 (optax: muon, its float64 matrix products summed in XLA's order).  The plain
relative error ``|a - e| / |e|`` is as small except where a parameter cancels to almost
zero: there it reaches 16 (an element of 1e-17 whose past was of order 1), which is why
the scale is the element's past.
"""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

import nos
from nos.lang.tree import Bounds
from nos.search.space import Space, SpaceConfig

TOLERANCE = 1e-10
_WRITTEN = itertools.count()
SPACES = (Space(), Space(SpaceConfig(units=2, decay_operands=True, annealed_noise=True)))
TENSOR_SPACES = (Space(SpaceConfig(units=2, tensor_ops=True)),)  # norms, masks, rows, ...

# Rules of the constructs beyond the search space's, run by both exports' tests on
# gradients with special values (at their defaults and at other_values: the switches both
# ways).  Each line's comment says what it pins down.
CONSTRUCTS = [
    # comparisons: 1 or 0 (false for nan, but nan != x), of tensors and of numbers
    "(g < 0) + (g <= w) * 2 + (g > 1) * 3 + (0 >= g) + (g == 0) + (g != g) * 5 + (w != 0.5)"
    " + g * ((t < 3) + (t >= 20) * 2 + (0 / 0 != 0 / 0) + (T > t))",
    "g * (g > 0) + 0.1 * w",  # -inf times a false comparison is nan (XLA makes it 0 of a cast)
    # where: nan is nonzero; conditions of tensors and of the step (not switches)
    "where(g, 1, 2) + where(g > 0, g, w) + where(g - g, 3, g) + where(g > 0, 1, -1) * t"
    " + where(t > 5, g, 0) + where(t == 1, m, g) + where(t > 3, 1, 2) * g",
    # lerp: torch.lerp's two formulas, a number broadcast, weights of nan and inf
    "lerp(m, g, 0.3) + lerp(g, w, 0.7) + lerp(g, 1, g) + lerp(2, g, 0.5)"
    " + lerp(1, 2, t / 100) * g + lerp(w, m, g) + lerp(g, w, where(g > 0, 0.2, 0.8))",
    # reductions: one number per tensor; a number reduced is a full tensor of it
    "g / (norm(g) + 1e-8) + mean(g) + sum(g) * 1e-3 + rms(w) * amax(abs(g)) + sum(3) * g"
    " + mean(t)",
    "state s = 0.9 * s + 0.1 * mean(g^2)\nupdate = g / (sqrt(s) + 1e-8) + amax(w)",
    # rows and columns of the 2-D view (a vector is a column), buffers of rows, columns
    "state r = 0.9 * r + 0.1 * rowmean(g^2)\nstate c = 0.9 * c + 0.1 * colmean(g^2)\n"
    "update = g / sqrt(r * c / mean(r) + 1e-16) + rowmean(colmean(g)) + colmean(w) - rowmean(3)",
    # lr (each group's) and the tensor's facts
    "lr * g + ndim * 0.1 + rows * cols / numel + machine_eps * 1e10 * g",
    # switches: params and facts decide a where before the step; a buffer kept where needed
    "param flag = 0 in [0, 1]\nparam k = 2\nstate s = where(flag, s + g, 0)\n"
    "update = where(flag, s, g) + where(k > 1, w, 0)",
    "param a = 0 in [0, 1]\nparam b = 0 in [0, 1]\nstate s = 0.9 * s + g\n"
    "update = where(a, s, where(b, s, g))",  # s kept where a or b
    "state c = where(ndim >= 2, 0.9 * c + colmean(g), 0)\nupdate = where(ndim >= 2, c, g)",
    "param a = 0.5 in [0, 1]\nstate s = where(exp(a) > 1.5, s + g, 0)\n"
    "update = where(exp(a) > 1.5, s, sign(g))",  # a condition of more than arithmetic
    # a switch that leaves a number where the rule's kinds say tensor
    "param flag = 0 in [0, 1]\nstate s = where(flag, rowmean(g), 0)\nlet x = where(flag, g, 2)\n"
    "update = g + s + exp(x) * g + sqrt(abs(x) / x) + x / x",
    "param flag = 1 in [0, 1]\nstate s = where(flag, g, m)\nupdate = s + g",  # s copies g
    # buffers that are numbers (a state of no tensor), read by a where of the step
    "state n = n + 1\nstate q = where(n > 3, q * 0.5, lr)\nupdate = n * g * q",
    # newton_schulz (2-D parameters) in float64 and the parameter's dtype
    "param k = 2 in [0, 10]\nupdate = newton_schulz(g, 2, -1.5, 0.5, max(k, 1), 1e-7, 64)"
    " + newton_schulz(w + m, 3, -3.2, 1.2, 2, 1e-7, 0)",
]


# Rules of the later constructs, run by both exports' tests on gradients with special
# values (a nan anywhere reaches every tensor through a reduction over all of them).
LATER = [
    # reductions over every parameter (all groups), of a number, of a row mean, nested
    "g / (gnorm(g) + 1e-8) + gsum(w) * 1e-3 + gmean(g) + grms(rowmean(g)) + gamax(abs(g))"
    " + gsum(2) * 1e-3",
    "state m = lerp(m, g, 0.1)\nupdate = m / (gnorm(m) + 1e-3) + g / gnorm(g / (gnorm(g) + 1))",
    # the shorthand: written out before export
    "clip_gnorm(g, 0.5) + dot(g, w) * 1e-3 + cosine(g, w)",
    "winmax(norm(g), 3) * g + winmin(norm(g), 2)",
    # a where on a param in a rule of global reductions: no switch (one program for all)
    "param p = 0 in [0, 1]\nstate s = where(p, s + g, g)\n"
    "update = clip_gnorm(s, 1) + where(ndim >= 2, gamax(g), gmean(w))",
    # w = expr: the parameter's new value, no lr applied
    "w = w - lr * g",
    "w = mean(w) + lr * sign(g)",
    # from values: the parameter (its shape, even for a number's statement), numbers,
    # params, facts, reductions on the 2-D view (colmean of a vector is its mean)
    "state z = z - lr * g from w\nw = lerp(w, z, 0.5)",
    "param k = 2\nstate c = c * 0.9 from 1\nstate d = d + lr from colmean(w)\n"
    "state s = 0.9 * s + g from w * k + numel\nupdate = c * g + d + rowmean(g) + s",
    "param flag = 1 in [0, 1]\nstate s = where(flag, s + g, 0) from w\n"
    "update = where(flag, s, g)",  # a switch, and a buffer only one branch keeps
    # a reduction of a value stored reduced counts every element (it reduced the stored)
    "g + sum(rowmean(g)) + norm(colmean(w))",
]


def load_module(source: str, folder: Path, stem: str) -> ModuleType:
    """Write the source to a new file folder/stem_N.py and import it from that path, on its
    own (a new name each time: a rewritten file could meet its old cached bytecode)."""
    path = folder / f"{stem}_{next(_WRITTEN)}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"exported_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def space_rules(count: int, seed: int = 2017, spaces: tuple[Space, ...] = SPACES) -> list[str]:
    """Distinct random rules of the search space, as canonical text: alternately from the
    default space (the paper's, one unit) and a two-unit space with the decay operands
    and annealed noise switched on (or from ``spaces`` in turn: TENSOR_SPACES, the space
    with the tensor-level constructs)."""
    rng = np.random.default_rng(seed)
    rules: list[str] = []
    while len(rules) < count:
        space = spaces[len(rules) % len(spaces)]
        text = str(nos.parse(space.to_text(space.sample(rng))))
        if text not in rules:
            rules.append(text)
    return rules


SPECIAL = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-300, -1e300, 5.0, -3.0, 0.5])


def gradient(rng: np.random.Generator, shape: tuple, scale: float = 1.0,
             special: bool = False) -> np.ndarray:
    """N(0, scale^2) samples; with ``special``, a tenth of them a special value (zeros,
    infinities, nan, extremes)."""
    g = rng.standard_normal(shape) * scale
    if special:
        mask = rng.random(shape) < 0.1
        g = np.where(mask, rng.choice(SPECIAL, size=shape), g)
    return np.asarray(g, dtype=np.float64)


def alternative(default: float, bounds: Bounds | None) -> float | None:
    """A valid value of a param other than its default; None for a param whose bounds
    admit its default alone (a reference keyword a named rule refuses: ``in [0, 0]``)."""
    if bounds is not None and bounds.lo == bounds.hi == default:
        return None
    for value in (default * 0.5, default * 2, 0.5, 0.1, 2.0):
        if value != default and (bounds is None or value in bounds):
            return value
    raise AssertionError(f"no alternative to {default} in {bounds}")


def other_values(rule: nos.Rule) -> dict[str, float]:
    """Each param of the rule (its prelude's included) at a valid value that is not its
    default, as far as nos.Optimizer takes them together (torch's checks across keywords:
    SGD's nesterov needs momentum and no dampening): the last params are left at their
    defaults until it does."""
    params = [s for s in rule.expanded().statements if s.kind == "param"]
    values = {s.name: value for s in params
              if (value := alternative(s.default, s.bounds)) is not None}  # type: ignore[arg-type]
    w = torch.zeros(2, 2, dtype=torch.float64, requires_grad=True)
    while values:
        try:
            nos.Optimizer([{"params": [w], **values}], rule, total_steps=10)
            break
        except ValueError:
            values.pop(list(values)[-1])
    return values


def check_agree(actual: np.ndarray, expected: np.ndarray, scale: np.ndarray | float,
                what: str, tolerance: float | None = None) -> float:
    """Asserts agreement (module docstring; ``tolerance`` instead of TOLERANCE where the
    caller says why); returns the largest scaled error."""
    tolerance = TOLERANCE if tolerance is None else tolerance
    finite = np.isfinite(expected)
    mismatch = np.isfinite(actual) != finite
    assert not mismatch.any(), (f"{what}: finite in one and not the other at "
                                f"{np.argwhere(mismatch)[:3].tolist()}: {actual[mismatch][:3]} "
                                f"against {expected[mismatch][:3]}")
    if not finite.any():
        return 0.0
    denominator = np.maximum(np.maximum(np.abs(expected), scale), np.finfo(np.float64).tiny)
    with np.errstate(invalid="ignore"):  # inf - inf where neither is finite
        error = (np.abs(actual - expected) / denominator)[finite]
    worst = float(error.max())
    assert worst <= tolerance, f"{what}: scaled error {worst:.3g} > {tolerance:g}"
    return worst
