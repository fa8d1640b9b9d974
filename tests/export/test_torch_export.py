"""``nos export --torch``: the written module, imported on its own from its file, steps as
nos.Optimizer does.

One harness (``run_both``) drives every case: four float64 tensors in two param groups
(a matrix and a 0-d tensor with the optimizer's keywords; a vector and a 3-d tensor with
their own lr and every param of the rule at another valid value), 100 steps of N(0, s^2)
gradients fed to both optimizers (s in 0.01, 1, 100 by case), the vector without a
gradient at one step in seven (it falls behind: its own step number, its own bucket);
halfway the exported optimizer is replaced by a new one loaded from its state dict (saved
with ``torch.save``, read with ``torch.load(weights_only=True)``).  Every parameter is
compared after every step and every buffer at the end (tests/export/helpers.py: scaled
error under 1e-10).  Random rules run seeded: the export draws nos.Optimizer's samples.

Cases: every named rule (a rule of 2-D parameters, muon, on four matrices); rules that pin
down the semantics (IEEE scalars, sign of nan, pow at -0 and -inf, the floored modulo of
rd, buffers that copy one another, the regressions the differential tests found) on
gradients with zeros, infinities and nans; the rules of the language's later constructs
(helpers.CONSTRUCTS: comparisons, where, lerp, reductions, rows and columns,
newton_schulz, lr and the tensor facts, switches, number buffers; 40 steps, and at every
scale for 100 behind the slow mark); the later constructs (helpers.LATER: reductions over
every parameter of both groups, w = expr, from values, the shorthand; 40 steps); views
(eval() and train() against nos.Optimizer's, a step refused in between, a state dict
saved in the evaluation view); maximize; 40 random rules of the search space in
the normal run and 200 behind the slow mark, and 12 (200) of the space with the tensor
constructs (the slow ones to TOLERANCE or, for a rule that multiplies a rounding, as
nos.Optimizer agrees with itself: check_conditioned).  Buffers compare by type (a number
buffer is a float in both) and shape.
"""

from __future__ import annotations

import ast
import inspect
import io
import math
import textwrap

import numpy as np
import pytest
import torch

import nos
from nos.export.plan import ExportError
from nos.export.torch_module import torch_source
from tests.export.helpers import (
    CONSTRUCTS,
    LATER,
    TENSOR_SPACES,
    check_agree,
    gradient,
    load_module,
    other_values,
    space_rules,
)

STEPS = 100  # halfway the exported optimizer is reloaded from its state dict
TOTAL_STEPS = 60  # below STEPS, so the schedules' s is clamped to T at the end
SHAPES = (((3, 4), ()), ((5,), (2, 1, 3)))  # two param groups
MATRICES = (((3, 4), (4, 2)), ((5, 3), (2, 2)))  # for rules of 2-D parameters (newton_schulz)
SKIPPING = 2  # the vector: no gradient at one step in seven
SCALES = (1.0, 0.01, 100.0)
BASELINES = list(nos.baselines())
RANDOM_RULES = space_rules(200)
TENSOR_RULES = space_rules(200, seed=5, spaces=TENSOR_SPACES)  # with the tensor constructs

# Rules that pin down the language's semantics (run on gradients with special values).
# The constructs beyond the search space's (tests/export/helpers.py), and what only the torch
# export takes: a reduction of what a switch may leave a number; newton_schulz in float32
# (the same torch operations as nos.Optimizer's, so the same roundings; bfloat16 is muon's,
# a named rule).
TORCH_CONSTRUCTS = CONSTRUCTS + [
    "param flag = 0 in [0, 1]\nlet x = where(flag, g, 2)\n"
    "update = sum(x) * g + norm(x) + rowmean(x)",
    "newton_schulz(m, 3.4445, -4.775, 2.0315, 5, 1e-7, 32)",
]
CONSTRUCT_STEPS = 40

