"""Prodigy, Schedule-Free AdamW and YellowFin as named rules, against their reference code.

These three read what a per-tensor rule cannot: Prodigy's step size d and YellowFin's
statistics are reductions over every parameter (``gsum``, ``gnorm``, ``clip_gnorm``),
YellowFin's curvature range a window of running extrema (``winmin``, ``winmax``),
Schedule-Free sets the parameter (``w = ...``) and shows another point for evaluation
(``eval_w``, ``optimizer.eval()``), and Prodigy keeps the initial parameters
(``state x0 = x0 from w``).

Oracles: ``prodigyopt.Prodigy`` and ``schedulefree.AdamWScheduleFree`` (float64, 100 steps,
the same gradients), and for YellowFin, which has no package, the NumPy transcription of
its authors' PyTorch code in ``yellowfin_reference.py``.  The error is measured on how
far each tensor moved: max |nos - reference| / max |reference - start|.
"""

from __future__ import annotations

import io
import math

import numpy as np
import prodigyopt
import pytest
import schedulefree
import torch

import nos
from tests.optim.yellowfin_reference import YellowFinReference

STEPS = 100
TOLERANCE = 1e-6
SHAPES = [(5, 3), (7,), (2, 3, 4), ()]
EXECUTORS = pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "reference"])


def _start() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=gen, dtype=torch.float64) for shape in SHAPES]


def _gradients(params: list, step: int, spike: int | None = None) -> list[torch.Tensor]:
    """A nonlinear function of the parameters plus seeded noise (times 100 at ``spike``)."""
    gen = torch.Generator().manual_seed(1000 + step)
    scale = 100.0 if step == spike else 1.0
    return [scale * (1.5 * p + 0.3 * torch.sin(p) + 0.05 * torch.randn(
        p.shape, generator=gen, dtype=torch.float64)) for p in params]


def _train(make, steps: int = STEPS, groups=None, spike=None, resume_at=None):
    """Parameters after ``steps`` steps of the optimizer ``make(params_or_groups)``; with
    ``resume_at``, its state_dict is saved there and loaded into a fresh one."""
    params = [p.clone().requires_grad_(True) for p in _start()]
    opt = make(groups(params) if groups else params)
    for step in range(steps):
        if step == resume_at:
            buffer = io.BytesIO()
            torch.save(opt.state_dict(), buffer)
            opt = make(groups(params) if groups else params)
            buffer.seek(0)
            opt.load_state_dict(torch.load(buffer, weights_only=True))
        for p, g in zip(params, _gradients([p.detach() for p in params], step, spike)):
            p.grad = g
        opt.step()
    return params, opt


def _error(ours, reference) -> float:
    start = _start()
    moved = max(float((r.detach() - s).abs().max()) for r, s in zip(reference, start))
    return max(float((a.detach() - b.detach()).abs().max())
               for a, b in zip(ours, reference)) / moved


def _nos_keywords(keywords: dict) -> dict:
    return {k: v for k, v in keywords.items() if k != "lr"}


# --- Prodigy ------------------------------------------------------------------------

PRODIGY_CASES = [
    {},
    {"weight_decay": 0.1},
    {"weight_decay": 0.1, "decouple": False},
    {"use_bias_correction": True, "safeguard_warmup": True, "betas": (0.8, 0.99),
     "d_coef": 0.5, "growth_rate": 1.02, "d0": 1e-5},
    {"beta3": 0.9, "betas": (0.0, 0.99), "eps": 1e-6},
]


@EXECUTORS
@pytest.mark.parametrize("keywords", PRODIGY_CASES, ids=range(len(PRODIGY_CASES)))
def test_prodigy_matches_prodigyopt(keywords, foreach):
    reference, _ = _train(lambda p: prodigyopt.Prodigy(p, lr=1.0, **keywords))
    ours, _ = _train(lambda p: nos.Optimizer(p, "prodigy", lr=1.0, foreach=foreach,
                                             **keywords))
    assert _error(ours, reference) < TOLERANCE


