"""nos.Optimizer against torch.optim itself, keyword for keyword, in float64.

1. every input torch's own optimizer tests use (``optim_db``) for the 13 classes nos
   takes by name, 100 steps on both executors;
2. the fused path (two inputs here, all 82 behind the slow mark);
3. param groups with different keywords in one optimizer;
4. ``state_dict()`` round trips mid-training (and torch's state dicts, not loadable yet);
5. every scheduler of ``torch.optim.lr_scheduler`` driving both;
6. bad keywords refused in one line naming the keyword and the rule;
7. the older names (momentum, nesterov, amsgrad, sgdw) step as they did.

The gradients are seeded noise plus a term in the parameters, so that they depend on
the parameters (a difference in one step shows in the next gradients too).
"""

from __future__ import annotations

import io
import re

import pytest
import torch
from torch.optim import lr_scheduler

import nos
from tests.optim.conftest import make_params

NAMES = ("SGD", "Adam", "AdamW", "Adamax", "Adagrad", "Adadelta", "RMSprop", "Rprop", "ASGD",
         "NAdam", "RAdam", "Adafactor", "Muon")
STEPS = 100
TOLERANCE = 1e-6  # max |nos - torch| / max |torch| per tensor, after STEPS float64 steps
SHAPES = [(5, 3), (7,), (2, 3, 4), ()]
MUON_SHAPES = [(5, 3), (4, 6)]  # Muon steps 2-D parameters only: one tall, one wide
EXECUTORS = pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "reference"])


def _torch_inputs() -> list[tuple[type, str, dict]]:
    """(class, description, keywords) of every optim_db input of the classes in NAMES."""
    frozen = torch.backends.flags_frozen()
    from torch.testing._internal.common_optimizers import optim_db

    if not frozen:  # importing torch's test utilities freezes the backend flags: unfreeze
        setattr(torch.backends, "__allow_nonbracketed_mutation_flag", True)
    inputs = []
    for info in optim_db:
        if info.optim_cls.__name__ in NAMES:
            for given in info.optim_inputs_func(device="cpu", dtype=torch.float64):
                assert given.params is None, "an input with its own params"
                inputs.append((info.optim_cls, given.desc, dict(given.kwargs)))
    return inputs


TORCH_INPUTS = _torch_inputs()


def _id(cls: type, desc: str) -> str:
    return f"{cls.__name__}-{re.sub(r'[^A-Za-z0-9]+', '_', desc).strip('_')}"


INPUT_IDS = [_id(cls, desc) for cls, desc, _ in TORCH_INPUTS]


# --- the runs ---------------------------------------------------------------------------

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/optim/conftest.py


def set_grads(params, step: int) -> None:
    """Step ``step``'s gradients: seeded noise plus a term in the parameters."""
    gen = torch.Generator().manual_seed(1000 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64) + 0.1 * p.detach()


def train(params, opt, start: int = 0, stop: int = STEPS) -> None:
    for step in range(start, stop):
        set_grads(params, step)
        opt.step()


def run(make_opt, shapes, steps: int = STEPS) -> list[torch.Tensor]:
    params = make_params(shapes)
    train(params, make_opt(params), stop=steps)
    return [p.detach() for p in params]


def rel_error(got, expected) -> float:
    return max(((a - b).abs().max() / b.abs().max()).item()
               for a, b in zip(got, expected, strict=True))


def fresh(kwargs: dict) -> dict:
    """The keywords with a tensor lr of its own for each optimizer."""
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


def shapes_of(cls: type) -> list:
    return MUON_SHAPES if cls is torch.optim.Muon else SHAPES


def tolerance(cls: type, kwargs: dict) -> float:
    lr = kwargs.get("lr")
    if cls is torch.optim.Muon and isinstance(lr, torch.Tensor) and lr.dtype != torch.float64:
        # torch computes this step's scalars (lr * ratio, 1 - lr * weight_decay) in float32
        # from the float32 lr tensor, nos in float64 from its value; Muon's bfloat16
        # Newton-Schulz then amplifies each last-bit difference (the gradients depend on
        # the parameters). With the same lr as a float64 tensor or a float, nos is
        # bit-identical to torch: test_muon_with_a_tensor_lr.
        return 1e-5
    return TOLERANCE


