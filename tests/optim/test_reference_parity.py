"""The named rules of the optimizers people install, against their reference code in float64.

lion_pytorch's Lion and pytorch_optimizer's (4.1.0) Adan, Lamb, LARS, AdaBelief, AdEMAMix
and MARS, keyword for keyword:

1. each class's constructor keywords are the rule's, with the same defaults;
2. defaults and every keyword the rule follows, 100 steps, both executors (every
   combination of the flags behind the slow mark);
3. two param groups with different keywords in one optimizer;
4. ``state_dict()`` saved at step 50 and loaded into a fresh optimizer;
5. the keywords a rule cannot follow, refused in one line naming the keyword and the rule.

The gradients are seeded noise plus a nonlinear term in the parameters, so a difference in
one step shows in the next gradients too.  The error is measured on how far each tensor
moved: max |nos - reference| / max |reference - start|.
"""

from __future__ import annotations

import functools
import inspect
import io
import itertools

import pytest
import torch
from lion_pytorch import Lion
from pytorch_optimizer import LARS, MARS, AdaBelief, Adan, AdEMAMix, Lamb

import nos
from nos.optim.keywords import CHOICES
from tests.optim.conftest import make_params

ORACLES: dict[str, type] = {"lion": Lion, "adan": Adan, "lamb": Lamb, "lars": LARS,
                            "adabelief": AdaBelief, "ademamix": AdEMAMix, "mars": MARS}
STEPS = 100
TOLERANCE = 1e-6  # of the distance each tensor moved, after STEPS float64 steps
SHAPES = [(5, 3), (7,), (2, 3, 4), (), (12, 10)]  # the last: a norm over 10 (LAMB clamps)
EXECUTORS = pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "reference"])
DECAY = {"weight_decay": 0.1}

# name, keywords: defaults, then each keyword the rule follows (the reference classes read
# adanorm, adanorm_r, adam_debias, cautious and stable_adamw from their param groups)
CASES: list[tuple[str, dict]] = [
    ("lion", {}),
    ("lion", {"lr": 1e-3, "betas": (0.8, 0.95), "weight_decay": 0.1, "use_triton": False}),
    ("lion", {"lr": 1e-3, "weight_decay": 0.5, "decoupled_weight_decay": True}),
    ("adan", {}),
    ("adan", {"lr": 1e-2, "betas": (0.9, 0.8, 0.95), "eps": 1e-6, **DECAY}),
    ("adan", {**DECAY, "weight_decouple": True, "max_grad_norm": 0.0, "use_gc": False}),
    ("adan", {"adanorm": True}),
    ("adan", {"adanorm": True, "adanorm_r": 0.5, "lr": 1e-2}),
    ("lamb", {}),
    ("lamb", {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-3, **DECAY}),
    ("lamb", {**DECAY, "weight_decouple": False}),
    ("lamb", {**DECAY, "fixed_decay": True, "max_grad_norm": 5.0, "pre_norm": False}),
    ("lamb", {"rectify": True}),
    ("lamb", {"rectify": True, "degenerated_to_sgd": True, **DECAY}),
    ("lamb", {"rectify": True, "weight_decouple": False, "n_sma_threshold": 8, **DECAY}),
    ("lamb", {"grad_averaging": False, "adam": True}),
    ("lamb", {"adanorm": True, "adanorm_r": None, "adam_debias": True, "maximize": True}),
    ("lars", {}),
    ("lars", {"lr": 0.1, "nesterov": True, "dampening": 0.1, **DECAY}),
    ("lars", {"momentum": 0.0, "trust_coefficient": 0.01, "maximize": True, **DECAY}),
    ("adabelief", {}),
    ("adabelief", {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-4, **DECAY}),
    ("adabelief", {**DECAY, "weight_decouple": False}),
    ("adabelief", {**DECAY, "fixed_decay": True}),
    ("adabelief", {"rectify": True}),
    ("adabelief", {"rectify": True, "degenerated_to_sgd": False, "n_sma_threshold": 8}),
    ("adabelief", {"ams_bound": True, "adam_debias": True}),
    ("adabelief", {"adanorm": True, "adanorm_r": 0.8, "maximize": True}),
    ("ademamix", {}),
    ("ademamix", {"lr": 1e-2, "betas": (0.8, 0.99, 0.999), "eps": 1e-6, "alpha": 8.0, **DECAY}),
    ("ademamix", {"t_alpha_beta3": 50}),
    ("ademamix", {"t_alpha_beta3": None, **DECAY, "weight_decouple": True}),
    ("ademamix", {**DECAY, "weight_decouple": True, "fixed_decay": True}),
    ("ademamix", {"cautious": True, **DECAY}),
    ("ademamix", {"stable_adamw": True, "maximize": True}),
    ("mars", {}),
    ("mars", {"lr": 1e-2, "betas": (0.9, 0.95), "gamma": 0.1, "eps": 1e-6, **DECAY}),
    ("mars", {"mars_type": "lion"}),
    ("mars", {"mars_type": "adamw", "optimize_1d": True, **DECAY}),
    ("mars", {"lr_1d": 1e-3, "betas_1d": (0.8, 0.9), "weight_decay_1d": 0.2}),
    ("mars", {**DECAY, "weight_decouple": False}),
    ("mars", {**DECAY, "fixed_decay": True, "weight_decay_1d": 0.01}),
    ("mars", {"ams_bound": True}),
    ("mars", {"cautious": True, "maximize": True}),
]
CASE_IDS = [f"{name}-{'-'.join(kwargs) or 'defaults'}-{i}"
            for i, (name, kwargs) in enumerate(CASES)]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/optim/conftest.py


