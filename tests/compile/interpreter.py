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
- ``lr`` is the learning rate of the step; ``ndim``, ``numel``, ``rows`` and
  ``cols`` describe the parameter tensor (rows and cols are the last two
  dimensions of its 2-D view: a vector of n is a column (n, 1), a 0-d tensor
  (1, 1)); ``machine_eps`` is the float64 epsilon (the parameters are float64);
- ``noise`` is N(0, 0.1^2), ``annealed_noise`` N(0, (1 + t)^-0.55), drawn
  from the interpreter's own generator; ``drop(x, p)`` multiplies x by a
  mask that is 0 with probability p, scaled by 1 / (1 - p) (0 when p >= 1);
- every operation is IEEE arithmetic: ``x / 0`` is +-inf or nan,
  ``(-8)^(1/3)`` is nan, ``sign`` is -1, 0 or 1 (nan for nan), ``max``,
  ``min`` and ``clip(x, c) = min(max(x, -c), c)`` propagate nan;
- a comparison (``< <= > >= == !=``) is 1 where it holds, else 0 (false for
  nan, except ``!=``); ``where(c, a, b)`` is a where c is nonzero (nan is
  nonzero), else b; ``lerp(a, b, w)`` is torch.lerp's formula, ``a + w (b -
  a)`` where ``|w| < 0.5``, else ``b - (b - a) (1 - w)``;
- ``sum``, ``mean``, ``norm`` (sqrt of the sum of squares), ``rms`` (norm /
  sqrt(numel)) and ``amax`` (nan if any element is nan) give one number per
  tensor; ``rowmean`` averages over the last dimension of the 2-D view and
  ``colmean`` over the second-to-last; their results broadcast back to the
  tensor's elements;
- ``newton_schulz(x, a, b, c, steps, eps, bits)`` is torch.optim.Muon's
  orthogonalisation of the 2-D x: ``X = x / max(norm(x), eps)`` (transposed
  when it has more rows than columns), then ``steps`` times ``X <- a X + (b A
  + c A A) X`` with ``A = X X^T``; bits 64 and 0 compute in float64 (the
  interpreter's precision), 32 in float32 (NumPy has no bfloat16: bits 16 is
  refused);
- every value stands for a value at each element of the tensor: a reduced
  value is stored reduced (a number as a 0-d array, a row average with its last
  dimension 1), and broadcasts against others NumPy's way (``rowmean(x) *
  colmean(x)`` is a full tensor), but a reduction and newton_schulz see their
  operand at every element: ``sum(rowmean(x)) = sum(x)``, ``sum(2) = 2 numel``,
  ``norm(sum(x)) = sqrt(numel) |sum(x)|``, so that no result depends on how a
  value is stored;
- a state whose value is a number (it reads no tensor: numbers, params, t, lr,
  the facts and such states) is one number per tensor, as ``state c = where(t
  == 1, 1, c) * 0.9``; ``state r = lerp(r, rowmean(g^2), 0.1)`` keeps a row
  shape;
- the step is ``w <- w - lr * update``, with the update read where its
  statement stands (``w`` itself changes only at the end of the step), and
  with g replaced by -g for a tensor stepped with ``maximize``.

The interpreter steps several tensors, given by their shapes, stored one after
another in one flat array (C order); each tensor runs the rule on its own (its
own params, learning rate, step number and buffers, which is how one interpreter
serves several parameter groups and tensors that skip steps: a tensor without a
gradient keeps its value, its buffers and its t).  Inside a tensor's step every
value is a NumPy array: a number is a 0-d array, a tensor value has as many
dimensions as the tensor's 2-D view (reduced dimensions kept as 1).  ``params``
may be changed between steps (one value per tensor).

``step_size`` after each step is ``|lr|`` times the magnitude of the update's
additive parts (``|a| + |b|`` for ``a - b``, through sums, negations and
products, and through ``sum``, ``mean``, ``rowmean`` and ``colmean``):
executors may apply the parts of a sum as separate steps on the parameter, each
rounded at its own size, so the differential test allows rounding errors of
that size.  Three knobs exist for the test's self-checks, not for the language:
``dtype`` (np.float64, or np.longdouble to see how much float64 rounding moves
a result), ``zeros`` (``"+"``, ``"-"`` or ``"random"`` rewrites every zero
result to +0, to -0, or to either at random, to see whether a result depends on
the sign of a zero, which neither the compiler's algebra (``x + 0 = x``) nor
torch's ``max(0, -0)`` keeps as IEEE would) and ``nudge`` (every reduction's
result moved by that fraction of the magnitude it sums, to see whether a result
depends on the order in which a sum was rounded).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from nos.lang.rule import Rule
from nos.lang.tree import Node, Statement

