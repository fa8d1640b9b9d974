"""A rule's params on the command line: ``--param KEY=VALUE``, keyword arguments of
:class:`nos.Optimizer`.

``parse_param_options`` reads the option texts into a dict that goes, as it is, to
``nos.Optimizer(params, rule, lr=..., **hyper)`` in every training; no key is treated
specially here, so whatever keywords the optimizer takes, the option takes.
``format_params`` writes such a dict back in the same syntax, and ``check_params``
builds the optimizer once on a dummy parameter, so that a value it refuses is reported
before any training, naming the key and the rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from nos.lang.rule import Rule

_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|infinity|nan)",
                    re.IGNORECASE)
_WORDS = {"true": True, "false": False, "none": None}


class ParamError(ValueError):
    """A ``--param`` the user must fix: its text is malformed or repeated, or the optimizer
    refuses its value.  ``keys``: the keys at fault (empty when the text has no key)."""

    def __init__(self, message: str, keys: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.keys = tuple(keys)


def _scalar(text: str) -> object:
    """``5`` -> int, ``1e-3`` -> float, ``true``/``false`` -> bool, ``none`` -> None, else
    the text itself."""
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return _WORDS.get(text.lower(), text)


def parse_value(text: str) -> object:
    """One option's VALUE: a number (an integer literal stays an int), ``true``/``false``,
    ``none``, a tuple of numbers or ``none`` separated by commas (``0.9,0.95``), or else
    the text as a string.  ValueError for a tuple with an empty or non-numeric element."""
    text = text.strip()
    if "," not in text:
        return _scalar(text)
    items = [part.strip() for part in text.split(",")]
    values = tuple(_scalar(part) for part in items)
    for part, value in zip(items, values, strict=True):
        if not part:
            raise ValueError(f"{text!r} has an empty element")
        if isinstance(value, (bool, str)):
            raise ValueError(f"{text!r}: {part!r} is not a number or none "
                             "(a list is numbers or none separated by commas)")
    return values


def parse_param_options(options: Iterable[str] | None) -> dict[str, object]:
    """The ``--param KEY=VALUE`` options as keyword arguments of ``nos.Optimizer``.

    VALUE (see ``parse_value``): ``5`` -> 5, ``1e-3`` -> 0.001, ``0.9,0.95`` ->
    ``(0.9, 0.95)``, ``none,1e-3`` -> ``(None, 0.001)``, ``true``/``false`` -> bool,
    ``none`` -> None, anything else -> the string (``adjust_lr_fn=match_rms_adamw``).

    Raises:
        ParamError: an option that is not ``KEY=VALUE`` with KEY a Python identifier and
            a value, a malformed list, or a key given twice; its message is one line.
    """
    params: dict[str, object] = {}
    for option in options or ():
        key, sep, text = option.partition("=")
        key = key.strip()
        if not sep:
            raise ParamError(f"{option!r} is not KEY=VALUE")
        if not key:
            raise ParamError(f"{option!r} has no KEY before '='")
        if not key.isidentifier():
            raise ParamError(f"{option!r}: the key {key!r} is not a keyword name", [key])
        if not text.strip():
            raise ParamError(f"{option!r} has no VALUE after '='", [key])
        if key in params:
            raise ParamError(f"{key} given twice ({format_value(params[key])} and "
                             f"{text.strip()}); give each key once", [key])
        try:
            params[key] = parse_value(text)
        except ValueError as err:
            raise ParamError(f"{key}: {err}", [key]) from None
    return params


def format_value(value: object) -> str:
    """A value as ``--param`` writes it; ``parse_value`` reads it back as the same value."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return ",".join(format_value(v) for v in value)
    return str(value)


def format_params(params: Mapping[str, object]) -> str:
    """``KEY=VALUE`` for each param, separated by spaces (``beta1=0.8 wd=0.1``)."""
    return " ".join(f"{key}={format_value(value)}" for key, value in params.items())


def _build(rule: Rule | str, lr: float | None, hyper: Mapping[str, object]) -> None:
    import torch

    from nos.optim.optimizer import Optimizer

    # as a training builds it (nos.train.evaluation), on one small parameter
    Optimizer([torch.nn.Parameter(torch.zeros(2, 2))], rule, lr=lr, total_steps=1, seed=0,
              **hyper)


def check_params(rule: Rule | str, params: Mapping[str, object], *, lr: float | None = None,
                 name: str | None = None) -> None:
    """Build ``nos.Optimizer`` with the rule, ``lr`` and ``params`` as a training would;
    if it refuses them, raise ParamError naming the key(s) at fault and the rule (``name``).

    A rule that the optimizer refuses without any params is not the params' doing: it
    passes here, and its training reports it (status ``invalid``).
    """
    if not params:
        return
    try:
        _build(rule, lr, {})
    except Exception:  # the rule's own problem: its training reports it
        return
    try:
        _build(rule, lr, params)
    except TypeError as err:  # a keyword given twice: one the training passes itself
        multiple = "multiple values for keyword argument" in str(err)
        reason = "the training sets this keyword itself" if multiple else _first_line(err)
    except Exception as err:  # whatever the optimizer refuses, as one line
        reason = _first_line(err)
    else:
        return
    keys = [key for key in params if _refuses(rule, lr, {key: params[key]})] or list(params)
    given = ", ".join(f"{key}={format_value(params[key])}" for key in keys)
    where = f" for rule {name}" if name else ""
    raise ParamError(f"{given}{where}: {reason}", keys)


def _refuses(rule: Rule | str, lr: float | None, hyper: Mapping[str, object]) -> bool:
    try:
        _build(rule, lr, hyper)
    except Exception:
        return True
    return False


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
