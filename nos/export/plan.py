"""What both exports share: the rule read once for code generation, and the function that
steps one tensor, written from it.

A :class:`Plan` (:func:`make_plan`) holds the statements of the expanded rule that the
update needs (the prelude definitions it uses written out; dead statements dropped, as
nos.Optimizer drops them, so the same buffers exist), the kind of each name (*scalar*:
numbers, params, t, T, lr, the schedules and the tensor's facts, computed on Python floats
once per tensor and step; *tensor*), the shape of each tensor (nos.compile.program's:
the parameter's own, or reduced to one number or over a row or column), the buffers that
are numbers (a state that depends on no tensor), the random draws in the order
nos.Optimizer makes them (statement by statement, operands before the operation), and a
Python identifier for each of the rule's names.

*Switches.*  A ``where`` whose condition reads only params and the tensor's facts
(``where(amsgrad, a, b)``, ``where(ndim >= 2, a, b)``) is decided before the step, as
nos.Optimizer compiles a group's program for it: it is written as Python's ``a if c else
b``, so the branch not taken is not computed, and a statement only that branch needs (a
buffer such as amsgrad's running maximum) runs, and its buffer is kept, only under the
conditions where it is needed (its *guard*, a few ``and``/``or`` of the conditions, which
are folded into the statement's own code).

:func:`update_function` writes ``_update(w, g, state, group, t, T, drawn)`` (and
``facts`` when the rule reads ``ndim``, ``rows``, ...), the rule for one tensor, in a
backend's :class:`Spelling`: the torch and optax exports differ in that table, their
helpers and the code around the function, never in how a rule is read.

The later constructs are read here too: the rule's shorthand is written out
(``Rule.expanded``); ``w = expr`` is an update that is the parameter's new value
(``Plan.sets``); a reduction over every parameter (``Plan.crosses``) is spelled as a
``yield`` of the tensor's part, which makes ``_update`` a generator the backend runs side
by side for every tensor, and leaves the rule without switches (nos.Optimizer runs one
program for every group); ``from`` values are written as ``_from`` (``init_function``),
views as ``_eval_w`` and ``_train_w`` (``view_function``); a view's where on params is a
switch like the step's, and what it reads is kept.  A sum, norm or newton_schulz of a
value stored reduced (a row mean) sees it at every element, as nos's compiler does.
"""

from __future__ import annotations

import builtins
import itertools
import json
import keyword
import math
import re
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from nos.compile.program import COL, FULL, GLOBAL, ONE, REDUCED, ROW, WHOLE, broadcast
from nos.lang.ops import COMPARISONS, OPS
from nos.lang.printer import bounds_text, expr_text, format_number
from nos.lang.rule import Rule
from nos.lang.tree import TENSOR_FACTS, Node, Statement, live_statements
from nos.optim.baselines import BASELINES, Baseline
from nos.optim.optimizer import DEFAULT_LR, resolve

SCALAR, TENSOR = "scalar", "tensor"
NORMAL, UNIFORM = "normal", "uniform"  # the draws: N(0, 1) samples, U[0, 1) samples
TENSOR_PRIMITIVES = frozenset({"g", "w", "noise", "annealed_noise"})
SCALAR_PRIMITIVES = frozenset({"t", "T", "ld", "lr"}) | TENSOR_FACTS
# What the generated _update reads or calls besides the rule's names.
RESERVED = frozenset({"w", "g", "state", "group", "t", "T", "drawn", "facts", "update",
                      "torch", "math", "jnp", "jax", "abs", "float", "not", "and", "or"})
NUMBER = "number"  # the shape of a buffer that is a number
SHAPE_NAMES = {FULL: "full", ROW: "row", COL: "col", ROW | COL: "row col", ONE: "one"}
MAX_CONDITIONS = 8  # distinct switch conditions a rule may have (guards over 2^8 cases)

# Python precedence of what the writer emits (the same as the language's for these).
_INFIX = {"add": (" + ", 1), "sub": (" - ", 1), "mul": (" * ", 2), "div": (" / ", 2)}
_SYMBOLS = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}
_PRODUCT, _NEG, _ATOM = 2, 3, 5
BUILTINS = frozenset(dir(builtins))


class ExportError(ValueError):
    """A rule (or a name) that cannot be exported."""


@dataclass(frozen=True)
class Source:
    """What an export starts from: the rule, its default lr, the named rule if it is one."""

    rule: Rule
    lr: float
    baseline: Baseline | None


def read_source(rule: Rule | str, lr: float | None = None) -> Source:
    """A Rule, rule text or a named rule (``"adam"``, with its lr), as nos.Optimizer reads
    them; ``lr`` overrides the default learning rate (else nos.Optimizer's)."""
    parsed, baseline_lr, _ = resolve(rule)
    baseline = BASELINES.get(rule) if isinstance(rule, str) else None
    if lr is None:
        lr = baseline_lr if baseline_lr is not None else DEFAULT_LR
    if not (isinstance(lr, (int, float)) and 0 <= lr < math.inf):
        raise ExportError(f"the default lr must be a finite number >= 0, got {lr!r}")
    return Source(parsed, float(lr), baseline)


Cube = tuple[tuple[int, bool], ...]  # condition index -> the value it must have
Guard = tuple[Cube, ...] | None  # None: always; (): never; else any of the cubes


