"""The NumPy transcription of YellowFin (yellowfin_reference.py) checked on its own:
hand-computed first steps, the window of the curvature range, the momentum-SGD update it
applies, where weight decay enters, the failure path, and that it trains a quadratic."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.optim.yellowfin_reference import EPS, YellowFinReference


def test_first_two_steps_by_hand():
    beta = 0.999
    x = [np.array([1.0])]
    ref = YellowFinReference(x)

    # step 0: no tuning; the constructor's lr, momentum 0, statistics from G0 = 1
    ref.step(x, [x[0].copy()])
    assert x[0][0] == pytest.approx(1.0 - 1e-4, rel=1e-15)
    assert (ref.lr_t, ref.mu_t, ref.step_lr, ref.step_momentum) == (1e-4, 0.0, 1e-4, 0.0)
    assert ref.h_min == pytest.approx(1.0 + EPS, rel=1e-14)
    assert ref.h_max == pytest.approx(1.0 + EPS, rel=1e-14)
    assert ref.grad_var == EPS  # G/db - |a|^2/db^2 = 0 up to rounding, floored at eps
    assert ref.dist_to_opt == pytest.approx((1 - beta) / ((1 - beta) + EPS), rel=1e-14)
    assert "momentum_buffer" not in ref.state[0]
    assert ref.iter == 1

    # step 1: the first tuned step, with the formulas written out here
    x1 = x[0][0]
    g1 = x1
    G1 = g1 * g1
    db = 1 - beta ** 2
    gbar = beta * (1 - beta) * 1.0 + (1 - beta) * G1
    h_min = math.exp((beta * (1 - beta) * math.log(1 + EPS)
                      + (1 - beta) * min(math.log(1 + EPS), math.log(G1 + EPS))) / db)
    h_max = 1 + EPS
    a = beta * (1 - beta) * 1.0 + (1 - beta) * g1
    var = max(-(a * a) / db ** 2 + gbar / db, EPS)
    gnorm = beta * (1 - beta) * 1.0 + (1 - beta) * abs(g1)
    dist0 = (1 - beta) * (1 - beta) / ((1 - beta) + EPS)
    dist = (beta * dist0 + (1 - beta) * gnorm / (gbar + EPS)) / db
    P = (dist + EPS) ** 2 * (h_min + EPS) ** 2 / 2 / (var + EPS)
    # sqrt(mu) = 1 + y, y the real root of y^3 + P y + P = 0
    roots = np.roots([1.0, 0.0, P, P])
    y = roots[np.argmin(abs(roots.imag))].real
    dr = max((h_max + EPS) / (h_min + EPS), 1 + EPS)
    mu = max((1 + y) ** 2, ((math.sqrt(dr) - 1) / (math.sqrt(dr) + 1)) ** 2)
    lr = (1 - math.sqrt(mu)) ** 2 / (h_min + EPS) * 2 / 200  # slow start: (t+1)/(10 W)

    ref.step(x, [np.array([g1])])
    assert not ref.exploding_grad_detected  # G1 < h_max of step 0
    assert ref.h_min == pytest.approx(h_min, rel=1e-12)
    assert ref.grad_var == pytest.approx(var, rel=1e-9)
    assert ref.dist_to_opt == pytest.approx(dist, rel=1e-12)
    assert ref.mu_t == pytest.approx(mu, rel=1e-6)
    assert 0 <= ref.mu_t < 1
    assert ref.lr_t == pytest.approx(lr, rel=1e-6)
    assert ref.lr == pytest.approx(beta * 1e-4 + (1 - beta) * ref.lr_t, rel=1e-14)
    assert ref.mu == pytest.approx((1 - beta) * ref.mu_t, rel=1e-14)
    # the first nonzero momentum starts the buffer at the gradient: p -= lr * g
    assert (ref.step_lr, ref.step_momentum) == (ref.lr_t, ref.mu_t)
    assert x[0][0] == pytest.approx(x1 - ref.lr_t * g1, rel=1e-15)


def test_the_window_holds_the_last_width_values():
    beta, width = 0.9, 3
    norms = [10.0, 0.1, 5.0, 4.0, 6.0, 5.0, 3.0, 7.0, 5.0, 4.0]
    ref = YellowFinReference([(2,)], beta=beta, curv_win_width=width, adapt_clip=False)
    p = [np.zeros(2)]
    lo = hi = 0.0
    for t, n in enumerate(norms):
        ref.step(p, [np.array([n, 0.0])])
        seen = [m * m for m in norms[max(0, t - width + 1): t + 1]]
        lo = beta * lo + (1 - beta) * math.log(min(seen) + EPS)
        hi = beta * hi + (1 - beta) * math.log(max(seen) + EPS)
        assert ref.h_min == pytest.approx(math.exp(lo / (1 - beta ** (t + 1))), rel=1e-12)
        assert ref.h_max == pytest.approx(math.exp(hi / (1 - beta ** (t + 1))), rel=1e-12)
    # 0.1**2 left the window at t = 4: the minimum since then is 3**2
    assert sorted(ref.global_state["curv_win"]) == sorted(m * m for m in norms[-width:])


def test_the_update_is_torch_sgd_with_this_steps_lr_and_momentum():
    rng = np.random.default_rng(0)
    shapes = [(4, 3), (5,), ()]
    params = [rng.standard_normal(s) for s in shapes]
    replay = [p.copy() for p in params]
    bufs = [None] * len(shapes)
    ref = YellowFinReference(params, weight_decay=0.01)
    for _ in range(60):
        grads = [rng.standard_normal(s) + p for s, p in zip(shapes, params, strict=True)]
        ref.step(params, grads)
        # where the exploding-gradient clip fired, the gradient differs: resynchronise
        clipped = ref.adapt_clip and ref.exploding_grad_detected
        for i, g in enumerate(grads):
            d = g + 0.01 * replay[i]
            if clipped:
                replay[i] = params[i].copy()
                bufs[i] = ref.state[i].get("momentum_buffer")
                continue
            if ref.step_momentum != 0:
                bufs[i] = d.copy() if bufs[i] is None else ref.step_momentum * bufs[i] + d
                d = bufs[i]
            replay[i] = replay[i] - ref.step_lr * d
        for a, b in zip(replay, params, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
        assert 0 <= ref.mu_t < 1 and ref.lr_t > 0 and 0 <= ref.mu < 1


def test_weight_decay_changes_the_update_not_the_statistics():
    rng = np.random.default_rng(1)
    grads = [[rng.standard_normal(6)] for _ in range(40)]  # independent of the parameters
    runs = []
    for wd in (0.0, 0.1):
        p = [np.ones(6)]
        ref = YellowFinReference(p, weight_decay=wd)
        tuned = []
        for g in grads:
            ref.step(p, g)
            tuned.append((ref.lr_t, ref.mu_t, ref.h_min, ref.h_max))
        runs.append((tuned, p[0]))
    assert runs[0][0] == runs[1][0]
    assert not np.allclose(runs[0][1], runs[1][1])


def test_a_nan_restores_the_checkpoint_with_perturbed_parameters():
    rng = np.random.default_rng(2)
    p = [rng.standard_normal(3)]
    ref = YellowFinReference(p, checkpoint_interval=4)
    before = None
    for _ in range(6):  # checkpoints at t = 0 and t = 4, taken before that step's update
        if ref.iter == 4:
            before = p[0].copy()
        ref.step(p, [p[0] + 0.1 * rng.standard_normal(3)])
    assert ref.iter == 6
    ref.step(p, [np.full(3, np.nan)])
    assert ref.iter == 4 and ref.restores == 1
    np.testing.assert_array_equal(p[0], before + 1e-8)
    ref.step(p, [p[0].copy()])  # and it goes on from there
    assert ref.iter == 5 and np.all(np.isfinite(p[0]))


def test_it_trains_quadratics():
    # 1-D, deterministic: |x| drops three orders of magnitude in 100 steps and stays there
    # (the curvature proxy is ||g||^2, so on a noiseless quadratic lr keeps growing as
    # ||g|| shrinks, and x rattles around 1e-3 instead of converging further)
    x = [np.array([1.0])]
    ref = YellowFinReference(x)
    seen = []
    for _ in range(400):
        ref.step(x, [x[0].copy()])
        seen.append(abs(x[0][0]))
        assert 0 <= ref.mu_t < 1
    assert max(seen[100:]) < 2e-3
    # 10-D, noisy, badly scaled
    rng = np.random.default_rng(3)
    h = rng.uniform(0.5, 2.0, 10)
    p = [rng.standard_normal(10)]
    loss0 = 0.5 * np.sum(h * p[0] ** 2)
    ref = YellowFinReference(p)
    for _ in range(400):
        ref.step(p, [h * p[0] + 0.01 * rng.standard_normal(10)])
        assert 0 <= ref.mu_t < 1
    assert 0.5 * np.sum(h * p[0] ** 2) < 1e-3 * loss0
