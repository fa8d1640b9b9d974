"""The language: parsing, canonical printing, round trips and error messages."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nos
from nos.lang.ops import FUNCTIONS
from nos.lang.rule import Rule
from nos.lang.tree import Node, Statement

PAPER_RULES = [
    "exp(sign(g) * sign(m)) * g",
    "(1 + sign(g) * sign(m)) * g",
    "(exp(sign(g) * sign(m)) + clip(g, 1e-4)) * g",
    "clip(m_hat, 1e-4) * exp(v_hat)",
    "drop(m_hat, 0.3) * exp(w)",
    "g - clip(g^2, 1e-4)",
    "exp(g) - exp(m_hat)",
    "exp(ld * sign(g) * sign(m)) * g",
    "(1 + cd(1) * sign(g) * sign(m)) * g",
    "g + drop(m, 0.3)",
]

ADAM = """
param beta1 = 0.9 in [0, 1)   # first moment decay
param beta2 = 0.999 in [0, 1)
param eps = 1e-8
state m = beta1 * m + (1 - beta1) * g
state v = beta2 * v + (1 - beta2) * g^2
let m_hat = m / (1 - beta1^t)
let v_hat = v / (1 - beta2^t)
update = m_hat / (sqrt(v_hat) + eps)
"""

AMSGRAD = """
param beta1 = 0.9 in [0, 1)
param beta2 = 0.999 in [0, 1)
param eps = 1e-8
state m = beta1 * m + (1 - beta1) * g
state v = beta2 * v + (1 - beta2) * g^2
state vmax = max(vmax, v)
update = m / (1 - beta1^t) / (sqrt(vmax / (1 - beta2^t)) + eps)
"""

LION = """
param beta1 = 0.9 in [0, 1)
param beta2 = 0.99 in [0, 1)
param wd = 0
update = sign(beta1 * m + (1 - beta1) * g) + wd * w
state m = beta2 * m + (1 - beta2) * g
"""


@pytest.mark.parametrize("text", PAPER_RULES)
def test_paper_rules_are_canonical_and_round_trip(text):
    rule = nos.parse(text)
    assert str(rule) == text.replace("1e-4", "1e-4")
    assert nos.parse(str(rule)) == rule
    assert hash(nos.parse(str(rule))) == hash(rule)


@pytest.mark.parametrize("text", [ADAM, AMSGRAD, LION])
def test_multi_statement_rules_round_trip(text):
    rule = nos.parse(text)
    assert nos.parse(str(rule)) == rule
    assert str(nos.parse(str(rule))) == str(rule)


def test_canonical_text_has_minimal_parentheses():
    cases = {
        "((g))": "g",
        "(g * m) * v": "g * m * v",
        "g * (m * v)": "g * (m * v)",
        "g - (m - v)": "g - (m - v)",
        "(g - m) - v": "g - m - v",
        "-(g^2)": "-g^2",
        "(-g)^2": "(-g)^2",
        "g^(-2)": "g^-2",
        "(2^3)^4": "(2^3)^4",
        "2^(3^4)": "2^3^4",
        "g / (m / v)": "g / (m / v)",
        "- (g * m)": "-(g * m)",
        "(-g) * m": "-g * m",
        "0.00010": "1e-4",
        "1.0 * g": "1 * g",
        "update = g": "g",
    }
    for text, canonical in cases.items():
        assert str(nos.parse(text)) == canonical, text


def test_power_binds_tighter_than_unary_minus_and_is_right_associative():
    assert nos.parse("-g^2").update.op == "neg"
    assert nos.parse("g^2^3").update.args[1].op == "pow"
    assert nos.parse("2 * -g").update.args[1].op == "neg"


def test_rule_reports_params_state_and_names():
    rule = nos.parse(ADAM)
    assert rule.params == {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    assert rule.state == ("m", "v")
    assert rule.primitives == {"g", "t"}
    assert rule.prelude_names == frozenset()

    powersign = nos.parse("exp(sign(g) * sign(m)) * g")
    assert powersign.prelude_names == {"m", "beta1"}
    assert powersign.expanded().state == ("m",)
    assert powersign.expanded().params == {"beta1": 0.9}

    uses_adam = nos.parse("adam + g")
    assert {"adam", "m_hat", "v_hat", "m", "v", "beta1", "beta2", "eps"} <= uses_adam.prelude_names
    assert "gamma" not in uses_adam.prelude_names
    assert nos.parse("ld * g").needs_total_steps
    assert not nos.parse("g").needs_total_steps
    assert nos.parse("drop(g, 0.1)").is_random and nos.parse("noise").is_random


def test_rule_shadows_prelude_definitions():
    rule = nos.parse("state m = 0.5 * m + g; update = sign(m) * g")
    assert rule.prelude_names == frozenset()
    assert rule.expanded() == rule
    overridden = nos.parse("param beta1 = 0.5\nupdate = m")
    assert overridden.expanded().params == {"beta1": 0.5}


def test_rules_are_immutable_hashable_and_ordered():
    a, b = nos.parse("g"), nos.parse("m")
    assert len({a, nos.parse(" g "), b}) == 2
    assert sorted([b, a]) == [a, b]
    with pytest.raises(AttributeError):
        a.statements = ()  # type: ignore[misc]


def test_latex():
    assert nos.parse("exp(sign(g) * sign(m)) * g").latex() == (
        r"\Delta w = e^{\operatorname{sign}\left(g\right) \cdot \operatorname{sign}\left(m\right)}"
        r" \cdot g"
    )
    assert r"\frac" in nos.parse("m_hat / (sqrt(v_hat) + eps)").latex()
    assert r"\begin{aligned}" in nos.parse(ADAM).latex()


# (text, line, column, words the message must contain)
MALFORMED = [
    ("", 1, 1, "empty rule"),
    ("g +", 1, 4, "unexpected end"),
    ("g ** 2", 1, 4, "unexpected '*'"),
    ("g $ 2", 1, 3, "unexpected character '$'"),
    ("(g", 1, 3, "expected ')'"),
    ("g)", 1, 2, "unexpected ')'"),
    ("clip(g,)", 1, 8, "unexpected ')'"),
    ("mm * g", 1, 1, "unknown name 'mm'; did you mean 'm'?"),
    ("g * gama", 1, 5, "did you mean 'gamma'?"),
    ("foo(g)", 1, 1, "unknown function 'foo'"),
    ("expp(g)", 1, 1, "did you mean 'exp'?"),
    ("clip(g)", 1, 1, "clip takes 2 arguments"),
    ("exp(g, m)", 1, 1, "exp takes 1 argument"),
    ("max(g)", 1, 1, "max takes 2 arguments"),
    ("g(1)", 1, 1, "'g' is not a function"),
    ("exp * g", 1, 1, "'exp' is a function"),
    ("let a = g\nlet b = a", 2, 10, "missing 'update'"),
    ("update = g\nupdate = m", 2, 1, "a rule has one 'update = ...' or 'w = ...'"),
    ("g\nm", 2, 1, "a rule has one 'update"),
    ("w = g\nupdate = m", 2, 1, "('w = ...' is on line 1)"),
    ("let a = g\nlet a = m\nupdate = a", 2, 1, "'a' is already defined"),
    ("param b = 1\nparam b = 2\nupdate = b * g", 2, 1, "'b' is already defined"),
    ("param b = 1\nlet b = g\nupdate = b", 2, 1, "'b' is already defined"),
    ("let g = 1\nupdate = g", 1, 1, "cannot assign to the primitive 'g'"),
    ("state t = t + 1\nupdate = g", 1, 1, "cannot assign to the primitive 't'"),
    ("let exp = 1\nupdate = g", 1, 1, "cannot assign to 'exp'"),
    ("param beta = g\nupdate = beta * g", 1, 14, "must be a number"),
    ("param beta = 0.9 * 2\nupdate = beta * g", 1, 14, "must be a number"),
    ("param beta = 1.5 in [0, 1)\nupdate = beta * g", 1, 14, "outside [0, 1)"),
    ("update = a * g\nlet a = 2", 1, 10, "'a' is used before it is defined"),
    ("x = 3", 1, 1, "'x = ...' needs 'let', 'state' or 'param' in front"),
    ("update g", 1, 8, "expected '='"),
    ("let = 3\nupdate = g", 1, 5, "expected a name"),
    ("g\n  + m", 2, 3, "unexpected '+'"),
    ("let m_hat = g\nupdate = adam", 1, 1, "the prelude's 'adam' reads 'm_hat'"),
    ("1e999 * g", 1, 1, "too large"),
    ("-" * 150 + "g", 1, 151, "nested too deeply"),
    ("param p = 0.5 in [0, 1\nupdate = g", 1, 23, "unexpected"),
]


@pytest.mark.parametrize("text,line,column,words", MALFORMED)
def test_malformed_rules_give_position_and_message(text, line, column, words):
    with pytest.raises(nos.RuleSyntaxError) as info:
        nos.parse(text)
    err = info.value
    assert isinstance(err, ValueError)
    assert words in err.reason, err.reason
    assert (err.line, err.column) == (line, column), str(err)
    shown = str(err).splitlines()
    assert shown[0] == f"line {line}, column {column}: {err.reason}"
    assert shown[2].index("^") == column + 1  # under the spot, after the two-space indent


def test_malformed_count():
    assert len(MALFORMED) >= 25


# --- the tensor-level constructs ------------------------------------------------

TENSOR_LEVEL = {
    "where(g * m > 0, g, 0)": r"\operatorname{where}\left(g \cdot m > 0, g, 0\right)",
    "(g < w) * (t >= 2) + (lr != 0) - (ndim == 2)": r"\left(g < w\right)",
    "lerp(m, g, 0.1)": r"\operatorname{lerp}\left(m, g, 0.1\right)",
    "g / (rms(g) + 1e-8) * norm(w) / norm(g) + sum(g) + mean(g) + amax(g)": r"\left\|w\right\|",
    "state r = lerp(r, rowmean(g^2), 0.1)\nstate c = lerp(c, colmean(g^2), 0.1)\n"
    "update = g / sqrt(r * c / colmean(r))": r"\overline{{g}^{2}}^{\,\mathrm{row}}",
    "newton_schulz(m, 3.4445, -4.775, 2.0315, 5, 1e-7, 16)": r"\operatorname{NS}_{5}",
    "sqrt(max(1, rows / cols)) * g + numel * machine_eps": r"\mathrm{numel}",
}


@pytest.mark.parametrize("text", sorted(TENSOR_LEVEL))
def test_tensor_level_constructs_round_trip_and_print_latex(text):
    rule = nos.parse(text)
    assert nos.parse(str(rule)) == rule
    assert str(nos.parse(str(rule))) == str(rule)
    assert TENSOR_LEVEL[text] in rule.latex()


def test_comparisons_bind_loosest_and_do_not_chain():
    assert str(nos.parse("(g + 1 < w * 2)")) == "g + 1 < w * 2"
    assert str(nos.parse("(g < w) * 2")) == "(g < w) * 2"
    assert str(nos.parse("(g < w) < t")) == "(g < w) < t"
    with pytest.raises(nos.RuleSyntaxError) as err:
        nos.parse("g < w < t")
    assert (err.value.line, err.value.column) == (1, 7)


@pytest.mark.parametrize("text,words,column", [
    ("where(g > 0, g)", "where takes 3 arguments (where(c, a, b)), got 2", 1),
    ("update = g * lerp(g, w)", "lerp takes 3 arguments", 14),
    ("let norm = g\nupdate = norm", "cannot assign to 'norm': it is a function", 1),
    ("param lr = 1\nupdate = lr * g", "cannot assign to the primitive 'lr'", 1),
    ("update = rowmean * g", "'rowmean' is a function: call it as rowmean(x)", 10),
])
def test_tensor_level_errors_are_positioned(text, words, column):
    with pytest.raises(nos.RuleSyntaxError) as err:
        nos.parse(text)
    assert words in err.value.reason and err.value.column == column, str(err.value)


def test_matrix_functions_need_constant_settings_and_2d_parameters():
    import torch

    with pytest.raises(ValueError, match="argument 5 of newton_schulz.*must not depend on "
                                         "tensors"):
        nos.compile_rule(nos.parse("newton_schulz(g, 3.4, -4.7, 2, g, 1e-7, 16)"))
    vector = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError) as err:
        nos.Optimizer([vector], "newton_schulz(g, 3.4, -4.7, 2, 5, 1e-7, 16)")
    assert str(err.value).startswith("line 1, column 1: newton_schulz needs 2-D parameters; "
                                     "parameter 0 of group 0 has shape (3,)")


# --- property tests ------------------------------------------------------------

NAMES = ["g", "w", "t", "m", "v", "gamma", "m_hat", "v_hat", "adam", "rmsprop", "noise", "ld",
         "lr", "ndim", "rows", "cols", "numel", "machine_eps"]
COMPARISONS = ["lt", "le", "gt", "ge", "eq", "ne"]
numbers = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False).map(abs)


def _window(op: str, args: tuple[Node, ...]) -> tuple[Node, ...]:
    """A window's length is a whole number."""
    return (args[0], Node("num", value=3.0)) if op in ("winmax", "winmin") else args


