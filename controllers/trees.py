"""Rule trees for the program search: the vocabulary mutations may write, editing a
rule's expressions by path, the names in scope at a statement, and random expressions.

A path is the sequence of argument indices from an expression's root to a
subtree.  An argument that must be a number (``drop``'s probability, ``cd``'s
period) is a *constant* position: a fresh expression never goes there.  Names
in scope follow the language: a state may be read anywhere (before its
statement it is its old value), a let only after its statement, and a prelude
name only if it reads none of the rule's own names but its params.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nos.lang.ops import FUNCTIONS, OPS
from nos.lang.parser import prelude_text
from nos.lang.rule import Rule, parse
from nos.lang.tree import PRIMITIVES, Node, Statement, name, num

# --- the vocabulary ------------------------------------------------------------------

OPERATORS_BY_ARITY = {1: ("neg",), 2: ("add", "sub", "mul", "div", "pow")}
DEFAULT_PRIMITIVES = ("g", "w", "t")
DEFAULT_FUNCTIONS = ("exp", "log", "sqrt", "abs", "sign", "clip", "max", "min")
CONSTANTS = (0.001, 0.01, 0.1, 0.5, 0.9, 0.99, 1.0, 2.0)  # numbers of fresh expressions
DECAYS = (0.5, 0.9, 0.99)  # of a fresh state written as a running average
DROP_RATES = (0.1, 0.3, 0.5)
PERIODS = (0.5, 1.0, 2.0)  # of fresh cd(n) and rd(n)
EXPONENTS = (0.5, 2.0, 3.0)
KEYWORDS = frozenset({"param", "state", "let", "update", "in", "inf"})


@dataclass(frozen=True)
class Vocabulary:
    """What mutations may write, and how large a rule may grow.

    ``primitives`` and ``functions`` are the ones fresh expressions may use
    (``T``, ``ld``, ``cd`` and ``rd`` need ``total_steps``; ``noise``,
    ``annealed_noise`` and ``drop`` make a rule random); ``prelude`` lets them
    read the prelude's names (``m``, ``v_hat``, ``adam``, ...).  A child may
    have at most ``max_statements`` statements and ``max_nodes`` expression
    nodes, or its parent's size if that is larger; ``depth`` bounds fresh
    expressions.
    """

    primitives: tuple[str, ...] = DEFAULT_PRIMITIVES
    functions: tuple[str, ...] = DEFAULT_FUNCTIONS
    prelude: bool = True
    max_statements: int = 12
    max_nodes: int = 64
    depth: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "primitives", tuple(self.primitives))
        object.__setattr__(self, "functions", tuple(self.functions))
        for word in self.primitives:
            if word not in PRIMITIVES:
                raise ValueError(f"unknown primitive {word!r}; allowed: {', '.join(PRIMITIVES)}")
        for word in self.functions:
            if word not in FUNCTIONS:
                raise ValueError(f"unknown function {word!r}; allowed: {', '.join(FUNCTIONS)}")
        if not self.primitives:
            raise ValueError("at least one primitive is needed")

    def ops(self, arity: int) -> tuple[str, ...]:
        """Operators and allowed functions of ``arity`` (any argument may be a tensor)."""
        functions = tuple(f for f in self.functions
                          if FUNCTIONS[f].arity == arity and not FUNCTIONS[f].constant_args)
        return OPERATORS_BY_ARITY.get(arity, ()) + functions

    def all_ops(self, arity: int) -> tuple[str, ...]:
        """Every operator and allowed function of ``arity``, constant arguments or not."""
        return OPERATORS_BY_ARITY.get(arity, ()) + tuple(
            f for f in self.functions if FUNCTIONS[f].arity == arity)


# --- trees ---------------------------------------------------------------------------

Path = tuple[int, ...]


def make_node(op: str, args: tuple[Node, ...]) -> Node:
    """The node ``op(*args)``, its depth computed."""
    return Node(op, args, depth=1 + max((a.depth for a in args), default=0))


def positions(node: Node) -> list[tuple[Path, Node, bool]]:
    """Every subtree as (path, node, inside an argument that must be a constant)."""
    out: list[tuple[Path, Node, bool]] = []
    stack: list[tuple[Path, Node, bool]] = [((), node, False)]
    while stack:
        path, n, constant = stack.pop()
        out.append((path, n, constant))
        fixed = OPS[n.op].constant_args if n.op in OPS else ()
        for i in reversed(range(len(n.args))):
            stack.append((path + (i,), n.args[i], constant or i in fixed))
    return out


def free_positions(node: Node) -> list[tuple[Path, Node]]:
    """The subtrees that may hold any expression (not inside a constant argument)."""
    return [(path, n) for path, n, constant in positions(node) if not constant]


def replace_at(node: Node, path: Path, new: Node) -> Node:
    """``node`` with the subtree at ``path`` replaced by ``new``."""
    if not path:
        return new
    i = path[0]
    args = node.args[:i] + (replace_at(node.args[i], path[1:], new),) + node.args[i + 1:]
    return make_node(node.op, args)


def rename(node: Node, old: str, new: str) -> Node:
    """``node`` with every read of the name ``old`` reading ``new``."""
    if node.op == "name":
        return name(new) if node.value == old else node
    if not node.args:
        return node
    return make_node(node.op, tuple(rename(a, old, new) for a in node.args))


def with_expr(statement: Statement, expr: Node) -> Statement:
    """``statement`` with its expression replaced by ``expr``."""
    return dataclasses.replace(statement, expr=expr)


def size(rule: Rule) -> tuple[int, int]:
    """(statements, expression nodes) of the rule's own text."""
    nodes = sum(sum(1 for _ in s.expr.walk()) for s in rule.statements if s.expr is not None)
    return len(rule.statements), nodes