def test_prodigy_shares_d_across_param_groups_and_resumes():
    """prodigyopt estimates one d from every group; nos's global reductions read every
    group too, each with its own weight decay."""
    def groups(params):
        return [{"params": params[:2]}, {"params": params[2:], "weight_decay": 0.3}]

    reference, _ = _train(lambda g: prodigyopt.Prodigy(g, lr=1.0), groups=groups)
    ours, _ = _train(lambda g: nos.Optimizer(g, "prodigy", lr=1.0), groups=groups,
                     resume_at=50)
    assert _error(ours, reference) < TOLERANCE


# --- Schedule-Free AdamW --------------------------------------------------------------

SCHEDULEFREE_CASES = [
    {},
    {"lr": 0.01, "betas": (0.8, 0.99), "weight_decay": 0.1, "warmup_steps": 10, "r": 1.0,
     "weight_lr_power": 1.0, "eps": 1e-6},
]


def _schedulefree(params, **keywords):
    opt = schedulefree.AdamWScheduleFree(params, **keywords)
    opt.train()  # its optimizers start in eval mode
    return opt


@EXECUTORS
@pytest.mark.parametrize("keywords", SCHEDULEFREE_CASES, ids=range(len(SCHEDULEFREE_CASES)))
def test_schedulefree_adamw_matches_in_train_and_eval_mode(keywords, foreach):
    reference, ref_opt = _train(lambda p: _schedulefree(p, **keywords))
    ours, opt = _train(lambda p: nos.Optimizer(p, "schedulefree_adamw", foreach=foreach,
                                               **keywords))
    assert _error(ours, reference) < TOLERANCE  # y, the point the gradients are taken at
    ref_opt.eval()
    opt.eval()
    assert _error(ours, reference) < TOLERANCE  # x, the average the model is evaluated at
    with pytest.raises(RuntimeError, match="call optimizer.train"):
        opt.step()
    ref_opt.train()
    opt.train()
    for step in range(STEPS, STEPS + 20):  # and back to training
        for params in (ours, reference):  # (the reference divides its gradients in place)
            for p, g in zip(params, _gradients([p.detach() for p in params], step)):
                p.grad = g
        ref_opt.step()
        opt.step()
    assert _error(ours, reference) < TOLERANCE


def test_schedulefree_adamw_groups_and_state_dict():
    def groups(params):
        return [{"params": params[:2], "weight_decay": 0.2}, {"params": params[2:]}]

    reference, _ = _train(lambda g: _schedulefree(g, lr=0.01), groups=groups)
    ours, _ = _train(lambda g: nos.Optimizer(g, "schedulefree_adamw", lr=0.01), groups=groups,
                     resume_at=50)
    assert _error(ours, reference) < TOLERANCE


# --- YellowFin ------------------------------------------------------------------------

YELLOWFIN_CASES = [
    {"lr": 0.1},
    {"lr": 0.1, "weight_decay": 0.01, "mu": 0.5},
    {"lr": 0.1, "zero_debias": False, "h_max_log_smooth": False, "h_min_log_smooth": False},
    {"lr": 0.1, "clip_thresh": 1.0, "beta": 0.99},
    {"lr": 0.1, "auto_clip_fac": 2.0, "adapt_clip": False},
]


def _yellowfin_reference(keywords: dict, spike: int | None) -> list[np.ndarray]:
    params = [p.numpy().copy() for p in _start()]
    reference = YellowFinReference(params, **keywords)
    for step in range(STEPS):
        grads = _gradients([torch.from_numpy(p) for p in params], step, spike)
        reference.step(params, [g.numpy() for g in grads])
    return [torch.from_numpy(p) for p in params]


@EXECUTORS
@pytest.mark.parametrize("keywords", YELLOWFIN_CASES, ids=range(len(YELLOWFIN_CASES)))
def test_yellowfin_matches_the_transcription_of_its_authors_code(keywords, foreach):
    reference = _yellowfin_reference(keywords, spike=None)
    ours, _ = _train(lambda p: nos.Optimizer(p, "yellowfin", lr=keywords["lr"],
                                             foreach=foreach, **_nos_keywords(keywords)))
    assert _error(ours, reference) < TOLERANCE


@pytest.mark.parametrize("keywords", [{"lr": 0.1}, {"lr": 0.1, "adapt_clip": False}],
                         ids=["adapt_clip", "no_clip"])
