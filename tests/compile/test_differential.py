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
float or a 0-d tensor), hyperparameters and maximize: a 0-d tensor and a 3-d tensor (2, 4,
3) in one, a 1-d tensor (5,) and a non-contiguous 2-d view in the other (a transposed,
strided slice of a 7x9 leaf, with a non-contiguous gradient); a rule that calls
newton_schulz steps 2-d tensors only (nos.Optimizer refuses others): (2, 5), (4, 3), (1,
3) and the view, each with a non-contiguous gradient.  Gradients are N(0, s^2), s in
{1e-3, 1, 1e3} per step, with 10% exact zeros, written into ``p.grad`` in place, as
backward() does; in half the examples a tensor has no gradient at one step in ten or in
four (it is skipped: its step number falls behind the others' in its group).  A step
must not change a gradient or write outside the view.  Hyperparameters go to the groups,
or (``Case.defaults``) group 0's to the optimizer's keyword arguments, which the other
groups inherit; the lr may change every step and the groups' params may swap halfway,
written into ``param_groups`` as a scheduler or a user would (``Case``).  In one example
in five the 3-d tensor is in a third group of its own (with its own lr, params and
maximize).  A rule with views (``eval_w``, ``train_w``) is also compared after its last
step through ``optimizer.eval()`` and then ``optimizer.train()``.

Agreement.  Two values agree when both are finite and ``|a - e| <= 1e-12 * max(1,
scale)``, or when neither is finite (nan, +inf and -inf all mean the element diverged).
For a buffer, scale is ``|e|``; for the parameters after step k it is ``max(|w_k|, sum
over steps j <= k of |lr| * P_j)``, P_j the magnitude of the update's additive parts at
step j: an executor may apply ``update = a - b`` as two steps on w, whose rounding is
that of ``lr * a`` (see ``compare``).  Every buffer the optimizer keeps is compared at
every element of its tensor (a number per tensor, a row or a column average broadcast),
where the parameter never diverged (the compiler may take w to be finite: ``0 * w =
0``; for a reduced buffer, where none of the elements it reduces diverged); a buffer that
a group's specialised program does not keep is not compared.  When an executor disagrees
on an example whose float64 reference is unstable -- the same interpreter at extended
precision (np.longdouble), with every zero rewritten to +0, to -0 or to a random sign,
or at float64 with its state and every reduction's result moved by 1e-15, disagrees with
it at 1e-13 -- hypothesis rejects the example instead of failing: the rule is
ill-conditioned there (cancellation, an overflow only float64 sees, a comparison of a
sum that is all rounding, as ``sum(g - mean(g)) > 0``), or its result depends on the sign
of a zero, which the language leaves open (the compiler's algebra, ``x + 0 = x``, and
torch's ``max(0, -0)`` do not keep it).  Examples that would meet an open bug of nos
(``known_bug``, each with a strict xfail test) are rejected too.

The semantics the interpreter holds the compiler to (decided here; where the compiler
differed, it was changed, or the difference is an open bug below): IEEE binary64 for
every operation (x/0 is +-inf or nan, (-8)^(1/3) is nan, 0^-1 is inf, 0 * inf is nan,
x^0.5 and x^-0.5 are pow, not sqrt and rsqrt); ``sign(0) = 0`` and ``sign(nan) = nan``;
``max``, ``min`` and ``clip(x, c) = min(max(x, -c), c)`` propagate nan (for c < 0, clip
gives c); ``rd(n)`` takes the floored ``(n s) mod T``, in [0, T), as TensorFlow's
restart decay, for n < 0 too; ``drop(x, p)`` multiplies x by its mask (a dropped nan
stays nan; p >= 1 drops all; the mask has the parameter's shape).  A comparison is 1 or
0 (false for nan but ``!=``); ``where(c, a, b)`` takes a where c is nonzero, nan
included; ``lerp`` is torch's formula.  A reduction (``sum mean norm rms amax``, one
number per tensor) and ``rowmean``, ``colmean`` (over the last or the second-to-last
dimension of the 2-d view; a vector is a column (n, 1), a number (1, 1)) broadcast back
to the tensor's elements, and every value stands for a value at each element however it
is stored: a reduction or newton_schulz of a row average, a column average or a number
sees it at every element (``sum(rowmean(x)) = sum(x)``, ``sum(2) = 2 numel``; also what
``rms(x) = norm(x) / sqrt(numel)`` says), so that no result depends on storage, which
specialisation and simplification change.  ``newton_schulz`` is torch's Muon iteration;
at 64 bits (and 0: the parameters' own) it is compared with the interpreter's float64,
at 16 (bfloat16, which NumPy lacks) and 32 with torch's own iteration, written out.  A
state that reads no tensor is a number per tensor; a param or tensor fact that decides
a where by itself specialises each group's program, which must mean what the rule does.
``maximize`` steps with -g.  ``lr`` is the group's learning rate of the step (a tensor
lr too), ``ndim``, ``numel``, ``rows`` and ``cols`` (of the 2-d view) and
``machine_eps`` describe the tensor.  Roundings may differ (fused multiply-adds, a
scalar's reciprocal, parts of the update applied as separate steps, the order of a
sum's or a matrix product's additions), within the tolerance above.

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
b * x * y``, a copy of another buffer, of itself, of g, w, m or adam, a scalar, a number
(``where(t == 1, c, s) * a``, ``a * s + c``), a row or column average (``lerp(s,
rowmean(x), a)``, ``a * s + b * colmean(x^2)``) or ``a * s + sum(x)`` and the other
reductions.  The update is an expression or a form the compiler folds into the step
(``x / (sqrt(|y|) + c)``, ``c x + d w``, ``x y c``, ``(x - y) / c``, ``-x + w c``, ``x
/ c / (y + d)``), in three of four rules plus ``c * s`` for a buffer s; one rule in
eight is a rule of matrices, whose update is mostly ``c * newton_schulz(x, ...) + d *
w`` (as Muon) and whose expressions may call newton_schulz (of g, w, m, a row or column
average, or ``x + 0 * g``; coefficients Muon's, (1.5, -0.5, 0), (2, -1.5, 0.5) or params;
0-5 steps; eps 1e-7, 0.1, 0; bits 64 or 0).  Expressions (depth <= 3) use every
operator (``+ - * / ^``, unary minus, ``< <= > >= == !=``) and function (``exp log sqrt
abs sign clip max min drop cd rd where lerp sum mean norm rms amax rowmean colmean``),
raw and in tame forms (``exp(clip(x, 3))``, ``log(|x| + 0.5)``, ``sqrt(|x|)``, ``x /
(|y| + 1)``), powers 2, 3, 0.5, -1, 0, 1, 1.5, -2, -0.5, clip bounds 0.5, 2, 0, -1; a
where's condition is a comparison, any expression, or one the same for every element (a
param, ``p > 0``, ``p != 0``, ``ndim >= 2``, ``rows > cols``, ``numel == 1``, ``t == 1``,
``t > 3``, ``lr > 0.05``), which also chooses between two scalars; lerp's weight is a
number (0.1, 0.5, 0.9, -0.5, 2, 1, 0.49, 0), a scalar or an expression; and every
primitive and prelude name: g, w, t, T, ld, lr, ndim, rows, cols, numel, machine_eps,
cd(n) and rd(n) (n in 1, 0.5, 2, 3, -1, -0.5, t, beta1 or a param), noise,
annealed_noise, m, v, gamma, m_hat, v_hat, gamma_hat, adam, rmsprop, beta1, beta2,
beta3, eps, and numbers (0, 1e-8, 0.999, 10, ... and random ones in [-4, 4]).  Each
group passes a random subset of the params (0 among the values, so zero-specialised
programs run beside plain ones, and each value of a switch); lr is one of 0, 1e-3,
0.01, 0.1, 0.5, 1; maximize is given as True in a quarter of the groups, as False in
another; T is 1 to 15 (so T < 10 steps too).
The later constructs: in one rule in three (``Scope.reductions``) expressions may also
call ``gsum gmean gnorm grms gamax`` and ``clip_gnorm(x, c)`` (c a number or a param),
and in one in three (``Scope.shorthand``) ``dot``, ``cosine``, ``winmax(x, n)`` and
``winmin(x, n)`` (n from 1 to 4); a buffer's statement has a ``from`` value in about one
in twenty (w, numbers, params, numel, ``w * 2``, ``abs(w) + 1``, ``mean(w)``,
``rowmean(w)``, ``colmean(w)``, ``norm(w) / numel``); the update is ``w = ...`` in about
one rule in sixteen (``w - lr * (u)``, ``w - c * (u)``, ``lerp(w, x, a)`` or an
expression); and about one rule in sixteen has ``eval_w`` (and, in half of those,
``train_w``): expressions of w, t, lr, the facts, params and buffers.  Measured over the
examples of the normal run: a global reduction in 16% of the rules (clip_gnorm 7%), one
live in the rule's program in 11% (those run one program in every group, and the fused
path must refuse them), the shorthand in 14% (a window 8%), ``w = ...`` 12%, ``from``
22% (from a function of w 16%), ``eval_w`` 15%, ``train_w`` 9%, three groups 20%.
Measured over the examples of the normal run (rules as written, dead code included): +
in 93% of the rules, * 88%, where 59%, comparisons 63% (== 25%, > 28%, < 13%), lerp
37%, rowmean 29%, colmean 23%, sum 11%, mean 11%, norm 6%, amax 9%, rms 6%,
newton_schulz 7%, drop 46%, log 30%, sign 30%, max 30%, min 27%, pow 51%, cd 20%, rd
19%; g in 90%, w 76%, t 57%, T 36%, ld 33%, lr 12%, ndim 16%, rows 18%, cols 17%, numel
15%, machine_eps 6%, noise 17%, annealed_noise 16%, each prelude name in 4-13%.  In the
rule's own program: 79% keep a buffer, 27% a number per tensor, 17% a row or column
average, 6% a number in a tensor (``sum(x)``); 30% read the tensor's facts (stepped one
tensor at a time), 14% have a switch, 63% apply the update as several terms, 74% compute
in place; the groups run differently switched programs in 5%.  Tensors skip steps in
65%, params swap halfway in 42%, the lr is a tensor in 52%, a group maximizes in 25%,
hyperparameters are the optimizer's defaults in 33%.  72% of the examples stay finite,
14% end with all elements non-finite and 14% with some (a division by an exact zero,
the log of a negative number, an overflow: IEEE results compared as such).  Of the
examples drawn, about 9% are rejected for a known bug and 0.1% for an unstable
reference.

