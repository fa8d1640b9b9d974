"""Search configuration: TOML data, validated once at the edge.

A config file has these tables (every key optional; defaults below):

    [search]      controller, budget, batch, seed, cache, seconds (stop proposing after)
    [task]        name, and the task's own options (data_dir, path, ...)
    [evaluation]  epochs, lr, lr_grid, grid_epochs, time_limit, floor, batch_size, schedule
    [space]       units, operands, unary, binary, decay_operands, annealed_noise, tensor_ops
    [controller]  the chosen controller's settings
    [workers]     count, num_cpus, num_gpus, max_attempts, threads
    [funnel]      baselines, stages (optional: see nos.search.funnel)
    [stopping]    loss_steps, median, margin, min_results (optional: early stopping)

The ``[evaluation]`` values are checked by ``nos.train.settings`` (as ``nos.evaluate``
and ``nos eval`` check them); ``schedule`` is a name, ``"NAME:key=value,..."`` or
a table (``{name = "sgdr", T_0 = 50}``).

Errors name the file and the key (``experiments/x.toml: [search] budget must be
an integer, got 'ten'``).  ``identity()`` is the part that defines a run: a
results directory refuses a config whose identity differs; the number of
workers and the cluster address may change between a run and its resume.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

from nos.train.settings import SettingError, check_evaluation

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULTS: dict[str, dict[str, Any]] = {
    "search": {"controller": "rnn", "budget": 100, "batch": 10, "seed": 0, "cache": True,
               "seconds": 0},
    "task": {"name": "mnist1d"},
    "evaluation": {"epochs": 3.0, "lr": None, "lr_grid": [1e-4, 1e-3, 1e-2, 1e-1, 1.0],
                   "grid_epochs": 1.0, "time_limit": 600.0, "floor": 0.0, "batch_size": None,
                   "schedule": None},
    "space": {},
    "controller": {},
    "workers": {"count": 2, "num_cpus": 1.0, "num_gpus": 0.0, "max_attempts": 3,
                "threads": 1},
}

# expected type of each fixed key; tables with free keys (task, space, controller) are
# checked by their own owners (tasks, SpaceConfig, the controller's settings)
TYPES: dict[str, dict[str, tuple[type, ...]]] = {
    "search": {"controller": (str,), "budget": (int,), "batch": (int,), "seed": (int,),
               "cache": (bool,), "seconds": (int, float)},
    "evaluation": {"epochs": (int, float), "lr": (int, float, type(None)),
                   "lr_grid": (list,), "grid_epochs": (int, float),
                   "time_limit": (int, float, type(None)), "floor": (int, float),
                   "batch_size": (int, type(None)), "schedule": (str, dict, type(None))},
    "workers": {"count": (int,), "num_cpus": (int, float), "num_gpus": (int, float),
                "max_attempts": (int,), "threads": (int,)},
}
OPTIONAL = ("funnel", "stopping")  # tables that are in a config only when given
# may change between a run and its resume
RUNTIME_ONLY = {("workers", "count"), ("search", "seconds")}


class ConfigError(ValueError):
    """A config file or value that cannot be used; the message names file and key."""


def _type_name(types: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             list: "a list", dict: "a table", type(None): "absent"}
    return " or ".join(dict.fromkeys(names[t] for t in types if t is not type(None)))


def validate(data: dict, source: str = "config") -> dict:
    """Defaults filled in and every fixed key type-checked; returns a new dict."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a table at the top level")
    unknown = sorted(set(data) - set(DEFAULTS) - set(OPTIONAL))
    if unknown:
        raise ConfigError(f"{source}: unknown table [{unknown[0]}]; "
                          f"allowed: {', '.join(f'[{t}]' for t in (*DEFAULTS, *OPTIONAL))}")
    config = copy.deepcopy(DEFAULTS)
    for table, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{table}] must be a table")
        config.setdefault(table, {})
        types = TYPES.get(table)
        for key, value in values.items():
            if types is not None:
                if key not in types:
                    raise ConfigError(f"{source}: unknown key '{key}' in [{table}]; "
                                      f"allowed: {', '.join(types)}")
                ok = isinstance(value, types[key]) and not (
                    isinstance(value, bool) and bool not in types[key])
                if not ok:
                    raise ConfigError(f"{source}: [{table}] {key} must be "
                                      f"{_type_name(types[key])}, got {value!r}")
            config[table][key] = value
    _check_values(config, source)
    _check_optional(config, source)
    return config


def _check_optional(config: dict, source: str) -> None:
    from nos.search.funnel import FunnelConfigError, parse_funnel, parse_stopping

    try:
        if "funnel" in config:
            parse_funnel(config["funnel"], config, source)
        if "stopping" in config:
            parse_stopping(config["stopping"], source)
    except FunnelConfigError as err:
        raise ConfigError(str(err)) from None


def _check_values(config: dict, source: str) -> None:
    def need(ok: bool, table: str, key: str, what: str) -> None:
        if not ok:
            raise ConfigError(f"{source}: [{table}] {key} {what}, got {config[table][key]!r}")

    need(config["search"]["budget"] >= 1, "search", "budget", "must be at least 1")
    need(config["search"]["batch"] >= 1, "search", "batch", "must be at least 1")
    need(config["search"]["seconds"] >= 0, "search", "seconds", "must be >= 0 (0: no limit)")
    need(config["workers"]["count"] >= 1, "workers", "count", "must be at least 1")
    need(config["workers"]["max_attempts"] >= 1, "workers", "max_attempts", "must be at least 1")
    need(config["workers"]["num_cpus"] >= 0, "workers", "num_cpus", "must not be negative")
    need(config["workers"]["num_gpus"] >= 0, "workers", "num_gpus", "must not be negative")
    try:
        check_evaluation(config["evaluation"])
    except SettingError as err:
        raise ConfigError(f"{source}: [evaluation] {err}") from None
    if not isinstance(config["task"].get("name"), str):
        raise ConfigError(f"{source}: [task] name must be a string")


def load(path: str | Path) -> dict:
    """Read and validate a TOML config file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    return validate(data, str(path))


def override(config: dict, table: str, key: str, value: Any, source: str = "command line") -> dict:
    if value is None:
        return config
    return validate({**{t: dict(v) for t, v in config.items()},
                     table: {**config[table], key: value}}, source)


def identity(config: dict) -> dict:
    """The config without the settings that may change on resume."""
    ident = copy.deepcopy(config)
    for table, key in RUNTIME_ONLY:
        ident[table].pop(key, None)
    return json.loads(json.dumps(ident, sort_keys=True))
