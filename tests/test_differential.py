"""Differential tests: every executor against a plain interpreter of the language.

(The docstring is completed below with the generator's coverage and the bugs found.)
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

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
                  "eps": (0.0, 1e-8, 0.1)}
PRELUDE_NAMES = ("m", "v", "gamma", "m_hat", "v_hat", "gamma_hat", "adam", "rmsprop")
LRS = (0.0, 1e-3, 0.01, 0.1, 0.5, 1.0)

# --- the rule generator ---------------------------------------------------------------


@dataclass
class Scope:
    """The names an expression may read at its place in the rule."""

    params: list[str]
    states: list[str]
    lets: list[str] = field(default_factory=list)
    random: bool = True


def _number(value: float) -> str:
    return repr(value) if value >= 0 else f"(-{-value!r})"


UNARY = ("-{}", "exp({})", "exp(clip({}, 3))", "log({})", "log(abs({}) + 0.5)", "sqrt({})",
         "sqrt(abs({}))", "abs({})", "sign({})")
BINARY = ("({} + {})", "({} - {})", "({} * {})", "({} / {})", "({} / (abs({}) + 1))",
          "({} ^ {})", "max({}, {})", "min({}, {})", "clip({}, {})")


@st.composite
def _leaf(draw, scope: Scope) -> str:
    kinds = ["g", "g", "g", "w", "w", "t", "T", "ld", "schedule", "number", "number", "prelude"]
    kinds += ["param"] * bool(scope.params) * 2 + ["state"] * 4 + ["let"] * bool(scope.lets) * 3
    kinds += ["random"] * scope.random
    kind = draw(st.sampled_from(kinds))
    if kind in ("g", "w", "t", "T", "ld"):
        return kind
    if kind == "schedule":
        n = draw(st.sampled_from(["0.5", "1", "2", "3", "(-1)", "(-0.5)", "t", "beta1",
                                  *scope.params]))
        return f"{draw(st.sampled_from(['cd', 'rd']))}({n})"
    if kind == "number":
        return _number(draw(st.sampled_from(NUMBERS) | st.floats(-4, 4).map(lambda x: round(x, 3))))
    if kind == "prelude":
        return draw(st.sampled_from(PRELUDE_NAMES + ("beta1", "beta2", "eps")))
    if kind == "param":
        return draw(st.sampled_from(scope.params))
    if kind == "state":
        return draw(st.sampled_from(scope.states))
    if kind == "let":
        return draw(st.sampled_from(scope.lets))
    return draw(_random_invariant())


@st.composite
def _random_invariant(draw) -> str:
    """A random draw in a context whose value does not depend on the draw."""
    source = draw(st.sampled_from(["noise", "annealed_noise", "drop(noise, 0.3)",
                                   "drop(sign(g), 0.5)", "drop(annealed_noise, 0.25)"]))
    wrappers = ["abs(clip({}, 0))", "max({}, 50)", "min({}, -50)"]
    if not source.startswith("drop"):
        wrappers.append("abs(sign({}))")
    return draw(st.sampled_from(wrappers)).format(source)


@st.composite
def expressions(draw, scope: Scope, depth: int = 3) -> str:
    """A random expression over every operator and function of the language."""
    if depth <= 0 or draw(st.integers(0, 3)) == 0:
        return draw(_leaf(scope))
    forms = ["unary"] * 3 + ["binary"] * 5 + ["power", "clipc"] + ["drop"] * scope.random
    form = draw(st.sampled_from(forms))
    inner = expressions(scope, depth - 1)
    if form == "unary":
        return draw(st.sampled_from(UNARY)).format(draw(inner))
    if form == "binary":
        return draw(st.sampled_from(BINARY)).format(draw(inner), draw(inner))
    if form == "power":
        return f"({draw(inner)} ^ {draw(st.sampled_from(POWERS))})"
    if form == "clipc":
        return f"clip({draw(inner)}, {draw(st.sampled_from(['0.5', '2', '0', '(-1)']))})"
    # drop with p = 0 keeps x, with p >= 1 zeroes it: deterministic whatever the draw
    return f"drop({draw(inner)}, {draw(st.sampled_from(['0', '1', '2', 't', '(1 - 1)']))})"


@st.composite
def _state_statement(draw, name: str, scope: Scope) -> str:
    kind = draw(st.sampled_from(["expr"] * 6 + ["copy", "copy", "self", "input", "scalar"]))
    if kind == "copy":
        others = [s for s in scope.states if s != name] or [name]
        return f"state {name} = {draw(st.sampled_from(others))}"
    if kind == "self":
        return f"state {name} = {name}"
    if kind == "input":
        return f"state {name} = {draw(st.sampled_from(['g', 'w', 'm', 'adam']))}"
    if kind == "scalar":
        return f"state {name} = {draw(st.sampled_from(['2', '0.1 * t', 'ld', 'beta1']))}"
    return f"state {name} = {draw(expressions(scope))}"


@dataclass(frozen=True)
class GroupSpec:
    lr: float
    hyper: dict[str, float]


@dataclass(frozen=True)
class Case:
    """One generated example: a rule, two param groups, T, and the data's seed."""

    text: str
    groups: tuple[GroupSpec, GroupSpec]
    total_steps: int
    seed: int

    @property
    def rule(self) -> Rule:
        return _parse(self.text)


