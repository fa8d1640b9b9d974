"""Mutations of whole rules, and their simplification (the program search's variation).

After Chen et al. (2023), *Symbolic Discovery of Optimization Algorithms*, the
program search that found Lion: a child is its parent after one random
mutation, one row of :data:`MUTATIONS`:

- **insert** a new ``let`` or ``state`` (a small random expression over the
  names in scope; a state often as a running average of itself) and make a
  statement after it read the new name, so the insertion matters;
- **delete** a ``let`` or ``state``; each statement that read it reads another
  name in scope instead;
- **change** a statement's expression: a random subtree becomes a fresh random
  small expression;
- **replace an operand**: one name becomes another name in scope;
- **perturb a constant**: a number, or a param's default, is multiplied by
  ``2^N(0, 1)`` (inside the param's declared bounds; a value in ``[0, 1)``
  above 0.5 has its distance to 1 scaled instead);
- **change a function**: an operator or function becomes another of the same
  arity.

:func:`mutate` returns only valid rules (``nos.parse(str(child)) == child``
and it compiles) within the :class:`~nos.controllers.trees.Vocabulary`'s size
limits.  :func:`simplify` removes the statements that do not reach the update
(the compiler's liveness, at the language level: a state read anywhere live
keeps its statement alive), which changes nothing the rule does.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

from nos.compile.compiler import compile_rule
from nos.compile.program import RuleCompileError
from nos.lang.ops import OPS
from nos.lang.parser import RuleSyntaxError
from nos.lang.rule import Rule, parse
from nos.lang.tree import Bounds, Node, Statement, name, num

from .trees import (
    Path,
    Vocabulary,
    free_positions,
    fresh_name,
    make_node,
    pick,
    positions,
    random_expr,
    rename,
    replace_at,
    scope,
    size,
    state_expr,
    with_expr,
)

UNIT_INTERVAL = Bounds(0.0, 1.0, True, False)  # a drop probability
POSITIVE = Bounds(0.0, math.inf, False, False)  # a cd/rd period
MAX_MAGNITUDE = 1e30


# --- the mutations -------------------------------------------------------------------------

Mutation = Callable[[Rule, np.random.Generator, Vocabulary], "Rule | None"]


def _update_index(statements: Sequence[Statement]) -> int:
    return next(i for i, s in enumerate(statements) if s.kind == "update")


def insert_statement(rule: Rule, rng: np.random.Generator, vocabulary: Vocabulary
                     ) -> Rule | None:
    """A new let or state before the update, read by a statement that may read it."""
    statements = list(rule.statements)
    update = _update_index(statements)
    first = max((i + 1 for i, s in enumerate(statements[:update]) if s.kind == "param"),
                default=0)
    position = int(rng.integers(first, update + 1))
    names = scope(statements, position, vocabulary)
    depth = int(rng.integers(1, vocabulary.depth + 1))
    if rng.random() < 0.5:
        new = fresh_name(statements, "s")
        statement = Statement("state", new, state_expr(rng, names, new, vocabulary))
    else:
        new = fresh_name(statements, "a")
        statement = Statement("let", new, random_expr(rng, names, vocabulary, depth))
    statements.insert(position, statement)
    readers = [i for i, s in enumerate(statements) if s.expr is not None and i != position
               and (statement.kind == "state" or i > position)]
    reader = pick(rng, readers)
    statements[reader] = _wire(statements[reader], new, rng, vocabulary)
    return Rule(tuple(statements))


def _wire(statement: Statement, word: str, rng: np.random.Generator,
          vocabulary: Vocabulary) -> Statement:
    """``statement`` with a random subtree ``x`` replaced by ``op(x, word)``, or by ``word``
    if ``x`` is an operand (never the whole expression)."""
    path, node = pick(rng, free_positions(statement.expr))  # type: ignore[arg-type]
    new = name(word)
    if not path or node.args or rng.random() < 0.7:
        new = make_node(pick(rng, [op for op in vocabulary.ops(2) if op != "pow"]), (node, new))
    return with_expr(statement, replace_at(statement.expr, path, new))  # type: ignore[arg-type]


def delete_statement(rule: Rule, rng: np.random.Generator, vocabulary: Vocabulary
                     ) -> Rule | None:
    """Remove a let or state; its readers read another name in scope instead."""
    candidates = [i for i, s in enumerate(rule.statements) if s.kind in ("let", "state")]
    if not candidates:
        return None
    index = pick(rng, candidates)
    gone = rule.statements[index].name
    rest = list(rule.statements[:index] + rule.statements[index + 1:])
    for i, s in enumerate(rest):
        if s.expr is not None and gone in s.expr.names():
            names = [n for n in scope(rest, i, vocabulary) if n != gone]
            rest[i] = with_expr(s, rename(s.expr, gone, pick(rng, names)))
    return Rule(tuple(rest))


def change_expression(rule: Rule, rng: np.random.Generator, vocabulary: Vocabulary
                      ) -> Rule | None:
    """A random subtree of a statement becomes a fresh random expression."""
    statements = list(rule.statements)
    index = pick(rng, [i for i, s in enumerate(statements) if s.expr is not None])
    s = statements[index]
    path, _ = pick(rng, free_positions(s.expr))  # type: ignore[arg-type]
    depth = int(rng.integers(1, vocabulary.depth + 1))
    fresh = random_expr(rng, scope(statements, index, vocabulary), vocabulary, depth)
    statements[index] = with_expr(s, replace_at(s.expr, path, fresh))  # type: ignore[arg-type]
    return Rule(tuple(statements))


def replace_operand(rule: Rule, rng: np.random.Generator, vocabulary: Vocabulary
                    ) -> Rule | None:
    """One name read by a statement becomes another name in scope there."""
    statements = list(rule.statements)
    operands = [(i, path, n) for i, s in enumerate(statements) if s.expr is not None
                for path, n in free_positions(s.expr) if n.op == "name"]
    if not operands:
        return None
    index, path, node = pick(rng, operands)
    names = [n for n in scope(statements, index, vocabulary) if n != node.value]
    if not names:
        return None
    s = statements[index]
    statements[index] = with_expr(s, replace_at(s.expr, path, name(pick(rng, names))))  # type: ignore[arg-type]
    return Rule(tuple(statements))


def perturb_constant(rule: Rule, rng: np.random.Generator, vocabulary: Vocabulary
                     ) -> Rule | None:
    """A number or a param's default, multiplied by 2^N(0, 1), inside its bounds."""
    statements = list(rule.statements)
    targets: list[tuple[int, Path | None, float, Bounds | None]] = []
    for i, s in enumerate(statements):
        if s.kind == "param":
            targets.append((i, None, float(s.default), s.bounds))  # type: ignore[arg-type]
            continue
        for path, n, _ in positions(s.expr):  # type: ignore[arg-type]
            if n.op == "num":
                targets.append((i, path, float(n.value), _number_bounds(s.expr, path)))  # type: ignore[arg-type]
    if not targets:
        return None
    index, path, value, bounds = pick(rng, targets)
    new = perturbed(value, bounds, rng)
    if new is None:
        return None
    s = statements[index]
    if path is None:
        statements[index] = dataclasses.replace(s, default=new)
    else:
        statements[index] = with_expr(s, replace_at(s.expr, path, num(new)))  # type: ignore[arg-type]
    return Rule(tuple(statements))