Counts: 600 examples in the normal run, 100,000 behind the slow mark; the fused path 3
and 200 (one to ten seconds of torch.compile per rule: a rule that reads a tensor's
facts or keeps a number compiles one graph per tensor).  See ``_run`` on derandomize.
Measured on 2 busy cores, inductor's cache warm: the module took about 75 s with
1,500 examples and 4 fused (the examples 52 s, the fused sample 6 s, the examples of
the tensor-level constructs below the regressions 7 s); the slow tests, at the same
rates, take about an hour for the 100,000 and 15 minutes for the 200.  The normal
run was cut to 900 and 3, then (with the later constructs' tests) to 600, to keep the
whole test run near ten minutes.

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
11. ``state s = where(ndim >= 2, norm(g), g)`` failed (TypeError) on the multi-tensor path
    for matrices: the program for ndim >= 2 fills the full buffer with norm(g), and
    torch._foreach_norm gives a tuple, which the fill took as one value.  Fix
    (nos/compile/executors.py ``run_foreach``): a tuple is one value per tensor too.
12. ``drop(sum(g), 0)`` failed (an in-place multiply of a 0-d tensor by a full mask): the
    result was labelled with its operand's reduced shape.  Fix (nos/compile/program.py):
    a draw has the parameter's shape.
13. ``state r = lerp(r, rowmean(g^2), 0.1)`` failed on a vector or a 0-d tensor: the
    buffer was made in the tensor's own shape, (1,) for a vector of 5, not in its 2-d
    view's, (5, 1).  Fix (nos/optim/optimizer.py): buffers of a rule that reads rows or
    columns are made for the 2-d view.
14. ``lerp(1, 2, g)`` failed (TypeError): both ends numbers, nos.lang.ops._t_lerp called
    torch.full_like on a number.  Fix (nos/lang/ops.py): the ends take the weight's
    shape.

Found with the later constructs (each has a test below, under "reductions over every
parameter, w = expr, from, views and the shorthand"):
17. ``state d = d + lr from colmean(w)`` on a vector started d at the vector, not at its
    mean, and a view ``eval_w = w + colmean(w)`` showed w + w: the from value and the
    views were read on the parameter's own shape, not on its 2-D view, where the rule
    does not otherwise read rows or columns (a vector is a column).  Fix
    (nos/optim/optimizer.py): both read w (and a full buffer) as the 2-D view.
18. a rule that reads rows or columns with views on a vector: ``eval()`` failed
    (RuntimeError, a (5, 1) view broadcast with a (5,) buffer to (5, 5)), and ``train()``
    without train_w failed to copy the kept value into the (5, 1) view.  Same fix.
19. ``eval_w = where(rows > cols, w, 1 - gamma)``: ``eval()`` failed (KeyError 'gamma')
    for a tensor whose group's program, specialised for rows > cols, did not keep gamma.
    Fix (nos/optim/optimizer.py): a view's where on params and facts is decided as the
    group's program decides it.

Fixed since: 15. a switch read only by dead code was looked up among the live params
(KeyError); switches are now found in the live statements.  16. ``sum``, ``norm`` and
``newton_schulz`` of a value stored reduced (``sum(rowmean(g))``) reduced the stored
elements, and a group's program could narrow a value the rule's stores full; the
compiler now broadcasts their operand to the full shape first.

By design (``known_bug`` rejects these examples; a strict xfail test records it): a
switch changed between steps (``update = where(p, s, g)`` with ``state s = s + g``, p
from 0 to 1 halfway) starts the buffers only the branch now taken reads from where they
were left (0, or stale): a group's program keeps only the branch its switches take.  (A
rule with global reductions is not specialised: every group runs the rule's program.)
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
from nos.compile.compiler import compile_rule
from nos.compile.program import Program
from nos.lang.rule import Rule
from nos.lang.tree import TENSOR_FACTS, Statement
from tests.compile.interpreter import LANGUAGE, Interpreter, matrix_shape, tensor_facts

STEPS = 10
TOLERANCE = 1e-12  # executors against the interpreter
STABLE = 1e-13  # the interpreter at float64 against itself at extended precision
NUMBERS = (0.0, 1.0, 2.0, 0.5, 0.9, 0.999, 3.0, 1e-8, 0.1, 1.5, 10.0, 0.25, 4.0)
POWERS = ("2", "3", "0.5", "(-1)", "0", "1", "1.5", "(-2)", "(-0.5)")
OWN_VALUES = (0.0, 0.3, -0.7, 1.0, 2.5, 0.9, -2.0)
PRELUDE_VALUES = {"beta1": (0.0, 0.5, 0.9), "beta2": (0.0, 0.9, 0.999), "beta3": (0.5, 0.99),
                  "eps": (0.0, 1e-8, 0.1)}  # within the prelude's bounds
PRELUDE_NAMES = ("m", "v", "gamma", "m_hat", "v_hat", "gamma_hat", "adam", "rmsprop")
PRELUDE_STATES = ("m", "v", "gamma")  # the prelude's buffers, which views may read
LRS = (0.0, 1e-3, 0.01, 0.1, 0.5, 1.0)

# --- the rule generator ---------------------------------------------------------------


@dataclass
class Scope:
    """The names an expression may read at its place in the rule."""

    params: list[str]  # the rule's own params
    states: list[str]  # every buffer: before its statement the old value, after it the new
    lets: list[str] = field(default_factory=list)  # the lets defined so far
    random: bool = True  # noise, annealed_noise and drop allowed
    matrix: bool = False  # newton_schulz allowed (the rule then steps 2-D tensors only)
    reductions: bool = False  # gsum, gmean, gnorm, grms, gamax and clip_gnorm allowed
    shorthand: bool = False  # dot, cosine, winmax and winmin allowed
    view: bool = False  # a view's expression: w, t, lr, facts, params and buffers only


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
COMPARISONS = ("<", "<=", ">", ">=", "==", "!=")
REDUCTIONS = ("sum({})", "mean({})", "norm({})", "rms({})", "amax({})", "rowmean({})",
              "colmean({})", "rowmean({})", "colmean({})")
LERP_WEIGHTS = ("0.1", "0.5", "0.9", "(-0.5)", "2", "1", "0.49", "0")
FACTS = ("lr", "ndim", "rows", "cols", "numel", "machine_eps")
SCHEDULE_ARGS = ("1", "0.5", "2", "3", "(-1)", "(-0.5)", "t", "beta1")
RANDOM_SOURCES = ("noise", "annealed_noise", "drop(noise, 0.3)", "drop(sign(g), 0.5)",
                  "drop(annealed_noise, 0.25)")
RANDOM_WRAPPERS = ("(abs(clip({}, 0)) + 1)", "max({}, 50)", "min({}, -50)", "abs(sign({}))")
NS_COEFFICIENTS = ("3.4445, (-4.775), 2.0315", "1.5, (-0.5), 0", "2, (-1.5), 0.5")
NS_INPUTS = ("g", "w", "m", "rowmean(g)", "colmean(w)")
GLOBAL_REDUCTIONS = ("gsum({})", "gmean({})", "gnorm({})", "grms({})", "gamax({})")
SHORTHAND = ("dot({}, {})", "cosine({}, {})", "winmax({}, {})", "winmin({}, {})")
# what a state's from may read: w, the tensor's facts, params and numbers
INITS = ("w", "w", "1", "(-0.5)", "numel", "w * 2", "abs(w) + 1", "mean(w)", "rowmean(w)",
         "colmean(w)", "norm(w) / numel")


def _scalar(pick: Pick, scope: Scope, switch: bool = True) -> str:
    """A value that is the same for every element: numbers, params, t, T, schedules, lr,
    the tensor's facts, and a where of them."""
    kinds = ["number", "number", "t", "prelude", "fact"]
    kinds += ["T", "ld", "schedule"] * (not scope.view)
    kinds += ["switch"] * switch + ["param"] * 3 * bool(scope.params)
    kind = pick.one(kinds)
    if kind in ("t", "T", "ld"):
        return kind
    if kind == "schedule":
        return f"{pick.one(['cd', 'rd'])}({pick.one(SCHEDULE_ARGS + tuple(scope.params))})"
    if kind == "number":
        return _number(pick.draw(_ROUNDED) if pick.chance() else pick.one(NUMBERS))
    if kind == "prelude":
        return pick.one(["beta1", "beta2", "beta3", "eps"])
    if kind == "fact":
        return pick.one(FACTS)
    if kind == "switch":
        a, b = _scalar(pick, scope, False), _scalar(pick, scope, False)
        return f"where({_condition(pick, scope)}, {a}, {b})"
    return pick.one(scope.params)


def _condition(pick: Pick, scope: Scope) -> str:
    """A condition the same for every element: a param (a switch: each group's program is
    compiled for its value), a comparison of one or of a tensor fact, t or lr."""
    options = ["ndim >= 2", "rows > cols", "numel == 1", "t == 1", "t > 3", "lr > 0.05"]
    for p in scope.params:
        options += [p, p, f"{p} > 0", f"{p} != 0"]
    return pick.one(options)


def _random_invariant(pick: Pick) -> str:
    """A random draw in a context whose value does not depend on the draw (almost surely:
    |noise| < 50, and sign(noise) is never 0; drop(..) is 0 where sign would tell)."""
    source = pick.one(RANDOM_SOURCES)
    wrappers = RANDOM_WRAPPERS[:3] if source.startswith("drop") else RANDOM_WRAPPERS
    return pick.one(wrappers).format(source)


def _leaf(pick: Pick, scope: Scope) -> str:
    if scope.view:  # what optimizer.eval() knows: no g, no draw, no let
        kinds = ["w", "w", "w", "scalar", "scalar", "prelude"] + ["state"] * 4
    else:
        kinds = ["g", "g", "g", "w", "w", "scalar", "scalar", "scalar", "prelude"]
        kinds += ["state"] * 6 + ["let"] * bool(scope.lets) * 3 + ["random"] * scope.random
    kind = pick.one(kinds)
    if kind in ("g", "w"):
        return kind
    if kind == "scalar":
        return _scalar(pick, scope)
    if kind == "prelude":
        return pick.one(PRELUDE_STATES if scope.view else PRELUDE_NAMES)
    if kind == "state":
        return pick.one(scope.states)
    if kind == "let":
        return pick.one(scope.lets)
    return _random_invariant(pick)


def expression(pick: Pick, scope: Scope, depth: int = 3) -> str:
    """A random expression over every operator and function of the language."""
    if depth <= 0 or pick.integer(0, 3) == 0:
        return _leaf(pick, scope)
    forms = ["unary"] * 3 + ["binary"] * 5 + ["power", "clipc", "compare", "where", "where",
                                                "lerp", "reduce", "reduce"]
    if scope.view:
        forms.remove("reduce")  # one of two: views read fewer kinds of value
    forms += ["drop"] * scope.random + ["newton_schulz"] * scope.matrix
    forms += ["global"] * 3 * scope.reductions + ["shorthand"] * 2 * scope.shorthand
    form = pick.one(forms)
    if form == "unary":
        return pick.one(UNARY).format(expression(pick, scope, depth - 1))
    if form == "binary":
        left = expression(pick, scope, depth - 1)
        return pick.one(BINARY).format(left, expression(pick, scope, depth - 1))
    if form == "newton_schulz":
        return _newton_schulz(pick, scope, depth - 1)
    x = expression(pick, scope, depth - 1)
    if form == "power":
        return f"({x} ^ {pick.one(POWERS)})"
    if form == "clipc":
        return f"clip({x}, {pick.one(['0.5', '2', '0', '(-1)'])})"
    if form == "reduce":
        return pick.one(REDUCTIONS).format(x)
    if form == "global":
        if pick.integer(0, 3) == 0:  # clip_gnorm(x, c), c of no tensor
            return f"clip_gnorm({x}, {pick.one(['1', '0.5', '1e-3', *scope.params])})"
        return pick.one(GLOBAL_REDUCTIONS).format(x)
    if form == "shorthand":
        template = pick.one(SHORTHAND)
        if template.startswith("win"):  # a window of the last 1 to 4 values
            return template.format(x, pick.integer(1, 4))
        return template.format(x, expression(pick, scope, depth - 1))
    if form == "compare":
        return f"({x} {pick.one(COMPARISONS)} {expression(pick, scope, depth - 1)})"
    if form == "where":
        kind = pick.integer(0, 2)
        if kind == 0:
            condition = _condition(pick, scope)
        elif kind == 1:
            condition = (f"{expression(pick, scope, depth - 1)} {pick.one(COMPARISONS)} "
                         f"{expression(pick, scope, depth - 1)}")
        else:
            condition = expression(pick, scope, depth - 1)
        return f"where({condition}, {x}, {expression(pick, scope, depth - 1)})"
    if form == "lerp":
        kind = pick.integer(0, 2)
        weight = (pick.one(LERP_WEIGHTS) if kind == 0 else _scalar(pick, scope) if kind == 1
                  else expression(pick, scope, depth - 1))
        return f"lerp({x}, {expression(pick, scope, depth - 1)}, {weight})"
    # drop with p = 0 keeps x, with p >= 1 zeroes it: deterministic whatever the draw
    return f"drop({x}, {pick.one(['0', '1', '2', 't', '(1 - 1)'])})"


def _newton_schulz(pick: Pick, scope: Scope, depth: int) -> str:
    """newton_schulz in float64 (bits 64 or 0: the parameters' own) of a matrix: g, w, m, a
    row or column average, or an expression made full-shaped (a number per tensor, as
    sum(x), is no matrix)."""
    x = pick.one(NS_INPUTS) if pick.chance() else f"({expression(pick, scope, depth)} + 0 * g)"
    if scope.params and pick.integer(0, 3) == 0:
        coefficients = ", ".join(pick.one(scope.params + ["1.5", "(-0.5)"]) for _ in range(3))
    else:
        coefficients = pick.one(NS_COEFFICIENTS)
    steps, eps = pick.one(["0", "1", "2", "3", "5"]), pick.one(["1e-7", "0.1", "0"])
    return f"newton_schulz({x}, {coefficients}, {steps}, {eps}, {pick.one(['64', '0'])})"


def _state_statement(pick: Pick, name: str, scope: Scope) -> str:
    """A buffer's statement (see _state_value), in one of six with an initial value: w,
    a number, a param or a function of w and the tensor's facts."""
    text = _state_value(pick, name, scope)
    if pick.integer(0, 23) > 0:
        return text
    return f"{text} from {pick.one(INITS + tuple(scope.params))}"


def _state_value(pick: Pick, name: str, scope: Scope) -> str:
    """A buffer's statement: an expression, a running average (what the compiler fuses
    into axpby and addcmul), a copy of another buffer, of itself, of an input, a scalar, a
    number kept per tensor, a running average of rows or columns, or a sum of reductions."""
    kinds = ["expr"] * 5 + ["average"] * 2 + ["product", "copy", "copy", "self", "input",
                                                "scalar", "number", "rowcol", "rowcol",
                                                "reduced"]
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
    if kind == "number":  # no tensor: one number per tensor
        if pick.chance():
            return f"state {name} = where(t == 1, {_scalar(pick, scope)}, {name}) * {a}"
        return f"state {name} = {a} * {name} + {_scalar(pick, scope)}"
    if kind == "rowcol":
        mean = pick.one(["rowmean", "colmean"])
        if pick.chance():
            return f"state {name} = lerp({name}, {mean}({x}), {a})"
        return f"state {name} = {a} * {name} + {_scalar(pick, scope)} * {mean}({x} ^ 2)"
    if kind == "reduced":
        return f"state {name} = {a} * {name} + {pick.one(REDUCTIONS).format(x)}"
    if kind == "average":
        b = f"(1 - {a})" if pick.chance() else _scalar(pick, scope)
        return f"state {name} = {a} * {name} + {b} * {x}"
    b, y = _scalar(pick, scope), expression(pick, scope, 1)
    return f"state {name} = {a} * {name} + {b} * {x} * {y}"


UPDATES = ("{x} / (sqrt(abs({y})) + {c})", "{c} * {x} + {d} * w", "{x} * {y} * {c}",
           "({x} - {y}) / {c}", "-{x} + w * {c}", "{x} / {c} / ({y} + {d})")


def _update_expression(pick: Pick, scope: Scope) -> str:
    """The update: an expression, or a form the compiler folds into the parameter step
    (addcdiv, addcmul, several terms, the parameter scaled); mostly reading a buffer; in a
    rule of matrices, mostly a scaled newton_schulz (as Muon)."""
    if scope.matrix and pick.integer(0, 3) > 0:
        ns = _newton_schulz(pick, scope, 2)
        update = f"{_scalar(pick, scope)} * {ns} + {_scalar(pick, scope)} * w"
    elif pick.chance():
        update = expression(pick, scope)
    else:
        x, y = expression(pick, scope, 2), expression(pick, scope, 1)
        c, d = _scalar(pick, scope), _scalar(pick, scope)
        update = pick.one(UPDATES).format(x=x, y=y, c=c, d=d)
    if pick.integer(0, 3) > 0:  # most updates read a buffer, so that buffers stay live
        sign, c = pick.one(["+", "-"]), _scalar(pick, scope)
        update = f"{update} {sign} {c} * {pick.one(scope.states)}"
    return update


def _set_expression(pick: Pick, scope: Scope) -> str:
    """The parameter's new value (``w = ...``): a step of lr or of a scalar, a lerp towards
    an expression, or an expression."""
    kind = pick.integer(0, 3)
    if kind == 0:
        return f"w - lr * ({_update_expression(pick, scope)})"
    if kind == 1:
        return f"w - {_scalar(pick, scope)} * ({_update_expression(pick, scope)})"
    if kind == 2:
        x = expression(pick, scope, 2)
        return f"lerp(w, {x}, {pick.one(LERP_WEIGHTS)})"
    return expression(pick, scope)


def _views(pick: Pick, scope: Scope) -> list[str]:
    """eval_w, and in half the rules that have it train_w: expressions of w, t, lr, the
    tensor's facts, params and buffers."""
    seen = Scope(scope.params, scope.states, random=False, view=True)
    lines = [f"eval_w = {expression(pick, seen, 2)}"]
    if not pick.chance():
        lines.append(f"train_w = {expression(pick, seen, 2)}")
    return lines


@dataclass(frozen=True)
class GroupSpec:
    lr: float
    hyper: dict[str, float]
    tensor_lr: bool = False  # give the optimizer torch.tensor(lr)
    maximize: bool | None = None  # None: not given (the optimizer's default)


# --- the data's layout ----------------------------------------------------------------

SHAPES = ((), (5,), (2, 4, 3), (3, 4))  # 0-d, 1-d, 3-d, a strided 2-d view
MATRIX_SHAPES = ((2, 5), (4, 3), (1, 3), (3, 4))  # for newton_schulz: wide, tall, a row, a view
GROUP_OF = (0, 1, 0, 1)  # the param group of each tensor
THREE_GROUPS = (0, 1, 2, 1)  # in one example of four: the 3-d tensor in a group of its own
BASE_SHAPE = (7, 9)  # the last tensor is a view, base[1:5, 2:8:2].t()


@dataclass(frozen=True)
class Case:
    """One generated example: a rule, two (or three) param groups, T, and the data's seed.

    With ``defaults``, group 0's hyperparameters (and maximize) are the optimizer's keyword
    arguments (its defaults, which the other groups inherit where they set none) instead of
    group 0's own.  With ``swap``, the groups swap their params' values halfway, group k
    taking those of group n - 1 - k (written into ``param_groups``, as a user or a
    scheduler would).  The lr of step k (from 0) is ``lr *
    decay^k``, set before the step (a tensor lr is filled in place).  A rule that calls
    newton_schulz steps 2-D tensors only (``MATRIX_SHAPES``).
    """

    text: str
    groups: tuple[GroupSpec, ...]
    total_steps: int
    seed: int
    defaults: bool = False
    swap: bool = False
    decay: float = 1.0

    @property
    def rule(self) -> Rule:
        return _parse(self.text)

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        return MATRIX_SHAPES if "newton_schulz" in self.text else SHAPES

    @property
    def group_of(self) -> tuple[int, ...]:
        """The param group of each tensor."""
        return GROUP_OF if len(self.groups) == 2 else THREE_GROUPS

    def per_tensor(self, values: Sequence) -> list:
        """One value per group as one value per tensor."""
        return [values[k] for k in self.group_of]

    def values(self, k: int) -> dict[str, float]:
        """Group k's value of every param the rule declares (its prelude's included)."""
        declared = {s.name: s.default for s in self.rule.expanded().statements
                    if s.kind == "param"}
        inherited = self.groups[0].hyper if self.defaults else {}
        return {**declared, **inherited, **self.groups[k].hyper}  # type: ignore[dict-item]

    def maximize(self, k: int) -> bool:
        """Whether group k steps up the gradient (given, inherited, or False)."""
        own = self.groups[k].maximize
        if own is not None:
            return own
        return bool(self.groups[0].maximize) if self.defaults else False


@functools.lru_cache(maxsize=64)
def _parse(text: str) -> Rule:
    return nos.parse(text)


@st.composite
def rule_texts(draw, random: bool = True) -> str:
    """A multi-statement rule as text: params, 1-5 buffers, lets and the update, any order;
    one in eight is a rule of matrices (newton_schulz)."""
    pick = Pick(draw)
    n_states, n_lets = pick.integer(1, 5), pick.integer(0, 3)
    params = [f"p{i}" for i in range(pick.integer(0, 3))]
    states = [f"s{i}" for i in range(n_states)]
    slots = [("state", s) for s in states] + [("let", f"l{i}") for i in range(n_lets)]
    order = draw(st.permutations([*slots, ("update", "update")]))
    scope = Scope(params, states, random=random, matrix=pick.integer(0, 7) == 0,
                  reductions=pick.integer(0, 2) == 0, shorthand=pick.integer(0, 2) == 0)
    lines = []
    for kind, name in order:
        if kind == "state":
            lines.append(_state_statement(pick, name, scope))
        elif kind == "let":
            lines.append(f"let {name} = {expression(pick, scope)}")
            scope.lets.append(name)
        elif pick.integer(0, 15) == 0:
            lines.append(f"w = {_set_expression(pick, scope)}")
        else:
            expr = _update_expression(pick, scope)
            lines.append(f"update = {expr}" if pick.chance() else expr)
    if pick.integer(0, 15) == 0:
        lines += _views(pick, scope)
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
    return GroupSpec(pick.one(LRS), hyper, pick.chance(), pick.one([None, None, False, True]))


@st.composite
def cases(draw, random: bool = True) -> Case:
    """A rule, its hyperparameters for two groups (three in one example of four), T, the
    data's seed, and how the hyperparameters are given."""
    pick = Pick(draw)
    text = draw(rule_texts(random))
    declared = [s.name for s in _parse(text).expanded().statements if s.kind == "param"]
    groups = tuple(_group(pick, declared) for _ in range(3 if pick.integer(0, 7) == 0 else 2))
    return Case(text, groups, pick.integer(1, 15), draw(_SEEDS), pick.chance(),
                pick.integer(0, 3) == 0, pick.one([1.0, 0.8]))


_SEEDS = st.integers(0, 2**32 - 1)


# --- the data, the runs and the comparison ---------------------------------------------


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
    def make(seed: int, shapes: Sequence[tuple[int, ...]] = SHAPES) -> Data:
        rng = np.random.default_rng(seed)
        init = [rng.standard_normal(shape) for shape in shapes]
        skip = rng.choice([0.0, 0.0, 0.1, 0.25])
        grads, active = [], []
        for _ in range(STEPS):
            scale = rng.choice([1e-3, 1.0, 1.0, 1e3])
            step = []
            for shape in shapes:
                g = rng.standard_normal(shape) * scale
                step.append(np.where(rng.random(shape) < 0.1, 0.0, g))  # some exact zeros
            grads.append(step)
            active.append([bool(rng.random() >= skip) for _ in shapes])
        return Data(init, grads, active)


def _flat(arrays) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1) for a in arrays])


