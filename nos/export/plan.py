"""What both exports share: the rule read once for code generation, and the function that
steps one tensor, written from it.

A :class:`Plan` (:func:`make_plan`) holds the statements of the expanded rule that the
update needs (the prelude definitions it uses written out; dead statements dropped, as
nos.Optimizer drops them, so the same buffers exist), the kind of each name (*scalar*:
numbers, params, t, T and the schedules, computed on Python floats once per tensor and
step; *tensor*: element-wise), the random draws in the order nos.Optimizer makes them
(statement by statement, operands before the operation), and a Python identifier for
each of the rule's names.  :func:`update_function` writes
``_update(w, g, state, group, t, T, drawn)``, the rule for one tensor, in a backend's
:class:`Spelling`: the torch and optax exports differ in that table, their helpers and
the code around the function, never in how a rule is read.
"""

from __future__ import annotations

import builtins
import json
import keyword
import math
import re
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass

from nos.lang.ops import OPS
from nos.lang.printer import bounds_text, format_number
from nos.lang.rule import Rule
from nos.lang.tree import Node, Statement, live_statements
from nos.optim.baselines import BASELINES, Baseline
from nos.optim.optimizer import DEFAULT_LR, resolve

SCALAR, TENSOR = "scalar", "tensor"
NORMAL, UNIFORM = "normal", "uniform"  # the draws: N(0, 1) samples, U[0, 1) samples
TENSOR_PRIMITIVES = frozenset({"g", "w", "noise", "annealed_noise"})
SCALAR_PRIMITIVES = frozenset({"t", "T", "ld"})
# What the generated _update reads or calls besides the rule's names.
RESERVED = frozenset({"w", "g", "state", "group", "t", "T", "drawn", "update", "torch",
                      "math", "jnp", "jax", "abs", "float"})

# Python precedence of what the writer emits (the same as the language's for these).
_INFIX = {"add": (" + ", 1), "sub": (" - ", 1), "mul": (" * ", 2), "div": (" / ", 2)}
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

    @property
    def buffers(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.live if s.kind == "state")

    @property
    def random(self) -> bool:
        return bool(self.sites)


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
    if op.random:
        return TENSOR
    if op.schedule:
        return SCALAR
    return TENSOR if TENSOR in args else SCALAR


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


