"""The program search: mutations of whole rules, simplification, and the controller
(nos.controllers.trees, .mutations and .program)."""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from nos.controllers.base import Proposal, controller_names, make_controller
from nos.controllers.mutations import MUTATIONS, is_valid, live_names, mutate, perturbed, simplify
from nos.controllers.program import ProgramEvolution
from nos.controllers.trees import DEFAULT_FUNCTIONS, Vocabulary, scope

import nos
from nos.compile.compiler import compile_rule
from nos.lang.tree import Bounds
from nos.search.fingerprint import fingerprint
from nos.search.space import Space

STARTS = ("adamw", "momentum", "lion", "adam")


def named(rule_name: str) -> nos.Rule:
    """A named rule as the program search starts from it (its switches at their defaults)."""
    from nos.controllers.program import resolve_rule

    return resolve_rule(rule_name)


def round_trips_and_compiles(rule: nos.Rule) -> None:
    assert nos.parse(str(rule)) == rule, str(rule)
    compile_rule(rule)


def chain(start: str, seed: int, steps: int, vocabulary: Vocabulary | None = None
          ) -> list[nos.Rule]:
    rng = np.random.default_rng(seed)
    rules = [named(start)]
    for _ in range(steps):
        rules.append(mutate(rules[-1], rng, vocabulary))
    return rules[1:]


def roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def statements(text: str) -> int:
    return len(nos.parse(text).statements)


def search(controller: ProgramEvolution, reward, batches: int, batch: int) -> list[float]:
    """Every reward, in the order proposed."""
    rewards: list[float] = []
    for _ in range(batches):
        proposals = controller.ask(batch)
        told = [reward(p.text) for p in proposals]
        controller.tell(proposals, told)
        rewards += told
    return rewards


# --- mutations ---------------------------------------------------------------------------


@pytest.mark.parametrize("start", STARTS)
def test_mutation_chains_round_trip_compile_and_simplify_without_changing_behaviour(start):
    """80 chains of 4 mutations from each start: 320 chains, 1,280 mutations."""
    for seed in range(80):
        rules = chain(start, seed, steps=4)
        for rule in rules:
            round_trips_and_compiles(rule)
            round_trips_and_compiles(simplify(rule))
            assert not rule.needs_total_steps and not rule.is_random  # the default vocabulary
        if seed % 4 == 0:
            assert fingerprint(simplify(rules[-1])) == fingerprint(rules[-1])


@pytest.mark.parametrize("kind", list(MUTATIONS))
def test_each_mutation_gives_a_different_valid_rule(kind):
    rng = np.random.default_rng(7)
    for i in range(40):
        parent = named(STARTS[i % len(STARTS)])
        child = mutate(parent, rng, kinds=[kind])
        assert child != parent
        round_trips_and_compiles(child)


def test_insert_adds_a_statement_that_is_read():
    rng = np.random.default_rng(0)
    parent = named("momentum")
    for _ in range(20):
        child = mutate(parent, rng, kinds=["insert"])
        assert len(child.statements) == len(parent.statements) + 1
        new = (set(child.defined) - set(parent.defined)).pop()
        assert new in live_names(child)  # wired into the program, not dead


def test_delete_removes_a_let_or_state_and_repairs_its_readers():
    rng = np.random.default_rng(0)
    parent = named("lion")
    for _ in range(20):
        child = mutate(parent, rng, kinds=["delete"])
        assert len(child.statements) == len(parent.statements) - 1
        gone = (set(parent.defined) - set(child.defined)).pop()
        defined = {s.name for s in parent.statements if s.kind in ("let", "state")}
        assert gone in defined and gone not in child.names_used


def test_constants_and_param_defaults_stay_inside_their_bounds():
    rng = np.random.default_rng(0)
    beta = Bounds(0.0, 1.0, True, False)
    values = [perturbed(0.999, beta, rng) for _ in range(200)]
    assert all(v is None or (0.5 < v < 1) for v in values)
    assert sum(v is not None for v in values) > 190
    assert 0 < perturbed(0.0, Bounds(0.0, math.inf), rng) < 0.1
    assert perturbed(2.0, None, rng) > 0
    rule = named("adamw")
    for _ in range(50):
        rule = mutate(rule, rng, kinds=["constant"])
        for name, default in rule.params.items():
            bounds = next(s.bounds for s in rule.statements if s.name == name)
            assert default in bounds


def test_schedules_noise_and_drop_only_when_allowed_and_drop_rates_stay_numbers():
    vocabulary = Vocabulary(primitives=("g", "w", "t", "T", "ld", "noise"),
                            functions=DEFAULT_FUNCTIONS + ("drop", "cd", "rd"))
    seen: set[str] = set()
    for seed in range(40):
        for rule in chain(STARTS[seed % 4], seed, steps=5, vocabulary=vocabulary):
            round_trips_and_compiles(rule)
            seen |= rule.names_used | rule.functions
            for s in rule.statements:
                for node in s.expr.walk() if s.expr is not None else ():
                    if node.op == "drop":
                        assert node.args[1].op == "num" and 0 <= node.args[1].value < 1
    assert {"T", "ld", "noise", "drop"} <= seen and seen & {"cd", "rd"}