def torch_and_nos(cls: type, kwargs: dict, **nos_kwargs) -> tuple[list, list]:
    shapes = shapes_of(cls)
    expected = run(lambda ps: cls(ps, **fresh(kwargs)), shapes)
    got = run(lambda ps: nos.Optimizer(ps, cls.__name__.lower(), **fresh(kwargs),
                                       **nos_kwargs), shapes)
    return got, expected


# --- 1. every optim_db input, both executors ----------------------------------------------

def test_the_inputs_are_torchs_82():
    assert len(TORCH_INPUTS) == 82
    assert {cls.__name__ for cls, _, _ in TORCH_INPUTS} == set(NAMES)
    assert len(set(INPUT_IDS)) == len(INPUT_IDS)


@EXECUTORS
@pytest.mark.parametrize("cls,desc,kwargs", TORCH_INPUTS, ids=INPUT_IDS)
def test_every_torch_input_agrees_with_torch(cls, desc, kwargs, foreach):
    got, expected = torch_and_nos(cls, kwargs, foreach=foreach)
    assert rel_error(got, expected) < tolerance(cls, kwargs)


@EXECUTORS
def test_muon_with_a_tensor_lr(foreach):
    """What holds for Muon with a tensor lr: bit-identical to torch with a float64 tensor;
    with a float32 one, bit-identical to torch given the same value in float64 (the
    difference from torch with the float32 tensor is torch's float32 scalars alone)."""
    lr32 = torch.tensor(1e-3, dtype=torch.float32)
    for nos_lr, torch_lr in ((torch.tensor(1e-3, dtype=torch.float64),
                              torch.tensor(1e-3, dtype=torch.float64)),
                             (lr32, lr32.double()), (lr32, float(lr32))):
        expected = run(lambda ps, lr=torch_lr: torch.optim.Muon(ps, lr=fresh({"lr": lr})["lr"]),
                       MUON_SHAPES)
        got = run(lambda ps, lr=nos_lr: nos.Optimizer(ps, "muon", lr=lr.clone(),
                                                      foreach=foreach), MUON_SHAPES)
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    expected = run(lambda ps: torch.optim.Muon(ps, lr=lr32.clone()), MUON_SHAPES)
    got = run(lambda ps: nos.Optimizer(ps, "muon", lr=lr32.clone(), foreach=foreach),
              MUON_SHAPES)
    assert rel_error(got, expected) < 1e-5


# --- 2. the fused path (torch.compile) ----------------------------------------------------

# Compiling is slow (seconds per rule and keyword pattern, a minute for inductor's first
# start on a cold cache): one input in the normal run (tests/optim/test_optimizer.py
# compiles AdamW too), all 82 behind the slow mark.
FUSED_NOW = {"Adam-amsgrad"}


@pytest.mark.parametrize("cls,desc,kwargs", [
    pytest.param(*given, id=i, marks=() if i in FUSED_NOW else pytest.mark.slow)
    for given, i in zip(TORCH_INPUTS, INPUT_IDS, strict=True)])
def test_the_fused_path_agrees_with_torch(cls, desc, kwargs):
    got, expected = torch_and_nos(cls, kwargs, fused=True)
    assert rel_error(got, expected) < tolerance(cls, kwargs)


# --- 3. param groups with different keywords ----------------------------------------------

