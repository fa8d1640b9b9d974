"""Differential tests: every executor of nos against a plain interpreter of the language.

``tests/compile/interpreter.py`` walks the parsed rule (``nos.parse(text).expanded()``, the only
code it shares with the package) with NumPy, one statement at a time, with the meaning
the README and the ops table give each construct.  This module generates random rules as
text, steps them 10 times through each executor -- the multi-tensor default
(``foreach=True``), the per-tensor reference (``foreach=False``), the default again
resumed halfway from a saved ``state_dict`` in a new optimizer, and, on a sample, the
``torch.compile`` path (``fused=True``) -- and compares the parameters after every step
and the buffers at the end with the interpreter's.

What runs.  Four float64 tensors in two param groups, each group with its own lr (a
float or a 0-d tensor) and hyperparameters: a 0-d tensor and a conv weight (3, 2, 2, 2)
in one, a 1-d tensor (5,) and a non-contiguous view in the other (a transposed, strided
slice of a 7x9 leaf, with a non-contiguous gradient).  Gradients are N(0, s^2), s in
{1e-3, 1, 1e3} per step, with 10% exact zeros, written into ``p.grad`` in place, as
backward() does; in half the examples a tensor has no gradient at one step in ten or in
four (it is skipped: its step number falls behind the others' in its group).  A step
must not change a gradient or write outside the view.  Hyperparameters go to the groups,
or (``Case.defaults``) group 0's to the optimizer's keyword arguments, which group 1
inherits; the lr may change every step and the groups' params may swap halfway, written
into ``param_groups`` as a scheduler or a user would (``Case``).

Agreement.  Two values agree when both are finite and ``|a - e| <= 1e-12 * max(1,
scale)``, or when neither is finite (nan, +inf and -inf all mean the element diverged).
For a buffer, scale is ``|e|``; for the parameters after step k it is ``max(|w_k|, sum
over steps j <= k of |lr| * P_j)``, P_j the magnitude of the update's additive parts at
step j: an executor may apply ``update = a - b`` as two steps on w, whose rounding is
that of ``lr * a`` (see ``compare``).  Every buffer the optimizer keeps is compared,
where the parameter never diverged (the compiler may take w to be finite: ``0 * w =
0``).  When an executor disagrees on an
example whose float64 reference is unstable -- the same interpreter at extended precision
(np.longdouble), with every zero rewritten to +0, to -0 or to a random sign, disagrees
with it at 1e-13 -- hypothesis rejects the example instead of failing: the rule is
ill-conditioned there (cancellation, an overflow only float64 sees), or its result
depends on the sign of a zero, which the language leaves open (the compiler's algebra,
``x + 0 = x``, and torch's ``max(0, -0)`` do not keep it).  About 0.1-0.2% of the
examples are rejected.

The semantics the interpreter holds the compiler to (decided here; where the compiler
differed, it was changed): IEEE binary64 for every operation (x/0 is +-inf or nan,
(-8)^(1/3) is nan, 0^-1 is inf, 0 * inf is nan, x^0.5 and x^-0.5 are pow, not sqrt and
rsqrt); ``sign(0) = 0`` and ``sign(nan) = nan``; ``max``, ``min`` and ``clip(x, c) =
min(max(x, -c), c)`` propagate nan (for c < 0, clip gives c); ``rd(n)`` takes the
floored ``(n s) mod T``, in [0, T), as TensorFlow's restart decay, for n < 0 too;
``drop(x, p)`` multiplies x by its mask (a dropped nan stays nan; p >= 1 drops all).
Roundings may differ (fused multiply-adds, a scalar's reciprocal, parts of the update
applied as separate steps), within the tolerance above.

Random primitives.  The executors draw ``noise``, ``annealed_noise`` and ``drop``'s masks
from the optimizer's generator; replaying that draw order in the interpreter would test
the executors against a copy of themselves.  So (1) the generator uses them only where
the value does not depend on the draw (almost surely): ``max(noise, 50)``,
``min(annealed_noise, -50)``, ``abs(sign(noise))``, ``abs(clip(drop(noise, 0.3), 0)) +
1``, and ``drop(x, p)`` for p in {0, 1, 2, t, 1 - 1}, which keeps x or zeroes it; the
draws still go through every executor (their order, their own instructions, in-place
handling) while the interpreter draws from its own generator; and (2) separate tests
check the distributions on 200,000 elements: noise ~ N(0, 0.01) and annealed_noise ~
N(0, (1 + t)^-0.55) (mean, standard deviation, skew, kurtosis, fresh each step), and
drop zeroes a fraction p and scales the rest by 1 / (1 - p).

The generator (``rule_texts``, ``cases``) writes rules as text that the parser accepts:
1-5 buffers, 0-3 lets, 0-3 params of random defaults (and, in half the rules, the rule's
own ``beta1`` replacing the prelude's), and the update (as ``update = ...`` or a bare
expression), in a random order, so that statements read buffers before and after their
update and the update stands before later buffer statements.  A buffer's statement is an
expression, a running average ``a * s + b * x`` (with ``b = 1 - a`` or not) or ``a * s +
b * x * y``, a copy of another buffer, of itself, of g, w, m or adam, or a scalar.  The
update is an expression or a form the compiler folds into the step (``x / (sqrt(|y|) +
c)``, ``c x + d w``, ``x y c``, ``(x - y) / c``, ``-x + w c``, ``x / c / (y + d)``), in
three of four rules plus ``c * s`` for a buffer s.  Expressions (depth <= 3) use every
operator (``+ - * / ^``, unary minus) and function (``exp log sqrt abs sign clip max min
drop cd rd``), raw and in tame forms (``exp(clip(x, 3))``, ``log(|x| + 0.5)``,
``sqrt(|x|)``, ``x / (|y| + 1)``), powers 2, 3, 0.5, -1, 0, 1, 1.5, -2, -0.5, clip
bounds 0.5, 2, 0, -1; and every primitive and prelude name: g, w, t, T, ld, cd(n) and
rd(n) (n in 1, 0.5, 2, 3, -1, -0.5, t, beta1 or a param), noise, annealed_noise, m, v,
gamma, m_hat, v_hat, gamma_hat, adam, rmsprop, beta1, beta2, beta3, eps, and numbers
(0, 1e-8, 0.999, 10, ... and random ones in [-4, 4]).  Each group passes a random subset
of the params (0 among the values, so zero-specialised programs run beside plain ones);
lr is one of 0, 1e-3, 0.01, 0.1, 0.5, 1; T is 1 to 15 (so T < 10 steps too).
Measured over the 2,000 examples of the normal run (rules as written, dead code
included): every operator and function appears, in 14% (rd) to 93% (+) of the rules
(drop 46%, sign 28%, max 31%, min 35%, pow 64%, log 37%, cd 19%); g in 94%, w 73%, t
56%, T 35%, ld 33%, noise 10%, annealed_noise 13%, each prelude name in 3-20%; a
statement reads a buffer before its update in 71% and after it in 66%; the update stands
before a buffer's statement in 68%; a buffer copies another in 48%, itself in 24%, w in
13%.  In the compiled programs (either group): 77% keep a buffer (up to 7, the prelude's
included), 29% copy a buffer's value, 64% apply the update as several terms (add 81%,
addcdiv 27%, addcmul 8%, the parameter scaled 16%, a scalar 7%), 80% compute in place,
axpby 25%, axpy 19%, axpbxz 12%; 22% run a zero-specialised program beside another.
Tensors skip steps in 64%, params swap halfway in 47%, the lr decays in 37%, is a tensor
in 57%, hyperparameters are the optimizer's defaults in 35%.  64% of the examples stay
finite, 18% end with some elements non-finite and 18% with all (a division by an exact
zero, the log of a negative number, an overflow: IEEE results compared as such).

Counts: 2,000 examples in the normal run, 100,000 behind the slow mark; the fused path 6
and 200 (one to four seconds of torch.compile per rule).  See ``_run`` on derandomize.
Measured on 2 busy cores: the module takes 55 s (95 s with inductor's cache cold); the
slow tests about 25 minutes for the 100,000 and 12 for the 200.

Bugs the generator found (each has a regression test below, a small explicit rule):
1. ``param beta = 0.9; state m = beta * m + (1 - beta) * g; update = m - p; state p =
   m``: p and m became one tensor, so m - p was 0 from the second step (found before
   this module, by the property test in tests/optim/test_optimizer.py; fixed by
   ``nos.compile.compiler._copied_buffers``).  Checked here on all three executors.
2. ``sign(log(g))`` for g < 0 gave 0, not nan, on tensors (the scalar path gave nan):
   torch.sign maps nan to 0.  Fix (nos/lang/ops.py, nos/compile/kernels.py): sign(x) is
   ``max(sign(x), min(x, -1))``, in place too.
3. ``g + 0 * log(g - g)`` gave g, not nan, and a zero param ``a * (1 / (g - g))`` gave
   0: the compiler simplified x * 0 to 0 for any x, which may be inf or nan.  Fix
   (``simplify`` of the program builder, now nos/compile/program.py): only ``w * 0``
   (the parameter is finite).
4. ``clip((-(g - g)) ^ (-0.5), 1)`` gave -1, not 1, and ``min(log(0) ^ 0.5, 1)`` nan,
   not 1: torch computes x^-0.5 as rsqrt (rsqrt(-0) = -inf, pow gives +inf) and x^0.5 as
   sqrt (sqrt(-inf) = nan, pow gives +inf).  Fix (nos/lang/ops.py,
   nos/compile/kernels.py): for those two exponents the exponent goes to torch.pow as a
   0-d tensor, which takes the true pow.
5. ``rd(-1)`` with T = 4 gave 0.5 (1 + cos(-pi / 4)) at the second step, not 0.5 (1 +
   cos(3 pi / 4)): C's fmod keeps the sign of n s.  Fix (nos/lang/ops.py
   ``restart_decay``): the floored modulo.
6. ``state s = 0.1 * s + 0.9 * exp(exp(g)); update = min(s, 1)`` gave nan, not 1: the
   compiler fused a * x + (1 - a) * y into torch's lerp, which computes inf - inf where
   x or y is infinite; and with a = eps = 1e-8, lerp's weight on x, 1 - (1 - a), had
   lost 8 digits (a buffer 1e-10 off, relatively).  Fix (nos/compile/kernels.py): in
   float32 and float64 axpby is a multiply and an add; float16 and bfloat16 keep the
   lerp (one rounding, bit-identical with torch's Adam).
7. ``state s = clip(s + g, s + g)`` clipped to |x| and ``2 * (g - 1) + 3 * (g - 1)``
   gave 8 (g - 1): an in-place form of several passes (clip: max_ then min_; axpby: mul_
   then add_) ran with its other operand being the tensor it overwrites.  Fix
   (nos/compile/kernels.py ``Kernel.several_passes``, nos/compile/passes.py
   ``in_place``): not in place then.
8. fused: a 0-d parameter and its buffers never changed: torch.compile drops in-place
   writes to 0-d float64 inputs.  Fix (nos/compile/fused.py): 0-d tensors go in as
   1-element views.
9. fused: ``update = s0; state s1 = w; state s0 = s1`` stepped with this step's w, not
   last step's: the compiled kernel wrote a buffer that takes an input as it is (w, or
   another buffer's old value) after that input's own update (with or without a clone; a
   ``.to(dtype)`` on the scalars made it worse).  Fix (nos/compile/fused.py): no
   ``.to``, and such values are multiplied by a 1 the compiler cannot see.
10. fused: from the ninth rule on, steps ran uncompiled (silently): every rule's step
    function shared one code object, where torch.compile keeps its graphs, up to
    ``torch._dynamo.config.recompile_limit`` (8).  Found by this module's timings, not
    by a comparison.  Fix (nos/compile/fused.py): a copy of the code object per rule.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

import nos
from nos.lang.rule import Rule
from tests.compile.interpreter import Interpreter

STEPS = 10
TOLERANCE = 1e-12  # executors against the interpreter
STABLE = 1e-13  # the interpreter at float64 against itself at extended precision
NUMBERS = (0.0, 1.0, 2.0, 0.5, 0.9, 0.999, 3.0, 1e-8, 0.1, 1.5, 10.0, 0.25, 4.0)
POWERS = ("2", "3", "0.5", "(-1)", "0", "1", "1.5", "(-2)", "(-0.5)")
OWN_VALUES = (0.0, 0.3, -0.7, 1.0, 2.5, 0.9, -2.0)
PRELUDE_VALUES = {"beta1": (0.0, 0.5, 0.9), "beta2": (0.0, 0.9, 0.999), "beta3": (0.5, 0.99),
                  "eps": (0.0, 1e-8, 0.1)}  # within the prelude's bounds
PRELUDE_NAMES = ("m", "v", "gamma", "m_hat", "v_hat", "gamma_hat", "adam", "rmsprop")
LRS = (0.0, 1e-3, 0.01, 0.1, 0.5, 1.0)

# --- the rule generator ---------------------------------------------------------------


@dataclass
class Scope:
    """The names an expression may read at its place in the rule."""

    params: list[str]  # the rule's own params
    states: list[str]  # every buffer: before its statement the old value, after it the new
    lets: list[str] = field(default_factory=list)  # the lets defined so far
    random: bool = True  # noise, annealed_noise and drop allowed


@functools.cache
def _below(n: int) -> st.SearchStrategy[int]:
    return st.integers(0, n - 1)


T = TypeVar("T")
_ROUNDED = st.floats(-4, 4).map(lambda x: round(x, 3))


class Pick:
    """Choices drawn through a few cached strategies (new strategies per draw are slow)."""

    def __init__(self, draw) -> None:
        self.draw = draw

    def one(self, options: Sequence[T]) -> T:
        return options[self.draw(_below(len(options)))]

    def integer(self, lo: int, hi: int) -> int:
        return lo + self.draw(_below(hi - lo + 1))

    def chance(self) -> bool:
        return self.draw(_below(2)) == 1


def _number(value: float) -> str:
    return repr(value) if value >= 0 else f"(-{-value!r})"


UNARY = ("-{}", "abs({})", "sign({})", "exp({})", "exp(clip({}, 3))", "log({})",
         "log(abs({}) + 0.5)", "sqrt({})", "sqrt(abs({}))",  # and the tame forms again:
         "exp(clip({}, 3))", "log(abs({}) + 0.5)", "sqrt(abs({}))")
BINARY = ("({} + {})", "({} - {})", "({} * {})", "({} / {})", "({} / (abs({}) + 1))",
          "({} ^ {})", "max({}, {})", "min({}, {})", "clip({}, {})")
SCHEDULE_ARGS = ("1", "0.5", "2", "3", "(-1)", "(-0.5)", "t", "beta1")
RANDOM_SOURCES = ("noise", "annealed_noise", "drop(noise, 0.3)", "drop(sign(g), 0.5)",
                  "drop(annealed_noise, 0.25)")
RANDOM_WRAPPERS = ("(abs(clip({}, 0)) + 1)", "max({}, 50)", "min({}, -50)", "abs(sign({}))")


def _scalar(pick: Pick, scope: Scope) -> str:
    """A value that is the same for every element: numbers, params, t, T and schedules."""
    kinds = ["number", "number", "t", "T", "ld", "schedule", "prelude"] + ["param"] * 3
    kind = pick.one(kinds if scope.params else kinds[:-3])
    if kind in ("t", "T", "ld"):
        return kind
    if kind == "schedule":
        return f"{pick.one(['cd', 'rd'])}({pick.one(SCHEDULE_ARGS + tuple(scope.params))})"
    if kind == "number":
        return _number(pick.draw(_ROUNDED) if pick.chance() else pick.one(NUMBERS))
    if kind == "prelude":
        return pick.one(["beta1", "beta2", "beta3", "eps"])
    return pick.one(scope.params)


def _random_invariant(pick: Pick) -> str:
    """A random draw in a context whose value does not depend on the draw (almost surely:
    |noise| < 50, and sign(noise) is never 0; drop(..) is 0 where sign would tell)."""
    source = pick.one(RANDOM_SOURCES)
    wrappers = RANDOM_WRAPPERS[:3] if source.startswith("drop") else RANDOM_WRAPPERS
    return pick.one(wrappers).format(source)


def _leaf(pick: Pick, scope: Scope) -> str:
    kinds = ["g", "g", "g", "w", "w", "scalar", "scalar", "scalar", "prelude"] + ["state"] * 6
    kinds += ["let"] * bool(scope.lets) * 3 + ["random"] * scope.random
    kind = pick.one(kinds)
    if kind in ("g", "w"):
        return kind
    if kind == "scalar":
        return _scalar(pick, scope)
    if kind == "prelude":
        return pick.one(PRELUDE_NAMES)
    if kind == "state":
        return pick.one(scope.states)
    if kind == "let":
        return pick.one(scope.lets)
    return _random_invariant(pick)


def expression(pick: Pick, scope: Scope, depth: int = 3) -> str:
    """A random expression over every operator and function of the language."""
    if depth <= 0 or pick.integer(0, 3) == 0:
        return _leaf(pick, scope)
    forms = ["unary"] * 3 + ["binary"] * 5 + ["power", "clipc"] + ["drop"] * scope.random
    form = pick.one(forms)
    if form == "unary":
        return pick.one(UNARY).format(expression(pick, scope, depth - 1))
    if form == "binary":
        left = expression(pick, scope, depth - 1)
        return pick.one(BINARY).format(left, expression(pick, scope, depth - 1))
    x = expression(pick, scope, depth - 1)
    if form == "power":
        return f"({x} ^ {pick.one(POWERS)})"
    if form == "clipc":
        return f"clip({x}, {pick.one(['0.5', '2', '0', '(-1)'])})"
    # drop with p = 0 keeps x, with p >= 1 zeroes it: deterministic whatever the draw
    return f"drop({x}, {pick.one(['0', '1', '2', 't', '(1 - 1)'])})"


def _state_statement(pick: Pick, name: str, scope: Scope) -> str:
    """A buffer's statement: an expression, a running average (what the compiler fuses
    into axpby and addcmul), a copy of another buffer, of itself, of an input, or a
    scalar."""
    kinds = ["expr"] * 5 + ["average"] * 2 + ["product", "copy", "copy", "self", "input",
                                                "scalar"]
    kind = pick.one(kinds)
    if kind == "copy":
        return f"state {name} = {pick.one([s for s in scope.states if s != name] or [name])}"
    if kind == "self":
        return f"state {name} = {name}"
    if kind == "input":
        return f"state {name} = {pick.one(['g', 'w', 'm', 'adam'])}"
    if kind == "scalar":
        return f"state {name} = {_scalar(pick, scope)}"
    if kind == "expr":
        return f"state {name} = {expression(pick, scope)}"
    a, x = _scalar(pick, scope), expression(pick, scope, 2)
    if kind == "average":
        b = f"(1 - {a})" if pick.chance() else _scalar(pick, scope)
        return f"state {name} = {a} * {name} + {b} * {x}"
    b, y = _scalar(pick, scope), expression(pick, scope, 1)
    return f"state {name} = {a} * {name} + {b} * {x} * {y}"


UPDATES = ("{x} / (sqrt(abs({y})) + {c})", "{c} * {x} + {d} * w", "{x} * {y} * {c}",
           "({x} - {y}) / {c}", "-{x} + w * {c}", "{x} / {c} / ({y} + {d})")


def _update_expression(pick: Pick, scope: Scope) -> str:
    """The update: an expression, or a form the compiler folds into the parameter step
    (addcdiv, addcmul, several terms, the parameter scaled); mostly reading a buffer."""
    if pick.chance():
        update = expression(pick, scope)
    else:
        x, y = expression(pick, scope, 2), expression(pick, scope, 1)
        c, d = _scalar(pick, scope), _scalar(pick, scope)
        update = pick.one(UPDATES).format(x=x, y=y, c=c, d=d)
    if pick.integer(0, 3) > 0:  # most updates read a buffer, so that buffers stay live
        sign, c = pick.one(["+", "-"]), _scalar(pick, scope)
        update = f"{update} {sign} {c} * {pick.one(scope.states)}"
    return update


@dataclass(frozen=True)
class GroupSpec:
    lr: float
    hyper: dict[str, float]
    tensor_lr: bool = False  # give the optimizer torch.tensor(lr)


@dataclass(frozen=True)
class Case:
    """One generated example: a rule, two param groups, T, and the data's seed.

    With ``defaults``, group 0's hyperparameters are the optimizer's keyword arguments
    (its defaults, which group 1 inherits where it sets none) instead of group 0's own.
    With ``swap``, the groups swap their params' values halfway (written into
    ``param_groups``, as a user or a scheduler would).  The lr of step k (from 0) is
    ``lr * decay^k``, set before the step (a tensor lr is filled in place).
    """

    text: str
    groups: tuple[GroupSpec, GroupSpec]
    total_steps: int
    seed: int
    defaults: bool = False
    swap: bool = False
    decay: float = 1.0

    @property
    def rule(self) -> Rule:
        return _parse(self.text)

    def values(self, k: int) -> dict[str, float]:
        """Group k's value of every param the rule declares (its prelude's included)."""
        declared = {s.name: s.default for s in self.rule.expanded().statements
                    if s.kind == "param"}
        inherited = self.groups[0].hyper if self.defaults else {}
        return {**declared, **inherited, **self.groups[k].hyper}  # type: ignore[dict-item]


@functools.lru_cache(maxsize=64)
def _parse(text: str) -> Rule:
    return nos.parse(text)


@st.composite
def rule_texts(draw, random: bool = True) -> str:
    """A multi-statement rule as text: params, 1-5 buffers, lets and the update, any order."""
    pick = Pick(draw)
    n_states, n_lets = pick.integer(1, 5), pick.integer(0, 3)
    params = [f"p{i}" for i in range(pick.integer(0, 3))]
    states = [f"s{i}" for i in range(n_states)]
    slots = [("state", s) for s in states] + [("let", f"l{i}") for i in range(n_lets)]
    order = draw(st.permutations([*slots, ("update", "update")]))
    scope = Scope(params, states, random=random)
    lines = []
    for kind, name in order:
        if kind == "state":
            lines.append(_state_statement(pick, name, scope))
        elif kind == "let":
            lines.append(f"let {name} = {expression(pick, scope)}")
            scope.lets.append(name)
        else:
            expr = _update_expression(pick, scope)
            lines.append(f"update = {expr}" if pick.chance() else expr)
    declared = [f"param {p} = {_number(pick.one(OWN_VALUES))}" for p in params]
    if pick.chance():  # the rule's own beta1 replaces the prelude's
        declared.append(f"param beta1 = {pick.one(['0.0', '0.5', '0.8'])} in [0, 1)")
    for line in declared:
        lines.insert(pick.integer(0, len(lines)), line)
    return pick.one(["\n", "; ", "\n# a comment\n"]).join(lines)


def _group(pick: Pick, declared: list[str]) -> GroupSpec:
    hyper = {}
    for name in declared:
        if pick.chance():
            hyper[name] = pick.one(PRELUDE_VALUES.get(name, OWN_VALUES))
    return GroupSpec(pick.one(LRS), hyper, pick.chance())


@st.composite
def cases(draw, random: bool = True) -> Case:
    """A rule, its hyperparameters for two groups, T, the data's seed, and how the
    hyperparameters are given."""
    pick = Pick(draw)
    text = draw(rule_texts(random))
    declared = [s.name for s in _parse(text).expanded().statements if s.kind == "param"]
    groups = (_group(pick, declared), _group(pick, declared))
    return Case(text, groups, pick.integer(1, 15), draw(_SEEDS), pick.chance(),
                pick.integer(0, 3) == 0, pick.one([1.0, 0.8]))


_SEEDS = st.integers(0, 2**32 - 1)


# --- the data, the runs and the comparison ---------------------------------------------

SHAPES = ((), (5,), (3, 2, 2, 2), (3, 4))  # 0-d, 1-d, a conv weight, a strided view
GROUP_OF = (0, 1, 0, 1)  # the param group of each tensor
BASE_SHAPE = (7, 9)  # the view is base[1:5, 2:8:2].t()


def _view(base: torch.Tensor) -> torch.Tensor:
    return base[1:5, 2:8:2].t()


@dataclass(frozen=True)
class Data:
    """Initial values, and for each step a gradient for each tensor (NumPy, float64) and
    whether the tensor has one: in half the examples, a tensor goes without a gradient (is
    skipped) at one step in ten or in four, so that the tensors of a group reach a step at
    different times."""

    init: list[np.ndarray]
    grads: list[list[np.ndarray]]
    active: list[list[bool]]

    @staticmethod
    def make(seed: int) -> Data:
        rng = np.random.default_rng(seed)
        init = [rng.standard_normal(shape) for shape in SHAPES]
        skip = rng.choice([0.0, 0.0, 0.1, 0.25])
        grads, active = [], []
        for _ in range(STEPS):
            scale = rng.choice([1e-3, 1.0, 1.0, 1e3])
            step = []
            for shape in SHAPES:
                g = rng.standard_normal(shape) * scale
                step.append(np.where(rng.random(shape) < 0.1, 0.0, g))  # some exact zeros
            grads.append(step)
            active.append([bool(rng.random() >= skip) for _ in SHAPES])
        return Data(init, grads, active)


def _flat(arrays) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1) for a in arrays])


@dataclass
class Trace:
    """The flat parameter values after each step, and the final buffers; for the
    interpreter, also the rounding scale of each step's parameters (see compare)."""

    steps: list[np.ndarray]
    buffers: dict[str, np.ndarray]
    scales: list[np.ndarray] | None = None