def _number_bounds(expr: Node, path: Path) -> Bounds | None:
    """The range a number must stay in: drop's probability, cd/rd's period."""
    if not path:
        return None
    parent = expr
    for i in path[:-1]:
        parent = parent.args[i]
    if parent.op == "drop" and path[-1] == 1:
        return UNIT_INTERVAL
    if parent.op in ("cd", "rd"):
        return POSITIVE
    return None


def perturbed(value: float, bounds: Bounds | None, rng: np.random.Generator,
              tries: int = 10) -> float | None:
    """``value * 2^N(0, 1)`` to 3 significant digits, in ``bounds``; None if none is found.

    Zero becomes ``10^U(-4, -1)``; a value above 0.5 whose bounds end at 1
    (a decay such as ``beta2 = 0.999``) has its distance to 1 scaled instead.
    """
    for _ in range(tries):
        factor = 2.0 ** rng.normal()
        if value == 0:
            new = 10.0 ** rng.uniform(-4, -1)
        elif bounds is not None and bounds.hi == 1 and 0.5 < value < 1:
            new = 1.0 - (1.0 - value) * factor
        else:
            new = value * factor
        new = float(f"{new:.3g}")
        if new != value and 0 < new < MAX_MAGNITUDE and (bounds is None or new in bounds):
            return new
    return None