GROUPS = [  # name, the optimizer's keywords, each group's keywords
    ("adam", {"lr": 1e-2}, [{"amsgrad": True, "weight_decay": 0.1}, {}]),
    ("adam", {"lr": 1e-2, "betas": (0.8, 0.99)},
     [{"decoupled_weight_decay": True, "weight_decay": 0.1, "lr": 3e-3},
      {"maximize": True, "betas": (0.5, 0.9)}]),
    ("sgd", {"lr": 0.05}, [{"momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
                           {"momentum": 0.5, "dampening": 0.3}, {}]),
    ("rmsprop", {"lr": 1e-2}, [{"centered": True, "momentum": 0.5}, {}]),
    ("adamw", {"lr": 1e-2}, [{"amsgrad": True}, {"weight_decay": 0, "lr": 1e-3}]),
    ("nadam", {}, [{"decoupled_weight_decay": True, "weight_decay": 0.1},
                   {"momentum_decay": 0.01}]),
    ("radam", {}, [{"decoupled_weight_decay": True, "weight_decay": 0.1}, {"eps": 1e-6}]),
    ("rprop", {}, [{"etas": (0.3, 1.5), "step_sizes": (1e-4, 1.0)}, {"maximize": True}]),
    # a group's own initial_accumulator_value: test_adagrad_initial_accumulator_value_per_group
    ("adagrad", {"lr": 0.1, "initial_accumulator_value": 0.5},
     [{"lr_decay": 0.1, "weight_decay": 0.1}, {"eps": 1e-3}]),
    ("adadelta", {}, [{"rho": 0.5}, {"weight_decay": 0.1}]),
    ("adamax", {}, [{"betas": (0.5, 0.9)}, {"weight_decay": 0.1, "eps": 1e-3}]),
    ("asgd", {}, [{"t0": 10, "lambd": 0.01}, {"alpha": 0.5}]),
    ("adafactor", {}, [{"eps": (1e-20, 1e-2), "d": 0.5}, {"beta2_decay": -0.5}]),
    ("muon", {}, [{"adjust_lr_fn": "match_rms_adamw", "nesterov": False},
                  {"ns_coefficients": (3.0, -4.0, 2.0), "ns_steps": 3, "momentum": 0.8}]),
]
TORCH_CLASSES = {cls.__name__.lower(): cls for cls, _, _ in TORCH_INPUTS}


def grouped(params: list, groups: list[dict]) -> list[dict]:
    """The parameters dealt round the groups, each with its keywords."""
    return [{"params": params[i::len(groups)], **fresh(g)} for i, g in enumerate(groups)]


@EXECUTORS
@pytest.mark.parametrize("name,kwargs,groups", GROUPS,
                         ids=[f"{g[0]}-{i}" for i, g in enumerate(GROUPS)])
def test_param_groups_with_different_keywords_agree_with_torch(name, kwargs, groups, foreach):
    cls = TORCH_CLASSES[name]
    shapes = [(5, 3), (4, 6), (6, 2), (3, 4)] if name == "muon" else SHAPES + [(3, 2)]
    expected = run(lambda ps: cls(grouped(ps, groups), **fresh(kwargs)), shapes)
    got = run(lambda ps: nos.Optimizer(grouped(ps, groups), name, **fresh(kwargs),
                                       foreach=foreach), shapes)
    assert rel_error(got, expected) < TOLERANCE


def test_adagrad_initial_accumulator_value_per_group():
    """torch.optim.Adagrad fills its sums from the constructor's initial_accumulator_value,
    whatever a group's own says (its groups added later too); nos starts each group from
    the group's value: as torch does with that value in the constructor."""
    groups = [{"initial_accumulator_value": 0.5}]
    ignored = run(lambda ps: torch.optim.Adagrad(grouped(ps, groups), lr=0.1), SHAPES)
    assert all(torch.equal(a, b) for a, b in zip(
        ignored, run(lambda ps: torch.optim.Adagrad(ps, lr=0.1), SHAPES), strict=True))
    expected = run(lambda ps: torch.optim.Adagrad(ps, lr=0.1, initial_accumulator_value=0.5),
                   SHAPES)
    got = run(lambda ps: nos.Optimizer(grouped(ps, groups), "adagrad", lr=0.1), SHAPES)
    assert rel_error(got, expected) < TOLERANCE


def test_a_param_group_added_later_agrees_with_torch():
    def build(make):
        def opt_of(ps):
            opt = make(ps[:2], lr=1e-2)
            opt.add_param_group({"params": ps[2:], "amsgrad": True, "betas": (0.7, 0.9)})
            return opt
        return opt_of

    expected = run(build(torch.optim.Adam), SHAPES)
    got = run(build(lambda ps, **kw: nos.Optimizer(ps, "adam", **kw)), SHAPES)
    assert rel_error(got, expected) < TOLERANCE


# --- 4. state_dict round trips ------------------------------------------------------------

def _richest(cls: type) -> tuple[type, str, dict]:
    """The class's input with the most keywords (a float lr)."""
    inputs = [i for i in TORCH_INPUTS if i[0] is cls
              and not isinstance(i[2].get("lr"), torch.Tensor)]
    return max(inputs, key=lambda i: len(i[2]))


RICHEST = [_richest(cls) for cls in dict.fromkeys(c for c, _, _ in TORCH_INPUTS)]


def saved_and_loaded(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@EXECUTORS
@pytest.mark.parametrize("through", ["state_dict", "torch_save"])
@pytest.mark.parametrize("cls,desc,kwargs", RICHEST,
                         ids=[_id(cls, desc) for cls, desc, _ in RICHEST])
def test_a_state_dict_resumes_bit_identically(cls, desc, kwargs, through, foreach):
    name, shapes = cls.__name__.lower(), shapes_of(cls)
    half = STEPS // 2
    whole = run(lambda ps: nos.Optimizer(ps, name, **kwargs, foreach=foreach), shapes)

    params = make_params(shapes)
    first = nos.Optimizer(params, name, **kwargs, foreach=foreach)
    train(params, first, stop=half)
    state = first.state_dict()
    if through == "torch_save":
        state = saved_and_loaded(state)
    del first
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in params]
    second = nos.Optimizer(resumed, name, **kwargs, foreach=foreach)
    second.load_state_dict(state)
    train(resumed, second, start=half)

    got = [p.detach() for p in resumed]
    assert all(torch.equal(a, b) for a, b in zip(got, whole, strict=True))
    expected = run(lambda ps: cls(ps, **kwargs), shapes)
    assert rel_error(got, expected) < TOLERANCE


# --- 5. torch's state dicts load where the buffers correspond -----------------------------


@pytest.mark.parametrize("name,cls,kwargs", [
    ("adam", torch.optim.Adam, {"lr": 1e-2}),
    ("adam", torch.optim.Adam, {"lr": 1e-2, "amsgrad": True}),
    ("adamw", torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.1}),
    ("sgd", torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
    ("rmsprop", torch.optim.RMSprop, {"lr": 1e-3, "centered": True, "momentum": 0.5}),
    ("adagrad", torch.optim.Adagrad, {"lr": 0.1}),
    ("adadelta", torch.optim.Adadelta, {}),
    ("adamax", torch.optim.Adamax, {}),
    ("nadam", torch.optim.NAdam, {}),
    ("radam", torch.optim.RAdam, {}),
    ("rprop", torch.optim.Rprop, {}),
    ("asgd", torch.optim.ASGD, {}),
    ("adafactor", torch.optim.Adafactor, {}),
])
def test_a_torch_state_dict_loads_where_the_buffers_correspond(name, cls, kwargs):
    expected = run(lambda ps: cls(ps, **kwargs), SHAPES)
    params = make_params(SHAPES)
    reference = cls(params, **kwargs)
    train(params, reference, stop=STEPS // 2)
    opt = nos.Optimizer(params, name, **kwargs)
    opt.load_state_dict(saved_and_loaded(reference.state_dict()))
    train(params, opt, start=STEPS // 2)
    assert rel_error([p.detach() for p in params], expected) < TOLERANCE


# --- 6. every scheduler -------------------------------------------------------------------

SCHEDULERS = {
    "StepLR": lambda o: lr_scheduler.StepLR(o, step_size=10, gamma=0.5),
    "MultiStepLR": lambda o: lr_scheduler.MultiStepLR(o, milestones=[20, 50, 70], gamma=0.3),
    "ConstantLR": lambda o: lr_scheduler.ConstantLR(o, factor=0.5, total_iters=30),
    "LinearLR": lambda o: lr_scheduler.LinearLR(o, start_factor=0.2, total_iters=40),
    "ExponentialLR": lambda o: lr_scheduler.ExponentialLR(o, gamma=0.97),
    "PolynomialLR": lambda o: lr_scheduler.PolynomialLR(o, total_iters=80, power=2.0),
    "CosineAnnealingLR": lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=50, eta_min=1e-4),
    "CosineAnnealingWarmRestarts": lambda o: lr_scheduler.CosineAnnealingWarmRestarts(
        o, T_0=15, T_mult=2, eta_min=1e-4),
    # cycle_momentum (the default) cycles SGD's momentum and Adam's beta1 (betas[0])
    "CyclicLR": lambda o: lr_scheduler.CyclicLR(o, base_lr=1e-3, max_lr=2e-2, step_size_up=10,
                                                mode="triangular2"),
    "CyclicLR-exp_range": lambda o: lr_scheduler.CyclicLR(
        o, base_lr=1e-3, max_lr=2e-2, step_size_up=7, step_size_down=13, mode="exp_range",
        gamma=0.99, base_momentum=0.7, max_momentum=0.95),
    "OneCycleLR": lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=STEPS),
    "OneCycleLR-linear-three_phase": lambda o: lr_scheduler.OneCycleLR(
        o, max_lr=0.05, total_steps=STEPS, anneal_strategy="linear", three_phase=True),
    "LambdaLR": lambda o: lr_scheduler.LambdaLR(o, lambda s: 1 / (1 + 0.05 * s)),
    "MultiplicativeLR": lambda o: lr_scheduler.MultiplicativeLR(o, lambda s: 0.98),
    "SequentialLR": lambda o: lr_scheduler.SequentialLR(
        o, [lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=10),
            lr_scheduler.ExponentialLR(o, gamma=0.95)], milestones=[10]),
    "ChainedScheduler": lambda o: lr_scheduler.ChainedScheduler(
        [lr_scheduler.ConstantLR(o, factor=0.5, total_iters=20),
         lr_scheduler.ExponentialLR(o, gamma=0.98)], optimizer=o),
    "ReduceLROnPlateau": lambda o: lr_scheduler.ReduceLROnPlateau(o, factor=0.5, patience=8,
                                                                  cooldown=4),
}
# ReduceLROnPlateau's metric: falls for 30 steps, then plateaus (with small bumps): the lr
# halves five times
METRICS = [1.0 / (1 + s) if s < 30 else 0.04 + 0.01 * (s % 7 == 0) for s in range(STEPS)]
SCHEDULED = {  # name, torch class, keywords
    "sgd-momentum": ("sgd", torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
    "adam": ("adam", torch.optim.Adam, {"lr": 1e-2}),
}


def test_every_scheduler_of_torch_is_here():
    classes = {name for name in lr_scheduler.__all__
               if isinstance(getattr(lr_scheduler, name), type) and name != "LRScheduler"}
    assert classes == {name.split("-")[0] for name in SCHEDULERS}


def _scheduled_run(make_opt, make_sched):
    """The parameters at the end, and the scheduled values of the groups at every step."""
    params = make_params(SHAPES)
    opt = make_opt(params)
    sched = make_sched(opt)
    plateau = isinstance(sched, lr_scheduler.ReduceLROnPlateau)
    watched = ("lr", "momentum", "betas")
    groups = []
    for step in range(STEPS):
        train(params, opt, step, step + 1)
        sched.step(*([METRICS[step]] if plateau else []))
        groups.append([{k: g[k] for k in watched if k in g} for g in opt.param_groups])
    return [p.detach() for p in params], groups


@pytest.mark.parametrize("optimizer", SCHEDULED)
@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_a_scheduler_drives_nos_as_it_drives_torch(scheduler, optimizer):
    name, cls, kwargs = SCHEDULED[optimizer]
    make_sched = SCHEDULERS[scheduler]
    expected, torch_groups = _scheduled_run(lambda ps: cls(ps, **kwargs), make_sched)
    got, groups = _scheduled_run(lambda ps: nos.Optimizer(ps, name, **kwargs), make_sched)
    assert len({str(g) for g in torch_groups}) > 1  # the scheduler changes something
    assert groups == torch_groups
    assert rel_error(got, expected) < TOLERANCE


# --- 7. bad input: one line naming the keyword and the rule -----------------------------

W = torch.nn.Parameter(torch.zeros(3, 2, dtype=torch.float64))
V = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))