# --- the runs -----------------------------------------------------------------------------

def set_grads(params, step: int) -> None:
    """Step ``step``'s gradients: seeded noise plus tanh(w) + 0.1 w."""
    gen = torch.Generator().manual_seed(1000 + step)
    for p in params:
        w = p.detach()
        p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64) + torch.tanh(w) + 0.1 * w


def train(params, opt, start: int = 0, stop: int = STEPS) -> None:
    for step in range(start, stop):
        set_grads(params, step)
        opt.step()


def run(make_opt, shapes=SHAPES) -> list[torch.Tensor]:
    params = make_params(shapes)
    train(params, make_opt(params))
    return [p.detach() for p in params]


def rel_error(got, expected, shapes=SHAPES) -> float:
    start = make_params(shapes)
    return max(((a - b).abs().max() / (b - s.detach()).abs().max()).item()
               for a, b, s in zip(got, expected, start, strict=True))


def reference(name: str, params, kwargs: dict):
    return ORACLES[name](params, **kwargs)


@functools.cache
def oracle_case(index: int) -> list[torch.Tensor]:
    """The reference's parameters after STEPS steps of CASES[index] (shared by both
    executors' tests)."""
    name, kwargs = CASES[index]
    return run(lambda ps: reference(name, ps, kwargs))


# --- 1. the keywords and their defaults ---------------------------------------------------

def _reference_defaults(cls: type) -> dict:
    skip = {"self", "params", "kwargs", "foreach", "maximize"}
    return {key: p.default for key, p in inspect.signature(cls.__init__).parameters.items()
            if key not in skip}


@pytest.mark.parametrize("name", ORACLES)
def test_the_rules_take_the_reference_keywords_with_its_defaults(name):
    group = nos.Optimizer([torch.nn.Parameter(torch.zeros(2, 2))], name).param_groups[0]
    for key, default in _reference_defaults(ORACLES[name]).items():
        if key in CHOICES:  # a name or None: its number
            default = CHOICES[key][default]
        assert key in group, key
        assert group[key] == default, key
    assert nos.baselines()[name].lr == group["lr"]


# --- 2. defaults and every keyword, both executors ----------------------------------------

@EXECUTORS
@pytest.mark.parametrize("index", range(len(CASES)), ids=CASE_IDS)
def test_every_keyword_steps_as_the_reference(index, foreach):
    name, kwargs = CASES[index]
    got = run(lambda ps: nos.Optimizer(ps, name, foreach=foreach, **kwargs))
    assert rel_error(got, oracle_case(index)) < TOLERANCE


