"""Regularized evolution over whole programs in the rule language.

After Chen et al. (2023), *Symbolic Discovery of Optimization Algorithms*, the
program search that found Lion: a member of the population is a whole rule,
several ``param``/``state``/``let`` statements and the ``update``, and a child
is its parent after one random mutation:

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

Every child is simplified as in the paper: the statements that do not reach
the update are removed (the compiler's liveness, at the language level: a
state read anywhere live keeps its statement alive).  Every child is a valid
rule: ``nos.parse(str(child)) == child`` and it compiles.

As in AutoML-Zero and the Lion search, no training is spent on a child that
behaves like its parent: the child is mutated again until its functional
fingerprint (:mod:`nos.search.fingerprint`) differs from the parent's and its probe
is neither invalid nor degenerate, up to ``max_tries`` times.

Selection is regularized evolution (Real et al. 2019, *Regularized Evolution
for Image Classifier Architecture Search*): the population is the last
``population`` rules told; a parent is the best of ``sample_size`` members
drawn at random; the oldest members leave, however good.  The first
proposals are the ``start`` rules (simplified), then mutations of them until
``population`` proposals have been made and rewards have come in; ``ask`` may
run ahead of ``tell`` (an asynchronous search).  Rule text goes through the
parser only.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nos.compile.compiler import compile_rule
from nos.compile.program import RuleCompileError
from nos.lang.ops import FUNCTIONS, OPS
from nos.lang.parser import RuleSyntaxError, prelude_text
from nos.lang.rule import Rule, parse
from nos.lang.tree import PRIMITIVES, Bounds, Node, Statement, name, num
from nos.optim.baselines import baselines
from nos.search.fingerprint import Fingerprint, fingerprint
from nos.search.space import Space

from .base import Controller, Proposal, age_population, check_number

# --- the vocabulary of mutations -------------------------------------------------------

OPERATORS_BY_ARITY = {1: ("neg",), 2: ("add", "sub", "mul", "div", "pow")}
DEFAULT_PRIMITIVES = ("g", "w", "t")
DEFAULT_FUNCTIONS = ("exp", "log", "sqrt", "abs", "sign", "clip", "max", "min")
CONSTANTS = (0.001, 0.01, 0.1, 0.5, 0.9, 0.99, 1.0, 2.0)  # numbers of fresh expressions
DECAYS = (0.5, 0.9, 0.99)  # of a fresh state written as a running average
DROP_RATES = (0.1, 0.3, 0.5)
PERIODS = (0.5, 1.0, 2.0)  # of fresh cd(n) and rd(n)
EXPONENTS = (0.5, 2.0, 3.0)
UNIT_INTERVAL = Bounds(0.0, 1.0, True, False)  # a drop probability
POSITIVE = Bounds(0.0, math.inf, False, False)  # a cd/rd period
KEYWORDS = frozenset({"param", "state", "let", "update", "in", "inf"})
MAX_MAGNITUDE = 1e30


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


def _make(op: str, args: tuple[Node, ...]) -> Node:
    return Node(op, args, depth=1 + max((a.depth for a in args), default=0))


def _positions(node: Node) -> list[tuple[Path, Node, bool]]:
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


def _free_positions(node: Node) -> list[tuple[Path, Node]]:
    """The subtrees that may hold any expression (not inside a constant argument)."""
    return [(path, n) for path, n, constant in _positions(node) if not constant]


def _replace(node: Node, path: Path, new: Node) -> Node:
    if not path:
        return new
    i = path[0]
    args = node.args[:i] + (_replace(node.args[i], path[1:], new),) + node.args[i + 1:]
    return _make(node.op, args)


def _rename(node: Node, old: str, new: str) -> Node:
    if node.op == "name":
        return name(new) if node.value == old else node
    if not node.args:
        return node
    return _make(node.op, tuple(_rename(a, old, new) for a in node.args))


def _with_expr(statement: Statement, expr: Node) -> Statement:
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


def _fresh_name(statements: Sequence[Statement], prefix: str) -> str:
    taken = ({s.name for s in statements} | set(PRIMITIVES) | set(FUNCTIONS) | KEYWORDS
             | set(_prelude_deps()))
    k = 1
    while f"{prefix}{k}" in taken:
        k += 1
    return f"{prefix}{k}"


# --- random expressions ------------------------------------------------------------------


def _pick(rng: np.random.Generator, items: Sequence[Any]) -> Any:
    return items[int(rng.integers(len(items)))]


def _leaf(rng: np.random.Generator, names: Sequence[str], vocabulary: Vocabulary) -> Node:
    schedules = [f for f in ("cd", "rd") if f in vocabulary.functions]
    r = rng.random()
    if schedules and r < 0.05:
        return _make(_pick(rng, schedules), (num(_pick(rng, PERIODS)),))
    if r < 0.2:
        return num(_pick(rng, CONSTANTS))
    return name(_pick(rng, names))


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
        return _make("drop", (random_expr(rng, names, vocabulary, depth - 1),
                              num(_pick(rng, DROP_RATES))))
    if r < 0.4:
        op = _pick(rng, vocabulary.ops(1))
        arg = random_expr(rng, names, vocabulary, depth - 1)
        return _make(op, (_nonnegative(arg, vocabulary) if op in ("log", "sqrt") else arg,))
    op = _pick(rng, vocabulary.ops(2))
    left = random_expr(rng, names, vocabulary, depth - 1)
    if op == "pow":
        exponent = _pick(rng, EXPONENTS)
        base = _nonnegative(left, vocabulary) if exponent == 0.5 else left
        return _make("pow", (base, num(exponent)))
    return _make(op, (left, random_expr(rng, names, vocabulary, depth - 1)))


def _nonnegative(node: Node, vocabulary: Vocabulary) -> Node:
    return _make("abs", (node,)) if "abs" in vocabulary.functions else node


def _state_expr(rng: np.random.Generator, names: Sequence[str], own: str,
                vocabulary: Vocabulary) -> Node:
    """A fresh state's expression: half the time ``c * own + (1 - c) * e``."""
    depth = int(rng.integers(1, vocabulary.depth + 1))
    if rng.random() < 0.5:
        c = _pick(rng, DECAYS)
        e = random_expr(rng, names, vocabulary, depth - 1)
        return _make("add", (_make("mul", (num(c), name(own))),
                             _make("mul", (_make("sub", (num(1.0), num(c))), e))))
    return random_expr(rng, list(names) + [own], vocabulary, depth)


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
        new = _fresh_name(statements, "s")
        statement = Statement("state", new, _state_expr(rng, names, new, vocabulary))
    else:
        new = _fresh_name(statements, "a")
        statement = Statement("let", new, random_expr(rng, names, vocabulary, depth))
    statements.insert(position, statement)
    readers = [i for i, s in enumerate(statements) if s.expr is not None and i != position
               and (statement.kind == "state" or i > position)]
    reader = _pick(rng, readers)
    statements[reader] = _wire(statements[reader], new, rng, vocabulary)
    return Rule(tuple(statements))