BAD = [  # rule, keywords, the message's start
    ("adam", {"bogus": 1}, "unknown keyword 'bogus' for rule adam;"),
    ("adam", {"betas": (0.9, 1.5)}, "Invalid beta2: 1.5, must be in [0, 1) for rule adam"),
    ("adam", {"lr": -1}, "Invalid lr: -1, must be >= 0 for rule adam"),
    ("sgd", {"lr": -1}, "Invalid lr: -1, must be >= 0 for rule sgd"),
    ("rprop", {"etas": (1.5, 1.2)}, "Invalid etaminus: 1.5, must be in (0, 1) for rule rprop"),
    ("adam", {"betas": (0.9,)}, "Invalid betas: (0.9,), must be a tuple of 2 (beta1, beta2) "
                                "for rule adam"),
    ("muon", {"ns_coefficients": (1, 2)}, "Invalid ns_coefficients: (1, 2), must be a tuple "
                                          "of 3 (ns_a, ns_b, ns_c) for rule muon"),
    ("adam", {"capturable": True}, "Invalid capturable: True is not supported for rule adam"),
    ("sgd", {"differentiable": True},
     "Invalid differentiable: True is not supported for rule sgd"),
    ("sgd", {"nesterov": True}, "Invalid nesterov: True, Nesterov momentum requires a "
                                "momentum and zero dampening for rule sgd"),
    ("sgd", {"nesterov": True, "momentum": 0.9, "dampening": 0.1},
     "Invalid nesterov: True, Nesterov momentum requires a momentum and zero dampening for "
     "rule sgd"),
    ("muon", {"adjust_lr_fn": "bogus"}, "Invalid adjust_lr_fn: 'bogus', must be one of None, "
                                        "'original', 'match_rms_adamw' for rule muon"),
    ("muon", {"ns_steps": 2.5}, "Invalid ns_steps: 2.5, must be a whole number for rule muon"),
    ("adafactor", {"eps": (None,)}, "Invalid eps: (None,), must be a tuple of 2 (eps1, eps2) "
                                    "for rule adafactor"),
    ("adam", {"betas": (0.9, 0.99), "beta1": 0.8}, "give betas or beta1, beta2, not both"),
]