@dataclass(frozen=True)
class Plan:
    """A rule read for code generation (see the module docstring)."""

    rule: Rule
    declared: tuple[Statement, ...]  # every param of the expanded rule: the keywords
    live: tuple[Statement, ...]  # the statements the update needs, in order
    kinds: dict[str, str]  # each defined name's kind
    identifiers: dict[str, str]  # each defined name's Python identifier
    sites: tuple[str, ...]  # NORMAL or UNIFORM per draw of a step, in nos's order
    needs_total_steps: bool
    reads_w: bool
    shapes: dict[str, frozenset[str]] = field(default_factory=dict)  # tensor lets, buffers
    numbers: frozenset[str] = frozenset()  # the buffers that are numbers
    conditions: tuple[Node, ...] = ()  # the switch conditions, in order of appearance
    guards: tuple[Guard, ...] = ()  # per statement of ``live``
    code: tuple[Node | None, ...] = ()  # per statement: its expression as written
    facts: tuple[str, ...] = ()  # the tensor facts the rule reads
    reads_lr: bool = False
    viewed: bool = False  # reads rows or columns: tensors are stepped as 2-D views
    matrix: str | None = None  # a matrix function the rule calls: 2-D parameters only
    sets: bool = False  # ``w = expr``: the update is the parameter's new value
    crosses: bool = False  # reduces over every parameter (gsum, gnorm, ...): no switches
    inits: dict[str, Node] = field(default_factory=dict)  # buffer -> its ``from`` value
    views: dict[str, Node] = field(default_factory=dict)  # eval_w, train_w -> expression

    @property
    def buffers(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.live if s.kind == "state")

    @property
    def random(self) -> bool:
        return bool(self.sites)

    def buffer_shape(self, name: str) -> str:
        """``number``, or the name of a tensor buffer's shape (``full``, ``row``, ...)."""
        return NUMBER if name in self.numbers else SHAPE_NAMES[self.shapes[name]]

    @property
    def plain_buffers(self) -> bool:
        """Every buffer a tensor of the parameter's shape, kept in every case, from zeros."""
        return all(self.buffer_shape(n) == "full" for n in self.buffers) and not self.kept \
            and not self.inits

    @property
    def kept(self) -> dict[str, Guard]:
        """The buffers kept only under some conditions, with their guards."""
        return {s.name: guard for s, guard in zip(self.live, self.guards, strict=True)
                if s.kind == "state" and guard is not None}


def _kind(node: Node, kinds: dict[str, str]) -> str:
    if node.op == "num":
        return SCALAR
    if node.op == "name":
        word = str(node.value)
        if word in TENSOR_PRIMITIVES:
            return TENSOR
        return SCALAR if word in SCALAR_PRIMITIVES else kinds[word]
    if node.op not in OPS:
        raise ExportError(f"nos export does not know the operation {node.op!r}")
    op = OPS[node.op]
    args = [_kind(a, kinds) for a in node.args]
    for i in op.constant_args:
        if args[i] == TENSOR:
            raise ExportError(f"argument {i + 1} of {op.signature} must not depend on tensors "
                              f"(line {node.line})")
    if op.random or not op.elementwise:
        return TENSOR
    if op.schedule:
        return SCALAR
    return TENSOR if TENSOR in args else SCALAR


def _shape(node: Node, kinds: dict[str, str], shapes: dict[str, frozenset[str]]
           ) -> frozenset[str]:
    """The shape of a tensor-kind expression, as nos's compiler gives it (the broadcast of
    the operands', a reduction's axes added; a number a reduction reads is a full tensor)."""
    if node.op == "name":
        word = str(node.value)
        return FULL if word in TENSOR_PRIMITIVES else shapes[word]
    op = OPS[node.op]
    if op.random:
        return FULL  # x times a mask of the parameter's shape
    args = [_shape(a, kinds, shapes) if _kind(a, kinds) == TENSOR else None for a in node.args]
    first = args[0] if args[0] is not None else FULL
    if op.reduce:
        return REDUCED[op.reduce] | first
    if op.matrix:
        return first
    return broadcast(*(s for s in args if s is not None))


def _sites(node: Node, out: list[str]) -> None:
    """The draws of an expression, operands first (the order nos.Optimizer draws in)."""
    for arg in node.args:
        _sites(arg, out)
    if node.op == "name" and node.value in ("noise", "annealed_noise"):
        out.append(NORMAL)
    elif node.op == "drop":
        out.append(UNIFORM)


def python_identifiers(names: Iterable[str], reserved: frozenset[str] = RESERVED
                       ) -> dict[str, str]:
    """A Python identifier for each name: the name itself, or with underscores appended
    where it is a keyword, reserved, or could shadow a helper (a leading underscore)."""
    names = list(names)
    taken = set(names) | set(reserved)
    result = {}
    for name in names:
        ident = name
        if keyword.iskeyword(name) or name in reserved or name.startswith("_"):
            ident = name + "_"
            while ident in taken:
                ident += "_"
            taken.add(ident)
        result[name] = ident
    return result


def _types(live: tuple[Statement, ...]):
    """Kinds, shapes and the number buffers, as nos's compiler finds them: a buffer is a
    number until its value (or its ``from`` value, reading w) needs a tensor; a tensor
    buffer widens until its shape holds its value (a fixed point: shapes only grow)."""
    numbers = {s.name for s in live if s.kind == "state"}
    buffer_shapes: dict[str, frozenset[str]] = {}
    for s in live:  # a buffer that starts at the parameter is a tensor of its shape
        if s.kind == "state" and s.init is not None and "w" in s.init.names():
            numbers.discard(s.name)
            buffer_shapes[s.name] = FULL
    while True:
        kinds: dict[str, str] = {}
        shapes: dict[str, frozenset[str]] = {}
        for s in live:
            if s.kind == "param":
                kinds[s.name] = SCALAR
            elif s.kind == "state":
                kinds[s.name] = SCALAR if s.name in numbers else TENSOR
                if s.name not in numbers:
                    shapes[s.name] = buffer_shapes[s.name]
        changed = False
        for s in live:
            if s.expr is None:
                continue
            kind = _kind(s.expr, kinds)
            if s.kind == "let":
                kinds[s.name] = kind
                if kind == TENSOR:
                    shapes[s.name] = _shape(s.expr, kinds, shapes)
            elif s.kind == "state" and kind == TENSOR:
                value = _shape(s.expr, kinds, shapes)
                if s.name in numbers:
                    numbers.discard(s.name)
                    buffer_shapes[s.name] = value
                    changed = True
                elif broadcast(buffer_shapes[s.name], value) != buffer_shapes[s.name]:
                    buffer_shapes[s.name] = broadcast(buffer_shapes[s.name], value)
                    changed = True
        if not changed:
            return kinds, shapes, frozenset(numbers)