@dataclass
class Trace:
    """The flat parameter values after each step, and the final buffers, each broadcast to
    every element of its tensor (a number or a row average repeated); for the interpreter,
    also the rounding scale of each step's parameters (see compare) and each buffer's
    shape per tensor; for an optimizer, the elements of each buffer it keeps (a buffer
    that a group's specialised program does not need is not kept)."""

    steps: list[np.ndarray]
    buffers: dict[str, np.ndarray]
    scales: list[np.ndarray] | None = None
    shapes: dict[str, list[tuple[int, ...]]] | None = None  # interpreter: buffers' shapes
    views: list[tuple[int, ...]] | None = None  # interpreter: the tensors' 2-D views
    kept: dict[str, np.ndarray] | None = None  # optimizer: elements of each kept buffer
    shown: tuple[np.ndarray, np.ndarray] | None = None  # after eval(), then train()


def _tensors(data: Data) -> tuple[list[torch.Tensor], torch.Tensor]:
    base = torch.full(BASE_SHAPE, 7.0, dtype=torch.float64)
    tensors = [torch.tensor(x, dtype=torch.float64) for x in data.init[:-1]]
    view = _view(base)
    view.copy_(torch.from_numpy(data.init[-1]))
    return [*tensors, view], base


def _grad(g: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    if like.dim() == 2:  # a non-contiguous gradient for a matrix
        return torch.from_numpy(np.ascontiguousarray(g.T)).t()
    return torch.from_numpy(g.copy())


def _optimizer(case: Case, tensors: list[torch.Tensor], **kwargs) -> nos.Optimizer:
    groups = []
    for i, spec in enumerate(case.groups):
        lr = torch.tensor(spec.lr, dtype=torch.float64) if spec.tensor_lr else spec.lr
        hyper = {} if case.defaults and i == 0 else dict(spec.hyper)
        if spec.maximize is not None and not (case.defaults and i == 0):
            hyper["maximize"] = spec.maximize
        groups.append({"params": [p for p, k in zip(tensors, case.group_of) if k == i], "lr": lr,
                       **hyper})
    defaults = dict(case.groups[0].hyper) if case.defaults else {}
    if case.defaults and case.groups[0].maximize is not None:
        defaults["maximize"] = case.groups[0].maximize
    return nos.Optimizer(groups, case.rule, total_steps=case.total_steps, **defaults, **kwargs)


def _as_view(value, view: tuple[int, ...]) -> np.ndarray:
    """A buffer as the interpreter's flat comparison sees it: every element of the tensor's
    2-D view (a number or a reduced tensor broadcast; None, a buffer not yet made, is 0)."""
    if value is None or isinstance(value, float):
        return np.full(view, value or 0.0)
    array = value.detach().numpy()
    if array.size == math.prod(view):
        return array.reshape(view)
    return np.broadcast_to(array.reshape((1,) * (len(view) - array.ndim) + array.shape), view)


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
    buffers, kept = {}, {}
    views = [matrix_shape(tuple(p.shape)) for p in tensors]
    # a number kept per tensor is a float; a tensor never stepped has no state (its buffers
    # are 0); a stepped tensor whose group's program does not need a buffer does not keep it
    for name in (*opt.program.buffers, *opt.program.scalar_state):
        values = [opt.state[p].get(name) for p in tensors]
        buffers[name] = _flat(_as_view(v, view) for v, view in zip(values, views))
        kept[name] = _flat(np.full(view, v is not None or not opt.state[p])
                           for v, view, p in zip(values, views, tensors)) > 0
    shown = None
    if any(s.kind == "view" for s in case.rule.statements):
        opt.eval()
        evaluated = _flat(p.detach().numpy() for p in tensors)
        opt.train()
        shown = (evaluated, _flat(p.detach().numpy() for p in tensors))
    return Trace(steps, buffers, kept=kept, shown=shown)


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
            group.update(case.values(len(groups) - 1 - i))


PERTURBATION = 1e-15  # relative, of the state after each step (see unstable)


def run_interpreter(case: Case, data: Data, dtype: type = np.float64,
                    zeros: str | None = None, perturb: bool = False,
                    nudge: float = 0.0) -> Trace:
    """The interpreter's trace; dtype, zeros, perturb and nudge are for the stability
    checks."""
    values = [case.values(k) for k in range(len(case.groups))]
    jitter = np.random.default_rng(case.seed)
    hyper = {name: case.per_tensor([v[name] for v in values]) for name in values[0]}
    maximize = case.per_tensor([case.maximize(k) for k in range(len(case.groups))])
    w = _flat(data.init)
    interp = Interpreter(case.rule, case.shapes, hyper, case.total_steps, dtype=dtype,
                         zeros=zeros, nudge=nudge)
    steps, scales, moved = [], [], np.zeros(w.size)
    with np.errstate(all="ignore"):
        for k, (grads, active) in enumerate(zip(data.grads, data.active)):
            lr = case.per_tensor([g.lr * case.decay**k for g in case.groups])
            if case.swap and k == STEPS // 2:
                interp.params.update({name: case.per_tensor([v[name] for v in values[::-1]])
                                      for name in values[0]})
            w = interp.step(w, _flat(grads), lr, active, maximize)
            moved = moved + interp.step_size.astype(np.float64)
            scale = np.maximum(np.abs(w), np.nan_to_num(moved, posinf=0.0))
            if perturb:  # as an executor's roundings may, at the scale of the comparison
                w = w + _jitter(jitter, scale)
                interp.buffers = {name: [b + _jitter(jitter, np.abs(b)) for b in per_tensor]
                                  for name, per_tensor in interp.buffers.items()}
            steps.append(w.astype(np.float64))
            scales.append(scale)
        buffers = {name: interp.flat_buffer(name).astype(np.float64)
                   for name in interp.buffers}
    shown = None
    if any(s.kind == "view" for s in case.rule.statements):
        last = case.per_tensor([g.lr * case.decay**(STEPS - 1) for g in case.groups])
        shown = tuple(v.astype(np.float64) for v in interp.shown(w, last))
    shapes = {name: [b.shape for b in per_tensor] for name, per_tensor in interp.buffers.items()}
    return Trace(steps, buffers, scales, shapes, interp.views, shown=shown)


def _jitter(jitter: np.random.Generator, scale: np.ndarray) -> np.ndarray:
    return PERTURBATION * scale * jitter.choice([-1.0, 1.0], np.shape(scale))


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


def _spread(finite: np.ndarray, views: list[tuple[int, ...]],
            shapes: list[tuple[int, ...]]) -> np.ndarray:
    """The elements where a buffer of these shapes (one per tensor) is compared: those whose
    reduced elements (all of a tensor for a number) are all finite."""
    out, start = [], 0
    for view, shape in zip(views, shapes):
        size = math.prod(view)
        part = finite[start:start + size].reshape(view)
        start += size
        axes = tuple(k for k in range(len(view)) if not shape or shape[k] == 1)
        out.append(np.broadcast_to(np.all(part, axis=axes, keepdims=True), view).reshape(-1))
    return np.concatenate(out)


def compare(actual: Trace, expected: Trace, tol: float,
            buffers: dict[str, np.ndarray | bool]) -> str | None:
    """None when the traces agree, else a description of the first disagreement; buffers
    maps the buffers to compare to the elements where they are compared.

    The parameters after step k are compared at the scale max(1, |w_k|, sum over steps
    j <= k of |lr| * the magnitude of the update's additive parts): an executor may apply
    the parts of ``update = a - b`` as two steps, w - lr a + lr b, whose rounding is
    that of lr a, not of lr (a - b).  A buffer is compared where the parameter never
    diverged (for a reduced buffer: where none of the elements it reduces did).
    """
    scales = expected.scales or [None] * len(expected.steps)
    for k, (a, e) in enumerate(zip(actual.steps, expected.steps)):
        bad = disagreement(a, e, tol, scales[k])
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            return f"parameters after step {k + 1}, element {i}: {a[i]!r} != {e[i]!r}"
    finite = np.all([np.isfinite(e) for e in expected.steps], axis=0)  # never diverged
    for name in sorted(set(buffers) & set(expected.buffers)):  # not nos's windows (__win)
        a, e = actual.buffers[name], expected.buffers[name]
        where = finite
        if expected.shapes is not None and expected.views is not None:
            where = _spread(finite, expected.views, expected.shapes[name])
        bad = disagreement(a, e, tol) & where & buffers[name]
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            return f"buffer {name} after {STEPS} steps, element {i}: {a[i]!r} != {e[i]!r}"
    if expected.shown is not None and actual.shown is not None:
        # on the tensors that never diverged (a view reads buffers compared only there)
        where = finite
        if expected.views is not None:
            where = _spread(finite, expected.views, [()] * len(expected.views))
        for label, a, e in zip(("eval()", "train()"), actual.shown, expected.shown):
            scale = np.abs(e) if scales[-1] is None else np.maximum(np.abs(e), scales[-1])
            bad = disagreement(a, e, tol, scale) & where
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                return f"parameters after {label}, element {i}: {a[i]!r} != {e[i]!r}"
    return None


NUDGE = 1e-15  # relative, of each reduction's result (see unstable)


def unstable(case: Case, data: Data, expected: Trace) -> str | None:
    """Why the interpreter's float64 trace is no reference at 1e-12, if it is not: it
    moves by more than 1e-13 at extended precision with the zeros rewritten to +0, -0 or
    a random sign (float64 rounding, the sign of a zero), or at float64 with the state
    moved by 1e-15 of its scale after each step (the parameters at the scale compare
    uses: a value whose exactness matters, as (-2)^w at w = 1, or a rule that amplifies
    what an executor may round differently) and every reduction's result moved up, then
    down, by 1e-15 of the magnitude it sums (a sum whose sign is its rounding, as
    sum(g - mean(g)) > 0, depends on the order of the additions)."""
    everything: dict[str, np.ndarray | bool] = dict.fromkeys(expected.buffers, True)
    checks: list[tuple[str, dict]] = [
        (zeros, {"dtype": np.longdouble, "zeros": zeros}) for zeros in ("+", "-", "random")]
    checks += [("perturbed up", {"perturb": True, "nudge": NUDGE}),
               ("perturbed down", {"perturb": True, "nudge": -NUDGE})]
    for label, options in checks:
        check = run_interpreter(case, data, **options)
        problem = compare(expected, check, STABLE, everything)
        if problem is not None:
            return f"{label}: {problem}"
    return None


EXECUTORS = {"foreach": {"foreach": True}, "reference": {"foreach": False}}
# and the default path again, through a checkpoint halfway (run_optimizer's resume)
RUNS = {**EXECUTORS, "foreach, resumed from a state_dict halfway": {"resume": True}}


def switches(statements: Sequence[Statement]) -> set[str]:
    """The params that decide a where by themselves (its condition reads only params and
    tensor facts): each group's program is compiled for their values."""
    params = {s.name for s in statements if s.kind == "param"}
    found: set[str] = set()
    for s in statements:
        for node in s.expr.walk() if s.expr is not None else ():
            if node.op == "where" and node.args[0].names() <= params | TENSOR_FACTS:
                found |= node.args[0].names() & params
    return found


def programs(case: Case) -> list[Program]:
    """The programs nos.Optimizer compiles for the example: the rule's own, and one for each
    group (before and after a swap) and tensor facts, specialised for the group's zero params
    and its switches' values (as nos.Optimizer._key does)."""
    base = compile_rule(case.rule)
    switched = sorted(base.switches - TENSOR_FACTS)
    found = {id(base): base}
    for values in (case.values(k) for k in range(len(case.groups))):
        zeros = frozenset(name for name in base.params if values[name] == 0)
        for shape in case.shapes:
            facts = tensor_facts(shape)
            fixed = tuple((name, float(values[name])) for name in switched if name not in zeros)
            fixed += tuple((name, float(facts[name])) for name in sorted(base.switches)
                           if name in TENSOR_FACTS)
            program = compile_rule(case.rule, zeros, fixed=fixed)
            found[id(program)] = program
    return list(found.values())


def known_bug(case: Case) -> str | None:
    """Which open nos bug the example would meet, if any (each has a strict xfail test,
    test_known_bug_*: when a bug is fixed, its test fails, and its clause here goes)."""
    if compile_rule(case.rule).crosses:  # one program for every group: nothing specialised
        return None
    statements = case.rule.expanded().statements
    switched = switches(statements)
    n = len(case.groups)
    if case.swap and any(case.values(k)[p] != case.values(n - 1 - k)[p]
                         for p in switched for k in range(n)):
        return "a switch changed halfway (the buffers of the branch not taken were not kept)"
    return None


FUSED_REFUSES = "fused=True does not support reductions over all parameters"


def check_case(case: Case, executors: dict[str, dict]) -> None:
    """Every executor agrees with the interpreter.  A disagreement on an example whose
    reference is unstable (see unstable) is no failure: hypothesis rejects the example.
    (Stability is checked only then: it costs five more runs of the interpreter.)  So are
    the examples that meet a known, open bug of nos (see known_bug).  The fused path
    refuses a rule with global reductions (gsum, clip_gnorm, ...): that is checked
    instead."""
    if known_bug(case) is not None:
        reject()
    data = Data.make(case.seed, case.shapes)
    expected = run_interpreter(case, data)
    for label, kwargs in executors.items():
        if kwargs.get("fused") and compile_rule(case.rule).crosses:
            with pytest.raises(ValueError, match=FUSED_REFUSES):
                run_optimizer(case, data, **kwargs)
            continue
        actual = run_optimizer(case, data, **kwargs)
        problem = compare(actual, expected, TOLERANCE, actual.kept or {})
        if problem is not None and unstable(case, data, expected) is not None:
            reject()
        assert problem is None, f"{label}: {problem}\nrule:\n{case.text}\n{case}"


EXAMPLES, SLOW_EXAMPLES = 600, 100_000
FUSED_EXAMPLES, SLOW_FUSED_EXAMPLES = 3, 200


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
                fused: bool = False, groups: tuple[GroupSpec, ...] | None = None,
                **options) -> None:
    """The rule agrees with the interpreter on every executor (fused on request: slow), on
    data (seed 5) where the interpreter's reference is stable for every rule here; the
    groups are (lr, hyper) and (lr / 2, defaults) unless given; options go to Case."""
    groups = groups or (GroupSpec(lr, hyper or {}), GroupSpec(lr / 2, {}))
    case = Case(text, groups, 4, seed=5, **options)
    assert known_bug(case) is None, known_bug(case)
    data = Data.make(case.seed, case.shapes)
    problem = unstable(case, data, run_interpreter(case, data))
    assert problem is None, f"not a usable regression rule: {problem}"
    check_case(case, ALL_EXECUTORS if fused else RUNS)


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


