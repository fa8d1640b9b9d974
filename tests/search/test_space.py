"""The search space: token lists to rule text, and back to choices."""

from __future__ import annotations

import numpy as np
import pytest

from nos import parse
from nos.search.space import (
    DECAY_OPERANDS,
    DEFAULT_BINARY,
    DEFAULT_OPERANDS,
    DEFAULT_UNARY,
    GLOBAL_BINARY,
    GLOBAL_OPERANDS,
    GLOBAL_UNARY,
    TENSOR_BINARY,
    TENSOR_OPERANDS,
    TENSOR_UNARY,
    Space,
    SpaceConfig,
    _substitute,
)

SPACES = {
    "default": SpaceConfig(),
    "two_units": SpaceConfig(units=2),
    "three_units_flags": SpaceConfig(units=3, decay_operands=True, annealed_noise=True),
    "tensor_ops": SpaceConfig(units=2, tensor_ops=True),
    "global_ops": SpaceConfig(units=2, global_ops=True),
}


@pytest.fixture(params=list(SPACES), ids=list(SPACES))
def space(request) -> Space:
    return Space(SPACES[request.param])


def test_default_space_is_the_papers():
    space = Space()
    assert len(DEFAULT_OPERANDS) == 17 and len(DEFAULT_UNARY) == 12 and len(DEFAULT_BINARY) == 6
    assert space.decisions == (17, 17, 12, 12, 6)
    assert space.kinds == ("operand", "operand", "unary", "unary", "binary")
    assert space.size == 17 * 17 * 12 * 12 * 6


def test_later_units_may_pick_earlier_outputs():
    space = Space(SpaceConfig(units=3))
    assert space.decisions == (17, 17, 12, 12, 6, 18, 18, 12, 12, 6, 19, 19, 12, 12, 6)
    assert space.choices(10)[-2:] == ("unit0", "unit1")
    assert space.size == int(np.prod(space.decisions, dtype=object))


def test_flags_add_operands():
    space = Space(SpaceConfig(decay_operands=True, annealed_noise=True))
    assert space.operands == DEFAULT_OPERANDS + DECAY_OPERANDS + ("annealed_noise",)
    assert space.decisions[:2] == (22, 22)
    assert Space(SpaceConfig(annealed_noise=True)).operands[-1] == "annealed_noise"
    # an operand already listed is not added twice
    listed = SpaceConfig(operands=("g", "ld"), decay_operands=True)
    assert Space(listed).operands == ("g", "ld", "cd(1)", "rd(1)", "cd(0.5)")


def _visible_tokens(space: Space, position: int, choice: int) -> tuple[list[str], str]:
    """Choices in which ``choice`` at ``position`` shows in the text, and the text it shows as.

    Every unit passes its left input through (``x``, keep-left) and later units
    read the unit before, so the rule is the varied unit's output.
    """
    units = space.config.units
    unit, slot = divmod(position, 5)
    chosen = []
    for u in range(units):
        op1 = f"unit{u - 1}" if u > 0 else "g"
        binary = "x + y" if u == unit and slot in (1, 3) else "x"
        chosen += [op1, "m_hat", "x", "x", binary]
    snippet = space.choices(position)[choice]
    chosen[position] = snippet
    shown = {0: snippet, 1: snippet, 2: _substitute(snippet, "g"),
             3: _substitute(snippet, "m_hat"), 4: _substitute(snippet, "g", "m_hat")}[slot]
    return chosen, shown


def test_every_choice_shows_in_the_text(space):
    checked = 0
    for position, n in enumerate(space.decisions):
        for choice in range(n):
            if space.choices(position)[choice].startswith("unit"):
                continue  # unit outputs: see test_units_inline_earlier_units
            chosen, shown = _visible_tokens(space, position, choice)
            text = space.to_text(space.tokens_from_choices(chosen))
            assert shown in text, (position, choice, text)
            checked += 1
    units = space.config.units
    assert checked == units * (2 * len(space.operands) + 2 * len(space.unary)
                               + len(space.binary))


def test_every_choice_parses(space):
    for position, n in enumerate(space.decisions):
        for choice in range(n):
            chosen, _ = _visible_tokens(space, position, choice)
            parse(space.to_text(space.tokens_from_choices(chosen)))