def _wire(statement: Statement, word: str, rng: np.random.Generator,
          vocabulary: Vocabulary) -> Statement:
    """``statement`` with a random subtree ``x`` replaced by ``op(x, word)``, or by ``word``
    if ``x`` is an operand (never the whole expression)."""
    path, node = _pick(rng, _free_positions(statement.expr))  # type: ignore[arg-type]
    new = name(word)
    if not path or node.args or rng.random() < 0.7:
        new = _make(_pick(rng, [op for op in vocabulary.ops(2) if op != "pow"]), (node, new))
    return _with_expr(statement, _replace(statement.expr, path, new))  # type: ignore[arg-type]


def delete_statement(rule: Rule, rng: np.random.Generator, vocabulary: Vocabulary
                     ) -> Rule | None:
    """Remove a let or state; its readers read another name in scope instead."""
    candidates = [i for i, s in enumerate(rule.statements) if s.kind in ("let", "state")]
    if not candidates:
        return None
    index = _pick(rng, candidates)
    gone = rule.statements[index].name
    rest = list(rule.statements[:index] + rule.statements[index + 1:])
    for i, s in enumerate(rest):
        if s.expr is not None and gone in s.expr.names():
            names = [n for n in scope(rest, i, vocabulary) if n != gone]
            rest[i] = _with_expr(s, _rename(s.expr, gone, _pick(rng, names)))
    return Rule(tuple(rest))


