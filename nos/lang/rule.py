"""The rule's tree: one immutable node class, statements, and the Rule.

A rule is a straight-line program evaluated element-wise for each parameter
tensor; the parameter step is always ``w <- w - lr * update``.  The tree
keeps source positions for error messages, but they take no part in
equality or hashing: two rules are equal when their canonical texts are.
"""

from __future__ import annotations

import functools
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
}
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
    """``param NAME = default [in bounds]``, ``state``/``let NAME = expr``, or ``update = expr``."""

    kind: str  # "param" | "state" | "let" | "update"
    name: str
    expr: Node | None = None  # None for a param
    default: float | None = None  # params only
    bounds: Bounds | None = None  # params only
    line: int = field(default=0, compare=False, repr=False)
    column: int = field(default=0, compare=False, repr=False)


@functools.total_ordering
@dataclass(frozen=True)
class Rule:
    """A parsed update rule: immutable, hashable, ordered by canonical text.

    Build one with :func:`nos.parse`.  ``str(rule)`` is the canonical text and
    ``nos.parse(str(rule)) == rule``.
    """

    statements: tuple[Statement, ...]

    def __str__(self) -> str:
        from nos.lang.printer import to_text

        return to_text(self)

    def __repr__(self) -> str:
        return f"Rule({str(self)!r})"

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Rule):
            return NotImplemented
        return str(self) < str(other)

    def latex(self) -> str:
        from nos.lang.printer import to_latex

        return to_latex(self)

    @property
    def update(self) -> Node:
        return next(s.expr for s in self.statements if s.kind == "update")  # type: ignore[return-value]

    @property
    def params(self) -> dict[str, float]:
        """The rule's own params with their defaults (prelude params: see :meth:`expanded`)."""
        return {s.name: s.default for s in self.statements if s.kind == "param"}  # type: ignore[misc]

    @property
    def state(self) -> tuple[str, ...]:
        """Names of the rule's own per-parameter buffers."""
        return tuple(s.name for s in self.statements if s.kind == "state")

    @property
    def defined(self) -> frozenset[str]:
        return frozenset(s.name for s in self.statements if s.kind != "update")

    @property
    def names_used(self) -> frozenset[str]:
        """Every name read by the rule's expressions."""
        used: set[str] = set()
        for s in self.statements:
            if s.expr is not None:
                used |= s.expr.names()
        return frozenset(used)

    @property
    def primitives(self) -> frozenset[str]:
        """The primitives (g, w, t, T, noise, ...) the rule reads, its prelude included."""
        names = self.expanded().names_used
        return frozenset(n for n in names if n in PRIMITIVES)

    @property
    def prelude_names(self) -> frozenset[str]:
        """The prelude definitions the rule uses, directly or through others."""
        own = {s.name for s in self.statements}
        return frozenset(s.name for s in self.expanded().statements if s.name not in own)

    @property
    def functions(self) -> frozenset[str]:
        called: set[str] = set()
        for s in self.statements:
            if s.expr is not None:
                called |= s.expr.calls()
        return frozenset(called)

    @property
    def needs_total_steps(self) -> bool:
        """True when the rule reads T, directly or through ld, cd or rd."""
        expanded = self.expanded()
        return bool(SCHEDULE_NAMES & (expanded.names_used | expanded.functions))

    @property
    def is_random(self) -> bool:
        expanded = self.expanded()
        return bool(RANDOM_PRIMITIVES & expanded.names_used) or "drop" in expanded.functions

    @functools.cached_property
    def _expanded(self) -> Rule:
        from nos.lang.parser import expand_prelude

        return expand_prelude(self)

    def expanded(self) -> Rule:
        """The rule with the prelude definitions it uses written out in front."""
        return self._expanded