def _static(node: Node, known: frozenset[str]) -> bool:
    """Whether nos.Optimizer knows the expression's value before the step (it reads only
    numbers, params and the tensor's facts, through element-wise operations)."""
    for n in node.walk():
        if n.op == "name" and n.value not in known:
            return False
        if n.op in OPS:
            op = OPS[n.op]
            if op.scalar is None or op.schedule or op.random or not op.elementwise:
                return False
    return True


def _fold(node: Node, values: dict[Node, bool]) -> Node:
    """The expression with every ``where`` whose condition has a value replaced by its
    branch."""
    if not node.args:
        return node
    if node.op == "where" and node.args[0] in values:
        return _fold(node.args[1] if values[node.args[0]] else node.args[2], values)
    args = tuple(_fold(a, values) for a in node.args)
    return node if args == node.args else replace(node, args=args)


def _covers(cube: tuple, case: tuple[bool, ...]) -> bool:
    return all(v is None or v == c for v, c in zip(cube, case, strict=True))


def _cover(cases: set[tuple[bool, ...]], k: int) -> tuple[Cube, ...]:
    """A few cubes (conjunctions of conditions) whose union is exactly ``cases``: the prime
    implicants (Quine-McCluskey), chosen greedily."""
    cubes: set[tuple] = set(cases)
    primes: set[tuple] = set()
    while cubes:
        merged, used = set(), set()
        ordered = sorted(cubes, key=repr)
        for i, a in enumerate(ordered):
            for b in ordered[i + 1:]:
                diff = [j for j in range(k) if a[j] != b[j]]
                if len(diff) == 1 and a[diff[0]] is not None and b[diff[0]] is not None:
                    merged.add(a[:diff[0]] + (None,) + a[diff[0] + 1:])
                    used |= {a, b}
        primes |= cubes - used
        cubes = merged
    uncovered, chosen = set(cases), []
    while uncovered:
        best = max(sorted(primes, key=repr),
                   key=lambda c: sum(_covers(c, m) for m in uncovered))
        chosen.append(best)
        uncovered = {m for m in uncovered if not _covers(best, m)}
    return tuple(tuple((i, v) for i, v in enumerate(cube) if v is not None)
                 for cube in chosen)


def _switches(live: tuple[Statement, ...], known: frozenset[str], sites: list[str]):
    """The switch conditions, each statement's guard and its code (module docstring)."""
    conditions: list[Node] = []
    for s in live:
        for node in s.expr.walk() if s.expr is not None else ():
            if node.op == "where" and _static(node.args[0], known) \
                    and node.args[0] not in conditions:
                conditions.append(node.args[0])
    if len(conditions) > MAX_CONDITIONS:
        raise ExportError(f"the rule has {len(conditions)} conditions of where on params "
                          f"alone; nos export takes at most {MAX_CONDITIONS}")
    k = len(conditions)
    cases = list(itertools.product((True, False), repeat=k))
    live_in: dict[int, set] = {i: set() for i in range(len(live))}
    for case in cases:
        values = dict(zip(conditions, case, strict=True))
        folded = tuple(s if s.expr is None else replace(s, expr=_fold(s.expr, values))
                       for s in live)
        needed = live_statements(folded)
        drawn: list[str] = []
        for s in needed:
            if s.expr is not None:
                _sites(s.expr, drawn)
        if drawn != sites:
            raise ExportError("a random draw (noise, annealed_noise, drop) in a branch of a "
                              "where on params alone is not exported: nos.Optimizer draws it "
                              "only where the branch is taken")
        for i, s in enumerate(folded):
            if s in needed:
                live_in[i].add(case)
    guards: list[Guard] = []
    code: list[Node | None] = []
    for i, s in enumerate(live):
        where = live_in[i]
        if s.kind == "param" or len(where) == len(cases):
            guard: Guard = None
        else:
            guard = _cover(where, k) if where else ()
        fixed = {conditions[j]: next(iter(where))[j] for j in range(k)
                 if len({case[j] for case in where}) == 1} if where else {}
        guards.append(guard)
        code.append(None if s.expr is None else _fold(s.expr, fixed) if guard else s.expr)
    return tuple(conditions), tuple(guards), tuple(code)