@functools.lru_cache(maxsize=64)
def _parse(text: str) -> Rule:
    return nos.parse(text)


@st.composite
def rule_texts(draw, random: bool = True) -> str:
    """A multi-statement rule as text: params, 1-5 buffers, lets and the update, any order."""
    n_states, n_lets = draw(st.integers(1, 5)), draw(st.integers(0, 3))
    params = [f"p{i}" for i in range(draw(st.integers(0, 3)))]
    override = draw(st.booleans())
    states = [f"s{i}" for i in range(n_states)]
    slots = [("state", s) for s in states] + [("let", f"l{i}") for i in range(n_lets)]
    order = draw(st.permutations([*slots, ("update", "update")]))
    scope = Scope(params, states, random=random)
    lines = []
    for kind, name in order:
        if kind == "state":
            lines.append(draw(_state_statement(name, scope)))
        elif kind == "let":
            lines.append(f"let {name} = {draw(expressions(scope))}")
            scope.lets.append(name)
        else:
            expr = draw(expressions(scope))
            lines.append(expr if draw(st.booleans()) else f"update = {expr}")
    declared = [f"param {p} = {_number(draw(st.sampled_from(OWN_VALUES)))}" for p in params]
    if override:
        declared.append(f"param beta1 = {draw(st.sampled_from([0.0, 0.5, 0.8]))} in [0, 1)")
    for line in declared:
        lines.insert(draw(st.integers(0, len(lines))), line)
    separator = draw(st.sampled_from(["\n", "; ", "\n# a comment\n"]))
    return separator.join(lines)


@st.composite
def cases(draw, random: bool = True) -> Case:
    text = draw(rule_texts(random))
    rule = _parse(text)
    declared = {s.name: s for s in rule.expanded().statements if s.kind == "param"}
    groups = []
    for _ in range(2):
        hyper = {}
        for name in declared:
            if draw(st.booleans()):
                continue
            choices = PRELUDE_VALUES.get(name, OWN_VALUES)
            if name == "beta1":
                choices = (0.0, 0.5, 0.9)
            hyper[name] = draw(st.sampled_from(choices))
        groups.append(GroupSpec(draw(st.sampled_from(LRS)), hyper))
    return Case(text, tuple(groups), draw(st.integers(1, 15)), draw(st.integers(0, 2**32 - 1)))


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
    """The flat parameter values after each step, and the final buffers."""

    steps: list[np.ndarray]
    buffers: dict[str, np.ndarray]


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


