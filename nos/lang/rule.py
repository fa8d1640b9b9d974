"""The Rule: a parsed update rule, immutable, hashable, printed as canonical text.

Two rules are equal when their canonical texts are.  :func:`parse` makes one
from text; :meth:`Rule.expanded` writes out the prelude definitions it uses.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from nos.lang.desugar import DesugarError, desugar
from nos.lang.parser import RuleSyntaxError, parse_statements, prelude_for, relocate
from nos.lang.printer import to_latex, to_text
from nos.lang.tree import (
    PRIMITIVES,
    RANDOM_PRIMITIVES,
    SCHEDULE_NAMES,
    Node,  # noqa: F401 - re-exported for type hints of callers
    Statement,
    names_read,
    update_of,
)


@functools.total_ordering
@dataclass(frozen=True)
class Rule:
    """A parsed update rule: immutable, hashable, ordered by canonical text.

    Build one with :func:`nos.parse`.  ``str(rule)`` is the canonical text and
    ``nos.parse(str(rule)) == rule``.
    """

    statements: tuple[Statement, ...]

    def __str__(self) -> str:
        return to_text(self.statements)

    def __repr__(self) -> str:
        return f"Rule({str(self)!r})"

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Rule):
            return NotImplemented
        return str(self) < str(other)

    def latex(self) -> str:
        return to_latex(self.statements)

    @property
    def update(self) -> Node:
        return update_of(self.statements)

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
        return names_read(self.statements)

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
        front = prelude_for(self.statements)
        statements = desugar(front + self.statements)
        return self if statements == self.statements else Rule(statements)

    def expanded(self) -> Rule:
        """The rule with the prelude definitions it uses written out in front, and its
        shorthand (``dot``, ``winmax``, ...) in the core operations
        (:mod:`nos.lang.desugar`)."""
        return self._expanded


def parse(text: str) -> Rule:
    """Parse rule text (or a bare expression) into a :class:`Rule`.

    Raises :class:`RuleSyntaxError` for every malformed or meaningless text.
    """
    statements = parse_statements(text)
    try:
        prelude_for(statements)
        desugar(statements)
    except RuleSyntaxError as err:
        raise relocate(err, text) from None
    except DesugarError as err:
        raise RuleSyntaxError(err.reason, text, err.node.line, err.node.column) from None
    return Rule(statements)