def change_expression(rule: Rule, rng: np.random.Generator, vocabulary: Vocabulary
                      ) -> Rule | None:
    """A random subtree of a statement becomes a fresh random expression."""
    statements = list(rule.statements)
    index = _pick(rng, [i for i, s in enumerate(statements) if s.expr is not None])
    s = statements[index]
    path, _ = _pick(rng, _free_positions(s.expr))  # type: ignore[arg-type]
    depth = int(rng.integers(1, vocabulary.depth + 1))
    fresh = random_expr(rng, scope(statements, index, vocabulary), vocabulary, depth)
    statements[index] = _with_expr(s, _replace(s.expr, path, fresh))  # type: ignore[arg-type]
    return Rule(tuple(statements))


def replace_operand(rule: Rule, rng: np.random.Generator, vocabulary: Vocabulary
                    ) -> Rule | None:
    """One name read by a statement becomes another name in scope there."""
    statements = list(rule.statements)
    operands = [(i, path, n) for i, s in enumerate(statements) if s.expr is not None
                for path, n in _free_positions(s.expr) if n.op == "name"]
    if not operands:
        return None
    index, path, node = _pick(rng, operands)
    names = [n for n in scope(statements, index, vocabulary) if n != node.value]
    if not names:
        return None
    s = statements[index]
    statements[index] = _with_expr(s, _replace(s.expr, path, name(_pick(rng, names))))  # type: ignore[arg-type]
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
        for path, n, _ in _positions(s.expr):  # type: ignore[arg-type]
            if n.op == "num":
                targets.append((i, path, float(n.value), _number_bounds(s.expr, path)))  # type: ignore[arg-type]
    if not targets:
        return None
    index, path, value, bounds = _pick(rng, targets)
    new = perturbed(value, bounds, rng)
    if new is None:
        return None
    s = statements[index]
    if path is None:
        statements[index] = dataclasses.replace(s, default=new)
    else:
        statements[index] = _with_expr(s, _replace(s.expr, path, num(new)))  # type: ignore[arg-type]
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
             for path, n, _ in _positions(s.expr) if n.op not in ("num", "name")]
    if not calls:
        return None
    index, path, node = _pick(rng, calls)
    others = [op for op in vocabulary.all_ops(len(node.args))
              if op != node.op and _constant_args_ok(op, node.args)]
    if not others:
        return None
    s = statements[index]
    new = _make(_pick(rng, others), node.args)
    statements[index] = _with_expr(s, _replace(s.expr, path, new))  # type: ignore[arg-type]
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
        child = MUTATIONS[_pick(rng, kinds)](rule, rng, vocabulary)
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


# --- the controller ------------------------------------------------------------------------


def resolve_rule(source: str) -> Rule:
    """A named rule (``adamw``) or rule text, parsed."""
    named = baselines()
    return named[source].rule if source in named else parse(source)


@dataclass(frozen=True)
class ProgramConfig(Vocabulary):
    """Settings of the program search: the knobs of :class:`Vocabulary` (flat, as a
    config's ``[controller]`` table gives them) and the search's own.

    ``start``: names of named rules or rule texts to start from; ``max_tries``:
    mutations tried for a child that behaves differently from its parent.
    """

    population: int = 20
    sample_size: int = 5
    start: tuple[str, ...] = ("adamw", "momentum")
    max_tries: int = 20

    def __post_init__(self) -> None:
        owner = "controller 'program'"
        check_number(owner, "population", self.population, 1, integer=True)
        check_number(owner, "sample_size", self.sample_size, 1, self.population, integer=True)
        check_number(owner, "max_tries", self.max_tries, 1, integer=True)
        check_number(owner, "max_statements", self.max_statements, 1, integer=True)
        check_number(owner, "max_nodes", self.max_nodes, 1, integer=True)
        check_number(owner, "depth", self.depth, 1, integer=True)
        for key in ("start", "primitives", "functions"):
            value = getattr(self, key)
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{owner}: '{key}' must be a list of strings, got {value!r}")
            object.__setattr__(self, key, tuple(value))
        if not self.start:
            raise ValueError(f"{owner}: 'start' needs at least one rule")
        if not isinstance(self.prelude, bool):
            raise ValueError(f"{owner}: 'prelude' must be true or false, got {self.prelude!r}")
        for i, source in enumerate(self.start):
            try:
                resolve_rule(source)
            except ValueError as err:
                raise ValueError(f"{owner}: start[{i}]: {err}") from None
        try:
            self.vocabulary()
        except ValueError as err:
            raise ValueError(f"{owner}: {err}") from None

    def vocabulary(self) -> Vocabulary:
        return Vocabulary(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Vocabulary)})