# --- the tensor-level constructs, one at a time ------------------------------------------


def _agree(text: str, shapes: Sequence[tuple[int, ...]], executors: dict[str, dict] | None = None,
           steps: int = 4, lr: float = 0.1, maximize: bool = False, **hyper) -> nos.Optimizer:
    """Every executor (one group of float64 tensors of these shapes, seeded N(0, 1) data)
    agrees with the interpreter: the parameters after each step and the buffers at the
    end, at TOLERANCE.  Returns the last optimizer."""
    rng = np.random.default_rng(7)
    init = [rng.standard_normal(shape) for shape in shapes]
    grads = [[rng.standard_normal(shape) for shape in shapes] for _ in range(steps)]
    interp = Interpreter(nos.parse(text), shapes, hyper)
    expected, w = [], _flat(init)
    for k in range(steps):
        w = interp.step(w, _flat(grads[k]), lr, maximize=maximize)
        expected.append(w)
    views = [matrix_shape(tuple(shape)) for shape in shapes]
    for label, options in (executors or ALL_EXECUTORS).items():
        tensors = [torch.tensor(x) for x in init]
        opt = nos.Optimizer(tensors, text, lr=lr, maximize=maximize, **hyper, **options)
        for k in range(steps):
            for p, g in zip(tensors, grads[k]):
                p.grad = torch.tensor(g)
            opt.step()
            actual = _flat(p.detach().numpy() for p in tensors)
            bad = disagreement(actual, expected[k], TOLERANCE)
            assert not bad.any(), (label, k, actual[bad], expected[k][bad])
        for name in (*opt.program.buffers, *opt.program.scalar_state):
            if name not in interp.buffers:  # a window of winmax or winmin: nos's own
                continue
            actual = _flat(_as_view(opt.state[p].get(name), view)
                           for p, view in zip(tensors, views))
            bad = disagreement(actual, interp.flat_buffer(name), TOLERANCE)
            assert not bad.any(), (label, name, actual[bad], interp.flat_buffer(name)[bad])
    return opt