SEMANTICS = [
    "sign(log(g))",  # torch.sign(nan) is 0; the language's is nan
    "g + 0 * log(g - g)",  # 0 * nan is nan, not 0
    "clip((-(g - g))^(-0.5), 1)",  # pow(-0, -0.5) is +inf (rsqrt gives -inf)
    "min(log(0 * g)^0.5, 1) + g",  # pow(-inf, 0.5) is +inf (sqrt gives nan)
    "g^0.5 + g^(-0.5) + g^3 + g^(-1) + g^0 + abs(g)^1.5 + 2^g",
    "rd(-1) * g + rd(3) * g + cd(0.5) * g + cd(t) * g + ld * g",  # rd's floored modulo
    # scalars: IEEE results where Python's float maths raises
    "clip(0^(0 - 1), 2) * g + min(exp(1000), 3) * g + max(log(0), -1) * g"
    " + clip((0 - 10)^401, 2) * g + sign(1 / 0) * g + sign((0 - 1) / 0) * g + exp(-(1 / 0)) * g",
    "g + (0 - 8)^(1 / 3)",  # nan, not a complex number
    "g + max(sqrt(0 - 4), 1)",  # max propagates nan
    "g + clip(1, 0 / 0) * log(0 - 1)",
    "max(0 / 0, g)",
    "max(g, w) + min(g, 1) + max(2, g) + clip(g, abs(w)) + clip(3, 1) * g + clip(g, 0 - 1)",
    # regressions the differential tests found in the compiler (tests/compile)
    "state s = 0.1 * s + 0.9 * exp(exp(g))\nupdate = min(s, 1)",
    "state s = clip(s + g, s + g)\nupdate = s + 2 * (g - 1) + 3 * (g - 1)",
    "param beta = 0.9\nstate m = beta * m + (1 - beta) * g\nupdate = m - p\nstate p = m",
    "update = s0 + w\nstate s1 = w\nstate s0 = s1",
    # buffers that copy a tensor or take a scalar, scalar updates
    "let a = g\nstate s = a\nstate c = s\nstate one = 1\nupdate = s + c * one + w",
    "update = t + T",
    "state n = n + 1\nupdate = n * g",
    # random: the same samples as nos.Optimizer
    "drop(g, 0) + drop(g, 1) + drop(g, 2) + drop(g, 0.3 * ld) + drop(3, 0.5)",
    "annealed_noise * g + noise + drop(noise, 0.5) + clip(drop(m_hat, t / 10), 1)",
    # names that are Python keywords, builtins or the generated code's own
    "param lambda = 0.5 in [0, 1]\nparam torch = 2\nparam self = 1\nlet _pow = g * lambda\n"
    "state group = group + drop(_pow, 0.2) + noise\nupdate = group * torch * cd(1) + self",
    "adam + rmsprop + gamma_hat + m_hat * v_hat",
]


def exported_class(rule: str, folder, stem: str) -> type:
    return load_module(torch_source(rule, name="Exported"), folder, stem).Exported


def keywords(rule: nos.Rule, lr: float = 0.01) -> dict:
    kwargs: dict = {"lr": lr}
    if rule.needs_total_steps:
        kwargs["total_steps"] = TOTAL_STEPS
    if rule.is_random:
        kwargs["seed"] = 7
    return kwargs


def reloaded(opt: torch.optim.Optimizer, cls: type, groups: list, kwargs: dict):
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    fresh = cls(groups, **kwargs)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    return fresh


