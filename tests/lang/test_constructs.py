"""The later constructs of the language: reductions over every parameter, ``w = expr``,
``state NAME = expr from INIT``, the views ``eval_w`` and ``train_w``, and the shorthand
(``dot``, ``cosine``, ``clip_gnorm``, ``winmax``, ``winmin``): parsing, canonical
printing and its round trip, LaTeX, what the shorthand is written out as, and errors
with their positions."""

from __future__ import annotations

import pytest

import nos
from nos.lang.printer import expr_text
from nos.lang.rule import Rule

# rule text (canonical) -> a piece of its LaTeX
CONSTRUCTS = {
    "gsum(g) + gmean(g) + gnorm(g) + grms(g) + gamax(g)":
        r"\sum_{\mathcal{W}} g + \overline{g}^{\,\mathcal{W}} + \left\|g\right\|_{\mathcal{W}}"
        r" + \mathrm{rms}_{\mathcal{W}}\left(g\right) + \max_{\mathcal{W}} g",
    "g / gnorm(g / (gnorm(g) + 1))": r"\left\|\frac{g}{\left\|g\right\|_{\mathcal{W}} + 1}"
                                     r"\right\|_{\mathcal{W}}",
    "w = w - lr * g": "\\begin{aligned}\nw &\\leftarrow w - \\mathrm{lr} \\cdot g\n"
                      "\\end{aligned}",
    "state c = c * 0.9 from 1\nupdate = c * g": r"c &\leftarrow c \cdot 0.9 \quad (c_0 = 1)",
    "param p = 2\nstate z = z - lr * g from w * p\nw = lerp(w, z, 0.1)\neval_w = z\n"
    "train_w = lerp(w, z, 0.5)": r"z &\leftarrow z - \mathrm{lr} \cdot g \quad (z_0 = w "
                                 r"\cdot p) \\" "\n" r"w &\leftarrow \operatorname{lerp}"
                                 r"\left(w, z, 0.1\right) \\" "\n" r"w_{\mathrm{eval}} &= z"
                                 r" \\" "\n" r"w_{\mathrm{train}} &= \operatorname{lerp}",
    "dot(g, w) + cosine(g, w)": r"\langle g, w \rangle + \operatorname{cos}\left(g, w\right)",
    "clip_gnorm(g, 1)": r"\operatorname{clip_{\mathcal{W}}}\left(g, 1\right)",
    "winmax(norm(g), 3) - winmin(norm(g), 20)":
        r"\max_{3}\left(\left\|g\right\|\right) - \min_{20}\left(\left\|g\right\|\right)",
}


@pytest.mark.parametrize("text", list(CONSTRUCTS), ids=range(len(CONSTRUCTS)))
def test_constructs_round_trip_and_print_latex(text):
    rule = nos.parse(text)
    assert str(rule) == text  # canonical already
    assert nos.parse(str(rule)) == rule
    assert CONSTRUCTS[text] in rule.latex(), rule.latex()


def test_written_forms_parse_to_the_canonical_statements():
    rule = nos.parse("state   z=z-lr*g   from   w   # from the parameter\nw=lerp(w,z,0.1);"
                     "eval_w=z")
    kinds = [(s.kind, s.name, s.sets) for s in rule.statements]
    assert kinds == [("state", "z", False), ("update", "w", True), ("view", "eval_w", False)]
    assert expr_text(rule.statements[0].init) == "w"  # type: ignore[arg-type]
    assert str(rule) == "state z = z - lr * g from w\nw = lerp(w, z, 0.1)\neval_w = z"


def test_a_from_value_and_w_equals_are_part_of_the_rule():
    plain = nos.parse("state s = s + g\nupdate = s")
    assert nos.parse("state s = s + g from w\nupdate = s") != plain
    assert nos.parse("state s = s + g from 0\nupdate = s") != plain
    assert nos.parse("w = g") != nos.parse("update = g") == nos.parse("g")
    assert str(nos.parse("w = g")) == "w = g"  # a rule of one statement keeps 'w ='
    assert nos.parse("w = g").latex() != nos.parse("g").latex()


def test_the_shorthand_is_written_out_in_the_core_operations():
    expanded = str(nos.parse("dot(g, w) + cosine(g, m) + clip_gnorm(g, 0.5)").expanded())
    assert "sum(g * w)" in expanded
    assert "sum(g * m) / (max(norm(g), 1e-8) * max(norm(m), 1e-8))" in expanded
    assert "g * min(0.5 / (gnorm(g) + 1e-6), 1)" in expanded
    assert "state m = beta1 * m + (1 - beta1) * g" in expanded  # the prelude it uses
    windows = nos.parse("update = winmax(norm(g), 3) * g + winmin(norm(g), 3)").expanded()
    states = [(s.name, expr_text(s.expr)) for s in windows.statements  # type: ignore[arg-type]
              if s.kind == "state"]
    # one window shared by winmax and winmin of the same x and n, newest first
    assert states == [("__win1_3", "__win1_2"), ("__win1_2", "__win1_1"),
                      ("__win1_1", "norm(g)")]
    assert "where(t >= 3, __win1_3, __win1_1)" in str(windows)
    assert nos.parse("winmax(g, 2) + winmax(g, 3)").expanded().statements[-1].kind == "update"
    assert len([s for s in nos.parse("winmax(g, 2) + winmax(g, 3)").expanded().statements
                if s.kind == "state"]) == 5  # two windows: 2 + 3 states