def test_the_interpreter_knows_every_operation_and_primitive():
    """An operation or primitive added to nos fails here until the interpreter (and the
    generator) know it."""
    from nos.lang.ops import OPS
    from nos.lang.tree import PRIMITIVES

    assert set(OPS) <= LANGUAGE, sorted(set(OPS) - LANGUAGE)
    names = [name for name in PRIMITIVES if name not in ("noise", "annealed_noise")]
    rule = nos.parse("update = " + " + ".join(names) + " + max(noise, 50) + "
                     "min(annealed_noise, -50)")
    interp = Interpreter(rule, [(2, 3)], total_steps=4)
    assert np.isfinite(interp.step(np.zeros(6), np.ones(6), 0.1)).all()


@pytest.mark.parametrize("op", ["<", "<=", ">", ">=", "==", "!="])
def test_comparisons_are_one_or_zero_and_false_for_nan_except_not_equal(op):
    rule = f"update = (g {op} 0.5) + 2 * (log(g) {op} w) + 4 * (g {op} g) + 8 * (0 {op} g)"
    _check_rule(rule)
    for result in _one_step(f"(log(g) {op} 1) + 2 * (1 {op} log(g))", [-1.0]):  # log(-1) = nan
        assert result == [-3.0 if op == "!=" else 0.0], (op, result)