def run_both(rule: str, cls: type, kwargs: dict, group1: dict, scale: float = 1.0,
             special: bool = False, steps: int = STEPS, seed: int = 0,
             shapes: tuple = SHAPES, tolerance: float | None = None,
             perturb: float = 0.0) -> float:
    """Steps nos.Optimizer and the exported class side by side (module docstring); returns
    the largest scaled error (at most ``tolerance``, else helpers.TOLERANCE).  ``perturb``
    moves each element of the class's start and gradients by about that many parts (see
    check_conditioned)."""
    rng = np.random.default_rng(seed)
    start = [[rng.standard_normal(shape) for shape in group] for group in shapes]
    jitter = np.random.default_rng(seed + 1)  # for perturb: elements moved independently

    def moved(x: np.ndarray) -> np.ndarray:
        return x * (1.0 + perturb * jitter.standard_normal(np.shape(x))) if perturb else x

    def tensors(move=lambda x: x):
        return [[torch.tensor(move(x), requires_grad=True) for x in group] for group in start]

    def groups(params):
        return [{"params": params[0]}, {"params": params[1], **group1}]

    ours, theirs = tensors(moved), tensors()
    reference = nos.Optimizer(groups(theirs), rule, **kwargs)
    exported = cls(groups(ours), **kwargs)
    flat_ours, flat_theirs = sum(ours, []), sum(theirs, [])
    largest = [np.abs(x) for group in start for x in group]
    worst = 0.0
    for k in range(steps):
        if k == steps // 2:
            exported = reloaded(exported, cls, groups(ours), kwargs)
        for i, (a, b) in enumerate(zip(flat_ours, flat_theirs)):
            if i == SKIPPING and k % 7 == 3:
                a.grad = b.grad = None
                continue
            g = gradient(rng, tuple(a.shape), scale, special)
            a.grad, b.grad = torch.tensor(moved(g)), torch.tensor(g)
        reference.step()
        exported.step()
        for i, (a, b) in enumerate(zip(flat_ours, flat_theirs)):
            expected = b.detach().numpy()
            largest[i] = np.fmax(largest[i], np.abs(expected))
            worst = max(worst, check_agree(a.detach().numpy(), expected, largest[i],
                                           f"{rule!r}, step {k + 1}, tensor {i}", tolerance))
    for a, b in zip(flat_ours, flat_theirs):
        mine, theirs_state = exported.state[a], reference.state[b]
        assert set(mine) == set(theirs_state), (rule, set(mine), set(theirs_state))
        assert int(mine["step"]) == theirs_state["step"]
        for name in set(mine) - {"step"}:
            # a number nos keeps per tensor (state n = n + 1) is a float in both; a tensor
            # buffer has nos's shape (a buffer of rows or columns: the 2-D view's), except
            # where nos made it for a program that does not read rows or columns (a switch
            # turned rowmean off): (1,) for a vector, where the export keeps (n, 1) zeros;
            # and nos keeps a full buffer of a rule that reads rows or columns in the 2-D
            # view's shape ((n, 1) for a vector), the export in the parameter's
            actual, expected = mine[name], theirs_state[name]
            assert type(actual) is type(expected), (rule, name, actual, expected)
            if isinstance(expected, torch.Tensor) and actual.shape != expected.shape:
                view = {0: (1, 1), 1: (actual.numel(), 1)}.get(actual.dim(), actual.shape)
                if expected.shape == view:
                    expected = expected.reshape(actual.shape)
                else:
                    assert torch.broadcast_shapes(actual.shape, expected.shape) == \
                        actual.shape and not expected.any(), (rule, name, actual.shape,
                                                              expected.shape)
            actual, expected = np.asarray(actual), np.asarray(expected)
            finite = expected[np.isfinite(expected)]
            scale = np.abs(finite).max() if finite.size else 0.0
            worst = max(worst, check_agree(actual, expected, scale, f"{rule!r}, buffer {name}"))
    return worst


def check_rule(rule: str, tmp_path, index: int, special: bool = False, steps: int = STEPS,
               scale: float | None = None, tolerance: float | None = None,
               perturb: float = 0.0) -> float:
    """run_both for the exported class (or, with ``perturb``, nos.Optimizer itself)."""
    parsed = nos.parse(nos.baselines()[rule].text) if rule in nos.baselines() else nos.parse(rule)
    if perturb:
        def cls(params, **kwargs):
            return nos.Optimizer(params, rule, **kwargs)
    else:
        cls = exported_class(rule, tmp_path, f"rule{index}")
    matrix = "newton_schulz" in parsed.expanded().functions
    return run_both(rule, cls, keywords(parsed), {"lr": 0.005, **other_values(parsed)},
                    scale=SCALES[index % len(SCALES)] if scale is None else scale,
                    special=special, seed=index, steps=steps,
                    shapes=MATRICES if matrix else SHAPES, tolerance=tolerance,
                    perturb=perturb)