def test_substitution_examples():
    space = Space()
    tokens = space.tokens_from_choices(["g", "m_hat", "exp(x)", "x", "x * y"])
    assert tokens == (0, 3, 2, 0, 2)
    assert parse(space.to_text(tokens)) == parse("exp(g) * m_hat")
    assert str(space.to_rule(tokens)) == "exp(g) * m_hat"
    tokens = space.tokens_from_choices(["g^2", "2", "log(abs(x))", "-x", "x ^ y"])
    assert space.to_text(tokens) == "log(abs((g^2))) ^ (-2)"
    assert str(space.to_rule(tokens)) == "log(abs(g^2))^-2"
    tokens = space.tokens_from_choices(["1e-4 * w", "v_hat", "x", "sqrt(abs(x))", "x / (y + 1e-8)"])
    assert space.to_rule(tokens) == parse("1e-4 * w / (sqrt(abs(v_hat)) + 1e-8)")
    keep_left = space.tokens_from_choices(["sign(m)", "noise", "-x", "exp(x)", "x"])
    assert space.to_rule(keep_left) == parse("-sign(m)")


def test_units_inline_earlier_units():
    space = Space(SpaceConfig(units=2))
    tokens = space.tokens_from_choices(["g", "m_hat", "exp(x)", "x", "x * y",
                                        "unit0", "g", "x", "-x", "x - y"])
    assert space.describe(tokens)[5] == "unit0"
    assert space.to_rule(tokens) == parse("exp(g) * m_hat - -g")
    powered = space.tokens_from_choices(["g", "g", "x", "x", "x + y",
                                         "2", "unit0", "x", "x", "x ^ y"])
    assert space.to_rule(powered) == parse("2 ^ (g + g)")


def test_substitution_is_simultaneous_and_whole_word():
    assert _substitute("x - y", "y", "x") == "y - x"
    assert _substitute("x ^ y", "a + b", "c") == "(a + b) ^ c"
    space = Space(SpaceConfig(unary=("x", "max(x, 0)", "min(exp(x), 1)"), binary=("x",)))
    tokens = space.tokens_from_choices(["g^3", "g", "max(x, 0)", "x", "x"])
    assert space.to_text(tokens) == "max((g^3), 0)"


def test_to_text_is_pure(space):
    rng = np.random.default_rng(0)
    twin = Space(SpaceConfig(**{f: getattr(space.config, f) for f in (
        "units", "operands", "unary", "binary", "decay_operands", "annealed_noise",
        "tensor_ops", "global_ops")}))
    for _ in range(50):
        tokens = list(space.sample(rng))
        before = list(tokens)
        text = space.to_text(tokens)
        assert tokens == before
        assert space.to_text(tokens) == text == twin.to_text(tuple(tokens))
        assert space.to_text(np.array(tokens)) == text


def test_tokens_from_choices_inverts_describe(space):
    rng = np.random.default_rng(1)
    for _ in range(200):
        tokens = space.sample(rng)
        assert space.tokens_from_choices(space.describe(tokens)) == tokens


def test_tokens_from_choices_refuses_unknown_snippets():
    space = Space()
    with pytest.raises(ValueError, match=r"unknown unary 'tanh\(x\)' at position 2.*'exp\(x\)'"):
        space.tokens_from_choices(["g", "g", "tanh(x)", "x", "x"])
    with pytest.raises(ValueError, match="unknown operand 'unit0' at position 0"):
        space.tokens_from_choices(["unit0", "g", "x", "x", "x"])
    with pytest.raises(ValueError, match="expected 5 choices, got 4"):
        space.tokens_from_choices(["g", "g", "x", "x"])


def test_validate():
    space = Space()
    assert space.validate([np.int64(1), 2, 3, 4, 5]) == (1, 2, 3, 4, 5)
    with pytest.raises(ValueError, match="expected 5 tokens"):
        space.validate([0, 0, 0])
    with pytest.raises(ValueError, match=r"position 4 \(binary\) is 6, must be in 0..5"):
        space.validate([0, 0, 0, 0, 6])
    with pytest.raises(ValueError, match="position 1 .* is -1"):
        space.validate([0, -1, 0, 0, 0])
    with pytest.raises(ValueError, match="position 2 must be an integer, got 1.5"):
        space.validate([0, 0, 1.5, 0, 0])
    with pytest.raises(ValueError, match="position 0 must be an integer, got True"):
        space.validate([True, 0, 0, 0, 0])
    with pytest.raises(ValueError):
        space.to_text([0, 0, 0, 0, 99])


def test_sample_is_uniform_and_seeded():
    space = Space()
    draws = np.array([space.sample(np.random.default_rng(7)) for _ in range(2)])
    assert (draws[0] == draws[1]).all()
    rng = np.random.default_rng(3)
    samples = np.array([space.sample(rng) for _ in range(6000)])
    for position, n in enumerate(space.decisions):
        counts = np.bincount(samples[:, position], minlength=n)
        assert len(counts) == n
        assert counts.min() > 0.6 * 6000 / n and counts.max() < 1.4 * 6000 / n