def test_where_takes_a_where_the_condition_is_nonzero_and_nan_counts_as_nonzero():
    _check_rule("update = where(g > 0, g, w) + where(g, 1, 2) + where(log(g), 3, 4)")
    for result in _one_step("where(log(g), 1, 2) + where(g - g, 4, 8)", [-1.0, 0.0, 1.0]):
        assert result == [-9.0, -9.0, -10.0], result  # log(-1) is nan, log(0) is -inf


def test_lerp_is_torch_lerps_formula_on_both_sides_of_one_half():
    _check_rule("state m = lerp(m, g, 0.1)\nupdate = lerp(m, w, 0.7) + lerp(g, m, g) + "
                "lerp(w, 2, 0.3)")


@pytest.mark.parametrize("reduction", ["sum", "mean", "norm", "rms", "amax"])
def test_a_per_tensor_reduction_is_one_number_broadcast_back(reduction):
    _check_rule(f"update = g / (1 + abs({reduction}(g))) + 0.1 * {reduction}(w) + "
                f"{reduction}(3)")


def test_amax_is_nan_when_an_element_is_nan():
    for result in _one_step("amax(log(g))", [1.0, -1.0, 2.0]):
        assert _same(result, [math.nan] * 3), result


def test_row_and_column_means_broadcast_back_and_into_outer_products():
    _check_rule("update = rowmean(g) + colmean(w) + g / sqrt(rowmean(g^2) * colmean(g^2)) + "
                "mean(rowmean(g)) + rms(colmean(w)) + amax(rowmean(w)) + colmean(rowmean(g))")


@pytest.mark.parametrize("bits", [64, 0])
def test_newton_schulz_in_float64(bits):
    _check_rule("state b = lerp(b, g, 0.05)\n"
                f"update = newton_schulz(lerp(g, b, 0.95), 3.4445, -4.775, 2.0315, 5, 1e-7, "
                f"{bits}) * sqrt(max(1, rows / cols)) + 0.1 * w")
    _check_rule(f"update = newton_schulz(rowmean(g) + colmean(w), 1.5, -0.5, 0, 3, 0.1, {bits})")


def test_primitives_of_the_step_and_of_the_tensor():
    _check_rule("update = g * lr + w * ndim + rows - cols / numel + machine_eps * 1e15")
    assert tensor_facts(()) == {"ndim": 0, "rows": 1, "cols": 1, "numel": 1,
                                "machine_eps": 2.0**-52}
    assert tensor_facts((5,))["rows"] == 5 and tensor_facts((5,))["cols"] == 1
    assert tensor_facts((2, 4, 3)) == {"ndim": 3, "rows": 4, "cols": 3, "numel": 24,
                                       "machine_eps": 2.0**-52}


def test_the_new_constructs_on_the_fused_path():
    """One torch.compile of a rule with every new construct but newton_schulz, one of a rule
    with it (matrices)."""
    _agree("param p = 0.5 in [0, 1]\nstate r = lerp(r, rowmean(g^2), 0.1)\n"
           "state c = lerp(c, colmean(g^2), 0.1)\nstate n = where(t == 1, 1, n) * 0.9\n"
           "let v = where(ndim >= 2, r * c / mean(r), r)\n"
           "update = where(p, g / sqrt(v), g) * n * lr + (g > 0) * rms(w) + amax(g) - "
           "norm(g) / numel + lerp(w, g, 0.7) * machine_eps",
           [(2, 4, 3), (3, 4)], {"fused": {"fused": True}}, steps=3)
    _check_rule("update = newton_schulz(g, 3.4445, -4.775, 2.0315, 5, 1e-7, 0) + "
                "where(rows > cols, 1, 2) * w", fused=True)


# --- where switched by a param: each group's program is compiled for its value -------------

ADAM_AMSGRAD = """param amsgrad = 0 in [0, 1]
param beta1 = 0.9 in [0, 1)
param beta2 = 0.999 in [0, 1)
state m = lerp(m, g, 1 - beta1)
state v = beta2 * v + (1 - beta2) * g^2
state vmax = where(amsgrad, max(vmax, v), 0)
update = m / (1 - beta1^t) / (sqrt(where(amsgrad, vmax, v) / (1 - beta2^t)) + 1e-8)"""


@pytest.mark.parametrize("amsgrad", [0.0, 1.0])
def test_where_switched_by_a_param_in_groups_of_either_value(amsgrad):
    """Groups with amsgrad 0 and 1 in one optimizer (and each value as the optimizer's
    default), as the unspecialised rule means them."""
    both = (GroupSpec(0.1, {"amsgrad": amsgrad}), GroupSpec(0.05, {"amsgrad": 1 - amsgrad}))
    _check_rule(ADAM_AMSGRAD, groups=both)
    _check_rule(ADAM_AMSGRAD, groups=both, defaults=True)
    _check_rule(ADAM_AMSGRAD, groups=(GroupSpec(0.1, {"amsgrad": amsgrad}), GroupSpec(0.1, {})),
                defaults=True)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_where_switched_by_a_comparison_of_a_param_or_a_tensor_fact(momentum):
    rule = ("param momentum = 0.9 in [0, 1)\nstate buf = momentum * buf + g\n"
            "update = where(momentum > 0, buf, g) + where(ndim >= 2, 0.5, 2) * "
            "where(rows > cols, w, -w)")
    _check_rule(rule, groups=(GroupSpec(0.1, {"momentum": momentum}),
                              GroupSpec(0.1, {"momentum": 0.9 - momentum})))


# --- numbers and reduced shapes kept per tensor -------------------------------------------