def check_conditioned(rule: str, tmp_path, index: int, special: bool = False) -> float:
    """check_rule, or, where the export parts from nos.Optimizer by more than TOLERANCE, by
    no more than 100 times nos.Optimizer parts from itself with each element of its start
    and gradients moved by about 1e-15 parts: a rule may multiply a rounding (dividing by a
    sum that cancels,
    ``drop(1e-4 * w, 0.3) * norm(drop(rms(g), 0.3)) / (norm(drop(1e-4 * w, 0.3)) + 1e-8)``
    parts by 9e-8 from the export and 3e-8 from itself)."""
    try:
        return check_rule(rule, tmp_path, index, special=special)
    except AssertionError as failure:
        if "scaled error" not in str(failure):
            raise
    worst = check_rule(rule, tmp_path, index, special=special, tolerance=math.inf)
    try:
        drift = check_rule(rule, tmp_path, index, special=special, tolerance=math.inf,
                           perturb=1e-15)
    except AssertionError:  # nos.Optimizer itself finite in one run and not the other
        drift = math.inf
    assert worst <= 100 * drift, f"{rule!r}: scaled error {worst:.3g}, nos itself {drift:.3g}"
    return worst


@pytest.mark.parametrize("name", BASELINES)
def test_every_named_rule_steps_as_nos_optimizer(name, tmp_path):
    # muon's bfloat16 matrix products are slow on a CPU: fewer steps
    check_rule(name, tmp_path, BASELINES.index(name), steps=40 if name == "muon" else STEPS)


@pytest.mark.parametrize("rule", SEMANTICS, ids=range(len(SEMANTICS)))
def test_the_semantics_hold_on_special_values(rule, tmp_path):
    check_rule(rule, tmp_path, SEMANTICS.index(rule), special=True)


@pytest.mark.parametrize("index", range(len(TORCH_CONSTRUCTS)))
def test_the_new_constructs_hold_on_special_values(index, tmp_path):
    check_rule(TORCH_CONSTRUCTS[index], tmp_path, index, special=True, steps=CONSTRUCT_STEPS)


@pytest.mark.slow
def test_the_new_constructs_at_every_scale_for_longer(tmp_path):
    for index, rule in enumerate(TORCH_CONSTRUCTS):
        for k, scale in enumerate(SCALES):
            for special in (False, True):
                check_rule(rule, tmp_path, 100 * (k + 1) + index, special=special, scale=scale)


@pytest.mark.parametrize("index", range(len(LATER)))
def test_the_later_constructs_hold_on_special_values(index, tmp_path):
    """Reductions over every parameter of both groups (the module's step runs every
    tensor's step side by side), w = expr, from values and the shorthand."""
    check_rule(LATER[index], tmp_path, index, special=True, steps=CONSTRUCT_STEPS)


VIEWS = [
    "state z = z - lr * g from w\nstate x = lerp(x, z, 1 / t) from w\nw = lerp(z, x, 0.9)\n"
    "eval_w = x",
    "schedulefree_adamw",  # with train_w
    # a rule of rows and columns: vectors seen as columns, buffers of the 2-D view
    "state r = lerp(r, colmean(g^2), 0.1)\nupdate = g / sqrt(r + 1)\neval_w = w + colmean(w) - r",
    # a where on a param in a view: decided as the step's, reading only what is kept
    "param p = 0 in [0, 1]\nstate s = where(p, s + g, 0)\nupdate = where(p, s, g)\n"
    "eval_w = where(p, s, w * ndim) + where(rows > cols, w, t * lr)",
]


