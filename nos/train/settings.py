"""The settings of an evaluation, checked in one place.

``check_evaluation(settings)`` is called by ``nos.evaluate``, by the command
line (``nos eval``, ``nos baselines``, ``nos inspect --retrain``) and by the
config loader (``[evaluation]``), so a bad learning rate, grid, budget or
schedule is refused the same way everywhere, before any training: a
:class:`SettingError` whose message names the key.  Each caller names the key
its own way (``--lr``, ``[evaluation] lr`` in a file, ``lr``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# the keys checked here, in the order they are checked
KEYS = ("epochs", "lr", "lr_grid", "grid_epochs", "batch_size", "snapshots", "time_limit",
        "floor", "seed", "schedule", "stop_loss_steps", "stop_below", "grow_batch")


class SettingError(ValueError):
    """A bad evaluation setting: ``key`` and what is wrong with it (``problem``)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key} {problem}")
        self.key = key
        self.problem = problem

    def named(self, name: str) -> str:
        """The message with the key named as the caller knows it (``--lr``)."""
        return f"{name} {self.problem}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive(key: str, value: Any) -> None:
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise SettingError(key, f"must be a positive, finite number, got {value!r}")


def _optional_positive(key: str, value: Any) -> None:
    if value is not None:
        _positive(key, value)


def _lr_grid(key: str, value: Any) -> None:
    if value is None:
        return
    what = "must be a list of positive, finite numbers"
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
        raise SettingError(key, f"{what}, got {value!r}")
    rates = list(value)
    if not rates:
        raise SettingError(key, f"{what}, got an empty list")
    for rate in rates:
        if not _is_number(rate) or not math.isfinite(rate) or rate <= 0:
            raise SettingError(key, f"{what}; {rate!r} is not")


def _count(low: int) -> Callable[[str, Any], None]:
    def check(key: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise SettingError(key, f"must be a whole number >= {low}, got {value!r}")
    return check


def _optional_count(low: int) -> Callable[[str, Any], None]:
    check = _count(low)

    def optional(key: str, value: Any) -> None:
        if value is not None:
            check(key, value)
    return optional


def _thresholds(key: str, value: Any) -> None:
    if value is None:
        return
    what = "must be a list of finite numbers or nulls (one per epoch)"
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
        raise SettingError(key, f"{what}, got {value!r}")
    for threshold in value:
        if threshold is not None and (not _is_number(threshold) or not math.isfinite(threshold)):
            raise SettingError(key, f"{what}; {threshold!r} is not")


def _time_limit(key: str, value: Any) -> None:
    if value is not None and (not _is_number(value) or math.isnan(value) or value < 0):
        raise SettingError(key, f"must be a number of seconds >= 0 (0: none), got {value!r}")


def _finite(key: str, value: Any) -> None:
    if not _is_number(value) or not math.isfinite(value):
        raise SettingError(key, f"must be a finite number, got {value!r}")


def _integer(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingError(key, f"must be an integer, got {value!r}")


CHECKS: dict[str, Callable[[str, Any], None]] = {
    "epochs": _optional_positive,
    "lr": _optional_positive,
    "lr_grid": _lr_grid,
    "grid_epochs": _positive,
    "batch_size": _optional_count(1),
    "snapshots": _count(0),
    "time_limit": _time_limit,
    "floor": _finite,
    "seed": _integer,
    "stop_loss_steps": _optional_count(1),
    "stop_below": _thresholds,
    "grow_batch": _optional_count(1),
}


def check_schedule(schedule: Any, total_steps: int | None = None,
                   lrs: Sequence[float] = ()) -> dict | None:
    """The schedule as ``None`` or a table, once its name and options are known good (for
    a run of ``total_steps`` at each rate of ``lrs``, when they are given)."""
    if schedule is None:
        return None
    from nos.optim.schedules import check

    try:
        for lr in lrs:
            check(schedule, total_steps, lr)
        return check(schedule, total_steps)
    except (TypeError, ValueError) as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SettingError("schedule", f"is not usable: {text}") from None


def check_evaluation(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Check the given evaluation settings (any subset of ``KEYS``); SettingError if one is
    bad.  Returns them with the schedule as ``None`` or a table."""
    checked = dict(settings)
    for key in KEYS:
        if key in CHECKS and key in checked:
            CHECKS[key](key, checked[key])
    if "schedule" in checked:
        checked["schedule"] = check_schedule(checked["schedule"])
    if checked.get("snapshots"):
        schedule = checked.get("schedule")
        if schedule is None or schedule["name"] != "sgdr":
            raise SettingError("snapshots", "needs an SGDR schedule (sgdr:T_0=...), "
                               f"got schedule {settings.get('schedule')!r}")
    if checked.get("grow_batch") is not None:  # batch size instead of decay
        from nos.train.batch_growth import step_decay

        try:
            step_decay(checked.get("schedule"))
        except ValueError as err:
            raise SettingError("grow_batch", str(err)) from None
    return checked
