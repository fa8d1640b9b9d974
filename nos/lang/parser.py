"""Text becomes statements: the Lark grammar, the tree builder, the checks, the prelude.

Every malformed or meaningless text raises :class:`RuleSyntaxError` with the
line and column of the problem and a message that shows the line with a
caret under the spot.  The text is parsed, never evaluated as Python.
"""

from __future__ import annotations

import difflib
import functools
import math
import sys
from importlib import resources
from pathlib import Path

import lark
from lark import Lark, Token, Transformer, v_args

from nos.lang.ops import FUNCTIONS
from nos.lang.printer import bounds_text
from nos.lang.tree import PRIMITIVES, TENSOR_FACTS, VIEWS, Bounds, Node, Statement, names_read

MAX_DEPTH = 100  # deeper expressions are refused rather than risking the stack
MAX_LENGTH = 100_000

_READABLE = {
    "NAME": "a name",
    "NUMBER": "a number",
    "INF": "inf",
    "PARAM": "'param'",
    "STATE": "'state'",
    "LET": "'let'",
    "UPDATE": "'update'",
    "FROM": "'from'",
    "_NL": "a new line",
    "$END": "the end of the rule",
}


class RuleSyntaxError(ValueError):
    """A malformed or meaningless rule text, with its position.

    ``str(err)`` is ``line L, column C: reason`` followed by the source line
    and a caret under the spot; ``reason``, ``line`` and ``column`` are
    available separately.
    """

    def __init__(self, reason: str, text: str = "", line: int = 1, column: int = 1):
        self.reason = reason
        self.line = line
        self.column = column
        self.text = text
        super().__init__(self._format())

    def _format(self) -> str:
        lines = self.text.splitlines() or [""]
        source = lines[self.line - 1] if 0 < self.line <= len(lines) else ""
        caret = " " * (self.column - 1) + "^"
        return f"line {self.line}, column {self.column}: {self.reason}\n  {source}\n  {caret}"


def _fail(reason: str, where: Node | Statement | Token | None = None) -> RuleSyntaxError:
    line = getattr(where, "line", 0) or 1
    column = getattr(where, "column", 0) or 1
    return RuleSyntaxError(reason, "", line, column)