@pytest.mark.parametrize("rule", VIEWS, ids=range(len(VIEWS)))
def test_views_are_nos_optimizers_eval_and_train(rule, tmp_path):
    """eval() and train() give nos.Optimizer's parameters (and state: the training value
    kept while eval() shows another, without train_w); a step is refused in between; a
    state dict saved in the evaluation view is loaded and train() goes back from it."""
    parsed = nos.parse(nos.baselines()[rule].text) if rule in nos.baselines() else nos.parse(rule)
    cls = exported_class(rule, tmp_path, "views")
    rng = np.random.default_rng(3)
    start = [[rng.standard_normal(shape) for shape in group] for group in SHAPES]
    ours, theirs = ([[torch.tensor(x) for x in group] for group in start] for _ in range(2))
    group1 = {"lr": 0.005, **other_values(parsed)}

    def groups(params):
        return [{"params": params[0]}, {"params": params[1], **group1}]

    kwargs = keywords(parsed)
    exported, reference = cls(groups(ours), **kwargs), nos.Optimizer(groups(theirs), rule,
                                                                     **kwargs)
    flat_ours, flat_theirs = sum(ours, []), sum(theirs, [])

    def agree(what: str) -> None:
        for i, (a, b) in enumerate(zip(flat_ours, flat_theirs)):
            check_agree(a.numpy(), b.numpy(), np.abs(b.numpy()), f"{what}, tensor {i}")
            assert set(exported.state[a]) == set(reference.state[b]), what

    for k in range(8):
        for i, (a, b) in enumerate(zip(flat_ours, flat_theirs)):
            a.grad = b.grad = None if (i == SKIPPING and k == 2) else \
                torch.tensor(rng.standard_normal(tuple(a.shape)))
        exported.step()
        reference.step()
    agree("after the steps")
    exported.eval()
    reference.eval()
    agree("after eval()")
    for opt in (exported, reference):
        with pytest.raises(RuntimeError, match=r"call optimizer.train\(\) before step\(\)"):
            opt.step()
    exported = reloaded(exported, cls, groups(ours), kwargs)
    exported.train()
    reference.train()
    agree("after train()")
    for a, b in zip(flat_ours, flat_theirs):
        a.grad = b.grad = torch.ones_like(a)
    exported.step()
    reference.step()
    agree("a step after train()")


@pytest.mark.parametrize("rule", [
    "adam", "lion", "param flag = 0 in [0, 1]\nstate s = where(flag, s + g, 0)\n"
    "update = where(flag, s, sign(g)) + lr * ndim * g",
])
def test_maximize_steps_up_the_gradient_per_group(rule, tmp_path):
    parsed = nos.parse(nos.baselines()[rule].text) if rule in nos.baselines() else nos.parse(rule)
    cls = exported_class(rule, tmp_path, "maximize")
    run_both(rule, cls, {**keywords(parsed), "maximize": True},
             {"lr": 0.005, "maximize": False, **other_values(parsed)}, steps=20)
    w = torch.ones(3, dtype=torch.float64, requires_grad=True)
    opt = cls([w], lr=0.1, maximize=True)
    w.grad = torch.ones(3, dtype=torch.float64)
    opt.step()
    assert (w > 1).all()  # up the gradient
    assert opt.param_groups[0]["maximize"] is True


def test_a_switch_keeps_only_the_buffers_its_branch_needs(tmp_path):
    adam = exported_class("adam", tmp_path, "adam")
    adafactor = exported_class("adafactor", tmp_path, "adafactor")
    cases = [(adam, {}, (3,), {"m", "v"}), (adam, {"amsgrad": 1.0}, (3,), {"m", "v", "vmax"}),
             (adafactor, {}, (3, 2), {"row", "col"}), (adafactor, {}, (3,), {"row"})]
    for cls, kwargs, shape, buffers in cases:
        w = torch.ones(shape, dtype=torch.float64, requires_grad=True)
        opt = cls([w], **kwargs)
        w.grad = torch.ones(shape, dtype=torch.float64)
        opt.step()
        assert set(opt.state[w]) == {"step", *buffers}, (cls, kwargs, shape)
    # a group that turns amsgrad on later gets vmax then, from zeros (as nos.Optimizer)
    w = torch.ones(3, dtype=torch.float64, requires_grad=True)
    opt = adam([w])
    for amsgrad in (0.0, 1.0):
        opt.param_groups[0]["amsgrad"] = amsgrad
        w.grad = torch.ones(3, dtype=torch.float64)
        opt.step()
    assert set(opt.state[w]) == {"step", "m", "v", "vmax"}


