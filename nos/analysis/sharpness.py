"""How sharp a minimum is: Keskar's epsilon-sharpness and the Hessian's top eigenvalue.

Both measures take the loss as a closure, ``loss()``, that reads the current values of
``params`` (a model's parameters, or any tensors that require gradients) and returns a
0-dim tensor.  They move the parameters while they measure and put them back exactly
before returning.

* :func:`epsilon_sharpness` (Keskar et al., 2017, "On large-batch training for deep
  learning: generalization gap and sharp minima", metric 2.1 with A = I): the largest
  relative rise of the loss, ``(max L(w + d) - L(w)) / (1 + L(w))``, over the box
  ``|d_i| <= eps * (|w_i| + 1)``.  The paper reports 100 times this number.  The maximum
  is searched by projected gradient ascent (the paper uses L-BFGS-B).
* :func:`top_eigenvalue`: the Hessian eigenvalue of largest magnitude, by power
  iteration on Hessian-vector products (double backpropagation); at a minimum it is
  the largest eigenvalue.

Neither is a property of the function a network computes: Dinh et al. (2017, "Sharp
minima can generalize for deep nets") rescale two consecutive ReLU layers by ``a`` and
``1/a``, which leaves every output unchanged but moves both measures as far as one
likes (:func:`rescale_relu_pair` does it).  Compare them between networks of one
architecture trained the same way, never as absolute facts about a function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

Loss = Callable[[], Tensor]


def epsilon_sharpness(loss: Loss, params: Sequence[Tensor], eps: float = 1e-3,
                      steps: int = 20, step_fraction: float = 0.2, start_fraction: float = 0.1,
                      seed: int = 0) -> float:
    """Keskar's epsilon-sharpness of ``loss`` at the current ``params``.

    The search starts at a random point of the box scaled by ``start_fraction`` (from
    the exact minimum of a smooth loss the gradient is zero and ascent could not
    start), then takes ``steps`` steps of ``step_fraction`` of the box's half-width
    along the sign of the gradient, the steepest ascent for a box, each followed by a
    projection back into the box.  The best loss seen on the way counts, so the result
    is a lower bound on the true maximum that tightens with ``steps``.  For a convex
    quadratic with a diagonal Hessian it is exact: the maximum is at the corner that
    moves every coordinate away from the minimum.
    """
    if not eps > 0:
        raise ValueError(f"eps must be a positive number, got {eps!r}")
    params = list(params)
    saved = [p.detach().clone() for p in params]
    radius = [eps * (w.abs() + 1) for w in saved]
    generator = torch.Generator().manual_seed(seed)
    offsets = [start_fraction * r * (2 * torch.rand(r.shape, generator=generator,
                                                    dtype=r.dtype) - 1).to(r.device)
               for r in radius]
    try:
        with torch.no_grad():
            base = float(loss())
        best = base
        for _ in range(steps):
            with torch.no_grad():
                for p, w, d in zip(params, saved, offsets, strict=True):
                    p.copy_(w + d)
            value = loss()
            grads = torch.autograd.grad(value, params, allow_unused=True)
            best = max(best, float(value.detach()))
            with torch.no_grad():
                for d, g, r in zip(offsets, grads, radius, strict=True):
                    if g is not None:
                        d.add_(step_fraction * r * g.sign())
                        torch.minimum(torch.maximum(d, -r), r, out=d)
        with torch.no_grad():  # the last step's point
            for p, w, d in zip(params, saved, offsets, strict=True):
                p.copy_(w + d)
            best = max(best, float(loss()))
    finally:
        _restore(params, saved)
    return (best - base) / (1 + base)


def hessian_vector_product(loss: Loss, params: Sequence[Tensor],
                           vector: Sequence[Tensor]) -> list[Tensor]:
    """``H v`` for the Hessian ``H`` of ``loss`` with respect to ``params``, one tensor
    per parameter (double backpropagation: the gradient of ``g . v``)."""
    params = list(params)
    grads = torch.autograd.grad(loss(), params, create_graph=True, allow_unused=True)
    pairs = [(g, v) for g, v in zip(grads, vector, strict=True) if g is not None]
    if not pairs:
        return [torch.zeros_like(p) for p in params]
    dot = sum((g * v).sum() for g, v in pairs)
    products = torch.autograd.grad(dot, params, allow_unused=True)
    return [torch.zeros_like(p) if h is None else h.detach() for p, h in zip(params, products)]


def top_eigenvalue(loss: Loss, params: Sequence[Tensor], iterations: int = 100,
                   tolerance: float = 1e-4, seed: int = 0) -> float:
    """The Hessian eigenvalue of largest magnitude, by power iteration.

    Starts from a random unit vector (``seed``) and stops when the Rayleigh quotient
    ``v . H v`` changes by less than ``tolerance`` times its size, or after
    ``iterations`` products.  Convergence is linear in the ratio of the two largest
    magnitudes, so a nearly degenerate top pair takes the full ``iterations``.
    """
    params = list(params)
    generator = torch.Generator().manual_seed(seed)
    vector = [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
              for p in params]
    vector = _normalized(vector)
    estimate = 0.0
    for _ in range(iterations):
        product = hessian_vector_product(loss, params, vector)
        previous, estimate = estimate, float(sum((v * h).sum() for v, h in
                                                 zip(vector, product, strict=True)))
        norm = _norm(product)
        if norm == 0:
            return 0.0
        vector = [h / norm for h in product]
        if abs(estimate - previous) <= tolerance * abs(estimate):
            break
    return estimate


def rescale_relu_pair(first: nn.Linear | nn.Conv1d | nn.Conv2d,
                      second: nn.Linear | nn.Conv1d | nn.Conv2d, alpha: float) -> None:
    """Dinh et al.'s reparametrization, in place: ``first`` (weight and bias) times
    ``alpha``, ``second``'s weight divided by it.

    With a ReLU (or any positively homogeneous activation, and max pooling) between
    the two layers, ``relu(alpha * z) = alpha * relu(z)`` for ``alpha > 0``, so the
    network computes exactly the same function.
    """
    if not alpha > 0:
        raise ValueError(f"alpha must be positive, got {alpha!r}")
    with torch.no_grad():
        first.weight.mul_(alpha)
        if first.bias is not None:
            first.bias.mul_(alpha)
        second.weight.div_(alpha)


def _norm(tensors: Sequence[Tensor]) -> float:
    return float(torch.sqrt(sum((t * t).sum() for t in tensors)))


def _normalized(tensors: Sequence[Tensor]) -> list[Tensor]:
    norm = _norm(tensors)
    return [t / norm for t in tensors]


def _restore(params: Sequence[Tensor], saved: Sequence[Tensor]) -> None:
    with torch.no_grad():
        for p, w in zip(params, saved, strict=True):
            p.copy_(w)


__all__ = ["epsilon_sharpness", "hessian_vector_product", "rescale_relu_pair",
           "top_eigenvalue"]