def test_random_token_lists_parse():
    for config, seed in ((SpaceConfig(), 0), (SpaceConfig(units=2, decay_operands=True,
                                                          annealed_noise=True), 1)):
        space = Space(config)
        rng = np.random.default_rng(seed)
        for _ in range(500):
            parse(space.to_text(space.sample(rng)))


# --- configuration ----------------------------------------------------------------------


def test_from_dict_reads_a_toml_table():
    config = SpaceConfig.from_dict({"units": 2, "operands": ["g", "m_hat"], "unary": ["x"],
                                    "binary": ["x * y"], "decay_operands": True})
    assert config == SpaceConfig(units=2, operands=("g", "m_hat"), unary=("x",),
                                 binary=("x * y",), decay_operands=True)
    assert SpaceConfig.from_dict({}) == SpaceConfig()
    hash(config)


@pytest.mark.parametrize("table, message", [
    ({"unit": 2}, r"unknown key 'unit'; allowed: units, operands, unary, binary, "
                  r"decay_operands, annealed_noise"),
    ({"units": "2"}, "'units' must be an integer >= 1, got '2'"),
    ({"units": 0}, "'units' must be an integer >= 1, got 0"),
    ({"units": True}, "'units' must be an integer"),
    ({"operands": "g"}, "'operands' must be a list of strings"),
    ({"operands": []}, "'operands' must be a non-empty list"),
    ({"unary": ["x", 3]}, "'unary' must hold non-empty strings, got 3"),
    ({"decay_operands": "yes"}, "'decay_operands' must be true or false"),
    ({"annealed_noise": 1}, "'annealed_noise' must be true or false"),
    ({"unary": ["x", "exp(g)"]}, r"unary snippet 'exp\(g\)' lacks the placeholder 'x'"),
    ({"binary": ["y + 1"]}, r"binary snippet 'y \+ 1' lacks the placeholder 'x'"),
    ({"unary": ["x * y"]}, r"unary snippet 'x \* y' must not use y"),
    ({"operands": ["g", "x"]}, "operands snippet 'x' must not use x"),
    ({"operands": ["g", "unit0"]}, "reserved for unit outputs"),
    ({"binary": ["x", "x"]}, "binary snippet 'x' is listed twice"),
])
def test_config_errors_name_the_key(table, message):
    with pytest.raises(ValueError, match=message):
        SpaceConfig.from_dict(table)


def test_config_is_frozen():
    config = SpaceConfig()
    with pytest.raises(AttributeError):
        config.units = 2  # type: ignore[misc]


def test_tensor_ops_add_the_tensor_level_constructs_and_every_rule_steps():
    import torch

    import nos

    space = Space(SpaceConfig(units=2, tensor_ops=True))
    assert space.operands[-len(TENSOR_OPERANDS):] == TENSOR_OPERANDS
    assert space.unary == DEFAULT_UNARY + TENSOR_UNARY
    assert space.binary == DEFAULT_BINARY + TENSOR_BINARY
    assert Space().unary == DEFAULT_UNARY  # off by default: the paper's space
    used = set()
    rng = np.random.default_rng(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    for _ in range(200):  # a matrix, a vector and their reductions, on both executors
        rule = space.to_rule(space.sample(rng))
        used |= rule.functions
        for foreach in (True, False):
            opt = nos.Optimizer(model.parameters(), rule, lr=1e-3, total_steps=5,
                                foreach=foreach)
            model(torch.randn(5, 4)).sum().backward()
            opt.step()
    assert {"rms", "norm", "where", "lerp", "rowmean", "colmean", "gt"} <= used


def test_global_ops_add_lion_search_functions_and_every_rule_steps():
    import torch

    import nos

    space = Space(SpaceConfig(units=2, global_ops=True))
    assert space.operands[-len(GLOBAL_OPERANDS):] == GLOBAL_OPERANDS
    assert space.unary == DEFAULT_UNARY + GLOBAL_UNARY
    assert space.binary == DEFAULT_BINARY + GLOBAL_BINARY
    assert Space().binary == DEFAULT_BINARY  # off by default: the paper's space
    used = set()
    rng = np.random.default_rng(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    for _ in range(60):  # a step joins every tensor of the model for the global reductions
        rule = space.to_rule(space.sample(rng))
        used |= rule.expanded().functions
        for foreach in (True, False):
            opt = nos.Optimizer(model.parameters(), rule, lr=1e-3, total_steps=5,
                                foreach=foreach)
            model(torch.randn(5, 4)).sum().backward()
            opt.step()
    assert {"gnorm", "sum", "norm", "lerp"} <= used
