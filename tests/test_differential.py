"""Differential tests: every executor against a plain interpreter of the language.

(The docstring is completed below with the generator's coverage and the bugs found.)
"""

from __future__ import annotations

import functools
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
from nos.rule import Rule
from tests.interpreter import Interpreter

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
         "log(abs({}) + 0.5)", "sqrt({})", "sqrt(abs({}))")
BINARY = ("({} + {})", "({} - {})", "({} * {})", "({} / {})", "({} / (abs({}) + 1))",
          "({} ^ {})", "max({}, {})", "min({}, {})", "clip({}, {})")
SCHEDULE_ARGS = ("1", "0.5", "2", "3", "(-1)", "(-0.5)", "t", "beta1")
RANDOM_SOURCES = ("noise", "annealed_noise", "drop(noise, 0.3)", "drop(sign(g), 0.5)",
                  "drop(annealed_noise, 0.25)")
RANDOM_WRAPPERS = ("abs(clip({}, 0))", "max({}, 50)", "min({}, -50)", "abs(sign({}))")


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
    kinds = ["g", "g", "g", "w", "w", "scalar", "scalar", "scalar", "prelude"] + ["state"] * 4
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
    (addcdiv, addcmul, several terms, the parameter scaled)."""
    if pick.chance():
        return expression(pick, scope)
    x, y = expression(pick, scope, 2), expression(pick, scope, 1)
    c, d = _scalar(pick, scope), _scalar(pick, scope)
    return pick.one(UPDATES).format(x=x, y=y, c=c, d=d)


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
    """

    text: str
    groups: tuple[GroupSpec, GroupSpec]
    total_steps: int
    seed: int
    defaults: bool = False

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
    return Case(text, groups, pick.integer(1, 15), draw(_SEEDS), pick.chance())


_SEEDS = st.integers(0, 2**32 - 1)


# --- the data, the runs and the comparison ---------------------------------------------

SHAPES = ((), (5,), (3, 2, 2, 2), (3, 4))  # 0-d, 1-d, a conv weight, a strided view
GROUP_OF = (0, 1, 0, 1)  # the param group of each tensor
BASE_SHAPE = (7, 9)  # the view is base[1:5, 2:8:2].t()


def _view(base: torch.Tensor) -> torch.Tensor:
    return base[1:5, 2:8:2].t()


@dataclass(frozen=True)
class Data:
    """Initial values and one gradient per step for each tensor (NumPy, float64)."""

    init: list[np.ndarray]
    grads: list[list[np.ndarray]]

    @staticmethod
    def make(seed: int) -> Data:
        rng = np.random.default_rng(seed)
        init = [rng.standard_normal(shape) for shape in SHAPES]
        grads = []
        for _ in range(STEPS):
            scale = rng.choice([1e-3, 1.0, 1.0, 1e3])
            step = []
            for shape in SHAPES:
                g = rng.standard_normal(shape) * scale
                step.append(np.where(rng.random(shape) < 0.1, 0.0, g))  # some exact zeros
            grads.append(step)
        return Data(init, grads)


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


def _live_buffers(case: Case) -> dict[str, np.ndarray]:
    """For each buffer, the elements whose group's program writes it (a zero param may
    leave a buffer unused, and so not updated, in one group)."""
    from nos.compiler import compile_rule

    program = compile_rule(case.rule)
    written = []
    for k in range(len(case.groups)):
        values = case.values(k)
        zeros = frozenset(n for n in program.params if values[n] == 0)
        written.append(set(compile_rule(case.rule, zeros).state_out))
    return {name: _per_element([name in w for w in written]).astype(bool)
            for name in program.buffers}


def _optimizer(case: Case, tensors: list[torch.Tensor], **kwargs) -> nos.Optimizer:
    groups = []
    for i, spec in enumerate(case.groups):
        lr = torch.tensor(spec.lr, dtype=torch.float64) if spec.tensor_lr else spec.lr
        hyper = {} if case.defaults and i == 0 else spec.hyper
        groups.append({"params": [p for p, k in zip(tensors, GROUP_OF) if k == i], "lr": lr,
                       **hyper})
    defaults = case.groups[0].hyper if case.defaults else {}
    return nos.Optimizer(groups, case.rule, total_steps=case.total_steps, **defaults, **kwargs)