@functools.lru_cache(maxsize=4096)
def _fingerprint(rule: Rule) -> Fingerprint:
    return fingerprint(rule)


@functools.lru_cache(maxsize=1024)
def _parsed(text: str) -> Rule:
    return parse(text)


class ProgramEvolution(Controller):
    """Regularized evolution over whole rules: tournament, one program mutation, aging.

    Proposals carry no tokens (``tokens == ()``); their text is the rule's
    canonical text.  ``space`` is accepted for the common constructor and
    checkpoint checks, and is not used.
    """

    name = "program"
    config_class = ProgramConfig

    def __init__(self, space: Space | None = None, seed: int = 0, **settings: Any):
        super().__init__(Space() if space is None else space, seed, **settings)
        self.vocabulary = self.config.vocabulary()
        self.start = [simplify(resolve_rule(s)) for s in self.config.start]
        self.rng = np.random.default_rng(seed)
        self.population: deque[tuple[str, float]] = deque()
        self.best: tuple[str, float] | None = None

    # --- proposing --------------------------------------------------------------------

    def _propose(self, n: int) -> list[Rule]:  # type: ignore[override]
        return [self._next(self.asked + i) for i in range(n)]

    def _proposal(self, rule: Rule) -> Proposal:  # type: ignore[override]
        return Proposal((), str(rule))

    def _next(self, index: int) -> Rule:
        if index < len(self.start):
            return self.start[index]
        if index < self.config.population or not self.population:
            return self.offspring(_pick(self.rng, self.start))
        return self.offspring(self._tournament())

    def _tournament(self) -> Rule:
        size = min(self.config.sample_size, len(self.population))
        picked = self.rng.choice(len(self.population), size=size, replace=False)
        # the first of equals wins: the oldest, as a stable tie-break
        winner = max(sorted(int(i) for i in picked), key=lambda i: self.population[i][1])
        return _parsed(self.population[winner][0])

    def offspring(self, parent: Rule) -> Rule:
        """A simplified mutation of ``parent`` that behaves differently, if one is found.

        Up to ``max_tries`` mutations; a child pruned by its probe (invalid or
        degenerate) is skipped.  If every try behaves like the parent, the
        last valid one comes back (the search's cache then costs no training);
        if none was valid, the parent.
        """
        before = _fingerprint(parent)
        fallback = parent
        for _ in range(self.config.max_tries):
            child = simplify(mutate(parent, self.rng, self.vocabulary))
            probe = _fingerprint(child)
            if probe.status != "ok":
                continue
            if probe.digest != before.digest:
                return child
            fallback = child
        return fallback

    # --- learning -----------------------------------------------------------------------

    def _key(self, proposal: Proposal) -> str:  # type: ignore[override]
        """A told proposal's canonical text (its tokens are empty)."""
        return self._canonical(proposal.text)

    @staticmethod
    def _canonical(text: str) -> str:
        try:
            return str(_parsed(text))
        except RuleSyntaxError as err:
            raise ValueError(f"tell: a proposal's text is not a rule: {err}") from None

    def _learn(self, texts: list[str], rewards: list[float]) -> dict:  # type: ignore[override]
        members = zip(texts, rewards, strict=True)
        self.best, stats = age_population(self.population, self.best, members,
                                          self.config.population)
        return stats

    # --- checkpoints --------------------------------------------------------------------

    def _state(self) -> dict:
        return {
            "rng": self.rng.bit_generator.state,
            "population": [[text, reward] for text, reward in self.population],
            "best": None if self.best is None else list(self.best),
        }

    def _load_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.population = deque((str(text), float(r)) for text, r in state["population"])
        best = state["best"]
        self.best = None if best is None else (str(best[0]), float(best[1]))


__all__ = ["MUTATIONS", "ProgramConfig", "ProgramEvolution", "Vocabulary", "is_valid",
           "live_names", "mutate", "random_expr", "resolve_rule", "scope", "simplify"]