def make_plan(rule: Rule) -> Plan:
    """Read a rule for export; ExportError where nos.Optimizer could not compile it.

    A rule with reductions over every parameter has no switches: nos.Optimizer runs one
    program for every group (each reduction must read every parameter), which keeps
    every buffer and decides each ``where`` at every element."""
    expanded = rule.expanded()
    everything = live_statements(expanded.statements)  # views keep what they read alive
    views = {s.name: s.expr for s in everything if s.kind == "view"}
    live = tuple(s for s in everything if s.kind != "view")
    kinds, shapes, numbers = _types(live)
    sites: list[str] = []
    for s in live:
        if s.expr is not None:
            _sites(s.expr, sites)
    declared = tuple(s for s in expanded.statements if s.kind == "param")
    known = frozenset(s.name for s in declared) | TENSOR_FACTS
    crosses = any(n.op in GLOBAL for s in live if s.expr is not None for n in s.expr.walk())
    if crosses:
        conditions: tuple[Node, ...] = ()
        guards: tuple[Guard, ...] = (None,) * len(live)
        code: tuple[Node | None, ...] = tuple(s.expr for s in live)
    else:  # a view's where on params is a switch too, and what it reads is kept
        conditions, all_guards, all_code = _switches(everything, known, sites)
        step = [i for i, s in enumerate(everything) if s.kind != "view"]
        guards, code = tuple(all_guards[i] for i in step), tuple(all_code[i] for i in step)
    defined = [s.name for s in expanded.statements if s.kind not in ("update", "view")]
    inits = {s.name: s.init for s in live if s.kind == "state" and s.init is not None}
    exprs = [s.expr for s in everything if s.expr is not None] + list(inits.values())
    read = set().union(*(e.names() for e in exprs))
    called = set().union(*(s.expr.calls() for s in live if s.expr is not None))
    matrix = [n for s in expanded.statements if s.expr is not None for n in s.expr.walk()
              if n.op in OPS and OPS[n.op].matrix]
    sets = any(s.sets for s in live)
    return Plan(rule=rule, declared=declared, live=live, kinds=kinds,
                identifiers=python_identifiers(defined), sites=tuple(sites),
                needs_total_steps=bool({"T", "ld"} & read or {"cd", "rd"} & called),
                reads_w="w" in read or sets, shapes=shapes, numbers=numbers,
                conditions=conditions, guards=guards, code=code,
                facts=tuple(sorted(TENSOR_FACTS & read)),
                reads_lr="lr" in set().union(*(s.expr.names() for s in live
                                               if s.expr is not None)),
                viewed=any(OPS[op].reduce in ("row", "col") or OPS[op].matrix
                           for op in called if op in OPS),
                matrix=matrix[0].op if matrix else None, sets=sets, crosses=crosses,
                inits=inits, views=views)


# --- literals -----------------------------------------------------------------------------


def quote(text: str) -> str:
    """A double-quoted string literal (names and ranges of the language need no escapes)."""
    return json.dumps(text)


def tuple_literal(items: Iterable[str]) -> str:
    items = [quote(item) for item in items]
    return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"


def float_literal(x: float) -> str:
    """A Python expression for the float (``math.inf`` for infinity)."""
    if math.isinf(x):
        return "math.inf" if x > 0 else "-math.inf"
    if math.isnan(x):
        return "math.nan"
    return repr(float(x))


def docstring_literal(text: str, indent: str = "") -> str:
    """The text as a docstring literal, its lines indented (raw, for LaTeX's backslashes)."""
    lines = [(indent + line if line.strip() else "") for line in text.strip("\n").split("\n")]
    body = "\n".join(lines)
    if '"""' in body or '\\"' in body:
        return repr(text)
    return f'r"""{body.lstrip()}\n{indent}"""'


def params_table(plan: Plan) -> dict[str, tuple]:
    """name -> (default, low, high, low closed, high closed, range text or None)."""
    table = {}
    for s in plan.declared:
        b = s.bounds
        if b is None:
            table[s.name] = (s.default, None, None, None, None, None)
        else:
            table[s.name] = (s.default, b.lo, b.hi, b.lo_closed, b.hi_closed, bounds_text(b))
    return table


def params_literal(plan: Plan) -> str:
    """The PARAMS table of a generated module, one line per param."""
    rows = []
    for name, (default, lo, hi, lo_closed, hi_closed, text) in params_table(plan).items():
        if text is None:
            rows.append(f"    {quote(name)}: ({float_literal(default)}, None, None, None, None, "
                        "None),")
        else:
            rows.append(f"    {quote(name)}: ({float_literal(default)}, {float_literal(lo)}, "
                        f"{float_literal(hi)}, {lo_closed}, {hi_closed}, {quote(text)}),")
    return "{\n" + "\n".join(rows) + "\n}" if rows else "{}"


def description(plan: Plan, doc: str | None = None) -> str:
    """The shared part of a generated docstring: the rule, its LaTeX, its params."""
    expanded = plan.rule.expanded()
    parts = [textwrap.fill(doc, 88)] if doc else []
    step = "The rule gives the parameter's new value (``w = ...``)" if plan.sets else \
        "The step is ``w <- w - lr * update``"
    parts.append(textwrap.fill(f"{step} with the rule (the prelude definitions it uses and "
                               "its shorthand written out)::", 88))
    parts.append("\n".join("    " + line for line in str(expanded).split("\n")))
    parts.append("In LaTeX::")
    parts.append("\n".join("    " + line for line in expanded.latex().split("\n")))
    if plan.declared:
        rows = [f"    {s.name} = {format_number(s.default)}"  # type: ignore[arg-type]
                + (f" in {bounds_text(s.bounds)}" if s.bounds else "") for s in plan.declared]
        parts.append("Params (keyword arguments, defaults and ranges)::\n\n" + "\n".join(rows))
    return "\n\n".join(parts)


# --- the function that steps one tensor ---------------------------------------------------