def run_optimizer(case: Case, data: Data, **kwargs) -> Trace:
    """Step nos.Optimizer on the four tensors in two groups and record every step."""
    tensors, base = _tensors(data)
    before = base.clone()
    opt = _optimizer(case, tensors, **kwargs)
    steps = []
    for grads in data.grads:
        given = [_grad(g, p) for g, p in zip(grads, tensors)]
        for p, g in zip(tensors, given):
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)  # in place, as backward() accumulates
        opt.step()
        for p, g in zip(tensors, given):
            assert torch.equal(p.grad, g), "the step changed a gradient"
        steps.append(_flat(p.detach().numpy() for p in tensors))
    outside = torch.ones(BASE_SHAPE, dtype=torch.bool)
    _view(outside).fill_(False)
    assert torch.equal(base[outside], before[outside]), "the step wrote outside the view"
    buffers = {}
    for name in opt.program.buffers:
        buffers[name] = _flat(opt.state[p][name].numpy() for p in tensors)
    return Trace(steps, buffers)


def _per_element(values: list[float]) -> np.ndarray:
    sizes = [int(np.prod(shape)) for shape in SHAPES]
    return np.concatenate([np.full(n, values[k]) for n, k in zip(sizes, GROUP_OF)])


def run_interpreter(case: Case, data: Data, dtype: type = np.float64,
                    zeros: str | None = None) -> Trace:
    values = [case.values(k) for k in range(len(case.groups))]
    hyper = {name: _per_element([v[name] for v in values]) for name in values[0]}
    lr = _per_element([g.lr for g in case.groups])
    w = _flat(data.init)
    interp = Interpreter(case.rule, w.size, hyper, case.total_steps, dtype=dtype, zeros=zeros)
    steps, scales, moved = [], [], np.zeros(w.size)
    with np.errstate(all="ignore"):
        for grads in data.grads:
            w = interp.step(w, _flat(grads), lr)
            steps.append(w.astype(np.float64))
            moved = moved + interp.step_size.astype(np.float64)
            scales.append(np.maximum(np.abs(steps[-1]), np.nan_to_num(moved, posinf=0.0)))
        buffers = {name: b.astype(np.float64) for name, b in interp.buffers.items()}
    return Trace(steps, buffers, scales)


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
    """Why the interpreter's float64 trace is no reference at 1e-12, if it is not: float64
    rounding moves it (against extended precision), or so does the sign of a zero."""
    everything: dict[str, np.ndarray | bool] = dict.fromkeys(expected.buffers, True)
    for zeros in ("+", "-", "random"):
        check = run_interpreter(case, data, np.longdouble, zeros)
        problem = compare(expected, check, STABLE, everything)
        if problem is not None:
            return f"extended precision, zeros as {zeros}0: {problem}"
    return None


EXECUTORS = {"foreach": {"foreach": True}, "reference": {"foreach": False}}


def check_case(case: Case, executors: dict[str, dict]) -> None:
    """Every executor agrees with the interpreter.  A disagreement on an example whose
    reference is unstable (see unstable) is no failure: hypothesis rejects the example.
    (Stability is checked only then: it costs three more runs of the interpreter.)"""
    data = Data.make(case.seed)
    expected = run_interpreter(case, data)
    for label, kwargs in executors.items():
        problem = compare(run_optimizer(case, data, **kwargs), expected, TOLERANCE,
                          _live_buffers(case))
        if problem is not None and unstable(case, data, expected) is not None:
            reject()
        assert problem is None, f"{label}: {problem}\nrule:\n{case.text}\n{case}"


@settings(max_examples=2000, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.data_too_large])
@given(cases())
def test_executors_agree_with_the_interpreter(case: Case) -> None:
    check_case(case, EXECUTORS)


FUSED_EXAMPLES = 8


@pytest.mark.parametrize("count", [pytest.param(FUSED_EXAMPLES, id="sample"),
                                   pytest.param(200, id="long", marks=pytest.mark.slow)])
def test_fused_path_agrees_with_the_interpreter(count: int) -> None:
    """torch.compile is slow to compile: a small sample of rules without random draws."""

    @settings(max_examples=count, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(cases(random=False))
    def check(case: Case) -> None:
        check_case(case, {"fused": {"fused": True}})

    check()


# --- regressions: the bugs the generator found, as small explicit rules ----------------

ALL_EXECUTORS = {**EXECUTORS, "fused": {"fused": True}}


def _check_rule(text: str, hyper: dict[str, float] | None = None, lr: float = 0.1,
                fused: bool = False) -> None:
    """The rule agrees with the interpreter on every executor (fused on request: slow)."""
    case = Case(text, (GroupSpec(lr, hyper or {}), GroupSpec(lr / 2, {})), 4, seed=1)
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


def test_running_averages_keep_infinities():
    """a x + (1 - a) y was computed as torch's lerp, which gives nan where x or y is
    infinite (inf - (inf - x) (1 - w)): min(s, 1) was nan instead of 1."""
    for result in _one_step("state s = 0.1 * s + 0.9 * exp(exp(g))\nupdate = min(s, 1)", [9.0]):
        assert result == [-1.0], result


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