def _live_buffers(case: Case, group: GroupSpec) -> set[str]:
    """The buffers the group's program writes (a zero param may leave others unused)."""
    from nos.compiler import compile_rule

    rule = case.rule
    program = compile_rule(rule)
    defaults = {s.name: s.default for s in rule.expanded().statements if s.kind == "param"}
    zeros = frozenset(n for n in program.params if group.hyper.get(n, defaults[n]) == 0)
    return set(compile_rule(rule, zeros).state_out)


def run_optimizer(case: Case, data: Data, **kwargs) -> Trace:
    """Step nos.Optimizer on the four tensors in two groups and record every step."""
    tensors, base = _tensors(data)
    before = base.clone()
    groups = [{"params": [p for p, k in zip(tensors, GROUP_OF) if k == i], "lr": spec.lr,
               **spec.hyper} for i, spec in enumerate(case.groups)]
    opt = nos.Optimizer(groups, case.rule, total_steps=case.total_steps, **kwargs)
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
    rule = case.rule
    defaults = {s.name: s.default for s in rule.expanded().statements if s.kind == "param"}
    hyper = {name: _per_element([g.hyper.get(name, default) for g in case.groups])
             for name, default in defaults.items()}
    lr = _per_element([g.lr for g in case.groups])
    w = _flat(data.init)
    interp = Interpreter(rule, w.size, hyper, case.total_steps, dtype=dtype, zeros=zeros)
    steps = []
    with np.errstate(all="ignore"):
        for grads in data.grads:
            w = interp.step(w, _flat(grads), lr)
            steps.append(w.astype(np.float64))
        buffers = {name: b.astype(np.float64) for name, b in interp.buffers.items()}
    return Trace(steps, buffers)


def disagreement(actual: np.ndarray, expected: np.ndarray, tol: float) -> np.ndarray:
    """Elements where two results disagree: one finite and the other not, or both finite
    and |actual - expected| > tol * max(1, |expected|).  nan, +inf and -inf all mean the
    element diverged and agree with each other."""
    fa, fe = np.isfinite(actual), np.isfinite(expected)
    with np.errstate(all="ignore"):
        far = np.abs(actual - expected) > tol * np.maximum(1.0, np.abs(expected))
    return (fa != fe) | (fa & fe & far)


def compare(actual: Trace, expected: Trace, tol: float, buffers: set[str]) -> str | None:
    """None when the traces agree, else a description of the first disagreement."""
    for k, (a, e) in enumerate(zip(actual.steps, expected.steps)):
        bad = disagreement(a, e, tol)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            return f"parameters after step {k + 1}, element {i}: {a[i]!r} != {e[i]!r}"
    finite = np.all([np.isfinite(e) for e in expected.steps], axis=0)  # never diverged
    for name in sorted(buffers):
        a, e = actual.buffers[name], expected.buffers[name]
        bad = disagreement(a, e, tol) & finite
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            return f"buffer {name} after {STEPS} steps, element {i}: {a[i]!r} != {e[i]!r}"
    return None


def unstable(case: Case, data: Data, expected: Trace) -> str | None:
    """Why the interpreter's float64 trace is no reference at 1e-12, if it is not: float64
    rounding moves it (against extended precision), or so does the sign of a zero."""
    everything = set(expected.buffers)
    for zeros in ("+", "-"):
        check = run_interpreter(case, data, np.longdouble, zeros)
        problem = compare(expected, check, STABLE, everything)
        if problem is not None:
            return f"extended precision, zeros as {zeros}0: {problem}"
    return None


EXECUTORS = {"foreach": {"foreach": True}, "reference": {"foreach": False}}


def check_case(case: Case, executors: dict[str, dict]) -> None:
    """Every executor agrees with the interpreter (hypothesis rejects unstable examples)."""
    data = Data.make(case.seed)
    expected = run_interpreter(case, data)
    if unstable(case, data, expected) is not None:
        reject()
    for label, kwargs in executors.items():
        buffers = set.union(*(_live_buffers(case, g) for g in case.groups))
        problem = compare(run_optimizer(case, data, **kwargs), expected, TOLERANCE, buffers)
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

    with torch._dynamo.config.patch(recompile_limit=10 * count):
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