def test_a_matrix_rule_takes_2d_parameters_only(tmp_path):
    cls = exported_class("muon", tmp_path, "muon")
    with pytest.raises(ValueError, match=r"newton_schulz needs 2-D parameters; parameter 1 "
                       r"of group 0 has shape \(3,\)"):
        cls([torch.ones(2, 2, requires_grad=True), torch.ones(3, requires_grad=True)])
    opt = cls([torch.ones(2, 2, requires_grad=True)])
    with pytest.raises(ValueError, match=r"parameter 0 of group 1 has shape \(\)"):
        opt.add_param_group({"params": [torch.ones((), requires_grad=True)]})


@pytest.mark.parametrize("index", range(40))
def test_random_rules_of_the_search_space(index, tmp_path):
    check_rule(RANDOM_RULES[index], tmp_path, index)


@pytest.mark.slow
def test_two_hundred_random_rules_of_the_search_space(tmp_path):
    for index, rule in enumerate(RANDOM_RULES):
        check_rule(rule, tmp_path, index)


@pytest.mark.parametrize("index", range(12))
def test_random_rules_of_the_space_with_tensor_constructs(index, tmp_path):
    check_rule(TENSOR_RULES[index], tmp_path, index, steps=CONSTRUCT_STEPS)


@pytest.mark.slow
def test_two_hundred_random_rules_with_tensor_constructs(tmp_path):
    for index, rule in enumerate(TENSOR_RULES):
        check_conditioned(rule, tmp_path, index, special=index % 2 == 1)


def test_without_a_seed_random_rules_draw_from_torchs_global_generator(tmp_path):
    rule = "drop(m_hat, 0.3) + noise + annealed_noise"
    cls = exported_class(rule, tmp_path, "unseeded")
    results = []
    for make in (lambda ps: nos.Optimizer(ps, rule, lr=0.1), lambda ps: cls(ps, lr=0.1)):
        torch.manual_seed(3)
        w = torch.zeros(1000, dtype=torch.float64, requires_grad=True)
        opt = make([w])
        for _ in range(3):
            w.grad = torch.ones_like(w)
            opt.step()
        results.append(w.detach().clone())
    torch.testing.assert_close(results[0], results[1], rtol=1e-12, atol=1e-15)
    assert results[0].std() > 0.01


def test_keywords_are_honoured_per_group_too(tmp_path):
    cls = exported_class("adam", tmp_path, "adam")
    values = {"beta1": 0.5, "beta2": 0.9, "eps": 1e-3, "weight_decay": 0.1}
    check = run_both("adam", cls, {"lr": 0.01, **values}, {"lr": 0.02, "beta1": 0.8},
                     steps=20)
    assert check <= 1e-10
    w = torch.ones(3, dtype=torch.float64, requires_grad=True)
    opt = cls([w], lr=0.01, **values)
    assert {k: opt.param_groups[0][k] for k in values} == values
    assert opt.defaults["lr"] == 0.01 and cls([w]).defaults["lr"] == 1e-3  # adam's own lr
    defaults_run, honoured_run = ([torch.ones(3, dtype=torch.float64, requires_grad=True)]
                                  for _ in range(2))
    for params, kwargs in ((defaults_run, {}), (honoured_run, values)):
        opt = cls(params, lr=0.1, **kwargs)
        for _ in range(3):
            params[0].grad = torch.full((3,), 0.5, dtype=torch.float64)
            opt.step()
    assert not torch.equal(defaults_run[0], honoured_run[0])


@pytest.mark.parametrize("kwargs,error,message", [
    ({"beta1": 1.0}, ValueError, "Invalid beta1: 1.0, must be in [0, 1)"),
    ({"beta2": -0.1}, ValueError, "Invalid beta2: -0.1, must be in [0, 1)"),
    ({"eps": float("nan")}, ValueError, "Invalid eps: nan, must be in [0, inf)"),
    ({"weight_decay": "0.1"}, ValueError, "Invalid weight_decay: '0.1', must be a number"),
    ({"lr": -1.0}, ValueError, "Invalid lr: -1.0, must be >= 0"),
    ({"betas": (0.9, 0.99)}, TypeError, "betas"),
])
def test_bad_keywords_are_refused(kwargs, error, message, tmp_path):
    cls = exported_class("adam", tmp_path, "adam")
    w = torch.ones(3, requires_grad=True)
    with pytest.raises(error, match=None) as caught:
        cls([w], **kwargs)
    assert message in str(caught.value)