def test_scope_follows_the_language():
    adamw = named("adamw").statements
    names = scope(adamw, len(adamw) - 1, Vocabulary())
    assert names[:3] == ["g", "w", "t"]
    assert {"beta1", "beta2", "eps", "weight_decay", "m", "v", "gamma", "beta3"} <= set(names)
    # the prelude's m_hat, adam and rmsprop read adamw's own m or v: not usable
    assert not {"m_hat", "v_hat", "adam", "rmsprop", "T", "noise"} & set(names)
    assert "m_hat" in scope(named("momentum").statements, 0, Vocabulary())
    lion = named("lion").statements
    c = next(i for i, s in enumerate(lion) if s.name == "c")  # let c before state m
    assert "c" not in scope(lion, c, Vocabulary()) and "m" in scope(lion, c, Vocabulary())
    assert "c" in scope(lion, c + 1, Vocabulary())
    assert "gamma" not in scope(lion, len(lion), Vocabulary(prelude=False))


def test_mutate_refuses_an_unknown_kind():
    with pytest.raises(ValueError, match="unknown mutation 'swap'"):
        mutate(named("adam"), np.random.default_rng(0), kinds=["swap"])


def test_rules_stay_within_the_size_limits():
    vocabulary = Vocabulary(max_statements=8, max_nodes=40)
    for seed in range(10):
        for rule in chain("momentum", seed, steps=15, vocabulary=vocabulary):
            assert len(rule.statements) <= 8
            assert sum(len(list(s.expr.walk())) for s in rule.statements if s.expr) <= 40


# --- simplification ------------------------------------------------------------------------


@pytest.mark.parametrize("text, simple", [
    ("let a = g\nlet b = w\nupdate = a", "let a = g\nupdate = a"),
    ("state s = 0.9 * s + g\nupdate = g", "g"),
    ("param k = 2 in [0, inf)\nupdate = g", "g"),
    ("param k = 2\nstate s = k * s + g\nlet dead = s * w\nupdate = sign(g)", "sign(g)"),
    ("state a = g\nstate b = a + b\nupdate = g", "g"),
    ("state a = b + g\nstate b = 0.5 * b + g\nlet x = w\nupdate = a",
     "state a = b + g\nstate b = 0.5 * b + g\nupdate = a"),  # a reads b's old value
    ("param beta1 = 0.5 in [0, 1)\nparam k = 3\nupdate = m",  # beta1 reaches through the prelude
     "param beta1 = 0.5 in [0, 1)\nupdate = m"),
    ("let d = noise\nupdate = g", "g"),
])
def test_simplify_removes_what_does_not_reach_the_update(text, simple):
    rule = nos.parse(text)
    assert str(simplify(rule)) == simple
    assert simplify(simplify(rule)) == simplify(rule)
    assert fingerprint(simplify(rule)) == fingerprint(rule)


@pytest.mark.parametrize("start", ["adamw", "momentum", "lion", "adam", "powersign", "amsgrad"])
def test_simplify_keeps_every_named_rule(start):
    assert simplify(named(start)) == named(start)


def test_live_names_reach_through_prelude_and_states():
    assert live_names(named("lion")) >= {"c", "m", "beta1", "beta2", "weight_decay", "g", "w"}
    assert live_names(nos.parse("m_hat")) >= {"m_hat", "m", "beta1", "g", "t"}


# --- the controller ------------------------------------------------------------------------


def test_registered_as_program_with_a_config_tables_settings():
    assert "program" in controller_names()
    settings = {"start": ["adamw", "momentum"], "population": 6, "sample_size": 2}  # as TOML gives
    controller = make_controller("program", Space(), 3, **settings)
    assert isinstance(controller, ProgramEvolution) and controller.seed == 3
    assert controller.config.start == ("adamw", "momentum")
    assert [p.text for p in controller.ask(2)] == [str(named("adamw")), str(named("momentum"))]
    with pytest.raises(ValueError, match="unknown setting 'seeds'; allowed: primitives, "):
        make_controller("program", Space(), seeds=[])


def test_first_proposals_are_the_start_rules_simplified():
    controller = ProgramEvolution(seed=0, start=("adamw", "momentum", "let dead = w\nupdate = g"))
    proposals = controller.ask(5)
    assert [p.text for p in proposals[:3]] == [str(named("adamw")), str(named("momentum")), "g"]
    for p in proposals:
        assert isinstance(p, Proposal) and p.tokens == ()
        assert str(nos.parse(p.text)) == p.text
        assert is_valid(nos.parse(p.text))


def test_offspring_behaves_differently_from_its_parent():
    controller = ProgramEvolution(seed=1)
    parents = [named(s) for s in STARTS] + [nos.parse("sign(m)"), nos.parse("g")]
    for parent in parents * 3:
        child = controller.offspring(parent)
        probe = fingerprint(child)
        assert probe.status == "ok", (str(child), probe)
        assert probe.digest != fingerprint(parent).digest
        assert child == simplify(child) and is_valid(child)


