"""A Rule becomes text again: canonical text with minimal parentheses, and LaTeX.

``nos.parse(to_text(rule.statements)) == rule`` for every rule.
"""

from __future__ import annotations

import math

from nos.lang.ops import OPS
from nos.lang.tree import Bounds, Node, Statement, update_of

# Binding strength: a child printed where a stronger one is needed gets parentheses.
_COMPARE = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}
_PREC = {**dict.fromkeys(_COMPARE, 1), "add": 2, "sub": 2, "mul": 3, "div": 3, "neg": 4, "pow": 5}
_ATOM = 6
_SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/", **_COMPARE}


def format_number(x: float) -> str:
    """Shortest text that reads back as the same float: ``1``, ``0.9``, ``1e-8``."""
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == int(x) and abs(x) < 1e16:
        return str(int(x))
    decimal = repr(float(x))
    if "e" in decimal:
        decimal = format(float(x), "f")
        decimal = decimal.rstrip("0") if float(decimal) == x else repr(float(x))
    for digits in range(17):
        scientific = f"{x:.{digits}e}"
        if float(scientific) == x:
            break
    mantissa, exponent = scientific.split("e")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    scientific = f"{mantissa}e{int(exponent)}"
    return scientific if len(scientific) < len(decimal) else decimal


def _prec(node: Node) -> int:
    if node.op == "num" and node.value < 0:  # type: ignore[operator]
        return _PREC["neg"]
    return _PREC.get(node.op, _ATOM)


def expr_text(node: Node, min_prec: int = 0) -> str:
    op = node.op
    if op == "num":
        text = format_number(node.value)  # type: ignore[arg-type]
    elif op == "name":
        text = str(node.value)
    elif op in _SYMBOL:
        left, right = node.args
        p = _PREC[op]
        # comparisons do not chain: both sides bind tighter
        text = f"{expr_text(left, p + (op in _COMPARE))} {_SYMBOL[op]} {expr_text(right, p + 1)}"
    elif op == "neg":
        text = "-" + expr_text(node.args[0], _PREC["neg"])
    elif op == "pow":
        base, exponent = node.args
        text = f"{expr_text(base, _ATOM)}^{expr_text(exponent, _PREC['neg'])}"
    else:
        text = f"{op}({', '.join(expr_text(a) for a in node.args)})"
    return f"({text})" if _prec(node) < min_prec else text


def bounds_text(b: Bounds) -> str:
    left = "[" if b.lo_closed else "("
    right = "]" if b.hi_closed else ")"
    return f"{left}{format_number(b.lo)}, {format_number(b.hi)}{right}"


def statement_text(s: Statement) -> str:
    if s.kind == "param":
        text = f"param {s.name} = {format_number(s.default)}"  # type: ignore[arg-type]
        return text + (f" in {bounds_text(s.bounds)}" if s.bounds else "")
    if s.kind in ("update", "view"):
        return f"{s.name} = {expr_text(s.expr)}"  # type: ignore[arg-type]
    init = f" from {expr_text(s.init)}" if s.init is not None else ""
    return f"{s.kind} {s.name} = {expr_text(s.expr)}{init}"  # type: ignore[arg-type]


def to_text(statements: tuple[Statement, ...]) -> str:
    """Canonical text: a bare expression when the rule is only its update."""
    if len(statements) == 1 and not statements[0].sets:
        return expr_text(update_of(statements))
    return "\n".join(statement_text(s) for s in statements)


# --- LaTeX ----------------------------------------------------------------------

_GREEK = {"beta1": r"\beta_1", "beta2": r"\beta_2", "beta3": r"\beta_3", "eps": r"\epsilon",
          "gamma": r"\gamma", "beta": r"\beta", "alpha": r"\alpha", "lambda_": r"\lambda"}
_LATEX_NAMES = {
    "m_hat": r"\hat{m}", "v_hat": r"\hat{v}", "gamma_hat": r"\hat{\gamma}",
    "noise": r"\epsilon", "annealed_noise": r"\epsilon_t", "ld": r"\mathrm{ld}",
    "adam": r"\mathrm{Adam}", "rmsprop": r"\mathrm{RMSProp}",
}


def latex_name(word: str) -> str:
    if word in _LATEX_NAMES:
        return _LATEX_NAMES[word]
    if word in _GREEK:
        return _GREEK[word]
    if len(word) == 1:
        return word
    base, _, sub = word.partition("_")
    if sub:
        return rf"\mathrm{{{base}}}_{{\mathrm{{{sub}}}}}"
    return rf"\mathrm{{{word}}}"


def _latex_number(x: float) -> str:
    text = format_number(x)
    if "e" in text:
        mantissa, exponent = text.split("e")
        return (f"{mantissa} \\cdot " if mantissa != "1" else "") + f"10^{{{exponent}}}"
    return text


def expr_latex(node: Node, min_prec: int = 0) -> str:
    op = node.op
    if op == "num":
        text = _latex_number(node.value)  # type: ignore[arg-type]
    elif op == "name":
        text = latex_name(str(node.value))
    elif op == "div":
        text = OPS["div"].latex(*(expr_latex(a) for a in node.args))
        return text
    elif op in ("add", "sub", "mul") or op in _COMPARE:
        p = _PREC[op]
        text = OPS[op].latex(expr_latex(node.args[0], p + (op in _COMPARE)),
                             expr_latex(node.args[1], p + 1))
    elif op == "neg":
        text = OPS["neg"].latex(expr_latex(node.args[0], _PREC["neg"]))
    elif op == "pow":
        text = OPS["pow"].latex(expr_latex(node.args[0], _ATOM), expr_latex(node.args[1]))
    else:
        return OPS[op].latex(*(expr_latex(a) for a in node.args))
    return rf"\left({text}\right)" if _prec(node) < min_prec else text


def to_latex(statements: tuple[Statement, ...]) -> str:
    """The rule as LaTeX: one line per statement, in an aligned block when several."""
    if len(statements) == 1 and not statements[0].sets:
        return rf"\Delta w = {expr_latex(update_of(statements))}"
    lines = []
    for s in statements:
        if s.kind == "param":
            lines.append(rf"{latex_name(s.name)} &= {_latex_number(s.default)}")  # type: ignore[arg-type]
        elif s.sets:
            lines.append(rf"w &\leftarrow {expr_latex(s.expr)}")  # type: ignore[arg-type]
        elif s.kind == "update":
            lines.append(rf"\Delta w &= {expr_latex(s.expr)}")  # type: ignore[arg-type]
        elif s.kind == "view":
            mode = s.name.split("_")[0]
            lines.append(rf"w_{{\mathrm{{{mode}}}}} &= {expr_latex(s.expr)}")  # type: ignore[arg-type]
        else:
            arrow = r"\leftarrow" if s.kind == "state" else "="
            init = (rf" \quad ({latex_name(s.name)}_0 = {expr_latex(s.init)})"
                    if s.init is not None else "")
            lines.append(rf"{latex_name(s.name)} &{arrow} {expr_latex(s.expr)}{init}")  # type: ignore[arg-type]
    return "\\begin{aligned}\n" + " \\\\\n".join(lines) + "\n\\end{aligned}"