def test_groups_and_settings_are_checked(tmp_path):
    cls = exported_class("powersign_cd", tmp_path, "powersign_cd")
    w = torch.ones(3, requires_grad=True)
    with pytest.raises(ValueError, match="pass total_steps"):
        cls([w])
    with pytest.raises(ValueError, match="Invalid total_steps: 0"):
        cls([w], total_steps=0)
    opt = cls([w], total_steps=10, periods=2.0)
    with pytest.raises(ValueError, match=r"Invalid periods: 0, must be in \(0, inf\)"):
        opt.add_param_group({"params": [torch.ones(2, requires_grad=True)], "periods": 0})
    with pytest.raises(ValueError, match="unknown hyperparameter 'momentum'.*beta1, base, "
                       "periods"):
        opt.add_param_group({"params": [torch.ones(2, requires_grad=True)], "momentum": 0.5})
    random = exported_class("noise", tmp_path, "noise")
    with pytest.raises(ValueError, match="Invalid seed"):
        random([w], seed="one")
    w.grad = torch.ones(3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


def test_a_closure_and_a_plain_loop_work(tmp_path):
    cls = exported_class("lion", tmp_path, "lion")
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    opt = cls(model.parameters(), lr=0.01)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    first = opt.step(closure).item()
    for _ in range(30):
        opt.step(closure)
    assert closure().item() < first


def test_unexportable_rules_and_names_are_refused():
    with pytest.raises(ExportError, match="argument 2 of drop"):
        torch_source("drop(g, g)")
    with pytest.raises(ExportError, match="argument 1 of cd"):
        torch_source("cd(g) * g")
    with pytest.raises(ExportError, match="'seed' has the name of an argument"):
        torch_source("param seed = 0.1\nupdate = seed * g")
    with pytest.raises(ExportError, match="Python identifier"):
        torch_source("adam", name="my optimizer")
    with pytest.raises(ExportError, match="uses"):
        torch_source("adam", name="torch")
    with pytest.raises(nos.RuleSyntaxError):
        torch_source("g +")
    with pytest.raises(ExportError, match="'maximize' has the name of an argument"):
        torch_source("param maximize = 1\nupdate = maximize * g")
    with pytest.raises(ExportError, match=r"a random draw \(noise, annealed_noise, drop\) in a "
                       "branch of a where on params alone is not exported"):
        torch_source("param flag = 1 in [0, 1]\nupdate = where(flag, noise, g)")
    with pytest.raises(ExportError, match=r"a random draw \(noise, annealed_noise, drop\) in a "
                       r"rule with reductions over every parameter \(gsum, gnorm, clip_gnorm, "
                       r"...\) is not exported"):
        torch_source("g / gnorm(g) + drop(g, 0.5)")
    many = "".join(f"param p{i} = 0 in [0, 1]\n" for i in range(9))
    with pytest.raises(ExportError, match="9 conditions of where on params alone"):
        torch_source(many + "update = " + " + ".join(f"where(p{i}, g, w)" for i in range(9)))


def test_the_module_imports_torch_only_and_carries_its_rule(tmp_path):
    source = torch_source("exp(sign(g) * sign(m)) * g", name="PowerSignish")
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    assert imported <= {"__future__", "math", "collections.abc", "typing", "torch"}, imported
    module = load_module(source, tmp_path, "powersignish")
    doc = inspect.cleandoc(module.PowerSignish.__doc__)
    assert "state m = beta1 * m + (1 - beta1) * g" in doc  # the prelude it uses
    latex = nos.parse("exp(sign(g) * sign(m)) * g").expanded().latex()
    assert textwrap.indent(latex, "    ") in doc  # a literal block
    assert "beta1 = 0.9 in [0, 1)" in doc
    assert nos.parse(module.RULE) == nos.parse("exp(sign(g) * sign(m)) * g")
    assert module.BUFFERS == ("m",)