def _refusal(make) -> str:
    with pytest.raises(ValueError) as info:
        make()
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name,kwargs,message", BAD,
                         ids=[f"{b[0]}-{'-'.join(b[1])}" for b in BAD])
def test_bad_keywords_are_refused_in_one_line(name, kwargs, message):
    assert _refusal(lambda: nos.Optimizer([W], name, **kwargs)).startswith(message)


def test_a_bad_keyword_in_a_later_group_is_refused():
    opt = nos.Optimizer([W], "adam")
    message = _refusal(lambda: opt.add_param_group({"params": [V], "betas": (0.9, 2)}))
    assert message == "Invalid beta2: 2, must be in [0, 1) for rule adam"


@pytest.mark.parametrize("params,where", [
    ([W, V], "parameter 1 of group 0 has shape (4,)"),
    ([{"params": [W]}, {"params": [V], "lr": 0.1}], "parameter 0 of group 1 has shape (4,)"),
], ids=["one-group", "second-group"])
def test_muon_refuses_a_1d_parameter_naming_it_and_its_shape(params, where):
    message = _refusal(lambda: nos.Optimizer(params, "muon"))
    assert "newton_schulz needs 2-D parameters" in message
    assert message.endswith(f"{where} (rule muon)")


def test_a_negative_tensor_lr_is_refused_naming_the_rule():
    message = _refusal(lambda: nos.Optimizer([W], "adam", lr=torch.tensor(-1.0)))
    assert message == "Invalid lr: -1.0, must be >= 0 for rule adam"