def _suggest(word: str, candidates: set[str] | list[str]) -> str:
    close = difflib.get_close_matches(word, sorted(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


@v_args(inline=True)
class _TreeBuilder(Transformer):
    """Lark's parse into Nodes and Statements (runs inside the LALR parser)."""

    def _node(self, op: str, args: tuple[Node, ...], at: Node | Token) -> Node:
        depth = 1 + max(a.depth for a in args)
        if depth > MAX_DEPTH:
            raise _fail(f"expression nested too deeply (more than {MAX_DEPTH} levels)", at)
        return Node(op, args, None, line=at.line, column=at.column, depth=depth)

    def number(self, token: Token) -> Node:
        value = float(token)
        if not math.isfinite(value):
            raise _fail(f"number {token} is too large", token)
        return Node("num", (), value, line=token.line, column=token.column)

    def name(self, token: Token) -> Node:
        return Node("name", (), str(token), line=token.line, column=token.column)

    def call(self, fname: Token, *args: Node | None) -> Node:
        operands = tuple(a for a in args if a is not None)
        op = FUNCTIONS.get(str(fname))
        if op is None:
            if str(fname) in PRIMITIVES:
                raise _fail(f"'{fname}' is not a function", fname)
            hint = _suggest(str(fname), set(FUNCTIONS))
            raise _fail(f"unknown function '{fname}'{hint}", fname)
        if len(operands) != op.arity:
            plural = "argument" if op.arity == 1 else "arguments"
            raise _fail(
                f"{fname} takes {op.arity} {plural} ({op.signature}), got {len(operands)}", fname
            )
        return self._node(str(fname), operands, fname)

    def _binary(self, op: str, left: Node, right: Node) -> Node:
        return self._node(op, (left, right), left)

    def add(self, left: Node, right: Node) -> Node:
        return self._binary("add", left, right)

    def sub(self, left: Node, right: Node) -> Node:
        return self._binary("sub", left, right)

    def mul(self, left: Node, right: Node) -> Node:
        return self._binary("mul", left, right)

    def div(self, left: Node, right: Node) -> Node:
        return self._binary("div", left, right)

    def pow(self, left: Node, right: Node) -> Node:
        return self._binary("pow", left, right)

    def lt(self, left: Node, right: Node) -> Node:
        return self._binary("lt", left, right)

    def le(self, left: Node, right: Node) -> Node:
        return self._binary("le", left, right)

    def gt(self, left: Node, right: Node) -> Node:
        return self._binary("gt", left, right)

    def ge(self, left: Node, right: Node) -> Node:
        return self._binary("ge", left, right)

    def eq(self, left: Node, right: Node) -> Node:
        return self._binary("eq", left, right)

    def ne(self, left: Node, right: Node) -> Node:
        return self._binary("ne", left, right)

    def neg(self, operand: Node) -> Node:
        return self._node("neg", (operand,), operand)

    # statements
    def param(self, kw: Token, name: Token, default: Node, bounds: Bounds | None) -> Statement:
        if default.op == "num":
            value = default.value
        elif default.op == "neg" and default.args[0].op == "num":
            value = -default.args[0].value  # type: ignore[operator]
        elif default.op == "name" and default.value == "inf":
            value = math.inf
        else:
            raise _fail(f"the default of param '{name}' must be a number", default)
        if bounds is not None and value not in bounds:
            raise _fail(
                f"the default {value:g} of param '{name}' is outside {bounds_text(bounds)}",
                default,
            )
        return Statement("param", str(name), None, float(value), bounds, kw.line, kw.column)

    def state(self, kw: Token, name: Token, expr: Node, _from: Token | None,
              init: Node | None) -> Statement:
        return Statement("state", str(name), expr, line=kw.line, column=kw.column, init=init)

    def assign(self, name: Token, expr: Node) -> Statement:
        if str(name) == "w":
            return Statement("update", "w", expr, line=name.line, column=name.column)
        if str(name) in VIEWS:
            return Statement("view", str(name), expr, line=name.line, column=name.column)
        raise _fail(f"'{name} = ...' needs 'let', 'state' or 'param' in front (only w, "
                    f"eval_w and train_w are given a value directly)", name)

    def let(self, kw: Token, name: Token, expr: Node) -> Statement:
        return Statement("let", str(name), expr, line=kw.line, column=kw.column)

    def update(self, kw: Token, expr: Node) -> Statement:
        return Statement("update", "update", expr, line=kw.line, column=kw.column)

    def bare(self, expr: Node) -> Statement:
        return Statement("update", "update", expr, line=expr.line, column=expr.column)

    def interval(self, lower: tuple[float, bool], upper: tuple[float, bool]) -> Bounds:
        (lo, lo_closed), (hi, hi_closed) = lower, upper
        return Bounds(lo, hi, lo_closed, hi_closed)

    def closed(self, bound: float) -> tuple[float, bool]:
        return bound, True

    def open(self, bound: float) -> tuple[float, bool]:
        return bound, False

    def bound(self, token: Token) -> float:
        return float(token)

    def neg_bound(self, token: Token) -> float:
        return -float(token)

    def start(self, *statements: Statement) -> tuple[Statement, ...]:
        return statements


@functools.lru_cache(maxsize=1)
def _grammar() -> str:
    return resources.files("nos.grammar").joinpath("nos.lark").read_text()


@functools.lru_cache(maxsize=1)
def _lark() -> Lark:
    # The builder runs inside the LALR parser: no tree, and no recursion.
    return Lark(_grammar(), parser="lalr", maybe_placeholders=True, transformer=_TreeBuilder())


def _expected(names: set[str]) -> str:
    terminals = {t.name: t for t in _lark().terminals}
    shown = []
    for name in sorted(names):
        if name in _READABLE:
            shown.append(_READABLE[name])
        elif name in terminals and terminals[name].pattern.type == "str":
            shown.append(f"'{terminals[name].pattern.value}'")
        else:
            shown.append(name.lower())
    shown = sorted(set(shown))
    if len(shown) == 1:
        return shown[0]
    return ", ".join(shown[:-1]) + " or " + shown[-1]


def _syntax(err: lark.exceptions.UnexpectedInput, text: str) -> RuleSyntaxError:
    line, column = max(err.line, 1) if err.line else 1, max(err.column, 1) if err.column else 1
    if isinstance(err, lark.exceptions.UnexpectedCharacters):
        char = text[err.pos_in_stream] if err.pos_in_stream < len(text) else ""
        reason = f"unexpected character {char!r}"
    elif isinstance(err, lark.exceptions.UnexpectedEOF) or (
        isinstance(err, lark.exceptions.UnexpectedToken) and err.token.type == "$END"
    ):
        reason = "unexpected end of the rule"
        lines = text.splitlines() or [""]
        line, column = len(lines), len(lines[-1]) + 1
    else:
        token = err.token  # type: ignore[attr-defined]
        shown = "end of the line" if token.type == "_NL" else repr(str(token))
        reason = f"unexpected {shown}"
        if str(token) == "=" and "NAME" not in _acceptable(err):
            reason += ("; a definition starts with 'let', 'state' or 'param', "
                       "the result with 'update'")
            return RuleSyntaxError(reason, text, line, column)
    expected = _acceptable(err)
    if expected:
        reason += f"; expected {_expected(expected)}"
    return RuleSyntaxError(reason, text, line, column)


def _acceptable(err: lark.exceptions.UnexpectedInput) -> set[str]:
    """What the parser could take at the error (exact, unlike the state's lookahead set)."""
    parser = getattr(err, "interactive_parser", None)
    if parser is not None:
        try:
            return set(parser.accepts()) - {"$END"} | (
                {"$END"} if "$END" in parser.accepts() else set()
            )
        except Exception:  # noqa: BLE001 - fall back to lark's own guess
            pass
    return set(getattr(err, "expected", None) or getattr(err, "allowed", None) or ())


def _statements(text: str) -> tuple[Statement, ...]:
    """Parse text into statements, without the meaning checks."""
    if len(text) > MAX_LENGTH:
        raise RuleSyntaxError(f"rule text too long ({len(text)} characters)", text[:200], 1, 1)
    try:
        return _lark().parse(text)
    except lark.exceptions.UnexpectedInput as err:
        raise _syntax(err, text) from None
    except RuleSyntaxError as err:
        raise relocate(err, text) from None
    except lark.exceptions.VisitError as err:
        if isinstance(err.orig_exc, RuleSyntaxError):
            raise relocate(err.orig_exc, text) from None
        raise
    except RecursionError:
        raise RuleSyntaxError("rule nested too deeply", text, 1, 1) from None


def relocate(err: RuleSyntaxError, text: str) -> RuleSyntaxError:
    """The error placed in ``text`` (its line shown, the end of the text resolved)."""
    line, column = err.line, err.column
    if line < 0:  # the end of the text
        lines = text.rstrip().splitlines() or [""]
        line, column = len(lines), len(lines[-1]) + 1
    return RuleSyntaxError(err.reason, text, line, column)


def parse_statements(text: str) -> tuple[Statement, ...]:
    """Parse and check rule text (or a bare expression); see :func:`nos.lang.rule.parse`.

    Raises :class:`RuleSyntaxError` for every malformed or meaningless text.
    """
    if not isinstance(text, str):
        raise TypeError(f"rule text must be a string, got {type(text).__name__}")
    statements = _statements(text)
    try:
        _check(statements, prelude=_prelude_defs())
    except RuleSyntaxError as err:
        raise relocate(err, text) from None
    return statements


def _check(statements: tuple[Statement, ...], prelude: dict[str, Statement] | None) -> None:
    """The meaning checks: names defined, no redefinition, exactly one update."""
    if not statements:
        raise _fail("empty rule: expected an expression or statements ending with 'update = ...'")
    updates = [s for s in statements if s.kind == "update"]
    if prelude is not None and not updates:
        raise RuleSyntaxError("missing 'update': a rule needs exactly one 'update = ...'",
                              "", line=-1, column=-1)
    if len(updates) > 1:
        first = "'w = ...'" if updates[0].sets else "'update'"
        raise _fail(f"a rule has one 'update = ...' or 'w = ...' ({first} is on line "
                    f"{updates[0].line})", updates[1])
    _check_views(statements, prelude or {})
    declared = {s.name for s in statements if s.kind in ("param", "state")}
    available = set(prelude or {}) - {s.name for s in statements}
    defined: dict[str, Statement] = {}
    for s in statements:
        if s.expr is not None:
            _check_names(s.expr, declared | set(defined) | available, defined, statements)
        if s.init is not None:
            _check_names(s.init, declared | set(defined) | available, defined, statements)
        if s.kind in ("update", "view"):
            continue
        if s.name.startswith("__"):
            raise _fail(f"'{s.name}': names that start with '__' are reserved", s)
        if s.name in PRIMITIVES:
            raise _fail(f"cannot assign to the primitive '{s.name}'", s)
        if s.name in FUNCTIONS:
            raise _fail(f"cannot assign to '{s.name}': it is a function", s)
        if s.name in defined:
            first = defined[s.name]
            raise _fail(f"'{s.name}' is already defined (as {first.kind}, line {first.line})", s)
        defined[s.name] = s


# What a view or a state's initial value may read: no gradient or draw exists then, and a
# let's value is not kept between steps.
_VIEW_PRIMITIVES = frozenset({"w", "t", "lr"}) | TENSOR_FACTS
_INIT_PRIMITIVES = frozenset({"w"}) | TENSOR_FACTS


def _check_views(statements: tuple[Statement, ...], prelude: dict[str, Statement]) -> None:
    """Views are given once each (``train_w`` only beside ``eval_w``); they and the initial
    values of states read what exists outside a step."""
    kinds = {name: s.kind for name, s in prelude.items()}
    kinds.update((s.name, s.kind) for s in statements)
    seen: dict[str, Statement] = {}
    for s in statements:
        if s.kind == "view":
            if s.name in seen:
                raise _fail(f"repeated '{s.name}' (the first is on line {seen[s.name].line})", s)
            seen[s.name] = s
        exprs = [(s.expr, s.name, _VIEW_PRIMITIVES, ("param", "state"))] if s.kind == "view" \
            else []
        if s.init is not None:
            exprs.append((s.init, f"the initial value of '{s.name}'", _INIT_PRIMITIVES,
                          ("param",)))
        for expr, what, primitives, kinds_read in exprs:
            for node in expr.walk():
                if node.op in FUNCTIONS and FUNCTIONS[node.op].reduce == "global":
                    raise _fail(f"{what} cannot read {node.op}: it reduces over a step's "
                                f"gradients", node)
                if node.op in FUNCTIONS and (FUNCTIONS[node.op].random
                                             or FUNCTIONS[node.op].schedule):
                    raise _fail(f"{what} cannot call {node.op}", node)
                if node.op != "name":
                    continue
                word = str(node.value)
                if word in PRIMITIVES and word not in primitives:
                    readable = " and ".join(k + "s" for k in kinds_read)
                    raise _fail(f"{what} cannot read '{word}' (it reads "
                                f"{', '.join(sorted(primitives))}, {readable})", node)
                if word not in PRIMITIVES and kinds.get(word, "param") not in kinds_read:
                    raise _fail(f"{what} cannot read the {kinds[word]} '{word}' (it reads "
                                f"{' and '.join(k + 's' for k in kinds_read)})", node)
    if "train_w" in seen and "eval_w" not in seen:
        raise _fail("'train_w' needs an 'eval_w' (the view it goes back from)", seen["train_w"])


def _check_names(expr: Node, visible: set[str], defined: dict, statements) -> None:
    for node in expr.walk():
        if node.op != "name" or node.value in PRIMITIVES or node.value in visible:
            continue
        word = str(node.value)
        if word in FUNCTIONS:
            raise _fail(f"'{word}' is a function: call it as {FUNCTIONS[word].signature}", node)
        if any(s.kind == "let" and s.name == word for s in statements):
            raise _fail(f"'{word}' is used before it is defined", node)
        hint = _suggest(word, visible | set(PRIMITIVES))
        raise _fail(f"unknown name '{word}'{hint}", node)


# --- the prelude ---------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _prelude_defs() -> dict[str, Statement]:
    text = resources.files("nos.grammar").joinpath("prelude.nos").read_text()
    statements = _statements(text)
    _check(statements, prelude=None)
    return {s.name: s for s in statements}


def prelude_text() -> str:
    return resources.files("nos.grammar").joinpath("prelude.nos").read_text()


def prelude_for(statements: tuple[Statement, ...]) -> tuple[Statement, ...]:
    """The prelude definitions the statements need, in prelude order (to go in front)."""
    prelude = _prelude_defs()
    own = {s.name: s for s in statements}
    needed: set[str] = set()
    stack = [n for n in names_read(statements) if n in prelude and n not in own]
    while stack:
        word = stack.pop()
        if word in needed:
            continue
        needed.add(word)
        definition = prelude[word]
        for dep in definition.expr.names() if definition.expr is not None else ():
            if dep in own and own[dep].kind != "param":
                raise _fail(
                    f"the prelude's '{word}' reads '{dep}', which this rule redefines; "
                    f"define '{word}' in the rule too",
                    own[dep],
                )
            if dep in prelude and dep not in own:
                stack.append(dep)
    return tuple(s for name, s in prelude.items() if name in needed)


def read_rule_source(source: str) -> str:
    """Rule text from a command-line argument: '-' is stdin, an existing path a file."""
    if source == "-":
        return sys.stdin.read()
    path = Path(source)
    if "\n" not in source and len(source) < 4096 and path.is_file():
        return path.read_text()
    return source