def make_plan(rule: Rule) -> Plan:
    """Read a rule for export; ExportError where nos.Optimizer could not compile it."""
    expanded = rule.expanded()
    live = live_statements(expanded.statements)
    kinds: dict[str, str] = {}
    sites: list[str] = []
    for s in live:
        if s.kind == "param":
            kinds[s.name] = SCALAR
        elif s.kind == "state":
            kinds[s.name] = TENSOR
    for s in live:
        if s.expr is None:
            continue
        kind = _kind(s.expr, kinds)
        if s.kind == "let":
            kinds[s.name] = kind
        _sites(s.expr, sites)
    declared = tuple(s for s in expanded.statements if s.kind == "param")
    defined = [s.name for s in expanded.statements if s.kind != "update"]
    read = set().union(*(s.expr.names() for s in live if s.expr is not None))
    called = set().union(*(s.expr.calls() for s in live if s.expr is not None))
    return Plan(rule=rule, declared=declared, live=live, kinds=kinds,
                identifiers=python_identifiers(defined), sites=tuple(sites),
                needs_total_steps=bool({"T", "ld"} & read or {"cd", "rd"} & called),
                reads_w="w" in read)


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
    parts.append(textwrap.fill("The step is ``w <- w - lr * update`` with the rule (the "
                               "prelude definitions it uses written out)::", 88))
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
    buffer that takes a tensor as it is its own copy; ``helpers`` are the module-level
    functions the templates call, by name."""

    calls: dict[str, tuple[str | None, str | None]]
    tensorize: str
    clone: str
    helpers: dict[str, str]
    noise: str = "drawn[{k}] * 0.1"  # N(0, 0.01)
    annealed_noise: str = "drawn[{k}] * (1.0 + t) ** -0.275"  # N(0, (1 + t)^-0.55)
    linear_decay: str = "_ld(t, T)"


class _Writer:
    def __init__(self, plan: Plan, spelling: Spelling) -> None:
        self.plan = plan
        self.spelling = spelling
        self.draws = 0

    def kind(self, node: Node) -> str:
        return _kind(node, self.plan.kinds)

    def name(self, word: str) -> tuple[str, int]:
        if word in ("g", "w", "t", "T"):
            return word, _ATOM
        if word == "ld":
            return self.spelling.linear_decay, _ATOM
        if word in ("noise", "annealed_noise"):
            template = getattr(self.spelling, word)
            self.draws += 1
            return template.format(k=self.draws - 1), _PRODUCT
        return self.plan.identifiers[word], _ATOM

    def expr(self, node: Node) -> tuple[str, int]:
        if node.op == "num":
            return float_literal(node.value), _ATOM  # type: ignore[arg-type]
        if node.op == "name":
            return self.name(str(node.value))
        args = [self.expr(a) for a in node.args]  # operands first: the order of the draws
        if node.op == "neg":
            return "-" + _wrap(args[0], _NEG), _NEG
        tensor_form, scalar_form = self.spelling.calls.get(node.op, ("", ""))
        template = tensor_form if self.kind(node) == TENSOR else scalar_form
        if template is None:
            symbol, prec = _INFIX[node.op]
            return f"{_wrap(args[0], prec)}{symbol}{_wrap(args[1], prec + 1)}", prec
        if not template:
            raise ExportError(f"nos export has no {node.op!r} for {self.kind(node)}s")
        k = self.draws
        if OPS[node.op].random:
            self.draws += 1
        return template.format(*(text for text, _ in args), k=k), _ATOM

    def value(self, node: Node, tensor: bool = False, own: bool = False) -> str:
        """An expression's text; broadcast like the tensor when it must be one, and a copy
        when a buffer would otherwise keep a tensor it does not own (g, w, another
        buffer's, a let's)."""
        text, _ = self.expr(node)
        if tensor and self.kind(node) == SCALAR:
            return self.spelling.tensorize.format(text)
        if own and node.op == "name" and node.value not in ("noise", "annealed_noise"):
            return self.spelling.clone.format(text)
        return text


def _wrap(arg: tuple[str, int], min_prec: int) -> str:
    text, prec = arg
    return f"({text})" if prec < min_prec else text


def update_function(plan: Plan, spelling: Spelling) -> str:
    """``_update(w, g, state, group, t, T, drawn) -> (update, new buffers)``: the rule for
    one tensor.  ``state`` holds the old buffers, ``group`` the params, ``drawn`` this
    tensor's samples, one per site."""
    writer = _Writer(plan, spelling)
    ident = plan.identifiers
    lines = []
    for s in plan.live:
        if s.kind == "param":
            lines.append(f"{ident[s.name]} = float(group[{quote(s.name)}])")
    lines += [f"{ident[name]} = state[{quote(name)}]" for name in plan.buffers]
    for s in plan.live:
        if s.kind == "let":
            lines += filled(ident[s.name], writer.value(s.expr))  # type: ignore[arg-type]
        elif s.kind == "state":
            value = writer.value(s.expr, tensor=True, own=True)  # type: ignore[arg-type]
            lines += filled(ident[s.name], value)
        elif s.kind == "update":
            lines += filled("update", writer.value(s.expr, tensor=True))  # type: ignore[arg-type]
    assert writer.draws == len(plan.sites), "every draw is written once"
    buffers = ", ".join(f"{quote(name)}: {ident[name]}" for name in plan.buffers)
    lines.append(f"return update, {{{buffers}}}")
    body = "\n".join("    " + line for line in lines)
    return (
        "def _update(w, g, state, group, t, T, drawn):\n"
        '    """The rule for one tensor: its update and its buffers\' new values (``state``\n'
        "    holds the old ones, ``group`` the params, ``drawn`` this tensor's samples).\"\"\"\n"
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
    at a sum's (else a product's) operators: parenthesised, each line after the first
    starting with its operator."""
    line = f"{target} = {text}"
    if len(line) <= width:
        return [line]
    for operators in ((" + ", " - "), (" * ", " / ")):
        splits = _top_level_splits(text, operators)
        if splits:
            break
    else:
        return [line]
    pieces = [text[a:b].strip() for a, b in zip([0, *splits], [*splits, len(text)])]
    head = f"{target} = ("
    lines, current = [], head + pieces[0]
    for piece in pieces[1:]:
        if len(current) + 1 + len(piece) > width:
            lines.append(current)
            current = " " * len(head) + piece
        else:
            current += " " + piece
    return [*lines, current + ")"]


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