@dataclass(frozen=True)
class Spelling:
    """A backend's code for each operation: ``op -> (tensor form, scalar form)``, each a
    template over ``{0}``, ``{1}`` (and ``{k}``, a draw's index); None is the infix
    operator.  ``tensorize`` broadcasts a scalar like the tensor; ``clone`` gives a
    buffer that takes a tensor as it is its own copy; ``fill`` a buffer's new value
    (``{0}``) that may be a number or of a smaller shape, in the old buffer's (``{1}``)
    shape; ``helpers`` are the module-level functions the templates call, by name.

    A ``where`` on params alone (a switch) may leave a number where the rule's kinds say
    tensor: ``numbers`` spells the operations whose tensor operands may all be numbers,
    ``tensor_of`` makes a tensor of such a value for a reduction (None: refused).
    ``known`` evaluates such a condition before the step when it is more than Python's
    arithmetic and comparisons on floats (None: as it is); ``scalar_where`` is a ``where``
    of numbers over the condition's text, ``tensor_where`` one of tensors (None: the
    ``where`` of ``calls`` over the condition's value).  ``static_args`` names arguments
    that must be known before the step (``known``), reading params and facts alone."""

    calls: dict[str, tuple[str | None, str | None]]
    name: str  # the backend's, for messages
    tensorize: str
    clone: str
    helpers: dict[str, str]
    fill: str = "_fill({0}, {1})"
    numbers: dict[str, str] = field(default_factory=dict)
    tensor_of: str | None = None
    known: str | None = None
    scalar_where: str = "({1} if {0} else {2})"
    tensor_where: str | None = None
    read_lr: str = 'float(group["lr"])'
    static_args: dict[str, tuple[int, ...]] = field(default_factory=dict)  # known when traced
    noise: str = "drawn[{k}] * 0.1"  # N(0, 0.01)
    annealed_noise: str = "drawn[{k}] * (1.0 + t) ** -0.275"  # N(0, (1 + t)^-0.55)
    linear_decay: str = "_ld(t, T)"
    whole: str = "{0}"  # a tensor of a reduced shape broadcast to the parameter's


@dataclass(frozen=True)
class _Value:
    """An expression's text, its precedence and what it holds when the step runs."""

    text: str
    prec: int
    kind: str
    shape: frozenset[str] = ONE  # a tensor's shape
    number: bool = False  # a tensor-kind value that a switch may leave a number
    exact: bool = True  # surely a tensor of ``shape`` (not smaller, not a number)

    def plain(self, shape: frozenset[str]) -> bool:
        """Surely a tensor of the given shape."""
        return self.kind == TENSOR and self.exact and not self.number and self.shape == shape


_SIMPLE = frozenset({"num", "name", "add", "sub", "mul", "neg"}) | COMPARISONS