Array = np.ndarray
Shape = tuple[int, ...]
FLOAT64_EPS = float(np.finfo(np.float64).eps)


def _sign(x: Array) -> Array:
    return np.where(x > 0, 1.0, np.where(x < 0, -1.0, x * 0.0)).astype(x.dtype)


def _clip(x: Array, c: Array) -> Array:
    return np.minimum(np.maximum(x, -c), c)


def _where(c: Array, a: Array, b: Array) -> Array:
    return np.where(c != 0, a, b)  # nan != 0: a nan condition takes a


def _lerp(a: Array, b: Array, w: Array) -> Array:
    return np.where(np.abs(w) < 0.5, a + w * (b - a), b - (b - a) * (1.0 - w))


def _norm(x: Array) -> Array:
    return np.sqrt(np.sum(x * x, keepdims=True))


BINARY: dict[str, Callable[[Array, Array], Array]] = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": np.divide,
    "pow": np.float_power,  # IEEE pow: np.power takes an exponent of 0.5 given as one number
    # (a 0-d or broadcast array) as sqrt, with sqrt(-inf) = nan and sqrt(-0) = -0
    "max": np.maximum,
    "min": np.minimum,
    "clip": _clip,
    "lt": np.less,  # comparisons give booleans: 1.0 and 0.0 once in the dtype
    "le": np.less_equal,
    "gt": np.greater,
    "ge": np.greater_equal,
    "eq": np.equal,
    "ne": np.not_equal,
}
UNARY: dict[str, Callable[[Array], Array]] = {
    "neg": np.negative,
    "exp": np.exp,
    "log": np.log,
    "sqrt": np.sqrt,
    "abs": np.abs,
    "sign": _sign,
}
TERNARY: dict[str, Callable[[Array, Array, Array], Array]] = {"where": _where, "lerp": _lerp}
# Reductions keep every dimension (as 1 where reduced): a tensor value stays a tensor value.
REDUCTIONS: dict[str, Callable[[Array], Array]] = {
    "sum": lambda x: np.sum(x, keepdims=True),
    "mean": lambda x: np.mean(x, keepdims=True),
    "norm": _norm,
    "rms": lambda x: _norm(x) / np.sqrt(x.size),
    "amax": lambda x: np.max(x, keepdims=True),  # np.max propagates nan
    "rowmean": lambda x: np.mean(x, axis=-1, keepdims=True),
    "colmean": lambda x: np.mean(x, axis=-2, keepdims=True),
}
AVERAGES = frozenset({"sum", "mean", "rowmean", "colmean"})  # linear: their parts are theirs
SCHEDULES = ("cd", "rd")
LANGUAGE = (frozenset(BINARY) | frozenset(UNARY) | frozenset(TERNARY) | frozenset(REDUCTIONS)
            | frozenset(SCHEDULES) | {"drop", "newton_schulz"})


def matrix_shape(shape: Shape) -> Shape:
    """The 2-D view of a tensor: a vector of n is a column (n, 1), a number (1, 1); a tensor
    of two or more dimensions keeps its shape (rows and columns are its last two)."""
    if len(shape) >= 2:
        return tuple(shape)
    return (shape[0], 1) if len(shape) == 1 else (1, 1)


def tensor_facts(shape: Shape) -> dict[str, float]:
    rows, cols = matrix_shape(shape)[-2:]
    return {"ndim": len(shape), "rows": rows, "cols": cols, "numel": math.prod(shape),
            "machine_eps": FLOAT64_EPS}


