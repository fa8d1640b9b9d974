"""A deliberately plain interpreter of the nos language, for differential testing.

It shares only the parser with the package (``nos.parse(text)`` and the
prelude definitions the rule uses, ``nos.lang.parser.prelude_for``, put in
front; the shorthand is not written out by nos.lang.desugar but interpreted
here) and walks the tree one statement at a time with NumPy, with the meaning the
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
  with g replaced by -g for a tensor stepped with ``maximize``; ``w = expr``
  instead gives the parameter's new value (no lr), broadcast to its shape;
- ``gsum``, ``gmean``, ``gnorm`` (sqrt of the sum of squares), ``grms``
  (gnorm / sqrt(count)) and ``gamax`` reduce over every element of every
  tensor stepped at this step (all groups; count is their number of
  elements), their operand seen at every element as a per-tensor reduction
  sees it: the interpreter runs each statement on every tensor before the
  next statement, and a statement's global reductions (innermost first) on
  every tensor before the statement itself;
- a buffer starts at 0, or at its ``from`` value (which reads w, the tensor's
  facts and params), computed at the tensor's first step before any statement;
- the shorthand means what nos.lang.ops documents, computed here directly
  (not from nos's written-out form): ``dot(a, b) = sum(a b)``, ``cosine(a, b)
  = sum(a b) / (max(norm(a), 1e-8) max(norm(b), 1e-8))``, ``clip_gnorm(x, c) =
  x min(c / (gnorm(x) + 1e-6), 1)``; ``winmax(x, n)`` and ``winmin(x, n)`` are
  the largest and smallest of the last n values of x that the tensor's steps
  have seen (``min(t, n)`` of them), x read where the first call of the step
  with the same x and n stands (the two share a window, filled once a step);
- ``eval_w`` and ``train_w`` are views of the parameter (``shown``): eval_w
  read with the tensor's buffers, w, t and lr after its last step; train_w
  with w the eval view; without train_w, train() gives back the training
  value; a tensor never stepped is its own view.

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
products, and through ``sum``, ``mean``, ``rowmean`` and ``colmean``; for ``w =
expr``, the magnitude of expr's parts):
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

from nos.lang.parser import prelude_for
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
# Over the elements of every tensor stepped (``count`` of them), flattened and joined.
GLOBAL: dict[str, Callable[[Array, int], Array]] = {
    "gsum": lambda x, count: np.sum(x),
    "gmean": lambda x, count: np.sum(x) / count,
    "gnorm": lambda x, count: np.sqrt(np.sum(x * x)),
    "grms": lambda x, count: np.sqrt(np.sum(x * x)) / np.sqrt(count),
    "gamax": lambda x, count: np.max(x),
}
COSINE_FLOOR, CLIP_EPS = 1e-8, 1e-6  # as torch's cosine_similarity and clip_grad_norm_
WINDOWS = {"winmax": np.maximum, "winmin": np.minimum}  # nan-propagating
SHORTHAND = frozenset({"dot", "cosine", "clip_gnorm"}) | frozenset(WINDOWS)
LANGUAGE = (frozenset(BINARY) | frozenset(UNARY) | frozenset(TERNARY) | frozenset(REDUCTIONS)
            | frozenset(SCHEDULES) | frozenset(GLOBAL) | SHORTHAND | {"drop", "newton_schulz"})
TENSOR = "__tensor"  # the env's entry for the index of the tensor it belongs to


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
        self.statements: tuple[Statement, ...] = prelude_for(rule.statements) + rule.statements
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
        # per tensor, (x, n) -> the last values of x, newest last (winmax, winmin)
        self.windows: list[dict[tuple[Node, int], list[Array]]] = [{} for _ in self.shapes]
        self.filled: list[set] = [set() for _ in self.shapes]  # windows filled this step
        self.reduced: dict[Node, Array] = {}  # the global reductions of this statement

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

    def inputs(self, i: int, w: Array, g: Array | None, lr: float) -> dict[str, Array]:
        """What tensor i's statements read before any of them runs (a view: no g)."""
        env = {"w": w, "t": self.number(self.t[i]), "lr": self.number(lr), TENSOR: i}
        if g is not None:
            env["g"] = g
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
        ws = self.split(w)
        new, sizes = list(ws), [self.number(0.0)] * len(ws)
        envs: dict[int, dict[str, Array]] = {}
        with np.errstate(all="ignore"):
            for i, (w_i, g_i) in enumerate(zip(ws, self.split(g))):
                if not on[i]:
                    continue
                self.t[i] += 1
                env = self.inputs(i, w_i, -g_i if up[i] else g_i, lrs[i])
                if self.t[i] == 1:
                    self.start(i, env)
                env.update({name: values[i] for name, values in self.buffers.items()})
                envs[i] = env
                self.filled[i] = set()
            for s in self.statements:
                if s.kind in ("param", "view"):
                    continue
                self.reduce_globally(s.expr, list(envs.values()))  # type: ignore[arg-type]
                for i, env in envs.items():
                    value = self.eval(s.expr, env)  # type: ignore[arg-type]
                    if s.kind in ("state", "let"):
                        env[s.name] = value
                        continue
                    size = self.parts(s.expr, env)  # type: ignore[arg-type]
                    if s.sets:  # the parameter's new value
                        new[i] = self.zero(np.broadcast_to(value, ws[i].shape))
                        sizes[i] = size
                    else:
                        lr_i = self.number(lrs[i])
                        new[i] = self.zero(ws[i] - lr_i * value)
                        sizes[i] = np.abs(lr_i) * size
            for i, env in envs.items():
                for name in self.buffers:
                    self.buffers[name][i] = env[name]
        self.step_size = self.flat(sizes)
        return self.flat(new)

    def start(self, i: int, env: dict[str, Array]) -> None:
        """Tensor i's buffers before its first step: 0, or their ``from`` values."""
        for s in self.statements:
            if s.kind == "state" and s.init is not None:
                self.buffers[s.name][i] = self.eval(s.init, env)

    def reduce_globally(self, expr: Node, envs: list[dict[str, Array]]) -> None:
        """The statement's global reductions (and clip_gnorm's gnorm), innermost first, each
        over every element of the stepped tensors (envs), kept in ``self.reduced`` for
        eval to read."""
        self.reduced = {}
        if not envs:
            return
        count = sum(env["w"].size for env in envs)
        for node in _post_order(expr):
            if node in self.reduced or not (node.op in GLOBAL or node.op == "clip_gnorm"):
                continue
            op = "gnorm" if node.op == "clip_gnorm" else node.op
            parts = [np.broadcast_to(self.eval(node.args[0], env), env["w"].shape).reshape(-1)
                     for env in envs]
            x = np.concatenate(parts)
            out = self.number(GLOBAL[op](x, count))
            if self.nudge:
                out = out + self.nudge * GLOBAL[op](np.abs(x), count)
            self.reduced[node] = self.zero(out)

    def shown(self, w: Array, lr: Sequence[float] | float) -> tuple[Array, Array]:
        """The parameters optimizer.eval() gives (eval_w of each tensor stepped at least
        once, read with its buffers, w, t and lr) and those optimizer.train() gives back
        from them (train_w read with w the eval view; else w as it was)."""
        expressions = {s.name: s.expr for s in self.statements if s.kind == "view"}
        lrs = self.per_tensor(lr)

        def view(name: str, flat: Array) -> Array:
            out = []
            for i, w_i in enumerate(self.split(flat)):
                if self.t[i] == 0 or name not in expressions:
                    out.append(w_i)
                    continue
                env = self.inputs(i, w_i, None, lrs[i])
                env.update({b: values[i] for b, values in self.buffers.items()})
                out.append(self.zero(np.broadcast_to(self.eval(expressions[name], env),
                                                     w_i.shape)))
            return self.flat(out)

        with np.errstate(all="ignore"):
            shown = view("eval_w", w)
            back = view("train_w", shown) if "train_w" in expressions else np.asarray(w)
        return shown, back

    # --- expressions -------------------------------------------------------------------

    def eval(self, node: Node, env: dict[str, Array]) -> Array:
        if node.op == "num":
            return self.number(float(node.value))  # type: ignore[arg-type]
        if node.op == "name":
            return self.name(str(node.value), env)
        if node.op in SCHEDULES:
            return self.zero(self.schedule(node.op, self.eval(node.args[0], env), env))
        if node.op in GLOBAL:
            return self.reduced[node]
        if node.op in WINDOWS:
            return self.zero(self.window(node, env))
        args = [self.eval(a, env) for a in node.args]
        if node.op == "clip_gnorm":
            scale = np.minimum(args[1] / (self.reduced[node] + CLIP_EPS), 1.0)
            return self.zero(args[0] * scale)
        if node.op == "dot":
            return self.zero(self.reduce("sum", args[0] * args[1], env["w"].shape))
        if node.op == "cosine":
            full = env["w"].shape
            norms = [np.maximum(self.reduce("norm", a, full), COSINE_FLOOR) for a in args]
            return self.zero(self.reduce("sum", args[0] * args[1], full)
                             / (norms[0] * norms[1]))
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

    def window(self, node: Node, env: dict[str, Array]) -> Array:
        """winmax or winmin: the extreme of the last n values of x (fewer before the n-th
        step), x read at the first call of the step with this x and n."""
        x, n = node.args[0], int(float(node.args[1].value))  # type: ignore[arg-type]
        i = env[TENSOR]
        seen = self.windows[i].setdefault((x, n), [])
        if (x, n) not in self.filled[i]:
            self.filled[i].add((x, n))
            seen.append(self.eval(x, env))
            del seen[:-n]
        out = seen[-1]
        for value in seen[:-1]:
            out = WINDOWS[node.op](out, value)
        return out

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


def _post_order(node: Node) -> list[Node]:
    """The subtree's nodes, children before their parents."""
    out: list[Node] = []
    for arg in node.args:
        out += _post_order(arg)
    out.append(node)
    return out