class _Writer:
    def __init__(self, plan: Plan, spelling: Spelling) -> None:
        self.plan = plan
        self.spelling = spelling
        self.switches = frozenset(plan.conditions)
        self.draws = 0
        self.lets: dict[str, _Value] = {}  # the lets written so far, as written

    def kind(self, node: Node) -> str:
        return _kind(node, self.plan.kinds)

    def shape(self, node: Node) -> frozenset[str]:
        return _shape(node, self.plan.kinds, self.plan.shapes)

    def name(self, word: str) -> tuple[str, int]:
        if word in ("g", "w", "t", "T", "lr") or word in TENSOR_FACTS:
            return word, _ATOM
        if word == "ld":
            return self.spelling.linear_decay, _ATOM
        if word in ("noise", "annealed_noise"):
            template = getattr(self.spelling, word)
            self.draws += 1
            return template.format(k=self.draws - 1), _PRODUCT
        return self.plan.identifiers[word], _ATOM

    def name_value(self, word: str, own: bool) -> _Value:
        text, prec = self.name(word)
        if word in SCALAR_PRIMITIVES or (word not in TENSOR_PRIMITIVES
                                         and self.plan.kinds[word] == SCALAR):
            return _Value(text, prec, SCALAR)
        shape = FULL if word in TENSOR_PRIMITIVES else self.plan.shapes[word]
        number, exact = False, True
        if word in self.lets:
            written = self.lets[word]
            number = written.kind == SCALAR or written.number
            exact = written.plain(shape)
        if own and not number and word not in ("noise", "annealed_noise"):
            text, prec = self.spelling.clone.format(text), _ATOM
        return _Value(text, prec, TENSOR, shape, number, exact)

    def condition(self, node: Node, host: bool, value: bool = True) -> str:
        """A condition's text (true where the value is nonzero, nan included) or, with
        ``value`` False, its negation's; ``host``: it reads params alone."""
        if node.op in COMPARISONS:
            a, b = (self.expr(x) for x in node.args)
            text = f"{_wrap(a, 1)} {_SYMBOLS[node.op]} {_wrap(b, 1)}"
            negated = f"not ({text})"
        else:
            v = self.expr(node)
            text, negated = f"{_wrap(v, 1)} != 0", f"{_wrap(v, 1)} == 0"
        if host and self.spelling.known and any(n.op not in _SIMPLE for n in node.walk()):
            text = self.spelling.known.format(text)
            negated = f"not {text}"
        return text if value else negated

    def guard(self, cubes: tuple[Cube, ...]) -> str:
        """A guard's text: the conditions of one cube joined by ``and``, the cubes by ``or``."""
        if not cubes:
            return "False"
        parts = []
        for cube in cubes:
            literals = [self.condition(self.plan.conditions[i], True, v) for i, v in cube]
            text = " and ".join(literals)
            parts.append(f"({text})" if len(cubes) > 1 and len(literals) > 1 else text)
        return " or ".join(parts)

    def switch(self, node: Node, own: bool) -> _Value:
        """A where on params alone: Python's ``a if c else b``, the branch as it is."""
        condition = self.condition(node.args[0], host=True)
        a, b = self.expr(node.args[1], own), self.expr(node.args[2], own)
        text = f"({a.text} if {condition} else {b.text})"
        if self.kind(node) == SCALAR:
            return _Value(text, _ATOM, SCALAR)
        shape = self.shape(node)
        return _Value(text, _ATOM, TENSOR, shape,
                      number=any(v.kind == SCALAR or v.number for v in (a, b)),
                      exact=a.plain(shape) and b.plain(shape))

    def expr(self, node: Node, own: bool = False) -> _Value:
        """An expression's text; ``own``: a buffer's new value, which must not be a tensor
        that something else keeps (g, w, another buffer's, a let's): those are copied."""
        if node.op == "num":
            return _Value(float_literal(node.value), _ATOM, SCALAR)  # type: ignore[arg-type]
        if node.op == "name":
            return self.name_value(str(node.value), own)
        if node.op == "where" and node.args[0] in self.switches:
            return self.switch(node, own)
        kind = self.kind(node)
        op = OPS[node.op]
        if node.op == "where" and (kind == SCALAR or self.spelling.tensor_where):
            condition = self.condition(node.args[0], host=False)
            a, b = self.expr(node.args[1]), self.expr(node.args[2])
            template = self.spelling.scalar_where if kind == SCALAR else \
                self.spelling.tensor_where
            text = template.format(condition, a.text, b.text)  # type: ignore[union-attr]
            if kind == SCALAR:
                return _Value(text, _ATOM, SCALAR)
            return _Value(text, _ATOM, TENSOR, *self.flags(node, [a, b]))
        args = [self.expr(a) for a in node.args]  # operands first: the order of the draws
        if kind == TENSOR and not op.elementwise:
            return self.reduction(node, args)
        if kind == TENSOR:
            shape, number, exact = self.flags(node, args)
        else:
            shape, number, exact = ONE, False, True
        if node.op == "neg":
            return _Value("-" + _wrap(args[0], _NEG), _NEG, kind, shape, number, exact)
        tensor_form, scalar_form = self.spelling.calls.get(node.op, ("", ""))
        template = tensor_form if kind == TENSOR else scalar_form
        if number and node.op in self.spelling.numbers:
            template = self.spelling.numbers[node.op]
        if template is None:
            symbol, prec = _INFIX[node.op]
            text = f"{_wrap(args[0], prec)}{symbol}{_wrap(args[1], prec + 1)}"
            return _Value(text, prec, kind, shape, number, exact)
        if not template:
            raise ExportError(f"nos export has no {node.op!r} for {kind}s")
        k = self.draws
        if op.random:
            self.draws += 1
            shape, number, exact = FULL, False, True
        text = template.format(*(a.text for a in args), k=k)
        return _Value(text, _ATOM, kind, shape, number, exact)

    def flags(self, node: Node, args: list[_Value]) -> tuple[frozenset[str], bool, bool]:
        """An element-wise tensor result's shape, whether a switch may leave it a number
        (all its tensor operands may be), and whether it is surely of its shape."""
        shape = self.shape(node)
        tensors = [a for a in args if a.kind == TENSOR]
        if not tensors:  # a where of numbers on a tensor condition
            return shape, False, True
        return shape, all(a.number for a in tensors), any(a.plain(shape) for a in tensors)

    def reduction(self, node: Node, args: list[_Value]) -> _Value:
        """A reduction or matrix function: its operand a tensor (a number broadcast like the
        parameter, as nos.Optimizer broadcasts it)."""
        first = args[0]
        if first.kind == SCALAR:
            operand = self.spelling.tensorize.format(first.text)
        elif first.number:
            if self.spelling.tensor_of is None:
                raise ExportError(f"{node.op} (line {node.line}) of a where on params alone "
                                  f"with a number and a tensor branch is not exported to "
                                  f"{self.spelling.name}: traced, the number and a 0-d array "
                                  f"look alike")
            operand = self.spelling.tensor_of.format(first.text)
        elif node.op in WHOLE and (self.shape(node.args[0]) != FULL or not first.exact):
            operand = self.spelling.whole.format(first.text)  # every element counts
        else:
            operand = first.text
        template = self.spelling.calls.get(node.op, ("", ""))[0]
        if not template:
            raise ExportError(f"nos export has no {node.op!r} for {self.spelling.name}")
        rest = [a.text for a in args[1:]]
        known = frozenset(s.name for s in self.plan.declared) | TENSOR_FACTS
        for i in self.spelling.static_args.get(node.op, ()):
            if not _static(node.args[i], known):
                raise ExportError(f"argument {i + 1} of {OPS[node.op].signature} (line "
                                  f"{node.line}) must read params alone to be exported to "
                                  f"{self.spelling.name}: the step is traced with it known")
            if self.spelling.known and any(n.op not in _SIMPLE for n in node.args[i].walk()):
                rest[i - 1] = self.spelling.known.format(rest[i - 1])
        text = template.format(operand, *rest)
        exact = OPS[node.op].reduce in ("all", "global") or first.kind == SCALAR or \
            (first.exact and not first.number)
        return _Value(text, _ATOM, TENSOR, self.shape(node), False, exact)

    def statement(self, s: Statement, node: Node) -> str:
        """The text assigned by a let, state or update statement."""
        if s.kind == "let":
            value = self.expr(node)
            self.lets[s.name] = value
            return value.text
        if s.kind == "update":
            value = self.expr(node)
            return self.spelling.tensorize.format(value.text) if value.kind == SCALAR \
                else value.text
        if s.name in self.plan.numbers:
            return self.expr(node).text
        start = self.draws
        value = self.expr(node)
        if value.plain(self.plan.shapes[s.name]):
            self.draws = start  # written again, copying what another keeps
            return self.expr(node, own=True).text
        return self.spelling.fill.format(value.text, f"state[{quote(s.name)}]")


def _wrap(arg: _Value, min_prec: int) -> str:
    return f"({arg.text})" if arg.prec < min_prec else arg.text