class Interpreter:
    """Steps the tensors of a flat float array with a rule; keeps their buffers and step
    numbers.  ``hyper`` gives each param one value for all tensors or one per tensor."""

    def __init__(
        self,
        rule: Rule,
        shapes: Sequence[Shape],
        hyper: Mapping[str, Sequence[float] | float] | None = None,
        total_steps: int | None = None,
        *,
        dtype: type = np.float64,
        zeros: str | None = None,
        nudge: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.statements: tuple[Statement, ...] = rule.expanded().statements
        self.shapes = [tuple(shape) for shape in shapes]
        self.views = [matrix_shape(shape) for shape in self.shapes]
        self.sizes = [math.prod(shape) for shape in self.shapes]
        self.size = sum(self.sizes)
        self.dtype = dtype
        self.zeros = zeros
        self.nudge = nudge
        self.total = total_steps
        self.rng = np.random.default_rng(seed)
        self.zero_signs = np.random.default_rng(seed + 1)
        given = dict(hyper or {})
        self.params = {s.name: self.per_tensor(given.get(s.name, s.default))
                       for s in self.statements if s.kind == "param"}
        self.t = [0] * len(self.shapes)  # steps taken, per tensor
        self.buffers = {s.name: [self.number(0.0)] * len(self.shapes)
                        for s in self.statements if s.kind == "state"}
        self.step_size = np.zeros(self.size)

    def per_tensor(self, value: Sequence[float] | float | None) -> list:
        """One value per tensor, from one for all or one per tensor."""
        if isinstance(value, (list, tuple, np.ndarray)):
            assert len(value) == len(self.shapes), "one value per tensor"
            return list(value)
        return [value] * len(self.shapes)

    def number(self, value: float | Array) -> Array:
        return np.asarray(value, dtype=self.dtype)

    def split(self, flat: Array) -> list[Array]:
        """The flat array as one array per tensor, each in its 2-D view."""
        ends = np.cumsum(self.sizes)
        return [self.number(part).reshape(view)
                for part, view in zip(np.split(np.asarray(flat), ends[:-1]), self.views)]

    def flat(self, values: Sequence[Array]) -> Array:
        """One value per tensor (reduced or a number) as a flat array over every element."""
        return np.concatenate([np.broadcast_to(v, view).reshape(-1)
                               for v, view in zip(values, self.views)])

    def flat_buffer(self, name: str) -> Array:
        return self.flat(self.buffers[name])

    # --- a step ----------------------------------------------------------------------

    def inputs(self, i: int, w: Array, g: Array, lr: float) -> dict[str, Array]:
        """What tensor i's statements read before any of them runs."""
        env = {"w": w, "g": g, "t": self.number(self.t[i]), "lr": self.number(lr)}
        if self.total is not None:
            env["T"] = self.number(self.total)
        env.update({name: self.number(value) for name, value
                    in tensor_facts(self.shapes[i]).items()})
        env.update({name: self.number(values[i]) for name, values in self.params.items()})
        return env

    def step(self, w: Array, g: Array, lr: Sequence[float] | float,
             active: Sequence[bool] | None = None,
             maximize: Sequence[bool] | bool = False) -> Array:
        """The new flat parameter values after one step with gradient g, for the tensors
        marked active (all by default; lr, active and maximize: one for all tensors or one
        per tensor); the others keep their values, buffers and step number."""
        lrs, on = self.per_tensor(lr), self.per_tensor(True if active is None else active)
        up = self.per_tensor(maximize)
        new, sizes = [], []
        with np.errstate(all="ignore"):
            for i, (w_i, g_i) in enumerate(zip(self.split(w), self.split(g))):
                if not on[i]:
                    new.append(w_i)
                    sizes.append(self.number(0.0))
                    continue
                self.t[i] += 1
                env = self.inputs(i, w_i, -g_i if up[i] else g_i, lrs[i])
                env.update({name: values[i] for name, values in self.buffers.items()})
                update, size = self.run(env)
                for name in self.buffers:
                    self.buffers[name][i] = env[name]
                lr_i = self.number(lrs[i])
                new.append(self.zero(w_i - lr_i * update))
                sizes.append(np.abs(lr_i) * size)
        self.step_size = self.flat(sizes)
        return self.flat(new)

    def run(self, env: dict[str, Array]) -> tuple[Array, Array]:
        """A tensor's statements in order (env: its inputs and old buffers, which take each
        state's and let's new value); the update and the magnitude of its parts."""
        update = size = None
        for s in self.statements:
            if s.kind == "param":
                continue
            value = self.eval(s.expr, env)  # type: ignore[arg-type]
            if s.kind in ("state", "let"):
                env[s.name] = value
            else:
                update, size = value, self.parts(s.expr, env)  # type: ignore[arg-type]
        assert update is not None, "a rule has an update"
        return update, size

    # --- expressions -------------------------------------------------------------------

    def eval(self, node: Node, env: dict[str, Array]) -> Array:
        if node.op == "num":
            return self.number(float(node.value))  # type: ignore[arg-type]
        if node.op == "name":
            return self.name(str(node.value), env)
        if node.op in SCHEDULES:
            return self.zero(self.schedule(node.op, self.eval(node.args[0], env), env))
        args = [self.eval(a, env) for a in node.args]
        if node.op == "drop":
            return self.zero(self.drop(*args, env["w"].shape))
        if node.op in UNARY:
            return self.zero(UNARY[node.op](*args))
        if node.op in BINARY:
            return self.zero(BINARY[node.op](*args))
        if node.op in TERNARY:
            return self.zero(TERNARY[node.op](*args))
        if node.op in REDUCTIONS:
            return self.zero(self.reduce(node.op, args[0], env["w"].shape))
        if node.op == "newton_schulz":
            return self.zero(self.newton_schulz(*args, env["w"].shape))
        raise ValueError(f"the interpreter does not know {node.op!r}")

    def reduce(self, op: str, x: Array, full: Shape) -> Array:
        """A reduction of x at every element of the tensor (with the nudge of the
        self-check: the result moved by a fraction of the magnitude it reduces)."""
        x = np.broadcast_to(x, full)
        out = REDUCTIONS[op](x)
        if self.nudge:
            out = out + self.nudge * REDUCTIONS[op](np.abs(x))
        return out

    def newton_schulz(self, x: Array, a: Array, b: Array, c: Array, steps: Array,
                      eps: Array, bits: Array, full: Shape) -> Array:
        x = np.broadcast_to(x, full)
        assert x.ndim == 2, f"newton_schulz of a {x.ndim}-D tensor"
        # float64 is the interpreter's precision (np.longdouble in the self-check)
        dtype = {0: self.dtype, 64: self.dtype, 32: np.float32}[int(bits)]
        a, b, c, eps = (dtype(float(v)) for v in (a, b, c, eps))
        o = x.astype(dtype)
        tall = o.shape[0] > o.shape[1]
        if tall:
            o = o.T
        o = o / np.maximum(np.sqrt(np.sum(o * o)), eps)  # nan stays nan
        for _ in range(int(steps)):
            gram = o @ o.T
            o = a * o + (b * gram + c * (gram @ gram)) @ o
        if tall:
            o = o.T
        return o.astype(self.dtype)

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
        if node.op in AVERAGES:
            return np.abs(self.reduce(node.op, self.parts(node.args[0], env), env["w"].shape))
        return np.abs(self.eval(node, env))

    def name(self, word: str, env: dict[str, Array]) -> Array:
        if word in env:
            return env[word]
        if word == "T":
            raise KeyError("the rule reads T: give total_steps")
        if word == "ld":
            total = self.total_steps(env)
            return np.maximum(0.0, (total - self.elapsed(env)) / total)
        if word == "noise":
            return self.number(self.rng.normal(0.0, 0.1, env["w"].shape))
        if word == "annealed_noise":
            std = (1.0 + env["t"]) ** -0.275
            return self.number(self.rng.normal(0.0, std, env["w"].shape))
        raise KeyError(f"unknown name {word!r}")

    def total_steps(self, env: dict[str, Array]) -> Array:
        return self.name("T", env)

    def elapsed(self, env: dict[str, Array]) -> Array:
        """s: 0 at the first step, clamped to T."""
        return np.clip(env["t"] - 1, 0, self.total_steps(env))

    def schedule(self, op: str, n: Array, env: dict[str, Array]) -> Array:
        total, s = self.total_steps(env), self.elapsed(env)
        if op == "cd":
            return 0.5 * (1.0 + np.cos(2.0 * np.pi * n * s / total))
        return 0.5 * (1.0 + np.cos(np.pi * np.mod(n * s, total) / total))

    def drop(self, x: Array, p: Array, full: Shape) -> Array:
        keep = self.rng.random(full) >= p
        scale = np.where(p < 1, 1.0 / (1.0 - p), 0.0)
        return x * (keep * scale).astype(self.dtype)

    def zero(self, x: Array) -> Array:
        """The result as an array of the dtype (a comparison's booleans as 1.0 and 0.0),
        every zero as +0, -0 or either when asked (a self-check; the language leaves the
        sign of a zero open)."""
        x = self.number(x)
        if self.zeros is None:
            return x
        if self.zeros == "random":
            signed = np.where(self.zero_signs.random(x.shape) < 0.5, 0.0, -0.0)
        else:
            signed = np.asarray(0.0 if self.zeros == "+" else -0.0)
        return np.where(x == 0, signed.astype(self.dtype), x)