# the flags of each rule (with weight decay, so that the decay's flags matter), and the
# choices beside them
FLAGS: dict[str, dict[str, tuple]] = {
    "lion": {"decoupled_weight_decay": (False, True)},
    "adan": {"weight_decouple": (False, True), "adanorm": (False, True)},
    "lamb": {flag: (False, True) for flag in (
        "weight_decouple", "fixed_decay", "rectify", "degenerated_to_sgd", "grad_averaging",
        "adam", "adanorm", "adam_debias")},
    "lars": {"nesterov": (False, True), "momentum": (0.0, 0.9)},
    "adabelief": {flag: (False, True) for flag in (
        "weight_decouple", "fixed_decay", "rectify", "degenerated_to_sgd", "ams_bound",
        "adanorm", "adam_debias")},
    "ademamix": {"weight_decouple": (False, True), "fixed_decay": (False, True),
                 "cautious": (False, True), "stable_adamw": (False, True),
                 "t_alpha_beta3": (None, 40)},
    "mars": {"mars_type": ("adamw", "lion"), "optimize_1d": (False, True),
             "weight_decouple": (False, True), "fixed_decay": (False, True),
             "ams_bound": (False, True), "cautious": (False, True)},
}
COMBINATIONS = [(name, {**DECAY, "lr": 1e-2, **dict(zip(flags, values, strict=True))})
                for name, flags in FLAGS.items()
                for values in itertools.product(*flags.values())]


@pytest.mark.slow
@EXECUTORS
@pytest.mark.parametrize("name,kwargs", COMBINATIONS)
def test_every_combination_of_flags_steps_as_the_reference(name, kwargs, foreach):
    expected = run(lambda ps: reference(name, ps, kwargs))
    got = run(lambda ps: nos.Optimizer(ps, name, foreach=foreach, **kwargs))
    assert rel_error(got, expected) < TOLERANCE


# --- 3. param groups with different keywords ----------------------------------------------

# The reference reads these per group; lion_pytorch's decoupled decay and MARS's lr_1d
# are relative to the constructor's lr, nos's to each group's first lr: the same here,
# where the groups of Lion and MARS keep the constructor's lr.
GROUPS = [  # name, the optimizer's keywords, each group's keywords
    ("lion", {"lr": 1e-3, "decoupled_weight_decay": True},
     [{"weight_decay": 0.5}, {"betas": (0.5, 0.9), "weight_decay": 0.1}]),
    ("adan", {}, [{**DECAY, "adanorm": True}, {"betas": (0.9, 0.9, 0.9), "lr": 1e-2}]),
    ("lamb", {}, [{"rectify": True, **DECAY}, {"adam": True, "lr": 1e-2}]),
    ("lars", {"lr": 0.05}, [{"nesterov": True, **DECAY}, {"momentum": 0.5, "lr": 0.01}]),
    ("adabelief", {}, [{"ams_bound": True, "weight_decouple": False, **DECAY},
                       {"rectify": True, "lr": 1e-2}]),
    ("ademamix", {}, [{"t_alpha_beta3": 30, "cautious": True},
                      {"betas": (0.8, 0.99, 0.999), "alpha": 2.0, "lr": 1e-2}]),
    ("mars", {"lr": 1e-2}, [{"optimize_1d": True, **DECAY},
                            {"mars_type": "lion", "cautious": True, "weight_decay_1d": 0.3}]),
]
GROUP_SHAPES = [*SHAPES, (3, 2)]


def grouped(params: list, groups: list[dict]) -> list[dict]:
    """The parameters dealt round the groups, each with its keywords."""
    return [{"params": params[i::len(groups)], **g} for i, g in enumerate(groups)]


@EXECUTORS
@pytest.mark.parametrize("name,kwargs,groups", GROUPS, ids=[g[0] for g in GROUPS])
def test_param_groups_with_different_keywords_step_as_the_reference(name, kwargs, groups,
                                                                     foreach):
    expected = run(lambda ps: reference(name, grouped(ps, groups), kwargs), GROUP_SHAPES)
    got = run(lambda ps: nos.Optimizer(grouped(ps, groups), name, foreach=foreach, **kwargs),
              GROUP_SHAPES)
    assert rel_error(got, expected, GROUP_SHAPES) < TOLERANCE


# --- 4. state_dict round trips ------------------------------------------------------------