# --- names in scope -------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _prelude_deps() -> dict[str, tuple[str, ...]]:
    """Each prelude name, with every prelude name it reads, directly or not (sorted)."""
    statements = parse(prelude_text() + "\nupdate = g").statements
    direct = {s.name: s.expr.names() if s.expr is not None else set()
              for s in statements if s.kind != "update"}
    deps: dict[str, tuple[str, ...]] = {}
    for word in direct:
        seen: set[str] = set()
        stack = [word]
        while stack:
            for dep in direct[stack.pop()]:
                if dep in direct and dep not in seen:
                    seen.add(dep)
                    stack.append(dep)
        deps[word] = tuple(sorted(seen))
    return deps


def _usable_prelude(statements: Sequence[Statement]) -> list[str]:
    """Prelude names a rule may read: not its own, and reading none of its own but params."""
    own = {s.name: s.kind for s in statements if s.kind != "update"}
    return [word for word, deps in _prelude_deps().items()
            if word not in own and all(own.get(d, "param") == "param" for d in deps)]


def scope(statements: Sequence[Statement], index: int, vocabulary: Vocabulary) -> list[str]:
    """Names an expression at position ``index`` may read, in a fixed order.

    The allowed primitives, the rule's params and states (a state read before
    its statement is its old value), the lets before ``index``, and the
    prelude names the rule may use if ``vocabulary.prelude``.
    """
    names = list(vocabulary.primitives)
    names += [s.name for s in statements if s.kind in ("param", "state")]
    names += [s.name for s in statements[:index] if s.kind == "let"]
    if vocabulary.prelude:
        names += _usable_prelude(statements)
    return list(dict.fromkeys(names))


def fresh_name(statements: Sequence[Statement], prefix: str) -> str:
    """``prefix`` and the first number that names nothing yet (``s1``, ``a2``)."""
    taken = ({s.name for s in statements} | set(PRIMITIVES) | set(FUNCTIONS) | KEYWORDS
             | set(_prelude_deps()))
    k = 1
    while f"{prefix}{k}" in taken:
        k += 1
    return f"{prefix}{k}"


# --- random expressions ------------------------------------------------------------------


def pick(rng: np.random.Generator, items: Sequence[Any]) -> Any:
    """One of ``items``, uniformly."""
    return items[int(rng.integers(len(items)))]


def _leaf(rng: np.random.Generator, names: Sequence[str], vocabulary: Vocabulary) -> Node:
    schedules = [f for f in ("cd", "rd") if f in vocabulary.functions]
    r = rng.random()
    if schedules and r < 0.05:
        return make_node(pick(rng, schedules), (num(pick(rng, PERIODS)),))
    if r < 0.2:
        return num(pick(rng, CONSTANTS))
    return name(pick(rng, names))


def random_expr(rng: np.random.Generator, names: Sequence[str], vocabulary: Vocabulary,
                depth: int) -> Node:
    """A random expression of at most ``depth`` operations over ``names`` and constants.

    ``log`` and ``sqrt`` read ``abs`` of their operand (as in Bello et al.'s
    space), powers have exponent 0.5 (of an ``abs``), 2 or 3, and ``drop``'s
    probability is a constant.
    """
    if depth <= 0 or rng.random() < 0.3:
        return _leaf(rng, names, vocabulary)
    r = rng.random()
    if "drop" in vocabulary.functions and r < 0.05:
        return make_node("drop", (random_expr(rng, names, vocabulary, depth - 1),
                                  num(pick(rng, DROP_RATES))))
    if r < 0.4:
        op = pick(rng, vocabulary.ops(1))
        arg = random_expr(rng, names, vocabulary, depth - 1)
        return make_node(op, (_nonnegative(arg, vocabulary) if op in ("log", "sqrt") else arg,))
    op = pick(rng, vocabulary.ops(2))
    left = random_expr(rng, names, vocabulary, depth - 1)
    if op == "pow":
        exponent = pick(rng, EXPONENTS)
        base = _nonnegative(left, vocabulary) if exponent == 0.5 else left
        return make_node("pow", (base, num(exponent)))
    return make_node(op, (left, random_expr(rng, names, vocabulary, depth - 1)))


def _nonnegative(node: Node, vocabulary: Vocabulary) -> Node:
    return make_node("abs", (node,)) if "abs" in vocabulary.functions else node


def state_expr(rng: np.random.Generator, names: Sequence[str], own: str,
               vocabulary: Vocabulary) -> Node:
    """A fresh state's expression: half the time ``c * own + (1 - c) * e``."""
    depth = int(rng.integers(1, vocabulary.depth + 1))
    if rng.random() < 0.5:
        c = pick(rng, DECAYS)
        e = random_expr(rng, names, vocabulary, depth - 1)
        return make_node("add", (make_node("mul", (num(c), name(own))),
                                 make_node("mul", (make_node("sub", (num(1.0), num(c))), e))))
    return random_expr(rng, list(names) + [own], vocabulary, depth)


__all__ = ["DEFAULT_FUNCTIONS", "DEFAULT_PRIMITIVES", "OPERATORS_BY_ARITY", "Path", "Vocabulary",
           "free_positions", "fresh_name", "make_node", "pick", "positions", "random_expr",
           "rename", "replace_at", "scope", "size", "state_expr", "with_expr"]
