"""The rule's tree: one immutable node class and the statements.

A rule is a straight-line program evaluated element-wise for each parameter
tensor; the parameter step is always ``w <- w - lr * update``.  The tree
keeps source positions for error messages, but they take no part in
equality or hashing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Union

Value = Union[float, str, None]  # noqa: UP007 - a runtime alias, not an annotation

# Names every rule may read without defining them.
PRIMITIVES: dict[str, str] = {
    "g": "the gradient",
    "w": "the parameter's value",
    "t": "the step number, 1 at the first step",
    "T": "the total number of steps (needs total_steps)",
    "noise": "fresh N(0, 0.01) samples each step (standard deviation 0.1)",
    "annealed_noise": "fresh N(0, 1/(1+t)^0.55) samples each step",
    "ld": "linear decay max(0, (T - s) / T), s = t - 1 clamped to T",
    "lr": "the learning rate of the parameter's group at this step",
    "ndim": "the parameter's number of dimensions",
    "rows": "the number of rows of the parameter's 2-D view (size(-2); n for a vector of n)",
    "cols": "the number of columns of the parameter's 2-D view (size(-1); 1 for a vector)",
    "numel": "the parameter's number of elements",
    "machine_eps": "the machine epsilon of the parameter's dtype (2^-52 for float64)",
}
# Numbers of one tensor known on the host: they split a step's buckets by value.
TENSOR_FACTS = frozenset({"ndim", "rows", "cols", "numel", "machine_eps"})
RANDOM_PRIMITIVES = frozenset({"noise", "annealed_noise"})
SCHEDULE_NAMES = frozenset({"T", "ld", "cd", "rd"})


@dataclass(frozen=True)
class Node:
    """One expression node: ``op`` names the operation, ``args`` its operands.

    ``op`` is ``"num"`` (``value`` is the float), ``"name"`` (``value`` is the
    name), an operator (``add sub mul div pow neg``) or a function (``exp``,
    ``clip``, ...) whose meaning lives in :data:`nos.lang.ops.OPS`.
    """

    op: str
    args: tuple[Node, ...] = ()
    value: Value = None
    line: int = field(default=0, compare=False, repr=False)
    column: int = field(default=0, compare=False, repr=False)
    depth: int = field(default=1, compare=False, repr=False)

    def walk(self) -> Iterator[Node]:
        """Every node of the subtree, parents before children (no recursion)."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.args))

    def names(self) -> set[str]:
        return {n.value for n in self.walk() if n.op == "name"}  # type: ignore[misc]

    def calls(self) -> set[str]:
        return {n.op for n in self.walk() if n.op not in ("num", "name")}


def num(value: float) -> Node:
    return Node("num", value=float(value))


def name(value: str) -> Node:
    return Node("name", value=value)


@dataclass(frozen=True)
class Bounds:
    """The valid range of a param: ``[lo, hi)`` and friends."""

    lo: float
    hi: float
    lo_closed: bool = True
    hi_closed: bool = False

    def __contains__(self, x: float) -> bool:
        above = x >= self.lo if self.lo_closed else x > self.lo
        below = x <= self.hi if self.hi_closed else x < self.hi
        return above and below


@dataclass(frozen=True)
class Statement:
    """``param NAME = default [in bounds]``, ``state NAME = expr [from init]``,
    ``let NAME = expr``, ``update = expr`` (or ``w = expr``: the parameter's new value),
    or a view ``eval_w = expr`` / ``train_w = expr``."""

    kind: str  # "param" | "state" | "let" | "update" | "view"
    name: str  # "update" or "w" for an update; "eval_w" or "train_w" for a view
    expr: Node | None = None  # None for a param
    default: float | None = None  # params only
    bounds: Bounds | None = None  # params only
    line: int = field(default=0, compare=False, repr=False)
    column: int = field(default=0, compare=False, repr=False)
    init: Node | None = None  # a state's value before the first step (zero when None)

    @property
    def sets(self) -> bool:
        """An update that gives the parameter's new value (``w = expr``) rather than the
        step's ``update`` (``w <- w - lr * update``)."""
        return self.kind == "update" and self.name == "w"


# The views a rule may give of its parameters besides the training point (Schedule-Free's
# averaged iterate): ``optimizer.eval()`` sets each parameter to ``eval_w``, and
# ``optimizer.train()`` back to ``train_w`` (or to the value it had, kept until then).
VIEWS = ("eval_w", "train_w")


def update_of(statements: tuple[Statement, ...]) -> Node:
    """The expression of the ``update`` statement."""
    return next(s.expr for s in statements if s.kind == "update")  # type: ignore[return-value]


def names_read(statements: tuple[Statement, ...]) -> frozenset[str]:
    """Every name the statements' expressions read."""
    used: set[str] = set()
    for s in statements:
        if s.expr is not None:
            used |= s.expr.names()
        if s.init is not None:
            used |= s.init.names()
    return frozenset(used)


def live_statements(statements: tuple[Statement, ...]) -> tuple[Statement, ...]:
    """The statements the update and the views depend on (a buffer read by them keeps its
    statement, and what its initial value reads)."""
    needed: set[str] = set()
    for s in statements:
        if s.kind in ("update", "view"):
            needed |= s.expr.names()  # type: ignore[union-attr]
    while True:
        grown = set(needed)
        for s in statements:
            if s.name in needed and s.expr is not None:
                grown |= s.expr.names()
            if s.name in needed and s.init is not None:
                grown |= s.init.names()
        if grown == needed:
            break
        needed = grown
    return tuple(s for s in statements if s.kind in ("update", "view") or s.name in needed)
