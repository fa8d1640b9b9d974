"""The reference optimizers' keywords on nos rules: what a keyword means for a rule's params.

A rule's params are its keywords (``weight_decay=0.1``, ``amsgrad=True``); this
module adds only what a param cannot say by itself:

- tuples that stand for several params (``betas=(beta1, beta2)``, or
  ``(beta1, beta2, beta3)`` where the rule has all three, as Adan and AdEMAMix;
  ``etas``, ``step_sizes``, ``ns_coefficients``, Adafactor's ``eps=(eps1, eps2)``,
  MARS's ``betas_1d``), kept in a param group beside their parts (writing either
  writes the other);
- values that are not numbers: ``None`` in Adafactor's ``eps`` (the dtype's
  machine epsilon, the rule's ``eps1 = 0``), Muon's ``adjust_lr_fn`` and MARS's
  ``mars_type`` names, AdEMAMix's ``t_alpha_beta3=None`` (no warm-up, the rule's 0);
- whole numbers (``ns_steps``) and the checks torch makes across keywords
  (SGD's nesterov needs momentum and no dampening);
- the reference keywords a named rule takes but cannot follow (Adan's global
  gradient clipping): only their default is accepted, anything else is refused
  saying why.

Every refusal is one line naming the keyword and the rule.
"""

from __future__ import annotations

import math
from typing import Any

import torch

# keyword -> the params it stands for, in order (``betas``: as many as the rule declares)
TUPLES: dict[str, tuple[str, ...]] = {
    "betas": ("beta1", "beta2", "beta3"),
    "etas": ("etaminus", "etaplus"),
    "step_sizes": ("step_size_min", "step_size_max"),
    "ns_coefficients": ("ns_a", "ns_b", "ns_c"),
    "eps": ("eps1", "eps2"),
    "betas_1d": ("beta1_1d", "beta2_1d"),
}
NONE_MEANS: dict[str, float] = {"eps1": 0.0}  # Adafactor: None is the dtype's epsilon
CHOICES: dict[str, dict[Any, float]] = {
    "adjust_lr_fn": {None: 0.0, "original": 0.0, "match_rms_adamw": 1.0},
    "mars_type": {"adamw": 0.0, "lion": 1.0},
    "t_alpha_beta3": {None: 0.0},  # AdEMAMix: no warm-up
    "adanorm_r": {None: 0.95},  # pytorch_optimizer's AdaNorm: None is 0.95
    "beta3": {None: -1.0},  # Prodigy: None is sqrt(beta2)
    "clip_thresh": {None: 0.0},  # YellowFin: no clipping
    "auto_clip_fac": {None: 0.0},
}
WHOLE = frozenset({"ns_steps"})

# (rule, keyword) -> why the named rule cannot follow the reference there: the keyword is
# a param of the rule with its default the only value accepted.  (rule, keyword, value)
# for a named choice the rule cannot take.
_GLOBAL_NORM = ("clipping by the norm of all the optimizer's gradients is not written in this "
                "rule (the language's clip_gnorm could: prodigy and yellowfin read every "
                "parameter)")
_WINDOW = "the window of running extrema is 20 steps long in the rule's text"
REFUSED: dict[tuple, str] = {
    ("prodigy", "fsdp_in_use"): "nos reduces over every parameter it steps itself; a "
                                "sharded model's other shards are not among them",
    ("prodigy", "slice_p"): "the estimate reads every element (slice_p=1)",
    ("yellowfin", "curv_win_width"): _WINDOW,
    ("yellowfin", "sparsity_debias"): "its sparsity statistic is not part of the rule",
    ("yellowfin", "force_non_inc_step"): "its non-increasing step is not part of the rule",
    ("lion", "use_triton"): "a Triton kernel of the same step; nos has its own executors "
                            "(foreach, fused)",
    ("adan", "max_grad_norm"): _GLOBAL_NORM,
    ("adan", "use_gc"): "gradient centralization subtracts the mean over every dimension "
                        "but the first, which the language's reductions (the whole tensor, "
                        "its last or second-to-last dimension) give only up to 3-D",
    ("lamb", "pre_norm"): _GLOBAL_NORM,
    ("mars", "mars_type", "shampoo"): "a rule with newton_schulz steps 2-D parameters only, "
                                      "and MARS steps the 1-D ones as AdamW and views "
                                      "those of 3-D and up as matrices",
}