def test_a_state_of_no_tensor_is_a_number_per_tensor():
    rule = "state c = where(t == 1, 1, c) * 0.9\nupdate = c * g"
    _check_rule(rule)
    opt = _agree(rule, [(3,), (2, 2)], steps=3)
    for p in opt.param_groups[0]["params"]:
        assert isinstance(opt.state[p]["c"], float), opt.state[p]["c"]
        assert opt.state[p]["c"] == pytest.approx(0.9**3, rel=1e-15)
    _check_rule("param beta = 0.9 in [0, 1)\nstate c = where(t == 1, 1, c) * beta\n"
                "state s = s + numel * lr\nupdate = g / (1 - c) + s * w",
                groups=(GroupSpec(0.1, {"beta": 0.5}), GroupSpec(0.2, {})))


ROW_COL = ("state r = lerp(r, rowmean(g^2), 0.1)\nstate c = lerp(c, colmean(g^2), 0.1)\n"
           "update = g / sqrt(r * c / mean(r)) + rms(r) + amax(c) + colmean(r)")


def test_row_and_column_states_keep_their_shape_on_matrices_and_3d_tensors():
    opt = _agree(ROW_COL, [(2, 4, 3), (3, 4)])
    shapes = [(tuple(opt.state[p]["r"].shape), tuple(opt.state[p]["c"].shape))
              for p in opt.param_groups[0]["params"]]
    assert shapes == [((2, 4, 1), (2, 1, 3)), ((3, 1), (1, 4))]


def test_row_and_column_states_of_vectors_and_zero_dimensional_tensors():
    """A vector of n is a column (n, 1): its row state has n elements, its column state one
    (they were made in the vector's own shape: the step failed)."""
    _agree(ROW_COL, [(5,), ()], EXECUTORS)
    _check_rule(ROW_COL)


def test_drop_of_a_reduced_value_has_the_parameters_shape():
    """drop(sum(g), p) draws a mask of the parameter's shape: the result is full (it was
    labelled with sum's shape, and the in-place step failed)."""
    _agree("state s = drop(sum(g), 0)\nupdate = drop(rowmean(g), 0) + s + 2 * drop(sum(g), 1)",
           [(3,), (2, 3)], EXECUTORS)


def test_reductions_of_zero_dimensional_tensors():
    _agree("state s = s + norm(g)\nupdate = sum(g) + mean(g) + norm(w) + rms(g) + amax(g) + "
           "rowmean(g) + colmean(w) + s + ndim + rows + cols", [(), ()])


def test_lerp_of_two_numbers_by_a_tensor_weight():
    """lerp(1, 2, g) called torch.full_like on a number (TypeError)."""
    _agree("state s = lerp(1, t, g)\nupdate = lerp(1, 2, g) + lerp(lr, 1, w) + s", [(3,), ()])


def test_a_number_per_tensor_filled_into_a_full_buffer_on_the_multi_tensor_path():
    """The ndim >= 2 program fills the buffer with norm(g): torch._foreach_norm gives a tuple,
    which the multi-tensor fill took as one value (TypeError)."""
    _agree("state s = where(ndim >= 2, norm(g), g)\nupdate = g + s", [(3, 4), (2, 3), (5,)])


# --- lr and maximize ------------------------------------------------------------------------


@pytest.mark.parametrize("tensor_lr", [False, True], ids=["float lr", "tensor lr"])
def test_lr_is_the_groups_learning_rate_at_this_step_under_a_scheduler(tensor_lr):
    rule = ("state size = where(t == 1, lr, size) * 1.1\n"
            "update = sign(g) * size / lr + g * lr")
    shapes = [(3,), (2, 2)]
    rng = np.random.default_rng(3)
    init = [rng.standard_normal(shape) for shape in shapes]
    for options in ALL_EXECUTORS.values():
        tensors = [torch.tensor(x) for x in init]
        lr = torch.tensor(0.5, dtype=torch.float64) if tensor_lr else 0.5
        opt = nos.Optimizer(tensors, rule, lr=lr, **options)
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.8**k)
        interp, w = Interpreter(nos.parse(rule), shapes), _flat(init)
        for _ in range(4):
            grads = [rng.standard_normal(shape) for shape in shapes]
            for p, g in zip(tensors, grads):
                p.grad = torch.tensor(g)
            w = interp.step(w, _flat(grads), float(opt.param_groups[0]["lr"]))
            opt.step()
            schedule.step()
            actual = _flat(p.detach().numpy() for p in tensors)
            assert not disagreement(actual, w, TOLERANCE).any(), (options, actual, w)
        assert isinstance(opt.param_groups[0]["lr"], torch.Tensor) == tensor_lr


def test_maximize_steps_up_the_gradient_per_group_too():
    _agree("state m = lerp(m, g, 0.1)\nupdate = m + sign(g) + where(g > 0, 1, 0)", [(3,), (2, 2)],
           maximize=True)
    _check_rule("state m = lerp(m, g, 0.1)\nstate n = n + (g > 0)\nupdate = m + sum(g) * n",
                groups=(GroupSpec(0.1, {}, maximize=True), GroupSpec(0.05, {}, maximize=False)))
    _check_rule("update = adam + sum(g) * 0", defaults=True,
                groups=(GroupSpec(0.1, {}, maximize=True), GroupSpec(0.05, {})))


# --- newton_schulz: 2-D parameters only, and torch's bfloat16 iteration -------------------

MUON_NS = "newton_schulz(g, 3.4445, -4.775, 2.0315, 5, 1e-7, {bits})"


def test_newton_schulz_refuses_parameters_that_are_not_matrices():
    rule = "update = " + MUON_NS.format(bits=64)
    with pytest.raises(ValueError, match=r"newton_schulz needs 2-D parameters; parameter 1 of "
                                         r"group 0 has shape \(3,\)"):
        nos.Optimizer([torch.zeros(2, 2), torch.zeros(3)], rule)
    opt = nos.Optimizer([torch.zeros(2, 2)], rule)
    with pytest.raises(ValueError, match=r"parameter 0 of group 1 has shape \(2, 2, 2\)"):
        opt.add_param_group({"params": [torch.zeros(2, 2, 2)]})
    with pytest.raises(ValueError, match=r"parameter 0 of group 0 has shape \(\)"):
        nos.Optimizer([torch.zeros(())], rule)


def zeropower_via_newtonschulz(grad: torch.Tensor, a: float, b: float, c: float, steps: int,
                               eps: float, dtype: torch.dtype) -> torch.Tensor:
    """torch.optim._muon._zeropower_via_newtonschulz, written out, in ``dtype`` (torch's is
    bfloat16)."""
    ortho_grad = grad.to(dtype)
    if grad.size(0) > grad.size(1):
        ortho_grad = ortho_grad.T
    ortho_grad.div_(ortho_grad.norm().clamp(min=eps))
    for _ in range(steps):
        gram_matrix = ortho_grad @ ortho_grad.T
        gram_update = torch.addmm(gram_matrix, gram_matrix, gram_matrix, beta=b, alpha=c)
        ortho_grad = torch.addmm(ortho_grad, gram_update, ortho_grad, beta=a)
    if grad.size(0) > grad.size(1):
        ortho_grad = ortho_grad.T
    return ortho_grad


@pytest.mark.parametrize("bits,dtype", [(16, torch.bfloat16), (32, torch.float32)])
def test_newton_schulz_in_bfloat16_and_float32_is_torchs_iteration(bits, dtype):
    """NumPy has no bfloat16: the low-precision iterations are checked against torch's own
    (the same operations in the same order: the same bits), on every executor."""
    rule = "update = " + MUON_NS.format(bits=bits)
    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(shape, generator=generator, dtype=torch.float64) * 10
             for shape in ((3, 4), (6, 2), (8, 8))]
    expected = [zeropower_via_newtonschulz(g, 3.4445, -4.775, 2.0315, 5, 1e-7, dtype)
                for g in grads]
    if bits == 16:
        try:
            from torch.optim._muon import _zeropower_via_newtonschulz as torchs
        except ImportError:
            torchs = None
        if torchs is not None:
            for g, e in zip(grads, expected):
                assert torch.equal(torchs(g, (3.4445, -4.775, 2.0315), 5, 1e-7), e)
    for options in ALL_EXECUTORS.values():
        params = [torch.zeros_like(g) for g in grads]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        nos.Optimizer(params, rule, lr=1.0, **options).step()
        for p, e in zip(params, expected):
            assert torch.equal(-p, e.to(torch.float64)), (options, p, e)


# --- reductions over every parameter, w = expr, from, views and the shorthand --------------

GLOBALS = ("state m = lerp(m, g, 0.1)\nupdate = m / (gnorm(m) + 1e-3)",
           "update = gsum(w) * 1e-3 + gmean(g) + grms(rowmean(g))",
           "update = gamax(abs(g)) + gsum(2) + g / gnorm(g / (gnorm(g) + 1))")


def test_global_reductions_read_every_parameter_of_every_group():
    """Over every tensor with a gradient, in both groups (their lr, params and maximize
    their own), a reduction of a buffer's new value and one nested in another."""
    for text in GLOBALS:
        _check_rule(text)
        _check_rule(text, groups=(GroupSpec(0.1, {}, maximize=True), GroupSpec(0.05, {}),
                                  GroupSpec(0.2, {})))
    _check_rule("param p = 0 in [0, 1]\nstate s = where(p, s + g, g)\n"
                "update = clip_gnorm(s, 1) + where(ndim >= 2, gamax(g), gmean(w))",
                groups=(GroupSpec(0.1, {"p": 1.0}), GroupSpec(0.1, {"p": 0.0})), swap=True)


def test_the_fused_path_refuses_global_reductions():
    with pytest.raises(ValueError, match=FUSED_REFUSES):
        nos.Optimizer([torch.zeros(3)], "g / gnorm(g)", fused=True)
    with pytest.raises(ValueError, match=FUSED_REFUSES):
        nos.Optimizer([torch.zeros(3)], "clip_gnorm(g, 1)", fused=True)