def update_function(plan: Plan, spelling: Spelling) -> str:
    """``_update(w, g, state, group, t, T, drawn) -> (update, new buffers)``: the rule for
    one tensor.  ``state`` holds the old buffers, ``group`` the params, ``drawn`` this
    tensor's samples, one per site (and ``facts`` the tensor's facts, for a rule that
    reads them).  A buffer not kept under the group's switches is None."""
    writer = _Writer(plan, spelling)
    ident = plan.identifiers
    read = set().union(*(s.expr.names() for s in plan.live if s.expr is not None))
    lines = []  # (a param or fact only a from value or a view reads is not read here)
    for s in plan.live:
        if s.kind == "param" and s.name in read:
            lines.append(f"{ident[s.name]} = float(group[{quote(s.name)}])")
    if plan.reads_lr:
        lines.append(f"lr = {spelling.read_lr}")
    lines += [f"{fact} = facts[{quote(fact)}]" for fact in plan.facts if fact in read]
    kept = plan.kept
    lines += [f"{ident[name]} = state.get({quote(name)})" if name in kept
              else f"{ident[name]} = state[{quote(name)}]" for name in plan.buffers]
    open_guard: str | None = None
    for s, guard, node in zip(plan.live, plan.guards, plan.code, strict=True):
        if s.kind == "param":
            continue
        if guard == ():
            continue  # needed under no condition: never runs
        target = "update" if s.kind == "update" else ident[s.name]
        text = writer.statement(s, node)  # type: ignore[arg-type]
        if guard is None:
            open_guard = None
            lines += filled(target, text)
            continue
        condition = writer.guard(guard)
        if condition != open_guard:
            lines.append(f"if {condition}:")
            open_guard = condition
        lines += ["    " + line for line in filled(target, text, width=92)]
    assert writer.draws == len(plan.sites), "every draw is written once"
    buffers = ", ".join(f"{quote(name)}: {ident[name]}" for name in plan.buffers)
    lines.append(f"return update, {{{buffers}}}")
    body = "\n".join("    " + line for line in lines)
    facts = ", facts" if plan.facts else ""
    what = "the parameter's new value" if plan.sets else "its update"
    joined = ("\n    A generator: at each reduction over every parameter it yields the "
              "reduction's name\n    and this tensor's part, and is sent the value over "
              "all tensors.") if plan.crosses else ""
    return (
        f"def _update(w, g, state, group, t, T, drawn{facts}):\n"
        f'    """The rule for one tensor: {what} and its buffers\' new values (``state``\n'
        "    holds the old ones, ``group`` the params, ``drawn`` this tensor's samples)."
        f'{joined}"""\n'
        f"{body}\n"
    )


def _reading(plan: Plan, writer: _Writer, node: Node, lr: bool) -> list[str]:
    """The lines that give an init's or a view's expression the params, facts, lr and
    buffers it reads (a switch's condition included)."""
    ident = plan.identifiers
    names = node.names()
    lines = [f"{ident[s.name]} = float(group[{quote(s.name)}])" for s in plan.declared
             if s.name in names]
    if lr and "lr" in names:
        lines.append('lr = float(group["lr"])')
    lines += [f"{fact} = facts[{quote(fact)}]" for fact in sorted(TENSOR_FACTS & names)]
    kept = plan.kept
    lines += [f"{ident[name]} = state.get({quote(name)})" if name in kept
              else f"{ident[name]} = state[{quote(name)}]"
              for name in plan.buffers if name in names]
    return lines


def init_function(plan: Plan, spelling: Spelling) -> str:
    """``_from(w, group, facts) -> {buffer: value}``: the values the buffers with a ``from``
    start at (before their tensor's first step), w the parameter's 2-D view (the rule
    sees a vector as a column), a number or a tensor that broadcasts to the buffer."""
    writer = _Writer(plan, spelling)
    lines = []
    for node in plan.inits.values():
        lines += _reading(plan, writer, node, lr=False)
    lines = list(dict.fromkeys(lines)) + ["start = {}"]
    for name, node in plan.inits.items():
        lines += filled(f"start[{quote(name)}]", writer.expr(node).text)
    lines.append("return start")
    body = "\n".join("    " + line for line in lines)
    return ("def _from(w, group, facts):\n"
            '    """The values the buffers with a ``from`` start at, for the parameter\'s 2-D '
            'view w."""\n'
            f"{body}\n")


def view_function(plan: Plan, spelling: Spelling, name: str) -> str:
    """``_eval_w(w, state, group, t, facts)`` (or ``_train_w``): the view of a tensor, w its
    2-D view and ``state`` its buffers (a full buffer as the 2-D view too)."""
    writer = _Writer(plan, spelling)
    node = plan.views[name]
    lines = _reading(plan, writer, node, lr=True)
    value = writer.expr(node)
    text = spelling.tensorize.format(value.text) if value.kind == SCALAR else value.text
    lines += filled("view", text)
    lines.append("return view")
    body = "\n".join("    " + line for line in lines)
    what = "evaluation" if name == "eval_w" else "training"
    return (f"def _{name}(w, state, group, t, facts):\n"
            f'    """The {what} view of a tensor (``{name} = {_short(node)}``)."""\n'
            f"{body}\n")


def _short(node: Node) -> str:
    text = expr_text(node)
    return text if len(text) <= 40 else text[:37] + "..."