# torch.optim's state names for the buffers of the rules named after its classes, so that
# a torch optimizer's state_dict loads into nos where the buffers correspond.
TORCH_STATE: dict[str, dict[str, str]] = {
    "sgd": {"momentum_buffer": "buf"},
    "adam": {"exp_avg": "m", "exp_avg_sq": "v", "max_exp_avg_sq": "vmax"},
    "adamw": {"exp_avg": "m", "exp_avg_sq": "v", "max_exp_avg_sq": "vmax"},
    "amsgrad": {"exp_avg": "m", "exp_avg_sq": "v", "max_exp_avg_sq": "vmax"},
    "adamax": {"exp_avg": "m", "exp_inf": "u"},
    "adagrad": {"sum": "acc"},
    "adadelta": {"square_avg": "sq", "acc_delta": "acc"},
    "rmsprop": {"square_avg": "sq", "grad_avg": "grad_avg", "momentum_buffer": "buf"},
    "rprop": {"prev": "prev", "step_size": "size"},
    "nadam": {"exp_avg": "m", "exp_avg_sq": "v", "mu_product": "mu_product"},
    "radam": {"exp_avg": "m", "exp_avg_sq": "v"},
    "adafactor": {"row_var": "row", "col_var": "col", "variance": "row"},
    "muon": {"momentum_buffer": "buf"},
    "momentum": {"momentum_buffer": "buf"},
    "nesterov": {"momentum_buffer": "buf"},
}
# What torch keeps that changes no parameter (ASGD's eta, mu and average ax).
TORCH_IGNORED = frozenset({"eta", "mu", "ax"})


# Params that are keywords of their own in a rule's reference, outside its tuple.
OWN_KEYWORD = {("prodigy", "beta3")}  # Prodigy(betas=(beta1, beta2), beta3=None)


def tuple_keywords(declared: set[str] | dict, rule: str = "") -> dict[str, tuple[str, ...]]:
    """The tuple keywords a rule with these params takes: all parts declared, and the
    keyword not itself a param (``eps`` is Adafactor's pair only where there is no eps).
    ``betas`` stands for the longest run of ``beta1, beta2, beta3`` the rule declares
    (a lone ``beta1`` too), short of a part that is its own keyword in ``rule``."""
    found = {}
    for key, names in TUPLES.items():
        if key in declared:
            continue
        if key == "betas":
            count = next((i for i, name in enumerate(names) if name not in declared
                          or (rule, name) in OWN_KEYWORD), len(names))
            parts = names[:count]
        else:
            parts = names if all(name in declared for name in names) else ()
        if parts:
            found[key] = parts
    return found


