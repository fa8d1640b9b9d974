"""Epsilon-sharpness and the top Hessian eigenvalue on losses whose answers are known, and
Dinh et al.'s rescaling, which keeps a ReLU network's function and moves both measures."""

from __future__ import annotations

import torch
from torch import nn

from nos.analysis.sharpness import (
    epsilon_sharpness,
    hessian_vector_product,
    rescale_relu_pair,
    top_eigenvalue,
)


def quadratic(hessian: torch.Tensor, w: torch.Tensor):
    """``0.5 w' H w``: its Hessian is ``H`` everywhere."""
    return lambda: 0.5 * w @ hessian @ w


def rotated(eigenvalues: list[float], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=generator,
                                       dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


def test_hessian_vector_products_of_a_quadratic_are_h_times_v():
    hessian = rotated([4.0, 2.5, 1.0, -0.5, 0.1])
    w = torch.randn(5, dtype=torch.float64, requires_grad=True)
    v = torch.randn(5, dtype=torch.float64)
    (product,) = hessian_vector_product(quadratic(hessian, w), [w], [v])
    torch.testing.assert_close(product, hessian @ v, rtol=1e-12, atol=1e-12)


def test_power_iteration_finds_the_top_eigenvalue_of_a_known_hessian():
    hessian = rotated([4.0, 2.5, 1.0, -0.5, 0.1])
    w = torch.randn(5, dtype=torch.float64, requires_grad=True)
    top = top_eigenvalue(quadratic(hessian, w), [w], iterations=500, tolerance=1e-12)
    assert abs(top - 4.0) < 1e-8


def test_power_iteration_over_several_tensors_sees_the_whole_hessian():
    # two tensors, each a block of a block-diagonal Hessian: the top eigenvalue is in the second
    a = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    ha, hb = rotated([1.0, 0.5, 0.2]), rotated([7.0, 3.0, 1.0, 0.5], seed=1)

    def loss():
        flat = b.reshape(-1)
        return 0.5 * a @ ha @ a + 0.5 * flat @ hb @ flat

    assert abs(top_eigenvalue(loss, [a, b], iterations=500, tolerance=1e-12) - 7.0) < 1e-8


def test_sharpness_of_a_quadratic_is_its_closed_form():
    # L = 0.5 sum h_i w_i^2 is convex and separable: its maximum over the box
    # |d_i| <= r_i is at the corner moving each coordinate away from 0,
    # 0.5 sum h_i (|w_i| + r_i)^2
    h = torch.tensor([3.0, 1.0, 0.2, 5.0], dtype=torch.float64)
    start = torch.tensor([0.5, -1.5, 2.0, -0.25], dtype=torch.float64)
    w = start.clone().requires_grad_(True)
    eps = 1e-2
    radius = eps * (start.abs() + 1)
    base = float(0.5 * (h * start**2).sum())
    peak = float(0.5 * (h * (start.abs() + radius) ** 2).sum())
    got = epsilon_sharpness(lambda: 0.5 * (h * w**2).sum(), [w], eps=eps)
    assert abs(got - (peak - base) / (1 + base)) < 1e-12
    assert torch.equal(w.detach(), start)  # the parameters are put back


def test_sharpness_at_the_exact_minimum_of_a_quadratic():
    # at w = 0 the gradient vanishes; the random start lets the ascent reach a corner,
    # every one of which gives 0.5 sum h_i eps^2
    h = torch.tensor([3.0, 1.0, 0.2], dtype=torch.float64)
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    eps = 1e-3
    got = epsilon_sharpness(lambda: 0.5 * (h * w**2).sum(), [w], eps=eps)
    assert abs(got - 0.5 * float(h.sum()) * eps**2) < 1e-15


def test_sharpness_grows_with_the_box_and_with_curvature():
    w = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    flat = torch.tensor([1.0, 1.0], dtype=torch.float64)

    def measured(h, eps):
        return epsilon_sharpness(lambda: 0.5 * (h * w**2).sum(), [w], eps=eps)

    assert measured(flat, 1e-3) < measured(flat, 1e-2)
    assert measured(flat, 1e-2) < measured(10 * flat, 1e-2)


def two_layer_relu_net() -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    """A 4-16-3 ReLU network trained to a low loss on 64 random points (float64)."""
    torch.manual_seed(0)
    x = torch.randn(64, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (64,))
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).double()
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net, x, y


def test_rescaling_two_relu_layers_keeps_the_function_but_moves_both_measures():
    """Dinh et al. (2017): W1 -> a W1, b1 -> a b1, W2 -> W2 / a computes the same outputs,
    yet the sharpness and the top eigenvalue change, here by large factors."""
    net, x, y = two_layer_relu_net()

    def loss():
        return nn.functional.cross_entropy(net(x), y)

    def measures():
        params = list(net.parameters())
        return (epsilon_sharpness(loss, params, eps=1e-3),
                top_eigenvalue(loss, params, iterations=300, tolerance=1e-10))

    with torch.no_grad():
        before = net(x)
    sharp, top = measures()
    rescale_relu_pair(net[0], net[2], 10.0)
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, rtol=1e-12, atol=1e-12)
    sharp_up, top_up = measures()
    rescale_relu_pair(net[0], net[2], 1 / 100)  # now a = 1/10 of the original
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, rtol=1e-12, atol=1e-12)
    sharp_down, top_down = measures()
    assert top_up > 10 * top and top_down > 10 * top  # one block's curvature grows as a^2
    assert sharp_up > 3 * sharp and sharp_down > 3 * sharp