def _stepped(text: str, grads: list[list[np.ndarray]], lr: float = 1.0, **options
             ) -> list[list[np.ndarray]]:
    """The updates ``w_before - w_after`` of each step (w starting at 0, lr 1) for tensors
    given their gradients at each step."""
    params = [torch.zeros(np.shape(g), dtype=torch.float64) for g in grads[0]]
    opt = nos.Optimizer(params, text, lr=lr, **options)
    out = []
    for step in grads:
        before = [p.clone() for p in params]
        for p, g in zip(params, step):
            p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        out.append([(b - p).numpy() for b, p in zip(before, params)])
    return out


@pytest.mark.parametrize("options", EXECUTORS.values(), ids=EXECUTORS.keys())
def test_windows_are_the_extremes_of_the_last_n_values(options):
    """winmax(x, n) and winmin(x, n): the largest and smallest of x's last n values, of the
    min(t, n) seen so far at step t; per tensor (here x = norm(g), a number per tensor)."""
    rng = np.random.default_rng(11)
    grads = [[rng.standard_normal(3) * 10 ** rng.uniform(-2, 2), rng.standard_normal((2, 2))]
             for _ in range(7)]
    text = "update = winmax(norm(g), 3) + 1000 * winmin(norm(g), 3) + 1e6 * winmax(norm(g), 1)"
    norms = [[float(np.linalg.norm(g)) for g in step] for step in grads]
    for t, updates in enumerate(_stepped(text, grads, **options), start=1):
        for i, u in enumerate(updates):
            last = [norms[k][i] for k in range(max(0, t - 3), t)]
            expected = max(last) + 1000 * min(last) + 1e6 * norms[t - 1][i]
            np.testing.assert_allclose(u, expected, rtol=1e-13)
    _check_rule("state s = lerp(s, g, 0.5)\nupdate = g * winmax(norm(s), 2) / "
                "(winmin(norm(s), 2) + 1) + winmax(g, 3)")


@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_gnorm_is_torchs_clip_grad_norm(max_norm):
    """clip_gnorm(g, c) over two groups is torch.nn.utils.clip_grad_norm_ of every gradient
    (scaled by c / (norm + 1e-6) where that is below 1)."""
    rng = np.random.default_rng(12)
    grads = [rng.standard_normal(shape) for shape in ((3,), (2, 4), ())]
    torchs = [torch.zeros(np.shape(g), dtype=torch.float64) for g in grads]
    for p, g in zip(torchs, grads):
        p.grad = torch.tensor(g)
    torch.nn.utils.clip_grad_norm_(torchs, max_norm)
    expected = [p.grad for p in torchs]
    for options in EXECUTORS.values():
        params = [torch.zeros(np.shape(g), dtype=torch.float64) for g in grads]
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g)
        groups = [{"params": params[:1]}, {"params": params[1:]}]
        nos.Optimizer(groups, f"clip_gnorm(g, {max_norm})", lr=1.0, **options).step()
        for p, e in zip(params, expected):
            torch.testing.assert_close(-p, e, rtol=1e-14, atol=0)


def test_cosine_and_dot_are_torchs_on_the_flattened_tensors():
    rng = np.random.default_rng(13)
    grads = [[rng.standard_normal((3, 4)), rng.standard_normal(5), np.zeros(2)]]
    for options in ALL_EXECUTORS.values():
        params = [torch.tensor(rng.standard_normal(np.shape(g))) for g in grads[0]]
        before = [p.clone() for p in params]
        opt = nos.Optimizer(params, "cosine(g, w) + 10 * dot(g, w)", lr=1.0, **options)
        for p, g in zip(params, grads[0]):
            p.grad = torch.tensor(g)
        opt.step()
        for b, p, g in zip(before, params, grads[0]):
            g = torch.tensor(g)
            cosine = torch.nn.functional.cosine_similarity(g.flatten(), b.flatten(), dim=0)
            expected = cosine + 10 * torch.dot(g.flatten(), b.flatten())
            torch.testing.assert_close(b - p, expected.expand_as(p), rtol=1e-14, atol=1e-15)


def test_w_equals_gives_the_parameters_new_value():
    for result in _one_step("w = 2 * w + g + lr", [1.0, -2.0], [3.0, 4.0]):
        assert result == [8.0, 7.0], result
    _check_rule("state z = z - lr * g from w\nw = lerp(w, z, 0.3)", fused=True)
    _check_rule("w = mean(w) + 0 * g", fused=True, groups=(GroupSpec(0.1, {}, maximize=True),
                                                          GroupSpec(0.1, {})))
    _check_rule("w = w - gmean(g) * 0.1")


def test_states_start_at_their_from_values():
    """A buffer from w (its shape, even if its value is a number), from a number, a param, a
    fact, and reductions of w on the 2-D view (colmean of a vector of n: its mean; it was the
    vector itself)."""
    _check_rule("param p = 2\nstate a = a * 0.5 + g from w\nstate b = b * 0.9 from 1\n"
                "state c = c - g from p * numel\nstate d = d + lr from colmean(w)\n"
                "state e = lerp(e, rowmean(g^2), 0.1) from rowmean(w^2)\n"
                "update = a + b * g + c + d + e", fused=True,
                groups=(GroupSpec(0.1, {"p": 3.0}), GroupSpec(0.05, {})))
    opt = _agree("state c = c * 0.5 from numel\nupdate = c * g", [(3,), (2, 2)], EXECUTORS)
    assert [opt.state[p]["c"] for p in opt.param_groups[0]["params"]] == [3 / 16, 4 / 16]


SCHEDULE_FREE = ("state z = z - lr * g from w\nstate x = lerp(x, z, 1 / t) from w\n"
                 "w = lerp(z, x, 0.9)\neval_w = x")


@pytest.mark.parametrize("text", [
    SCHEDULE_FREE, SCHEDULE_FREE + "\ntrain_w = lerp(z, w, 0.9)",
    "state r = lerp(r, colmean(g^2), 0.1)\nupdate = g / sqrt(r + 1)\n"
    "eval_w = w + colmean(w) - r",  # a rule of rows and columns on vectors and 0-d tensors
    "param p = 0 in [0, 1]\nstate s = where(p, s + g, 0)\nupdate = where(p, s, g)\n"
    "eval_w = where(p, s, w * ndim) + where(rows > cols, w, t * lr)",  # only p's buffers
], ids=["schedule-free", "with train_w", "rows and columns", "switched"])
def test_views_are_what_eval_and_train_give(text):
    case = Case(text, (GroupSpec(0.1, {}), GroupSpec(0.05, {"p": 1.0} if "param p" in text
                                                           else {})), 4, seed=5)
    data = Data.make(case.seed, case.shapes)
    expected = run_interpreter(case, data)
    assert expected.shown is not None
    for label, options in ALL_EXECUTORS.items():
        actual = run_optimizer(case, data, **options)
        problem = compare(actual, expected, TOLERANCE, actual.kept or {})
        assert problem is None, f"{label}: {problem}"


@pytest.mark.parametrize("name", ["prodigy", "schedulefree_adamw", "yellowfin"])
def test_named_rules_of_the_later_constructs(name):
    """Prodigy (gsum, from values, w = ...), Schedule-Free (from values, w = ..., views) and
    YellowFin (clip_gnorm, gsum, windows of 20): every executor as the interpreter reads
    them, views included.  (YellowFin's reference moves by 1e-13 at extended precision --
    logs and exps of curvature extremes -- so no stability check; the executors agree to
    1e-12.)"""
    if name not in nos.baselines():
        pytest.skip(f"no named rule {name}")
    case = Case(nos.baselines()[name].text, (GroupSpec(0.1, {}), GroupSpec(0.05, {})), 4,
                seed=5)
    check_case(case, RUNS)


def test_a_step_in_the_evaluation_view_is_refused():
    w = torch.ones(3, dtype=torch.float64)
    opt = nos.Optimizer([w], SCHEDULE_FREE, lr=0.1)
    w.grad = torch.ones(3, dtype=torch.float64)
    opt.step()
    opt.eval()
    with pytest.raises(RuntimeError, match=r"call optimizer.train\(\) before step\(\)"):
        opt.step()
    opt.train()
    opt.step()


# --- known bugs of nos (the generator avoids them: see known_bug) -------------------------


def test_a_switch_param_read_only_by_dead_code():
    _agree("param p = 0 in [0, 1]\nlet unused = where(p, g, w)\nupdate = g", [(3,)])


@pytest.mark.parametrize("rule", [
    "update = g + sum(rowmean(g))",
    "update = g + norm(colmean(g))",
    "update = g + sum(sum(g))",
    "update = newton_schulz(rowmean(g), 1.5, -0.5, 0, 3, 0.1, 64)",
    "param p = 0 in [0, 1]\nupdate = g + sum(where(p, g, rowmean(g)))",
    "param p = 0 in [0, 1]\nupdate = g + norm(rowmean(g) + p * w)"],
    ids=["sum of a row mean", "norm of a column mean", "sum of a sum",
         "newton_schulz of a row mean", "where folded to a row mean", "p * w folded to 0"])
def test_reductions_of_values_stored_reduced_count_every_element(rule):
    _agree(rule, [(3, 4)], EXECUTORS)


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="by design (README): a switch changed between steps starts the "
                          "buffers of the branch now taken from where they were left (0, or "
                          "stale); a group's program keeps only the branch its switches take")
def test_known_bug_switch_changed_between_steps():
    rule = "param p = 0 in [0, 1]\nstate s = s + g\nupdate = where(p, s, g)"
    case = Case(rule, (GroupSpec(0.1, {"p": 0.0}), GroupSpec(0.1, {"p": 1.0})), 4, seed=5,
                swap=True)
    data = Data.make(case.seed, case.shapes)
    expected = run_interpreter(case, data)
    for label, options in RUNS.items():
        actual = run_optimizer(case, data, **options)
        problem = compare(actual, expected, TOLERANCE, actual.kept or {})
        assert problem is None, f"{label}: {problem}"
