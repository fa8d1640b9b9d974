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
rules and the 100 random rules that draw nothing, 50 steps).  The plain relative error
``|a - e| / |e|`` is as small except where a parameter cancels to almost zero: there it
reaches 16 (an element of 1e-17 whose past was of order 1), which is why the scale is
the element's past.
"""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path
from types import ModuleType

import numpy as np

import nos
from nos.lang.tree import Bounds
from nos.search.space import Space, SpaceConfig

TOLERANCE = 1e-10
_WRITTEN = itertools.count()
SPACES = (Space(), Space(SpaceConfig(units=2, decay_operands=True, annealed_noise=True)))


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


def space_rules(count: int, seed: int = 2017) -> list[str]:
    """Distinct random rules of the search space, as canonical text: alternately from the
    default space (the paper's, one unit) and a two-unit space with the decay operands
    and annealed noise switched on."""
    rng = np.random.default_rng(seed)
    rules: list[str] = []
    while len(rules) < count:
        space = SPACES[len(rules) % 2]
        text = str(nos.parse(space.to_text(space.sample(rng))))
        if text not in rules:
            rules.append(text)
    return rules


def alternative(default: float, bounds: Bounds | None) -> float:
    """A valid value of a param other than its default."""
    for value in (default * 0.5, default * 2, 0.5, 0.1, 2.0):
        if value != default and (bounds is None or value in bounds):
            return value
    raise AssertionError(f"no alternative to {default} in {bounds}")


def other_values(rule: nos.Rule) -> dict[str, float]:
    """Each param of the rule (its prelude's included) at a valid value that is not its
    default."""
    return {s.name: alternative(s.default, s.bounds)  # type: ignore[arg-type]
            for s in rule.expanded().statements if s.kind == "param"}


def check_agree(actual: np.ndarray, expected: np.ndarray, scale: np.ndarray | float,
                what: str) -> float:
    """Asserts agreement (module docstring); returns the largest scaled error."""
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
    assert worst <= TOLERANCE, f"{what}: scaled error {worst:.3g} > {TOLERANCE:g}"
    return worst