def number(value: Any) -> Any:
    """A one-element tensor as a float; other values as they are."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    return value


class KeywordError(ValueError):
    """A keyword a rule does not take, or a value it cannot have (one line)."""


def split_tuples(group: dict, tuples: dict[str, tuple[str, ...]], rule: str) -> None:
    """Replace each tuple keyword in ``group`` by its parts, checked."""
    for key, names in tuples.items():
        if key not in group:
            continue
        value = group.pop(key)
        if not isinstance(value, (tuple, list)) or len(value) != len(names):
            raise KeywordError(
                f"Invalid {key}: {value!r}, must be a tuple of {len(names)} "
                f"({', '.join(names)}) for rule {rule}")
        given = [name for name in names if name in group]
        if given:
            raise KeywordError(f"give {key} or {', '.join(names)}, not both "
                               f"(got {key} and {given[0]}) for rule {rule}")
        for name, part in zip(names, value, strict=True):
            part = number(part)
            if part is None and name in NONE_MEANS:
                part = NONE_MEANS[name]
            group[name] = part


def translate(group: dict, rule: str) -> None:
    """Named choices become their numbers, in place."""
    for key, choices in CHOICES.items():
        value = group.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            why = REFUSED.get((rule, key, value)) if isinstance(value, str) else None
            if why:
                raise KeywordError(f"Invalid {key}: {value!r} is not supported for rule "
                                   f"{rule} ({why})")
            if value not in choices:
                names = ", ".join(repr(c) for c in choices)
                raise KeywordError(f"Invalid {key}: {value!r}, must be one of {names} "
                                   f"for rule {rule}")
            group[key] = choices[value]


def check_value(name: str, value: Any, bounds, rule: str) -> None:
    from nos.lang.printer import bounds_text, format_number

    why = REFUSED.get((rule, name))  # the param's bounds hold the one value accepted
    if why and (value not in bounds if isinstance(value, (int, float)) and bounds is not None
                else value):
        raise KeywordError(f"Invalid {name}: {value!r} is not supported for rule {rule} "
                           f"({why})")
    if isinstance(value, bool):
        value = float(value)
    if not isinstance(value, (int, float)):
        raise KeywordError(f"Invalid {name}: {value!r}, must be a number for rule {rule}")
    if bounds is not None and value not in bounds:
        raise KeywordError(f"Invalid {name}: {format_number(float(value))}, "
                           f"must be in {bounds_text(bounds)} for rule {rule}")
    if name in WHOLE and value != math.floor(value):
        raise KeywordError(f"Invalid {name}: {value!r}, must be a whole number for rule {rule}")


def check_group(group: dict, rule: str) -> None:
    """torch's checks across keywords (SGD's; LARS, with the same keywords, makes none)."""
    if rule != "lars" and group.get("nesterov") and "dampening" in group and (
            group.get("momentum", 0) <= 0 or group["dampening"] != 0):
        raise KeywordError(f"Invalid nesterov: True, Nesterov momentum requires a momentum "
                           f"and zero dampening for rule {rule}")


def variant(rule, options: dict[str, Any], name: str):
    """The rule that ``options`` (keywords, as for nos.Optimizer) make of ``rule``: the
    params given take their values as defaults, and each ``where`` the switches decide is
    replaced by its branch, with what only the other branch read (``nos parse adam --param
    amsgrad=true`` prints AMSGrad)."""
    from dataclasses import replace

    from nos.compile.compiler import specialise, switches
    from nos.lang.rule import Rule
    from nos.lang.tree import live_statements

    statements = rule.expanded().statements
    declared = {s.name: s for s in statements if s.kind == "param"}
    given = dict(options)
    unknown = sorted(set(given) - set(declared) - set(tuple_keywords(declared, name)))
    if unknown:
        raise KeywordError(f"unknown keyword {unknown[0]!r} for rule {name}; its params: "
                           f"{', '.join(sorted(declared)) or 'none'}")
    split_tuples(given, tuple_keywords(declared, name), name)
    translate(given, name)
    for key, value in given.items():
        given[key] = number(value)
        check_value(key, given[key], declared[key].bounds, name)
    values = {key: float(s.default) for key, s in declared.items()}  # type: ignore[arg-type]
    values.update({key: float(value) for key, value in given.items()})
    decided = {key: values[key] for key in switches(rule) if key in values}
    statements = tuple(replace(s, default=values[s.name]) if s.name in given else s
                       for s in statements)
    folded = live_statements(specialise(statements, decided))
    own = {s.name for s in rule.statements}
    return Rule(tuple(s for s in folded if s.name in own or s.kind == "update"
                      or s.name in given))
