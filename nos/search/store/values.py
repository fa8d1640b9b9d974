"""Values checked and converted on their way into the run database."""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Sequence

from nos.search.store.schema import STATUSES


def index(name: str, value: object) -> int:
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if number < 0:
        raise ValueError(f"{name} must be >= 0, got {number}")
    return number


def tokens(tokens: Sequence[int]) -> list[int]:
    try:
        return [operator.index(t) for t in tokens]
    except TypeError:
        raise TypeError(f"tokens must be a sequence of integers, got {tokens!r}") from None


def text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {value!r}")
    return value


def real(name: str, value: object) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    return None if math.isnan(number) else number


def status(status: str, allowed: tuple[str, ...] = STATUSES) -> str:
    if status not in allowed:
        raise ValueError(f"unknown status {status!r}; expected one of {', '.join(allowed)}")
    return status


def details_json(details: dict | None) -> str | None:
    if details is None:
        return None
    if not isinstance(details, dict):
        raise TypeError(f"details must be a dict, got {type(details).__name__}")
    try:
        return json.dumps(details, sort_keys=True, default=_plain)
    except (TypeError, ValueError) as err:
        raise TypeError(f"details are not JSON data: {err}") from None


def _plain(value: object) -> object:
    """numpy and torch scalars and arrays as plain Python values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} value {value!r} is not JSON data")