def test_a_rule_without_shorthand_is_its_own_expansion():
    rule = nos.parse("state z = z - lr * g from w\nw = lerp(w, z, gmean(g))\neval_w = z")
    assert rule.expanded() is rule


# text, line, column, words of the reason
MALFORMED = [
    ("winmax(g, 0.5)", 1, 11, "the window of winmax must be a whole number in [1, 1000]"),
    ("update = winmin(norm(g), 0)", 1, 26, "the window of winmin must be a whole number"),
    ("winmax(g, 1001)", 1, 11, "in [1, 1000]"),
    ("winmax(g, t)", 1, 11, "the window of winmax must be a whole number"),
    ("x = g", 1, 1, "'x = ...' needs 'let', 'state' or 'param' in front (only w, eval_w and "
                    "train_w are given a value directly)"),
    ("update = g\neval_w = g", 2, 10, "eval_w cannot read 'g' (it reads cols, lr, "
                                      "machine_eps, ndim, numel, rows, t, w, params and "
                                      "states)"),
    ("update = g\neval_w = T", 2, 10, "eval_w cannot read 'T'"),
    ("update = g\neval_w = noise", 2, 10, "eval_w cannot read 'noise'"),
    ("let l = g\nupdate = g\neval_w = l", 3, 10, "eval_w cannot read the let 'l' (it reads "
                                                 "params and states)"),
    ("update = g\neval_w = m_hat", 2, 10, "eval_w cannot read the let 'm_hat'"),
    ("update = g\neval_w = gnorm(w)", 2, 10, "eval_w cannot read gnorm: it reduces over a "
                                             "step's gradients"),
    ("update = g\neval_w = cd(1)", 2, 10, "eval_w cannot call cd"),
    ("update = g\neval_w = w\ntrain_w = g", 3, 11, "train_w cannot read 'g'"),
    ("update = g\ntrain_w = w", 2, 1, "'train_w' needs an 'eval_w' (the view it goes back "
                                      "from)"),
    ("update = g\neval_w = w\neval_w = w", 3, 1, "repeated 'eval_w' (the first is on line 2)"),
    ("state s = s + g from g\nupdate = s", 1, 22, "the initial value of 's' cannot read 'g' "
                                                  "(it reads cols, machine_eps, ndim, numel, "
                                                  "rows, w, params)"),
    ("state s = s + g from t\nupdate = s", 1, 22, "the initial value of 's' cannot read 't'"),
    ("state s = s + g from lr\nupdate = s", 1, 22, "the initial value of 's' cannot read 'lr'"),
    ("state s = s + g from s\nupdate = s", 1, 22, "the initial value of 's' cannot read the "
                                                  "state 's' (it reads params)"),
    ("update = g\nstate s = g from m", 2, 18, "the initial value of 's' cannot read the state "
                                              "'m'"),
    ("state s = s + g from gsum(w)\nupdate = s", 1, 22, "the initial value of 's' cannot read "
                                                        "gsum: it reduces over a step's"),
    ("update = g\nstate s = g from drop(w, 0.5)", 2, 18, "the initial value of 's' cannot "
                                                         "call drop"),
    ("state s = s from\nupdate = s", 1, 17, "unexpected end of the line"),
    ("update = g from w", 1, 12, "unexpected 'from'"),
    ("let s = g from w\nupdate = s", 1, 11, "unexpected 'from'"),
    ("update = g\neval_w = w from w", 2, 12, "unexpected 'from'"),
    ("let __x = g\nupdate = __x", 1, 1, "'__x': names that start with '__' are reserved"),
    ("state __win1_1 = g\nupdate = g", 1, 1, "'__win1_1': names that start with '__' are "
                                             "reserved"),
    ("param __p = 1\nupdate = g", 1, 1, "'__p': names that start with '__' are reserved"),
    ("w = g\nw = m", 2, 1, "a rule has one 'update = ...' or 'w = ...' ('w = ...' is on "
                           "line 1)"),
    ("update = g\nw = g", 2, 1, "('update' is on line 1)"),
    ("update = dot(g)", 1, 10, "dot takes 2 arguments (dot(a, b)), got 1"),
    ("update = g * cosine(g, w, m)", 1, 14, "cosine takes 2 arguments"),
    ("gsum(g, w)", 1, 1, "gsum takes 1 argument"),
    ("update = gnorm * g", 1, 10, "'gnorm' is a function: call it as gnorm(x)"),
    ("let winmax = g\nupdate = winmax", 1, 1, "cannot assign to 'winmax': it is a function"),
    ("state from = g\nupdate = g", 1, 7, "expected a name"),
]


@pytest.mark.parametrize("text,line,column,words", MALFORMED,
                         ids=[m[0].replace("\n", "; ") for m in MALFORMED])
def test_errors_name_what_is_wrong_and_where(text, line, column, words):
    with pytest.raises(nos.RuleSyntaxError) as info:
        nos.parse(text)
    err = info.value
    assert words in err.reason, err.reason
    assert (err.line, err.column) == (line, column), str(err)
    shown = str(err).splitlines()
    assert shown[0] == f"line {line}, column {column}: {err.reason}"
    assert shown[1] == "  " + text.splitlines()[line - 1]
    assert shown[2].index("^") == column + 1  # under the spot, after the two-space indent


def test_rules_with_the_constructs_are_rules():
    rule = nos.parse("state z = z - lr * g from w\nw = lerp(w, z, 0.1)\neval_w = z")
    assert isinstance(rule, Rule)
    assert {s.name for s in rule.statements} == {"z", "w", "eval_w"}
    assert not rule.is_random and not rule.needs_total_steps