# --- 8. the older names ------------------------------------------------------------------

@EXECUTORS
@pytest.mark.parametrize("name,kwargs,cls,torch_kwargs", [
    ("momentum", {}, torch.optim.SGD, {"momentum": 0.9}),
    ("momentum", {"momentum": 0.5, "wd": 0.1}, torch.optim.SGD,
     {"momentum": 0.5, "weight_decay": 0.1}),
    ("nesterov", {}, torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    ("nesterov", {"momentum": 0.7, "wd": 0.1}, torch.optim.SGD,
     {"momentum": 0.7, "nesterov": True, "weight_decay": 0.1}),
    ("amsgrad", {}, torch.optim.Adam, {"amsgrad": True}),
    ("amsgrad", {"beta1": 0.5, "beta2": 0.9, "eps": 1e-5, "wd": 0.1}, torch.optim.Adam,
     {"amsgrad": True, "betas": (0.5, 0.9), "eps": 1e-5, "weight_decay": 0.1}),
], ids=["momentum", "momentum-wd", "nesterov", "nesterov-wd", "amsgrad", "amsgrad-keywords"])
def test_the_older_names_step_as_torch(name, kwargs, cls, torch_kwargs, foreach):
    lr = nos.baselines()[name].lr
    expected = run(lambda ps: cls(ps, lr=lr, **torch_kwargs), SHAPES)
    got = run(lambda ps: nos.Optimizer(ps, name, foreach=foreach, **kwargs), SHAPES)
    assert rel_error(got, expected) < TOLERANCE


@EXECUTORS
def test_sgdw_steps_as_its_formula(foreach):
    """buf <- 0.9 buf + g; w <- w - lr (buf + 1e-4 w), the decay outside the momentum."""
    params = make_params(SHAPES)
    expected = [p.detach().clone() for p in params]
    bufs = [torch.zeros_like(p) for p in expected]
    for step in range(STEPS):
        set_grads(expected, step)
        for w, buf in zip(expected, bufs, strict=True):
            buf.mul_(0.9).add_(w.grad)
            w.sub_(1e-2 * (buf + 1e-4 * w))
    train(params, nos.Optimizer(params, "sgdw", foreach=foreach))
    assert nos.baselines()["sgdw"].lr == 1e-2
    assert rel_error([p.detach() for p in params], expected) < 1e-12
