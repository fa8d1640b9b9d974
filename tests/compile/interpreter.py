"""A deliberately plain interpreter of the nos language, for differential testing.

It shares only the parser with the package (``nos.parse(text).expanded()``
gives the statements, the prelude definitions written out in front) and
walks the tree one statement at a time with NumPy, with the meaning the
README and the ops table's documentation give each construct:

- buffers start at 0 and statements run in order; a name reads its newest
  value, so a buffer read before its own statement gives last step's value
  and after it this step's;
- params take the value given to the optimizer, else their declared default;
- ``t`` is 1 at the first step, ``T`` the total steps; with
  ``s = min(max(t - 1, 0), T)``: ``ld = max(0, (T - s) / T)``,
  ``cd(n) = (1 + cos(2 pi n s / T)) / 2``,
  ``rd(n) = (1 + cos(pi ((n s) mod T) / T)) / 2``;
- ``noise`` is N(0, 0.1^2), ``annealed_noise`` N(0, (1 + t)^-0.55), drawn
  from the interpreter's own generator; ``drop(x, p)`` multiplies x by a
  mask that is 0 with probability p, scaled by 1 / (1 - p) (0 when p >= 1);
- every operation is IEEE arithmetic: ``x / 0`` is +-inf or nan,
  ``(-8)^(1/3)`` is nan, ``sign`` is -1, 0 or 1 (nan for nan), ``max``,
  ``min`` and ``clip(x, c) = min(max(x, -c), c)`` propagate nan;
- the step is ``w <- w - lr * update``, with the update read where its
  statement stands (``w`` itself changes only at the end of the step).

Every value is an array over all the elements being stepped (the language
is element-wise, so a flat array of several tensors' elements is as good as
one tensor); a param, the learning rate and the step number may differ per
element, which is how one interpreter serves several parameter groups and
tensors that skip steps (a tensor without a gradient keeps its value, its
buffers and its t).  ``params`` may be changed between steps.

``step_size`` after each step is ``|lr|`` times the magnitude of the update's
additive parts (``|a| + |b|`` for ``a - b``, through sums, negations and
products): executors may apply the parts of a sum as separate steps on the
parameter, each rounded at its own size, so the differential test allows
rounding errors of that size.  Two knobs exist for the test's self-checks, not
for the language: ``dtype`` (np.float64, or np.longdouble to see how much float64
rounding moves a result) and ``zeros`` (``"+"``, ``"-"`` or ``"random"``
rewrites every zero result to +0, to -0, or to either at random, to see
whether a result depends on the sign of a zero, which neither the compiler's
algebra (``x + 0 = x``) nor torch's ``max(0, -0)`` keeps as IEEE would).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from nos.lang.rule import Rule
from nos.lang.tree import Node, Statement

Array = np.ndarray


def _sign(x: Array) -> Array:
    return np.where(x > 0, 1.0, np.where(x < 0, -1.0, x * 0.0)).astype(x.dtype)


def _clip(x: Array, c: Array) -> Array:
    return np.minimum(np.maximum(x, -c), c)


BINARY: dict[str, Callable[[Array, Array], Array]] = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": np.divide,
    "pow": np.power,
    "max": np.maximum,
    "min": np.minimum,
    "clip": _clip,
}
UNARY: dict[str, Callable[[Array], Array]] = {
    "neg": np.negative,
    "exp": np.exp,
    "log": np.log,
    "sqrt": np.sqrt,
    "abs": np.abs,
    "sign": _sign,
}
SCHEDULES = ("cd", "rd")
LANGUAGE = frozenset(BINARY) | frozenset(UNARY) | frozenset(SCHEDULES) | {"drop"}


class Interpreter:
    """Steps a flat float array with a rule; keeps the buffers and the step number."""

    def __init__(
        self,
        rule: Rule,
        size: int,
        hyper: Mapping[str, Array | float] | None = None,
        total_steps: int | None = None,
        *,
        dtype: type = np.float64,
        zeros: str | None = None,
        seed: int = 0,
    ) -> None:
        self.statements: tuple[Statement, ...] = rule.expanded().statements
        self.size = size
        self.dtype = dtype
        self.zeros = zeros
        self.total = total_steps
        self.rng = np.random.default_rng(seed)
        self.zero_signs = np.random.default_rng(seed + 1)
        given = dict(hyper or {})
        self.params = {s.name: self.full(given.get(s.name, s.default))
                       for s in self.statements if s.kind == "param"}
        self.buffers = {s.name: self.full(0.0) for s in self.statements if s.kind == "state"}
        self.t = np.zeros(size, dtype=np.int64)  # steps taken, per element
        self.step_size = self.full(0.0)

    def full(self, value: Array | float) -> Array:
        """An array of the elements' size and dtype (values are never changed in place)."""
        if isinstance(value, np.ndarray) and value.shape == (self.size,):
            return value if value.dtype == self.dtype else value.astype(self.dtype)
        return np.full(self.size, value, dtype=self.dtype)

    def step(self, w: Array, g: Array, lr: Array | float, active: Array | None = None
             ) -> Array:
        """The new parameter values after one step with gradient g, for the elements
        marked active (all by default); the others keep their values."""
        active = np.ones(self.size, dtype=bool) if active is None else active
        self.t = self.t + active
        env: dict[str, Array] = {"w": self.full(w), "g": self.full(g)}
        update, old = None, dict(self.buffers)
        with np.errstate(all="ignore"):
            for s in self.statements:
                if s.kind == "param":
                    continue
                value = self.full(self.eval(s.expr, env))  # type: ignore[arg-type]
                if s.kind == "state":
                    self.buffers[s.name] = value
                elif s.kind == "let":
                    env[s.name] = value
                else:
                    update = value
                    step_size = np.abs(self.full(lr)) * self.parts(s.expr, env)
            assert update is not None, "a rule has an update"
            for name, value in self.buffers.items():
                self.buffers[name] = np.where(active, value, old[name])
            self.step_size = np.where(active, step_size, 0.0)
            return np.where(active, self.zero(env["w"] - self.full(lr) * update), env["w"])

    # --- expressions -------------------------------------------------------------

    def eval(self, node: Node, env: dict[str, Array]) -> Array:
        if node.op == "num":
            return self.full(float(node.value))  # type: ignore[arg-type]
        if node.op == "name":
            return self.name(str(node.value), env)
        if node.op in SCHEDULES:
            return self.zero(self.schedule(node.op, self.eval(node.args[0], env)))
        if node.op == "drop":
            return self.zero(self.drop(*(self.eval(a, env) for a in node.args)))
        if node.op in UNARY:
            return self.zero(UNARY[node.op](self.eval(node.args[0], env)))
        if node.op in BINARY:
            left, right = (self.eval(a, env) for a in node.args)
            return self.zero(BINARY[node.op](left, right))
        raise ValueError(f"the interpreter does not know {node.op!r}")

    def parts(self, node: Node, env: dict[str, Array]) -> Array:
        """The sum of the magnitudes of an expression's additive parts (an upper bound)."""
        if node.op in ("add", "sub"):
            return self.parts(node.args[0], env) + self.parts(node.args[1], env)
        if node.op == "neg":
            return self.parts(node.args[0], env)
        if node.op == "mul":
            return self.parts(node.args[0], env) * self.parts(node.args[1], env)
        if node.op == "div":
            return self.parts(node.args[0], env) / np.abs(self.eval(node.args[1], env))
        return np.abs(self.eval(node, env))

    def name(self, word: str, env: dict[str, Array]) -> Array:
        if word in env:
            return env[word]
        if word in self.buffers:
            return self.buffers[word]
        if word in self.params:
            return self.params[word]
        if word == "t":
            return self.full(self.t)
        if word == "T":
            return self.full(float(self.total_steps()))
        if word == "ld":
            total = self.total_steps()
            return np.maximum(0.0, (total - self.elapsed()) / total)
        if word == "noise":
            return self.full(self.rng.normal(0.0, 0.1, self.size))
        if word == "annealed_noise":
            return self.full(self.rng.normal(0.0, (1.0 + self.t) ** -0.275, self.size))
        raise KeyError(f"unknown name {word!r}")

    def total_steps(self) -> int:
        assert self.total is not None, "the rule reads T: give total_steps"
        return self.total

    def elapsed(self) -> Array:
        """s: 0 at the first step, clamped to T."""
        return self.full(np.clip(self.t - 1, 0, self.total_steps()))

    def schedule(self, op: str, n: Array) -> Array:
        total, s = self.total_steps(), self.elapsed()
        if op == "cd":
            return 0.5 * (1.0 + np.cos(2.0 * np.pi * n * s / total))
        return 0.5 * (1.0 + np.cos(np.pi * np.mod(n * s, total) / total))

    def drop(self, x: Array, p: Array) -> Array:
        keep = self.rng.random(self.size) >= p
        scale = np.where(p < 1, 1.0 / (1.0 - p), 0.0)
        return x * (keep * scale).astype(self.dtype)

    def zero(self, x: Array) -> Array:
        """Every zero as +0, -0 or either when asked (a self-check; the language leaves the
        sign of a zero open)."""
        if self.zeros is None:
            return x
        if self.zeros == "random":
            signed = np.where(self.zero_signs.random(x.shape) < 0.5, 0.0, -0.0)
        else:
            signed = np.asarray(0.0 if self.zeros == "+" else -0.0)
        return np.where(x == 0, signed.astype(self.dtype), x)