def test_yellowfin_exploding_gradient_clipping(keywords):
    """A gradient 100 times larger at step 40 sets off the exploding-gradient clip (and the
    clip of the statistics afterwards): still the transcription's step, resumed mid-way."""
    reference = _yellowfin_reference(keywords, spike=40)
    ours, _ = _train(lambda p: nos.Optimizer(p, "yellowfin", lr=keywords["lr"],
                                             **_nos_keywords(keywords)),
                     spike=40, resume_at=60)
    assert _error(ours, reference) < TOLERANCE
    calm = _yellowfin_reference(keywords, spike=None)
    assert _error(calm, reference) > 1e-3  # the spike did change the run


def test_yellowfin_trains_a_child_task():
    from nos.train.evaluation import evaluate

    yellowfin = evaluate("yellowfin", task="mnist1d", epochs=1, lr=0.1, lr_grid=None, seed=0)
    assert yellowfin.status == "ok"
    assert yellowfin.loss_curve[-1] < 0.95 * math.log(10)  # below a uniform guess's loss
    assert yellowfin.val_accuracy > 0.15  # ten classes: chance is 0.1


@pytest.mark.parametrize("name, keywords, words", [
    ("prodigy", {"fsdp_in_use": True}, "fsdp_in_use"),
    ("prodigy", {"slice_p": 2}, "slice_p"),
    ("yellowfin", {"curv_win_width": 10}, "curv_win_width"),
    ("yellowfin", {"sparsity_debias": True}, "sparsity_debias"),
    ("yellowfin", {"force_non_inc_step": True}, "force_non_inc_step"),
])
def test_keywords_the_rules_cannot_follow_are_refused_in_one_line(name, keywords, words):
    with pytest.raises(ValueError) as err:
        nos.Optimizer([torch.zeros(3, requires_grad=True)], name, **keywords)
    message = str(err.value)
    assert words in message and name in message and "\n" not in message


def test_fused_refuses_global_reductions():
    with pytest.raises(ValueError, match="fused=True does not support reductions over all"):
        nos.Optimizer([torch.zeros(3, requires_grad=True)], "prodigy", fused=True)


def test_a_switched_off_global_reduction_costs_nothing_and_groups_that_differ_share_one():
    """A group whose switch turns a global reduction off runs a program without it (no
    stage, no join); groups that differ all run the rule's program, and the reduction reads
    every group's parameters, the other groups' included."""
    rule = "param c = 0 in [0, inf)\nupdate = where(c > 0, clip_gnorm(g, c), g)"
    a, b = torch.ones(3, requires_grad=True), torch.ones(4, requires_grad=True)
    opt = nos.Optimizer([a, b], rule, lr=1.0)
    a.grad, b.grad = torch.full((3,), 2.0), torch.full((4,), 2.0)
    opt.step()
    assert not opt._programs[next(iter(opt._programs))].crosses
    assert torch.equal(a.detach(), torch.full((3,), -1.0))

    a, b = torch.ones(3, requires_grad=True), torch.ones(4, requires_grad=True)
    opt = nos.Optimizer([{"params": [a]}, {"params": [b], "c": 1.0}], rule, lr=1.0)
    a.grad, b.grad = torch.full((3,), 2.0), torch.full((4,), 2.0)
    opt.step()
    norm = math.sqrt(7 * 4.0)  # every gradient of both groups
    assert torch.equal(a.detach(), torch.full((3,), -1.0))
    assert torch.allclose(b.detach(), 1 - torch.full((4,), 2.0) / (norm + 1e-6))


def test_children_are_validated_at_the_rules_evaluation_view():
    """nos.evaluate validates at eval_w (Schedule-Free's average) and trains on at w: with
    an evaluation view of all zeros every validation sees one constant prediction, while the
    training loss still falls."""
    from nos.train.evaluation import evaluate

    rule = "w = w - lr * g\neval_w = 0 * w"
    result = evaluate(rule, task="mnist1d", epochs=2, lr=0.1, lr_grid=None, seed=0)
    assert result.status == "ok"
    assert result.loss_curve[1] < result.loss_curve[0]
    assert result.val_curve[0] == result.val_curve[1] < 0.2  # one class for every input
