"""How much a network leans on single directions: ablation curves (Morcos et al., 2018,
"On the importance of single directions for generalization").

A unit is one channel of a hidden layer's output: a feature map of a convolution, a
unit of a fully connected layer, a hidden unit of a recurrent layer.  The units are the
channels (dimension 1) of the output of every activation module (ReLU, Tanh, ...) and
the last dimension of the output of every LSTM or GRU; the output layer has none.
Ablating a unit sets its output to zero for every input.  An ablation curve zeroes the
units one after another in a random order and scores the network after each; it is
averaged over several orders and summarised by the area under it, with the fraction
of units ablated on the x axis: a network whose score falls slowly as units go has a
larger area and, in Morcos et al.'s experiments, generalises better.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

# modules whose output channels are units: the activations, and the recurrent layers
ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid,
               nn.Softplus, nn.Hardtanh, nn.ReLU6, nn.Mish)
RECURRENT = (nn.LSTM, nn.GRU, nn.RNN)


@dataclass(frozen=True)
class AblationCurve:
    """Scores as units are zeroed: ``scores[i]`` (the mean over ``orders`` random orders)
    after ``ablated[i]`` of ``units`` units; ``area`` is the area under ``scores``
    against ``ablated / units`` by the trapezoid rule."""

    units: int
    ablated: list[int]
    scores: list[float]
    orders: int

    @property
    def fractions(self) -> list[float]:
        return [k / self.units for k in self.ablated]

    @property
    def area(self) -> float:
        xs, ys = self.fractions, self.scores
        return sum((x1 - x0) * (y0 + y1) / 2
                   for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:], strict=False))

    def to_dict(self) -> dict:
        return {"units": self.units, "ablated": self.ablated, "scores": self.scores,
                "orders": self.orders, "area": self.area}


def unit_modules(model: nn.Module) -> list[nn.Module]:
    """The model's modules whose output channels are units, in the model's order."""
    return [module for module in model.modules() if isinstance(module, ACTIVATIONS + RECURRENT)]


def count_units(model: nn.Module, example: Tensor) -> list[tuple[nn.Module, int]]:
    """The modules with units and how many units each has, read from one forward pass of
    ``example`` (a batch of one input is enough).  A module called twice in a forward
    pass (one ``ReLU`` shared by two layers) is counted once, by its first call, and
    ablating its units zeroes them at every call."""
    found: dict[int, tuple[nn.Module, int]] = {}

    def record(module: nn.Module, args: tuple, output) -> None:
        found.setdefault(id(module), (module, _channels(module, output)))

    hooks = [module.register_forward_hook(record) for module in unit_modules(model)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return list(found.values())


@contextmanager
def ablated(model: nn.Module, zeroed: dict[nn.Module, Tensor]) -> Iterator[None]:
    """Within the block, the units ``zeroed[module]`` (a boolean mask over the module's
    units, True: zeroed) output zero."""
    hooks = []
    for module, mask in zeroed.items():
        def zero(mod: nn.Module, args: tuple, output, mask=mask):
            return _zero_channels(mod, output, mask)
        hooks.append(module.register_forward_hook(zero))
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def ablation_curve(model: nn.Module, score: Callable[[nn.Module], float], example: Tensor,
                   orders: int = 3, points: int | None = 41, seed: int = 0) -> AblationCurve:
    """Zero the model's units one after another in ``orders`` random orders; the mean of
    ``score(model)`` after each count of ablated units.

    ``score`` runs the model on a fixed split (the test set's accuracy, say); ``example``
    is an input batch from which the units are counted.  With ``points``, the score is
    taken at that many evenly spaced counts from none to all (always both ends) instead
    of after every unit, which bounds the cost on wide networks.
    """
    if orders < 1:
        raise ValueError(f"orders must be at least 1, got {orders}")
    if points is not None and points < 2:
        raise ValueError(f"points must be at least 2 (none and all ablated), got {points}")
    layers = count_units(model, example)
    total = sum(count for _, count in layers)
    if total == 0:
        raise ValueError(f"{type(model).__name__} has no units to ablate "
                         f"(no activation or recurrent module)")
    counts = list(range(total + 1))
    if points is not None and points < total + 1:
        counts = sorted({round(i * total / (points - 1)) for i in range(points)})
    # unit j of the flat list is (layer, channel)
    owners = [(index, channel) for index, (_, count) in enumerate(layers)
              for channel in range(count)]
    generator = torch.Generator().manual_seed(seed)
    runs = []
    for _ in range(orders):
        order = torch.randperm(total, generator=generator).tolist()
        runs.append(_scores_along(model, score, layers, owners, order, counts))
    scores = [statistics.fmean(column) for column in zip(*runs, strict=True)]
    return AblationCurve(units=total, ablated=counts, scores=scores, orders=orders)


def _scores_along(model: nn.Module, score: Callable[[nn.Module], float],
                  layers: list[tuple[nn.Module, int]], owners: list[tuple[int, int]],
                  order: list[int], counts: list[int]) -> list[float]:
    masks = [torch.zeros(count, dtype=torch.bool) for _, count in layers]
    scores, done = [], 0
    for count in counts:
        for unit in order[done:count]:
            layer, channel = owners[unit]
            masks[layer][channel] = True
        done = count
        zeroed = {module: mask for (module, _), mask in zip(layers, masks, strict=True)
                  if mask.any()}
        with ablated(model, zeroed):
            scores.append(float(score(model)))
    return scores


def _channels(module: nn.Module, output) -> int:
    if isinstance(module, RECURRENT):
        return output[0].shape[-1]
    return output.shape[1] if output.dim() > 1 else output.shape[0]


def _zero_channels(module: nn.Module, output, mask: Tensor):
    if isinstance(module, RECURRENT):
        hidden, *rest = output
        keep = (~mask).to(device=hidden.device, dtype=hidden.dtype)
        return (hidden * keep, *rest)
    keep = (~mask).to(device=output.device, dtype=output.dtype)
    if output.dim() > 1:
        keep = keep.reshape(1, -1, *([1] * (output.dim() - 2)))
    return output * keep


__all__ = ["AblationCurve", "ablated", "ablation_curve", "count_units", "unit_modules"]