def test_ask_tell_round_trip():
    controller = ProgramEvolution(seed=2, population=10, sample_size=3)
    assert controller.ask(0) == []
    for _ in range(4):  # past the initial population
        proposals = controller.ask(7)
        assert len(proposals) == 7
        for p in proposals:
            assert p.tokens == () and str(nos.parse(p.text)) == p.text
        stats = controller.tell(proposals, [float(i) / 7 for i in range(7)])
        assert all(isinstance(v, (int, float)) for v in stats.values())
    assert stats["told"] == 28 and controller.asked == 28 and stats["population"] == 10


def test_tell_checks_its_input():
    controller = ProgramEvolution()
    proposals = controller.ask(2)
    with pytest.raises(ValueError, match="2 proposals but 1 rewards"):
        controller.tell(proposals, [0.5])
    with pytest.raises(ValueError, match="finite"):
        controller.tell(proposals, [0.5, math.nan])
    with pytest.raises(ValueError, match="not a rule"):
        controller.tell([Proposal((), "g +")], [0.5])
    assert controller.tell([], [])["told"] == 0
    # the search loop hands back the stored canonical text: any spelling is accepted
    assert controller.tell([Proposal((), "g*1 ")], [0.5])["told"] == 1
    assert controller.population[-1] == ("g * 1", 0.5)


def test_same_seed_same_proposals():
    def run(seed: int) -> list[str]:
        controller = ProgramEvolution(seed=seed, population=6, sample_size=2)
        texts = []
        for _ in range(4):
            proposals = controller.ask(4)
            controller.tell(proposals, [-statements(p.text) for p in proposals])
            texts += [p.text for p in proposals]
        return texts

    assert run(5) == run(5)
    assert run(5) != run(6)


_IN_A_FRESH_PROCESS = """
from nos.controllers.program import ProgramEvolution
c = ProgramEvolution(seed=4, population=4, sample_size=2)
p = c.ask(6)
c.tell(p, [float(len(x.text)) for x in p])
print(repr([x.text for x in c.ask(4)]))
"""


def test_proposals_do_not_depend_on_the_hash_seed():
    """A search resumed in another process continues the same way (no set order leaks)."""
    runs = [subprocess.Popen([sys.executable, "-c", _IN_A_FRESH_PROCESS], text=True,
                             stdout=subprocess.PIPE, env={**os.environ, "PYTHONHASHSEED": seed})
            for seed in ("1", "2")]  # side by side
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    assert outputs[0] == outputs[1] and outputs[0].startswith("[")


def test_state_dict_round_trips_and_continues_identically():
    def reward(text: str) -> float:
        return -statements(text)

    original = ProgramEvolution(seed=3, population=8, sample_size=3)
    search(original, reward, batches=3, batch=5)
    pending = original.ask(4)  # asked, not yet told

    restored = ProgramEvolution(seed=99, population=8, sample_size=3)
    restored.load_state_dict(roundtrip(original.state_dict()))

    assert restored.ask(5) == original.ask(5)
    rewards = [reward(p.text) for p in pending]
    assert restored.tell(pending, rewards) == original.tell(pending, rewards)
    assert restored.ask(5) == original.ask(5)
    assert restored.state_dict()["population"] == original.state_dict()["population"]


def test_load_state_dict_refuses_other_settings_and_controllers():
    state = ProgramEvolution(population=8).state_dict()
    with pytest.raises(ValueError, match="other settings: population"):
        ProgramEvolution(population=9).load_state_dict(state)
    with pytest.raises(ValueError, match="state is of controller 'program'"):
        make_controller("evolution", Space()).load_state_dict(state)


@pytest.mark.parametrize("settings, words", [
    ({"popsize": 3}, "unknown setting 'popsize'"),
    ({"population": 0}, "population"),
    ({"population": 4, "sample_size": 5}, "sample_size"),
    ({"max_tries": 0}, "max_tries"),
    ({"start": ()}, "at least one rule"),
    ({"start": ("adamw", "nadam(g)")}, r"start\[1\]: line 1, column 1: unknown function"),
    ({"start": "adamw"}, "'start' must be a list of strings"),
    ({"primitives": ("g", "gradient")}, "unknown primitive 'gradient'"),
    ({"functions": ("exp", "tanh")}, "unknown function 'tanh'"),
    ({"prelude": "yes"}, "'prelude' must be true or false"),
])
def test_bad_settings_are_named(settings, words):
    with pytest.raises(ValueError, match=words):
        ProgramEvolution(**settings)


@pytest.mark.parametrize("direction", [-1, 1])
def test_regularized_evolution_follows_a_synthetic_reward(direction):
    """Reward: the number of statements, to be minimized or maximized (within the limit)."""
    controller = ProgramEvolution(seed=0, population=20, sample_size=5, max_statements=12)

    def reward(text: str) -> float:
        return direction * statements(text)

    rewards = search(controller, reward, batches=25, batch=10)  # 250 proposals
    start = max(reward(str(named(s))) for s in ("adamw", "momentum"))
    late = float(np.mean(rewards[-50:]))
    assert late > start + 1.5, (direction, start, late)
    assert max(rewards) >= start + 2
