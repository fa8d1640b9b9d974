"""The search space: token lists and the rule text they stand for.

After Bello et al. (2017): a rule is ``units`` units of five tokens
``op1, op2, u1, u2, b``, read as ``b(u1(op1), u2(op2))``.  In unit ``i``
(0-based) an operand is chosen from the operand list followed by the outputs
of units ``0 .. i-1``; the last unit is the update.

Every choice is a snippet of the rule language: operands are expressions,
unary functions use the placeholder ``x``, binary functions ``x`` and
(optionally) ``y``.  Turning tokens into text is a pure function: the
placeholders are replaced in one regex pass, so text put in for ``x`` is never
scanned again.  Everything here is plain Python; ``to_rule`` imports the parser
lazily.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from nos.lang.rule import Rule

DEFAULT_OPERANDS: tuple[str, ...] = (
    "g", "g^2", "g^3", "m_hat", "v_hat", "gamma_hat", "sign(g)", "sign(m)", "1", "2",
    "noise", "1e-4 * w", "1e-3 * w", "1e-2 * w", "1e-1 * w", "adam", "rmsprop",
)
DEFAULT_UNARY: tuple[str, ...] = (
    "x", "-x", "exp(x)", "log(abs(x))", "sqrt(abs(x))", "clip(x, 1e-5)", "clip(x, 1e-4)",
    "clip(x, 1e-3)", "drop(x, 0.1)", "drop(x, 0.3)", "drop(x, 0.5)", "sign(x)",
)
DEFAULT_BINARY: tuple[str, ...] = ("x + y", "x - y", "x * y", "x / (y + 1e-8)", "x ^ y", "x")

# Switched on by SpaceConfig.decay_operands: linear, cosine over one cycle, restart,
# and the half cosine (a monotone decay to 0, TensorFlow's default num_periods=0.5).
DECAY_OPERANDS: tuple[str, ...] = ("ld", "cd(1)", "rd(1)", "cd(0.5)")
ANNEALED_NOISE = "annealed_noise"

# Switched on by SpaceConfig.tensor_ops: the language's tensor-level constructs, as Lion's
# program search used them beyond the paper's list: per-tensor norms (normalised and
# trust-ratio updates), masks from comparisons, interpolation, and Adafactor's factored
# row and column averages.  (Matrix functions are left out: the child tasks have vectors.)
TENSOR_OPERANDS: tuple[str, ...] = ("rms(g)", "norm(w) / (norm(g) + 1e-8)")
TENSOR_UNARY: tuple[str, ...] = (
    "x / (rms(x) + 1e-8)", "clip(x, rms(x))", "x * (x > 0)",
    "rowmean(x) * colmean(x) / (mean(x) + 1e-8)",
)
TENSOR_BINARY: tuple[str, ...] = (
    "where(x * y > 0, x, 0)", "lerp(x, y, 0.9)", "x * norm(y) / (norm(x) + 1e-8)",
    "max(x, y)",
)

# Switched on by SpaceConfig.global_ops: the rest of Lion's program-search functions, and
# the constructs that read every parameter: the global norm and clipping by it, dot
# products and cosine similarity, and a window of running extrema (YellowFin's curvature
# range).  Their reductions make a step join all tensors, so they cost a little speed.
GLOBAL_OPERANDS: tuple[str, ...] = (
    "clip_gnorm(g, 1)", "g / (winmax(gnorm(g), 20) + 1e-8)",
    "gnorm(w) / (gnorm(g) + 1e-8) * g",
)
GLOBAL_UNARY: tuple[str, ...] = ("clip_gnorm(x, 1)", "x / (grms(x) + 1e-8)",
                                 "x * abs(cosine(x, g))")
GLOBAL_BINARY: tuple[str, ...] = (
    "x + dot(x, y) / (dot(y, y) + 1e-8) * y", "where(cosine(x, y) > 0, x, y)",
    "lerp(x, y, abs(cosine(x, y)))",
)

KINDS: tuple[str, ...] = ("operand", "operand", "unary", "unary", "binary")
TOKENS_PER_UNIT = len(KINDS)

_PLACEHOLDER = re.compile(r"\b([xy])\b")
_ATOM = re.compile(r"[A-Za-z_][A-Za-z_0-9]*|(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_CALL_OR_GROUP = re.compile(r"[A-Za-z_][A-Za-z_0-9]*\(|\(")


def unit_name(index: int) -> str:
    """The choice that stands for the output of unit ``index`` in later units."""
    return f"unit{index}"


@dataclass(frozen=True)
class SpaceConfig:
    """The shape of the space; ``[space]`` in a search config."""

    units: int = 1
    operands: tuple[str, ...] = DEFAULT_OPERANDS
    unary: tuple[str, ...] = DEFAULT_UNARY
    binary: tuple[str, ...] = DEFAULT_BINARY
    decay_operands: bool = False
    annealed_noise: bool = False
    tensor_ops: bool = False
    global_ops: bool = False

    def __post_init__(self) -> None:
        if not _is_int(self.units) or self.units < 1:
            raise ValueError(f"space: 'units' must be an integer >= 1, got {self.units!r}")
        for key in ("operands", "unary", "binary"):
            _check_snippets(key, getattr(self, key))
        for key in ("decay_operands", "annealed_noise", "tensor_ops", "global_ops"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"space: '{key}' must be true or false, "
                                 f"got {getattr(self, key)!r}")

    @classmethod
    def from_dict(cls, d: dict) -> SpaceConfig:
        """From a TOML table; lists become tuples, unknown keys are refused."""
        if not isinstance(d, dict):
            raise ValueError(f"space: expected a table, got {type(d).__name__}")
        allowed = [f.name for f in fields(cls)]
        for key in d:
            if key not in allowed:
                raise ValueError(f"space: unknown key '{key}'; allowed: {', '.join(allowed)}")
        values = {}
        for key, value in d.items():
            if key in ("operands", "unary", "binary"):
                if not isinstance(value, (list, tuple)):
                    raise ValueError(f"space: '{key}' must be a list of strings, got {value!r}")
                value = tuple(value)
            values[key] = value
        return cls(**values)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_snippets(key: str, snippets: tuple[str, ...]) -> None:
    if not isinstance(snippets, tuple) or not snippets:
        raise ValueError(f"space: '{key}' must be a non-empty list of strings, got {snippets!r}")
    required = {"operands": set(), "unary": {"x"}, "binary": {"x"}}[key]
    permitted = {"operands": set(), "unary": {"x"}, "binary": {"x", "y"}}[key]
    seen = set()
    for snippet in snippets:
        if not isinstance(snippet, str) or not snippet.strip():
            raise ValueError(f"space: '{key}' must hold non-empty strings, got {snippet!r}")
        found = set(_PLACEHOLDER.findall(snippet))
        if not required <= found:
            raise ValueError(f"space: {key} snippet {snippet!r} lacks the placeholder 'x'")
        if found - permitted:
            bad = ", ".join(sorted(found - permitted))
            raise ValueError(f"space: {key} snippet {snippet!r} must not use {bad} "
                             f"(allowed placeholders: {', '.join(sorted(permitted)) or 'none'})")
        if re.fullmatch(r"unit\d+", snippet.strip()):
            raise ValueError(f"space: {key} snippet {snippet!r} is reserved for unit outputs")
        if snippet in seen:
            raise ValueError(f"space: {key} snippet {snippet!r} is listed twice")
        seen.add(snippet)


def _is_atom(text: str) -> bool:
    """A name, a number, a call ``f(...)`` or a group ``(...)``: safe in any context."""
    if _ATOM.fullmatch(text):
        return True
    opening = _CALL_OR_GROUP.match(text)
    if not opening:
        return False
    depth = 0
    for i in range(opening.end() - 1, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i == len(text) - 1
    return False


def _wrap(text: str) -> str:
    return text if _is_atom(text) else f"({text})"


def _substitute(snippet: str, x: str, y: str | None = None) -> str:
    values = {"x": _wrap(x), "y": _wrap(y) if y is not None else "y"}
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], snippet)


class Space:
    """Token lists over a :class:`SpaceConfig`, and their rule text."""

    def __init__(self, config: SpaceConfig | None = None):
        self.config = config if config is not None else SpaceConfig()
        extra = DECAY_OPERANDS if self.config.decay_operands else ()
        extra += (ANNEALED_NOISE,) if self.config.annealed_noise else ()
        extra += TENSOR_OPERANDS if self.config.tensor_ops else ()
        extra += GLOBAL_OPERANDS if self.config.global_ops else ()
        self.operands: tuple[str, ...] = self.config.operands + tuple(
            o for o in extra if o not in self.config.operands)
        unary, binary = (), ()
        if self.config.tensor_ops:
            unary, binary = unary + TENSOR_UNARY, binary + TENSOR_BINARY
        if self.config.global_ops:
            unary, binary = unary + GLOBAL_UNARY, binary + GLOBAL_BINARY
        self.unary: tuple[str, ...] = self.config.unary + tuple(
            u for u in unary if u not in self.config.unary)
        self.binary: tuple[str, ...] = self.config.binary + tuple(
            b for b in binary if b not in self.config.binary)
        self.kinds: tuple[str, ...] = KINDS * self.config.units
        self.decisions: tuple[int, ...] = tuple(
            len(self.choices(p)) for p in range(len(self.kinds)))

    def __repr__(self) -> str:
        return f"Space(units={self.config.units}, decisions={self.decisions})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Space) and self.config == other.config

    def __hash__(self) -> int:
        return hash(self.config)

    @property
    def size(self) -> int:
        """The number of token lists (not of distinct rules)."""
        return math.prod(self.decisions)

    def choices(self, position: int) -> tuple[str, ...]:
        """The snippets at ``position``; ``unitJ`` stands for the output of unit ``J``."""
        if not 0 <= position < len(self.kinds):
            raise ValueError(f"position {position} out of range 0..{len(self.kinds) - 1}")
        kind = self.kinds[position]
        if kind == "operand":
            unit = position // TOKENS_PER_UNIT
            return self.operands + tuple(unit_name(j) for j in range(unit))
        return self.unary if kind == "unary" else self.binary

    def validate(self, tokens: Sequence[int]) -> tuple[int, ...]:
        """The tokens as a tuple of ints; ValueError naming the first bad position."""
        tokens = tuple(tokens)
        if len(tokens) != len(self.decisions):
            raise ValueError(f"expected {len(self.decisions)} tokens "
                             f"({self.config.units} units of {TOKENS_PER_UNIT}), got {len(tokens)}")
        checked = []
        for position, (token, n) in enumerate(zip(tokens, self.decisions, strict=True)):
            if isinstance(token, bool) or not hasattr(token, "__index__"):
                raise ValueError(f"token at position {position} must be an integer, got {token!r}")
            value = int(token.__index__())
            if not 0 <= value < n:
                raise ValueError(f"token at position {position} ({self.kinds[position]}) is "
                                 f"{value}, must be in 0..{n - 1}")
            checked.append(value)
        return tuple(checked)

    def describe(self, tokens: Sequence[int]) -> list[str]:
        """The snippet chosen at each position."""
        tokens = self.validate(tokens)
        return [self.choices(p)[t] for p, t in enumerate(tokens)]

    def tokens_from_choices(self, choices: Sequence[str]) -> tuple[int, ...]:
        """The inverse of :meth:`describe`: snippets to token indices."""
        choices = list(choices)
        if len(choices) != len(self.decisions):
            raise ValueError(f"expected {len(self.decisions)} choices, got {len(choices)}")
        tokens = []
        for position, choice in enumerate(choices):
            allowed = self.choices(position)
            if choice not in allowed:
                raise ValueError(f"unknown {self.kinds[position]} {choice!r} at position "
                                 f"{position}; allowed: {', '.join(map(repr, allowed))}")
            tokens.append(allowed.index(choice))
        return tuple(tokens)

    def to_text(self, tokens: Sequence[int]) -> str:
        """The rule text (a bare expression) the tokens stand for."""
        chosen = self.describe(tokens)
        outputs: list[str] = []
        for unit in range(self.config.units):
            op1, op2, u1, u2, b = chosen[unit * TOKENS_PER_UNIT:(unit + 1) * TOKENS_PER_UNIT]
            left = _substitute(u1, self._operand_text(op1, outputs))
            right = _substitute(u2, self._operand_text(op2, outputs))
            outputs.append(_substitute(b, left, right))
        return outputs[-1]

    def _operand_text(self, choice: str, outputs: list[str]) -> str:
        if choice in self.operands:
            return choice
        return outputs[int(choice[len("unit"):])]

    def to_rule(self, tokens: Sequence[int]) -> Rule:
        from nos.lang.rule import parse

        return parse(self.to_text(tokens))

    def sample(self, rng: np.random.Generator) -> tuple[int, ...]:
        """A token list drawn uniformly."""
        return tuple(int(rng.integers(n)) for n in self.decisions)