def change_function(rule: Rule, rng: np.random.Generator, vocabulary: Vocabulary
                    ) -> Rule | None:
    """An operator or function becomes another of the same arity."""
    statements = list(rule.statements)
    calls = [(i, path, n) for i, s in enumerate(statements) if s.expr is not None
             for path, n, _ in positions(s.expr) if n.op not in ("num", "name")]
    if not calls:
        return None
    index, path, node = pick(rng, calls)
    others = [op for op in vocabulary.all_ops(len(node.args))
              if op != node.op and _constant_args_ok(op, node.args)]
    if not others:
        return None
    s = statements[index]
    new = make_node(pick(rng, others), node.args)
    statements[index] = with_expr(s, replace_at(s.expr, path, new))  # type: ignore[arg-type]
    return Rule(tuple(statements))


def _constant_args_ok(op: str, args: tuple[Node, ...]) -> bool:
    """``op``'s constant arguments would be numbers in range (drop's p in [0, 1))."""
    for i in OPS[op].constant_args:
        if args[i].op != "num":
            return False
        bounds = UNIT_INTERVAL if op == "drop" else POSITIVE
        if float(args[i].value) not in bounds:  # type: ignore[arg-type]
            return False
    return True


MUTATIONS: dict[str, Mutation] = {
    "insert": insert_statement,
    "delete": delete_statement,
    "change": change_expression,
    "operand": replace_operand,
    "constant": perturb_constant,
    "function": change_function,
}


def is_valid(rule: Rule) -> bool:
    """The rule's text reads back as the same rule, and the rule compiles."""
    try:
        if parse(str(rule)) != rule:
            return False
        compile_rule(rule)
    except (RuleSyntaxError, RuleCompileError):
        return False
    return True


def _fits(child: Rule, parent: Rule, vocabulary: Vocabulary) -> bool:
    (statements, nodes), (parent_statements, parent_nodes) = size(child), size(parent)
    return (statements <= max(vocabulary.max_statements, parent_statements)
            and nodes <= max(vocabulary.max_nodes, parent_nodes))


def mutate(rule: Rule, rng: np.random.Generator, vocabulary: Vocabulary | None = None,
           kinds: Sequence[str] = tuple(MUTATIONS), attempts: int = 50) -> Rule:
    """One random mutation of ``kinds`` that gives a different, valid rule within the size limits.

    Kinds that do not apply, or whose result is invalid, are drawn again, up
    to ``attempts`` times; then the rule comes back unchanged.  The result is
    not simplified (see :func:`simplify`).
    """
    vocabulary = vocabulary or Vocabulary()
    for kind in kinds:
        if kind not in MUTATIONS:
            raise ValueError(f"unknown mutation {kind!r}; allowed: {', '.join(MUTATIONS)}")
    for _ in range(attempts):
        child = MUTATIONS[pick(rng, kinds)](rule, rng, vocabulary)
        if (child is not None and child != rule and _fits(child, rule, vocabulary)
                and is_valid(child)):
            return child
    return rule


# --- simplification ------------------------------------------------------------------------


def live_names(rule: Rule) -> frozenset[str]:
    """Names the update depends on, through the prelude too (the compiler's liveness)."""
    definitions = {s.name: s for s in rule.expanded().statements if s.kind != "update"}
    live = set(rule.update.names())
    stack = sorted(live)
    while stack:
        s = definitions.get(stack.pop())
        for dep in s.expr.names() if s is not None and s.expr is not None else ():
            if dep not in live:
                live.add(dep)
                stack.append(dep)
    return frozenset(live)


def simplify(rule: Rule) -> Rule:
    """The rule without the statements that do not reach the update (same behaviour)."""
    live = live_names(rule)
    kept = tuple(s for s in rule.statements if s.kind == "update" or s.name in live)
    return rule if len(kept) == len(rule.statements) else Rule(kept)


__all__ = ["MUTATIONS", "Mutation", "change_expression", "change_function", "delete_statement",
           "insert_statement", "is_valid", "live_names", "mutate", "perturb_constant",
           "perturbed", "replace_operand", "simplify"]