def _expressions(names: list[str]):
    leaves = st.one_of(numbers.map(lambda x: Node("num", value=float(x))),
                       st.sampled_from(names).map(lambda n: Node("name", value=n)))

    def extend(children):
        binary = st.tuples(st.sampled_from(["add", "sub", "mul", "div", "pow", *COMPARISONS]),
                           children, children)
        calls = st.sampled_from(sorted(FUNCTIONS)).flatmap(
            lambda f: st.tuples(st.just(f), st.lists(children, min_size=FUNCTIONS[f].arity,
                                                     max_size=FUNCTIONS[f].arity)))
        return st.one_of(
            binary.map(lambda t: Node(t[0], (t[1], t[2]))),
            children.map(lambda c: Node("neg", (c,))),
            calls.map(lambda t: Node(t[0], _window(t[0], tuple(t[1])))),
        )

    return st.recursive(leaves, extend, max_leaves=12)


@st.composite
def rules(draw):
    statements = []
    names = list(NAMES)
    for i in range(draw(st.integers(0, 2))):
        statements.append(Statement("param", f"p{i}", default=float(draw(numbers))))
        names.append(f"p{i}")
    for i in range(draw(st.integers(0, 2))):
        statements.append(Statement("state", f"s{i}", draw(_expressions(names + [f"s{i}"]))))
        names.append(f"s{i}")
    for i in range(draw(st.integers(0, 2))):
        statements.append(Statement("let", f"a{i}", draw(_expressions(names))))
        names.append(f"a{i}")
    statements.append(Statement("update", "update", draw(_expressions(names))))
    return Rule(tuple(statements))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules())
def test_printed_rules_parse_back_to_the_same_rule(rule):
    text = str(rule)
    again = nos.parse(text)
    assert again == rule
    assert str(again) == text


ALPHABET = "gwmtv0123456789.e+-*/^(),;=# \n\tabcdlprsux_[]"
TOKENS = ["g", "m", "exp", "(", ")", "+", "-", "*", "/", "^", "1e-8", "clip", ",", "let",
          "state", "param", "update", "=", "\n", ";", "in", "[", "0", "1", "inf", " ", "x"]


@settings(max_examples=1000, deadline=None)
@given(st.one_of(st.text(alphabet=ALPHABET, max_size=60), st.text(max_size=30),
                 st.lists(st.sampled_from(TOKENS), max_size=25).map("".join)))
def test_random_text_raises_only_rule_syntax_error(text):
    try:
        rule = nos.parse(text)
    except nos.RuleSyntaxError as err:
        assert err.line >= 1 and err.column >= 1
        return
    assert nos.parse(str(rule)) == rule