def _tensors(data: Data) -> tuple[list[torch.Tensor], torch.Tensor]:
    base = torch.full(BASE_SHAPE, 7.0, dtype=torch.float64)
    tensors = [torch.tensor(x, dtype=torch.float64) for x in data.init[:3]]
    view = _view(base)
    view.copy_(torch.from_numpy(data.init[3]))
    return [*tensors, view], base


def _grad(g: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    if like.dim() == 2:  # a non-contiguous gradient for the non-contiguous view
        return torch.from_numpy(np.ascontiguousarray(g.T)).t()
    return torch.from_numpy(g.copy())


def _optimizer(case: Case, tensors: list[torch.Tensor], **kwargs) -> nos.Optimizer:
    groups = []
    for i, spec in enumerate(case.groups):
        lr = torch.tensor(spec.lr, dtype=torch.float64) if spec.tensor_lr else spec.lr
        hyper = {} if case.defaults and i == 0 else spec.hyper
        groups.append({"params": [p for p, k in zip(tensors, GROUP_OF) if k == i], "lr": lr,
                       **hyper})
    defaults = case.groups[0].hyper if case.defaults else {}
    return nos.Optimizer(groups, case.rule, total_steps=case.total_steps, **defaults, **kwargs)


def run_optimizer(case: Case, data: Data, resume: bool = False, **kwargs) -> Trace:
    """Step nos.Optimizer on the four tensors in two groups and record every step; with
    resume, halfway through, a new optimizer continues from the old one's state_dict
    (saved and loaded with torch.save and torch.load, as a checkpoint)."""
    tensors, base = _tensors(data)
    before = base.clone()
    opt = _optimizer(case, tensors, **kwargs)
    steps = []
    for k, (grads, active) in enumerate(zip(data.grads, data.active)):
        if resume and k == STEPS // 2:
            opt = _resumed(opt, case, tensors, **kwargs)
        _schedule(case, opt.param_groups, k)
        given = [_grad(g, p) if on else None for g, p, on in zip(grads, tensors, active)]
        for p, g in zip(tensors, given):
            if g is None or p.grad is None:
                p.grad = None if g is None else g.clone()
            else:
                p.grad.copy_(g)  # in place, as backward() accumulates
        opt.step()
        for p, g in zip(tensors, given):
            assert g is None or torch.equal(p.grad, g), "the step changed a gradient"
        steps.append(_flat(p.detach().numpy() for p in tensors))
    outside = torch.ones(BASE_SHAPE, dtype=torch.bool)
    _view(outside).fill_(False)
    assert torch.equal(base[outside], before[outside]), "the step wrote outside the view"
    buffers = {}
    for name in opt.program.buffers:  # a tensor never stepped has no state: its buffers are 0
        buffers[name] = _flat(opt.state[p].get(name, torch.zeros_like(p)).numpy()
                              for p in tensors)
    for name in opt.program.scalar_state:  # a number kept per tensor, as the interpreter's array
        buffers[name] = _flat(torch.full_like(p, opt.state[p].get(name, 0.0)).numpy()
                              for p in tensors)
    return Trace(steps, buffers)


def _resumed(opt: nos.Optimizer, case: Case, tensors: list[torch.Tensor],
             **kwargs) -> nos.Optimizer:
    checkpoint = io.BytesIO()
    torch.save(opt.state_dict(), checkpoint)
    checkpoint.seek(0)
    fresh = _optimizer(case, tensors, **kwargs)
    fresh.load_state_dict(torch.load(checkpoint, weights_only=True))
    return fresh


def _schedule(case: Case, groups: list[dict], k: int) -> None:
    """Before step k: the lr of the step, and the params' values swapped halfway."""
    for i, (group, spec) in enumerate(zip(groups, case.groups)):
        lr = spec.lr * case.decay**k
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
        if case.swap and k == STEPS // 2:
            group.update(case.values(1 - i))


def _per_element(values: list, per_tensor: bool = False) -> np.ndarray:
    """One value per group (or per tensor) as one value per element."""
    sizes = [int(np.prod(shape)) for shape in SHAPES]
    pick = range(len(SHAPES)) if per_tensor else GROUP_OF
    return np.concatenate([np.full(n, values[k]) for n, k in zip(sizes, pick)])


PERTURBATION = 1e-15  # relative, of the state after each step (see unstable)


def run_interpreter(case: Case, data: Data, dtype: type = np.float64,
                    zeros: str | None = None, perturb: bool = False) -> Trace:
    """The interpreter's trace; dtype, zeros and perturb are for the stability checks."""
    values = [case.values(k) for k in range(len(case.groups))]
    jitter = np.random.default_rng(case.seed)
    hyper = {name: _per_element([v[name] for v in values]) for name in values[0]}
    w = _flat(data.init)
    interp = Interpreter(case.rule, w.size, hyper, case.total_steps, dtype=dtype, zeros=zeros)
    steps, scales, moved = [], [], np.zeros(w.size)
    with np.errstate(all="ignore"):
        for k, (grads, active) in enumerate(zip(data.grads, data.active)):
            lr = _per_element([g.lr * case.decay**k for g in case.groups])
            if case.swap and k == STEPS // 2:
                interp.params.update({name: interp.full(_per_element([v[name] for v in
                                                                      values[::-1]]))
                                      for name in values[0]})
            w = interp.step(w, _flat(grads), lr, _per_element(active, per_tensor=True) > 0)
            moved = moved + interp.step_size.astype(np.float64)
            scale = np.maximum(np.abs(w), np.nan_to_num(moved, posinf=0.0))
            if perturb:  # as an executor's roundings may, at the scale of the comparison
                w = w + _jitter(jitter, scale)
                interp.buffers = {name: b + _jitter(jitter, np.abs(b))
                                  for name, b in interp.buffers.items()}
            steps.append(w.astype(np.float64))
            scales.append(scale)
        buffers = {name: b.astype(np.float64) for name, b in interp.buffers.items()}
    return Trace(steps, buffers, scales)


def _jitter(jitter: np.random.Generator, scale: np.ndarray) -> np.ndarray:
    return PERTURBATION * scale * jitter.choice([-1.0, 1.0], scale.size)


def disagreement(actual: np.ndarray, expected: np.ndarray, tol: float,
                 scale: np.ndarray | None = None) -> np.ndarray:
    """Elements where two results disagree: one finite and the other not, or both finite
    and |actual - expected| > tol * max(1, scale), where scale is |expected| or, for the
    parameters, the interpreter's rounding scale.  nan, +inf and -inf all mean the element
    diverged and agree with each other."""
    fa, fe = np.isfinite(actual), np.isfinite(expected)
    scale = np.abs(expected) if scale is None else scale
    with np.errstate(all="ignore"):
        far = np.abs(actual - expected) > tol * np.maximum(1.0, scale)
    return (fa != fe) | (fa & fe & far)


def compare(actual: Trace, expected: Trace, tol: float,
            buffers: dict[str, np.ndarray | bool]) -> str | None:
    """None when the traces agree, else a description of the first disagreement; buffers
    maps the buffers to compare to the elements where they are compared.

    The parameters after step k are compared at the scale max(1, |w_k|, sum over steps
    j <= k of |lr| * the magnitude of the update's additive parts): an executor may apply
    the parts of ``update = a - b`` as two steps, w - lr a + lr b, whose rounding is
    that of lr a, not of lr (a - b).
    """
    scales = expected.scales or [None] * len(expected.steps)
    for k, (a, e) in enumerate(zip(actual.steps, expected.steps)):
        bad = disagreement(a, e, tol, scales[k])
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            return f"parameters after step {k + 1}, element {i}: {a[i]!r} != {e[i]!r}"
    finite = np.all([np.isfinite(e) for e in expected.steps], axis=0)  # never diverged
    for name in sorted(buffers):
        a, e = actual.buffers[name], expected.buffers[name]
        bad = disagreement(a, e, tol) & finite & buffers[name]
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            return f"buffer {name} after {STEPS} steps, element {i}: {a[i]!r} != {e[i]!r}"
    return None


def unstable(case: Case, data: Data, expected: Trace) -> str | None:
    """Why the interpreter's float64 trace is no reference at 1e-12, if it is not: it
    moves by more than 1e-13 at extended precision with the zeros rewritten to +0, -0 or
    a random sign (float64 rounding, the sign of a zero), or at float64 with the state
    moved by 1e-15 of its scale after each step (the parameters at the scale compare
    uses: a value whose exactness matters, as (-2)^w at w = 1, or a rule that amplifies
    what an executor may round differently)."""
    everything: dict[str, np.ndarray | bool] = dict.fromkeys(expected.buffers, True)
    for zeros in ("+", "-", "random", None):
        if zeros is None:
            check = run_interpreter(case, data, perturb=True)
        else:
            check = run_interpreter(case, data, np.longdouble, zeros)
        problem = compare(expected, check, STABLE, everything)
        if problem is not None:
            return f"{zeros or 'perturbed'}: {problem}"
    return None


EXECUTORS = {"foreach": {"foreach": True}, "reference": {"foreach": False}}
# and the default path again, through a checkpoint halfway (run_optimizer's resume)
RUNS = {**EXECUTORS, "foreach, resumed from a state_dict halfway": {"resume": True}}


def check_case(case: Case, executors: dict[str, dict]) -> None:
    """Every executor agrees with the interpreter.  A disagreement on an example whose
    reference is unstable (see unstable) is no failure: hypothesis rejects the example.
    (Stability is checked only then: it costs three more runs of the interpreter.)"""
    data = Data.make(case.seed)
    expected = run_interpreter(case, data)
    for label, kwargs in executors.items():
        actual = run_optimizer(case, data, **kwargs)
        problem = compare(actual, expected, TOLERANCE, dict.fromkeys(actual.buffers, True))
        if problem is not None and unstable(case, data, expected) is not None:
            reject()
        assert problem is None, f"{label}: {problem}\nrule:\n{case.text}\n{case}"


EXAMPLES, SLOW_EXAMPLES = 2000, 100_000
FUSED_EXAMPLES, SLOW_FUSED_EXAMPLES = 6, 200


def _run(count: int, derandomize: bool, strategy: st.SearchStrategy[Case],
         executors: dict[str, dict]) -> None:
    """The normal run derandomizes (the same examples every time: a stable CI, and a failure
    reproduces as it is); the slow run draws new examples every time, to find new bugs (a
    failure prints the example and a @reproduce_failure line).  No example database."""

    @settings(max_examples=count, deadline=None, derandomize=derandomize, database=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def check(case: Case) -> None:
        check_case(case, executors)

    check()


def test_executors_agree_with_the_interpreter() -> None:
    _run(EXAMPLES, True, cases(), RUNS)


@pytest.mark.slow
def test_executors_agree_with_the_interpreter_at_length() -> None:
    _run(SLOW_EXAMPLES, False, cases(), RUNS)


@pytest.mark.parametrize("count,derandomize", [
    pytest.param(FUSED_EXAMPLES, True, id="sample"),
    pytest.param(SLOW_FUSED_EXAMPLES, False, id="long", marks=pytest.mark.slow)])
def test_fused_path_agrees_with_the_interpreter(count: int, derandomize: bool) -> None:
    """torch.compile takes about a second per rule: a sample of rules without random draws
    (the fused path refuses them)."""
    _run(count, derandomize, cases(random=False), {"fused": {"fused": True}})


# --- regressions: the bugs the generator found, as small explicit rules ----------------

ALL_EXECUTORS = {**EXECUTORS, "fused": {"fused": True}}


def _check_rule(text: str, hyper: dict[str, float] | None = None, lr: float = 0.1,
                fused: bool = False) -> None:
    """The rule agrees with the interpreter on every executor (fused on request: slow), on
    data (seed 5) where the interpreter's reference is stable for every rule here."""
    case = Case(text, (GroupSpec(lr, hyper or {}), GroupSpec(lr / 2, {})), 4, seed=5)
    data = Data.make(case.seed)
    problem = unstable(case, data, run_interpreter(case, data))
    assert problem is None, f"not a usable regression rule: {problem}"
    check_case(case, ALL_EXECUTORS if fused else EXECUTORS)


def _one_step(text: str, g: list[float], w: list[float] | None = None,
              **kwargs) -> list[list[float]]:
    """The parameter after one step with lr 1, for each executor (fused unless random)."""
    results = []
    executors = EXECUTORS if nos.parse(text).is_random else ALL_EXECUTORS
    for options in executors.values():
        param = torch.tensor(w or [0.0] * len(g), dtype=torch.float64)
        param.grad = torch.tensor(g, dtype=torch.float64)
        nos.Optimizer([param], text, lr=1.0, **options, **kwargs).step()
        results.append(param.tolist())
    return results


def _same(a: list[float], b: list[float]) -> bool:
    return np.array_equal(np.array(a), np.array(b), equal_nan=True)


def test_buffers_that_copy_each_other_are_not_one_tensor():
    _check_rule("param beta = 0.9 in [0, 1)\nstate m = beta * m + (1 - beta) * g\n"
                "update = m - p\nstate p = m", fused=True)


def test_sign_of_nan_is_nan():
    """torch.sign(nan) is 0; the language's sign, like its scalar form, keeps the nan."""
    for result in _one_step("sign(log(g)) + 0 * sign(log(g) * 2)", [-1.0, 1.0, 0.0]):
        assert _same(result, [math.nan, 0.0, 1.0]), result
    _check_rule("state s = 0.5 * s + g\nupdate = sign(log(s)) + sign(sqrt(s) * 2)")


def test_zero_times_inf_or_nan_is_nan():
    """x * 0 was simplified to 0 for any x; only w (always finite) may be."""
    for result in _one_step("g + 0 * log(g - g)", [1.0, -2.0]):
        assert _same(result, [math.nan, math.nan]), result
    for result in _one_step("param a = 1\nupdate = g + a * (1 / (g - g)) + a * w", [1.0],
                            a=0.0):
        assert _same(result, [math.nan]), result
    _check_rule("param a = 1\nstate s = s + log(g)\nupdate = g + a * s", {"a": 0.0})


def test_square_root_powers_are_pow_at_minus_zero_and_minus_inf():
    """torch computes x^0.5 as sqrt(x) and x^-0.5 as rsqrt(x): rsqrt(-0) is -inf and
    sqrt(-inf) nan, where pow gives inf and inf."""
    rule = "clip((-(g - g)) ^ (-0.5), 1) + min(log(g - g) ^ 0.5, 1) + log(g - g) ^ (-0.5)"
    for result in _one_step(rule, [3.0]):
        assert result == [-2.0], result
    _check_rule("state s = -(g - g)\nupdate = clip(s ^ (-0.5), 1) + min(log(s) ^ 0.5, 1) + "
                "log(s) ^ (-0.5)")


def test_restart_decay_takes_the_floored_modulo():
    """rd(n) for n < 0: (n s) mod T lies in [0, T), as TensorFlow's restart decay."""
    steps = []
    for options in EXECUTORS.values():
        w = torch.zeros(1, dtype=torch.float64)
        opt = nos.Optimizer([w], "rd(-1)", lr=1.0, total_steps=4, **options)
        for _ in range(2):
            w.grad = torch.zeros(1, dtype=torch.float64)
            opt.step()
        steps.append(w.item())
    expected = -(1.0 + 0.5 * (1.0 + math.cos(math.pi * 3 / 4)))  # s = 0, then (-1) mod 4 = 3
    assert steps == pytest.approx([expected] * 2, rel=1e-15)


def test_running_averages_are_the_formula_not_lerp():
    """a x + (1 - a) y was computed as torch's lerp, which gives nan where x or y is
    infinite (inf - (inf - x) (1 - w)): min(s, 1) was nan instead of 1; and whose weight
    on x, 1 - (1 - a), is a with 8 digits lost when a = 1e-8."""
    for result in _one_step("state s = 0.1 * s + 0.9 * exp(exp(g))\nupdate = min(s, 1)", [9.0]):
        assert result == [-1.0], result
    for options in ALL_EXECUTORS.values():
        w = torch.zeros(1, dtype=torch.float64)
        opt = nos.Optimizer([w], "state s = 1e-8 * s + (1 - 1e-8) * g\nupdate = s", lr=1.0,
                            **options)
        for g in (1e10, 1.0):
            w.grad = torch.tensor([g], dtype=torch.float64)
            opt.step()
        s1 = (1 - 1e-8) * 1e10
        expected = 1e-8 * s1 + (1 - 1e-8) * 1.0
        assert opt.state[w]["s"].item() == pytest.approx(expected, rel=1e-14), options


def test_in_place_forms_of_several_passes_do_not_overwrite_another_operand():
    """clip(x, x) computed in place clipped x to [-|x|, |x|] after x had become |x|, and
    2 x + 3 x as x.mul_(2).add_(x, alpha=3) gave 8 x."""
    rule = "state s = clip(g + 1, g + 1)\nstate q = 2 * (g - 1) + 3 * (g - 1)\nupdate = s + q"
    for result in _one_step(rule, [-3.0, 1.0]):
        assert result == [22.0, -2.0], result
    _check_rule("state s = clip(s + g, s + g)\nstate q = 2 * (s + g) + 3 * (s + g)\n"
                "update = s + q")


def test_fused_path_updates_zero_dimensional_parameters():
    """torch.compile dropped in-place writes to 0-d float64 inputs: the parameter and its
    buffers never changed."""
    w = torch.tensor(1.0, dtype=torch.float64)
    opt = nos.Optimizer([w], "state m = 0.5 * m + g\nupdate = m", lr=0.5, fused=True)
    for _ in range(2):
        w.grad = torch.tensor(1.0, dtype=torch.float64)
        opt.step()
    assert w.item() == 1.0 - 0.5 * 1.0 - 0.5 * 1.5
    assert opt.state[w]["m"].item() == 1.5


def test_fused_path_compiles_every_rule_of_a_long_run():
    """Every rule's step function shared one code object, where torch.compile keeps its
    graphs: after recompile_limit (8) rules, later rules silently ran uncompiled."""
    from torch._dynamo.utils import counters

    with torch._dynamo.config.patch(recompile_limit=1):
        for text in ("state m = 0.5 * m + g\nupdate = exp(m)", "abs(g) * sign(w)"):
            before = counters["stats"]["unique_graphs"]
            w = torch.ones(3, dtype=torch.float64)
            w.grad = torch.ones(3, dtype=torch.float64)
            nos.Optimizer([w], text, fused=True).step()
            assert counters["stats"]["unique_graphs"] == before + 1, text


def test_fused_path_copies_a_value_before_its_source_is_updated():
    """A buffer taking w (or another buffer's old value) as it is was written after w's
    own update by the compiled kernel: update = w_(t-1) became update = w_t."""
    text = "update = s0\nstate s1 = w\nstate s0 = s1"
    w = torch.tensor([1.0, 2.0], dtype=torch.float64)
    opt = nos.Optimizer([w], text, lr=0.5, fused=True)
    history = []
    for _ in range(4):
        w.grad = torch.zeros(2, dtype=torch.float64)
        opt.step()
        history.append(w.tolist())
    assert history == [[1.0, 2.0], [0.5, 1.0], [0.0, 0.0], [-0.25, -0.5]]
    _check_rule("state a = b\nstate b = a + g\nupdate = a * b + w\nstate c = w", fused=True)


# --- the random primitives: their distributions, checked on large tensors ------------

RANDOM_SIZE = 200_000


def _random_steps(text: str, steps: int, g: float = 0.0, **options) -> list[np.ndarray]:
    """The update of each step (lr = 1, w starts at 0) on RANDOM_SIZE elements."""
    w = torch.zeros(RANDOM_SIZE, dtype=torch.float64)
    opt = nos.Optimizer([w], text, lr=1.0, seed=3, **options)
    updates, before = [], w.clone()
    for _ in range(steps):
        w.grad = torch.full_like(w, g)
        opt.step()
        updates.append((before - w).numpy().copy())
        before = w.clone()
    return updates


@pytest.mark.parametrize("options", EXECUTORS.values(), ids=EXECUTORS.keys())
def test_noise_and_annealed_noise_have_their_documented_distributions(options):
    """noise ~ N(0, 0.01); annealed_noise ~ N(0, 1 / (1 + t)^0.55); fresh each step."""
    for text, std in (("noise", lambda t: 0.1), ("annealed_noise", lambda t: (1 + t) ** -0.275)):
        updates = _random_steps(text, 3, **options)
        for t, u in enumerate(updates, start=1):
            assert abs(u.mean()) < 5 * std(t) / math.sqrt(RANDOM_SIZE), (text, t)
            assert u.std() == pytest.approx(std(t), rel=0.01), (text, t)
            assert abs(np.mean(u ** 3)) / std(t) ** 3 < 0.05, (text, t)  # symmetric
            assert np.mean(u ** 4) / std(t) ** 4 == pytest.approx(3.0, rel=0.05), (text, t)
        assert abs(np.corrcoef(updates[0], updates[1])[0, 1]) < 0.02, text


@pytest.mark.parametrize("options", EXECUTORS.values(), ids=EXECUTORS.keys())
@pytest.mark.parametrize("p", [0.3, 0.75])
def test_drop_zeroes_a_fraction_p_and_scales_the_rest(options, p):
    """drop(x, p): each element is 0 with probability p, else x / (1 - p)."""
    for u in _random_steps(f"drop(g, {p})", 2, g=2.0, **options):
        zero = u == 0
        assert abs(zero.mean() - p) < 5 * math.sqrt(p * (1 - p) / RANDOM_SIZE)
        np.testing.assert_allclose(u[~zero], 2.0 / (1 - p), rtol=1e-15)