RESUMED = {  # keywords with the most state: AdaNorm's norm averages, the lr kept as a number
    "lion": {"lr": 1e-3, "weight_decay": 0.5, "decoupled_weight_decay": True},
    "adan": {"adanorm": True, **DECAY},
    "lamb": {"adanorm": True, "rectify": True, **DECAY},
    "lars": {"nesterov": True, **DECAY},
    "adabelief": {"ams_bound": True, "adanorm": True, **DECAY},
    "ademamix": {"t_alpha_beta3": 60, "cautious": True, **DECAY},
    "mars": {"ams_bound": True, "lr_1d": 1e-3, **DECAY},
}


def saved_and_loaded(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@EXECUTORS
@pytest.mark.parametrize("name", RESUMED)
def test_a_state_dict_saved_mid_training_resumes_as_the_reference(name, foreach):
    kwargs, half = RESUMED[name], STEPS // 2
    whole = run(lambda ps: nos.Optimizer(ps, name, foreach=foreach, **kwargs))
    params = make_params(SHAPES)
    first = nos.Optimizer(params, name, foreach=foreach, **kwargs)
    train(params, first, stop=half)
    state = saved_and_loaded(first.state_dict())
    del first
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in params]
    second = nos.Optimizer(resumed, name, foreach=foreach, **kwargs)
    second.load_state_dict(state)
    train(resumed, second, start=half)
    got = [p.detach() for p in resumed]
    assert all(torch.equal(a, b) for a, b in zip(got, whole, strict=True))
    expected = run(lambda ps: reference(name, ps, kwargs))
    assert rel_error(got, expected) < TOLERANCE


# --- 5. what the rules refuse -------------------------------------------------------------

W = torch.nn.Parameter(torch.zeros(3, 2, dtype=torch.float64))

REFUSED = [  # rule, keywords, the message's start
    ("adan", {"max_grad_norm": 1.0},
     "Invalid max_grad_norm: 1.0 is not supported for rule adan (clipping by the norm of "
     "all the optimizer's gradients"),
    ("adan", {"use_gc": True}, "Invalid use_gc: True is not supported for rule adan "
                               "(gradient centralization"),
    ("lamb", {"pre_norm": True}, "Invalid pre_norm: True is not supported for rule lamb"),
    ("lion", {"use_triton": True}, "Invalid use_triton: True is not supported for rule lion"),
    ("mars", {"mars_type": "shampoo"},
     "Invalid mars_type: 'shampoo' is not supported for rule mars"),
    ("mars", {"mars_type": "sgd"},
     "Invalid mars_type: 'sgd', must be one of 'adamw', 'lion' for rule mars"),
    ("adan", {"betas": (0.9, 0.99)}, "Invalid betas: (0.9, 0.99), must be a tuple of 3 "
                                     "(beta1, beta2, beta3) for rule adan"),
    ("ademamix", {"t_alpha_beta3": -1}, "Invalid t_alpha_beta3: -1, must be in [0, inf) for rule "
                                        "ademamix"),
    ("lars", {"momentum": 1.0}, "Invalid momentum: 1, must be in [0, 1) for rule lars"),
    ("lion", {"wd": 0.1}, "unknown keyword 'wd' for rule lion;"),
    ("mars", {"betas_1d": (0.9,)}, "Invalid betas_1d: (0.9,), must be a tuple of 2 "
                                   "(beta1_1d, beta2_1d) for rule mars"),
]


def _refusal(make) -> str:
    with pytest.raises(ValueError) as info:
        make()
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name,kwargs,message", REFUSED,
                         ids=[f"{r[0]}-{'-'.join(r[1])}" for r in REFUSED])
def test_what_a_rule_cannot_follow_is_refused_in_one_line(name, kwargs, message):
    assert _refusal(lambda: nos.Optimizer([W], name, **kwargs)).startswith(message)


def test_a_refused_keyword_in_a_later_group_is_refused():
    opt = nos.Optimizer([W], "adan")
    message = _refusal(lambda: opt.add_param_group(
        {"params": [torch.nn.Parameter(torch.zeros(2))], "max_grad_norm": 1.0}))
    assert message.startswith("Invalid max_grad_norm: 1.0 is not supported for rule adan")