def kept_function(plan: Plan, spelling: Spelling) -> str:
    """``_kept(group, facts)``: the buffers the rule keeps for a group's params and a
    tensor's facts (only where a rule has buffers that a switch turns off)."""
    writer = _Writer(plan, spelling)
    kept = plan.kept
    used = set().union(*(plan.conditions[i].names() for guard in kept.values()
                         for cube in guard or () for i, _ in cube))
    ident = plan.identifiers
    lines = [f"{ident[s.name]} = float(group[{quote(s.name)}])" for s in plan.declared
             if s.name in used]
    lines += [f"{fact} = facts[{quote(fact)}]" for fact in sorted(TENSOR_FACTS & used)]
    entries = [f"{quote(name)}: {writer.guard(kept[name]) if name in kept else 'True'}"
               for name in plan.buffers]
    one_line = "kept = {" + ", ".join(entries) + "}"
    lines += [one_line] if len(one_line) <= 96 else \
        ["kept = {", *(f"    {entry}," for entry in entries), "}"]
    lines.append("return tuple(name for name in BUFFERS if kept[name])")
    body = "\n".join("    " + line for line in lines)
    return (
        "def _kept(group, facts):\n"
        '    """The buffers the rule keeps for these params and this tensor: a where on params\n'
        "    and facts alone takes one branch, and a buffer only the other needs is not kept."
        '"""\n'
        f"{body}\n"
    )


def _top_level_splits(text: str, operators: tuple[str, ...]) -> list[int]:
    """Where the text has one of the binary operators outside any brackets."""
    depth, found = 0, []
    for i, char in enumerate(text):
        depth += (char in "([") - (char in ")]")
        if depth == 0 and any(text.startswith(op, i) for op in operators):
            found.append(i)
    return found


def filled(target: str, text: str, width: int = 96) -> list[str]:
    """``target = text`` on lines of at most width characters where the expression splits
    at a sum's (else, or where a term is too long, also a product's) operators:
    parenthesised, each line after the first starting with its operator."""
    line = f"{target} = {text}"
    if len(line) <= width:
        return [line]
    head = f"{target} = ("
    packed: list[str] = []
    for operators in ((" + ", " - "), (" + ", " - ", " * ", " / ")):
        splits = sorted(_top_level_splits(text, operators))
        if not splits:
            continue
        pieces = [text[a:b].strip() for a, b in zip([0, *splits], [*splits, len(text)])]
        lines, current = [], head + pieces[0]
        for piece in pieces[1:]:
            if len(current) + 1 + len(piece) > width:
                lines.append(current)
                current = " " * len(head) + piece
            else:
                current += " " + piece
        packed = [*lines, current + ")"]
        if all(len(line) <= width for line in packed):
            break
    return packed or [line]


def helpers_for(source: str, helpers: dict[str, str]) -> str:
    """The helpers the source calls (and those they call), in the table's order."""
    needed: set[str] = set()
    stack = [source]
    while stack:
        for name in re.findall(r"\b(_[a-z_]+)\(", stack.pop()):
            if name in helpers and name not in needed:
                needed.add(name)
                stack.append(helpers[name])
    return "\n\n".join(helpers[name].strip("\n") + "\n" for name in helpers if name in needed)


# --- the generated module's names and keywords --------------------------------------------


def check_identifier(name: str, taken: frozenset[str]) -> str:
    """A class or function name for the generated module, or ExportError."""
    if not (name.isidentifier() and name.isascii()) or keyword.iskeyword(name):
        raise ExportError(f"--name must be a Python identifier, got {name!r}")
    if name.startswith("_") or name in taken or name in BUILTINS:
        raise ExportError(f"--name {name!r} is a name the generated module uses; choose another")
    return name


@dataclass(frozen=True)
class Keywords:
    """The rule's params as keyword arguments of the generated constructor."""

    plain: tuple[str, ...]  # params that are keywords of their own
    more: tuple[str, ...]  # params that come through ``**rest``
    rest: str | None  # the name of ``**rest``, None when every param is plain
    defaults: dict[str, float]

    def signature(self) -> list[str]:
        return [f"{n}: float = {float_literal(self.defaults[n])}" for n in self.plain] + (
            [f"**{self.rest}: float"] if self.rest else [])

    def values(self) -> str:
        """``"name": name`` entries of the dict of the given values."""
        return ", ".join(f"{quote(n)}: {n}" for n in self.plain)

    def rest_block(self, indent: str, target: str) -> str:
        """Code that checks ``**rest`` and adds its values (or the defaults) to target."""
        if self.rest is None:
            return ""
        allowed = ", ".join(quote(n) for n in self.more)
        values = ", ".join(f"{quote(n)}: {float_literal(self.defaults[n])}" for n in self.more)
        return (f"{indent}unknown = sorted(set({self.rest}) - {{{allowed}}})\n"
                f"{indent}if unknown:\n"
                f"{indent}    raise TypeError(f\"unexpected keyword argument {{unknown[0]!r}}\")\n"
                f"{indent}{target}.update({{{values}, **{self.rest}}})\n")


def keywords_of(plan: Plan, own: frozenset[str], taken: frozenset[str]) -> Keywords:
    """The params as keywords.  One named like a Python keyword (``lambda``), a builtin or
    a name the generated code uses comes through ``**rest``; one named like an argument
    of the generated constructor itself (``lr``) is refused."""
    names = [s.name for s in plan.declared]
    clash = sorted(set(names) & own)
    if clash:
        raise ExportError(f"the rule's param {clash[0]!r} has the name of an argument of the "
                          f"exported optimizer; rename it")
    plain = tuple(n for n in names if not keyword.iskeyword(n) and not n.startswith("_")
                  and n not in taken and n not in BUILTINS)
    more = tuple(n for n in names if n not in plain)
    rest = None
    if more:
        rest = "more"
        while rest in names:
            rest += "_"
    defaults = {s.name: s.default for s in plan.declared}
    return Keywords(plain, more, rest, defaults)  # type: ignore[arg-type]
