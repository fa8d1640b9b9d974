"""Regularized evolution over whole programs in the rule language.

A member of the population is a whole rule, several ``param``/``state``/``let``
statements and the ``update``; a child is its parent after one random
mutation (:mod:`nos.controllers.mutations`), simplified.

As in AutoML-Zero and the Lion search (Chen et al. 2023), no training is
spent on a child that behaves like its parent: the child is mutated again
until its functional fingerprint (:mod:`nos.search.fingerprint`) differs from
the parent's and its probe is neither invalid nor degenerate, up to
``max_tries`` times.

Selection is regularized evolution (Real et al. 2019, *Regularized Evolution
for Image Classifier Architecture Search*): the population is the last
``population`` rules told; a parent is the best of ``sample_size`` members
drawn at random; the oldest members leave, however good.  The first
proposals are the ``start`` rules (simplified), then mutations of them until
``population`` proposals have been made and rewards have come in; ``ask`` may
run ahead of ``tell`` (an asynchronous search).  Rule text goes through the
parser only.

Registered as ``program``: ``[search] controller = "program"`` with a
``[controller]`` table of :class:`ProgramConfig`'s settings.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from nos.lang.parser import RuleSyntaxError
from nos.lang.rule import Rule, parse
from nos.optim.baselines import baselines
from nos.search.fingerprint import Fingerprint, fingerprint
from nos.search.space import Space

from .base import Controller, Proposal, age_population, check_number, register
from .mutations import mutate, simplify
from .trees import Vocabulary, pick


def resolve_rule(source: str) -> Rule:
    """A named rule (``adamw``) or rule text, parsed.  A named rule is the variant its
    keywords' defaults pick (torch's AdamW without its amsgrad branch): a search mutates
    the rule it trains, not the switches it never turns."""
    from nos.optim.keywords import variant

    named = baselines()
    return variant(named[source].rule, {}, source) if source in named else parse(source)


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


@register
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
            return self.offspring(pick(self.rng, self.start))
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


__all__ = ["ProgramConfig", "ProgramEvolution", "resolve_rule"]
