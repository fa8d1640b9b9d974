"""Shorthand written out in the core operations, before a rule is compiled.

A few functions of the language are definitions in terms of the others, so that
every backend (both executors, the fused path, the exporters, the fingerprint)
sees only the core operations:

- ``dot(a, b)`` is ``sum(a * b)``;
- ``cosine(a, b)`` is ``dot(a, b) / (max(norm(a), 1e-8) * max(norm(b), 1e-8))``;
- ``clip_gnorm(x, c)`` is ``x * min(c / (gnorm(x) + 1e-6), 1)``;
- ``winmax(x, n)`` and ``winmin(x, n)`` keep the last ``n`` values of ``x`` in ``n``
  states (a shift register ``__win1_k``, newest first, shared by the two for the same
  ``x`` and ``n``) and take the extreme of the ``min(t, n)`` values seen so far.

A window costs ``n`` numbers per parameter tensor when ``x`` is a number per tensor
(one element each), and ``n`` full-size buffers if ``x`` is not: windows are meant for
statistics such as a norm.
"""

from __future__ import annotations

from dataclasses import replace

from nos.lang.tree import Node, Statement, name, num

WINDOW_LIMIT = 1000
COSINE_EPS = 1e-8  # torch.nn.functional.cosine_similarity's
CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_'s


class DesugarError(ValueError):
    """A shorthand with arguments it cannot take (a window length that is not a number)."""

    def __init__(self, reason: str, node: Node) -> None:
        super().__init__(reason)
        self.reason, self.node = reason, node


def _call(op: str, *args: Node, at: Node) -> Node:
    return Node(op, tuple(args), line=at.line, column=at.column)


def window_length(node: Node) -> int:
    """The n of ``winmax(x, n)``: a whole number in [1, WINDOW_LIMIT]."""
    n = node.args[1]
    value = n.value if n.op == "num" else None
    if value is None or value != int(value) or not 1 <= value <= WINDOW_LIMIT:  # type: ignore[operator]
        raise DesugarError(f"the window of {node.op} must be a whole number in "
                           f"[1, {WINDOW_LIMIT}]", n)
    return int(value)  # type: ignore[arg-type]


class _Desugar:
    def __init__(self) -> None:
        self.windows: dict[tuple[Node, int], str] = {}
        self.pending: list[Statement] = []  # window states for the statement being read

    def window(self, x: Node, n: int, at: Node) -> str:
        key = (x, n)
        if key not in self.windows:
            prefix = f"__win{len(self.windows) + 1}_"
            self.windows[key] = prefix
            # newest last in the statement order: each reads the old value of the one before
            for k in range(n, 1, -1):
                self.pending.append(Statement("state", f"{prefix}{k}", name(f"{prefix}{k - 1}"),
                                              line=at.line, column=at.column))
            self.pending.append(Statement("state", f"{prefix}1", x, line=at.line,
                                          column=at.column))
        return self.windows[key]

    def node(self, node: Node) -> Node:
        if not node.args:
            return node
        args = tuple(self.node(a) for a in node.args)
        if node.op == "dot":
            return _call("sum", _call("mul", *args, at=node), at=node)
        if node.op == "cosine":
            a, b = args
            floor = num(COSINE_EPS)
            return _call("div", _call("sum", _call("mul", a, b, at=node), at=node),
                         _call("mul", _call("max", _call("norm", a, at=node), floor, at=node),
                               _call("max", _call("norm", b, at=node), floor, at=node),
                               at=node), at=node)
        if node.op == "clip_gnorm":
            x, c = args
            scale = _call("div", c, _call("add", _call("gnorm", x, at=node), num(CLIP_EPS),
                                          at=node), at=node)
            return _call("mul", x, _call("min", scale, num(1.0), at=node), at=node)
        if node.op in ("winmax", "winmin"):
            n = window_length(node)
            prefix = self.window(args[0], n, node)
            extreme = "max" if node.op == "winmax" else "min"
            newest = name(f"{prefix}1")
            out = newest
            for k in range(2, n + 1):  # a slot not yet filled stands for the newest value
                filled = _call("where", _call("ge", name("t"), num(k), at=node),
                               name(f"{prefix}{k}"), newest, at=node)
                out = _call(extreme, out, filled, at=node)
            return out
        return node if args == node.args else replace(node, args=args)


def desugar(statements: tuple[Statement, ...]) -> tuple[Statement, ...]:
    """The statements with every shorthand written out (the same tuple when there is none)."""
    if not any(_has_shorthand(s) for s in statements):
        return statements
    d = _Desugar()
    out: list[Statement] = []
    for s in statements:
        expr = d.node(s.expr) if s.expr is not None else None
        init = d.node(s.init) if s.init is not None else None
        out.extend(d.pending)
        d.pending = []
        out.append(replace(s, expr=expr, init=init))
    return tuple(out)


SHORTHAND = frozenset({"dot", "cosine", "clip_gnorm", "winmax", "winmin"})


def _has_shorthand(s: Statement) -> bool:
    return any(node.op in SHORTHAND for e in (s.expr, s.init) if e is not None
               for node in e.walk())
