"""The coordinate-wise LSTM optimizer of Andrychowicz et al. (2016).

*Learning to learn by gradient descent by gradient descent* (NeurIPS 2016)
replaces a hand-written update rule by a small recurrent network. One
two-layer LSTM with 20 hidden units is shared by every coordinate of every
parameter: the coordinates are the rows of one batch, each with its own hidden
and cell states, so the network has a few thousand weights whatever the size of
the model it trains. Each step it reads the coordinate's gradient, preprocessed
as in the paper's appendix A so that gradients of any magnitude reach it on
the same scale,

    (log|g| / p, sign(g))   if |g| >= exp(-p)
    (-1, exp(p) * g)        otherwise,          with p = 10,

and its output, times 0.1, is added to the coordinate:

    w <- w + lr * 0.1 * LSTM(preprocess(g), state)

(``lr`` is 1 in meta-training; the optimizer lets a learning rate scale the
update as any other does).  The state of a tensor of n elements is one tensor
of shape ``(layers, 2, n, hidden)``: the hidden and cell states of each layer,
80 numbers per coordinate with the paper's sizes, where Adam keeps 2.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

HEAD_INIT = 0.01  # the output layer's initial weights are drawn from [-HEAD_INIT, HEAD_INIT]


@dataclass(frozen=True)
class Architecture:
    """The network's sizes and the two constants of the paper's update."""

    hidden_size: int = 20
    layers: int = 2
    preprocess_p: float = 10.0  # p of the gradient preprocessing
    output_scale: float = 0.1  # the network's output is multiplied by this

    def check(self) -> None:
        """Raise ValueError naming the first size or constant out of range."""
        for name in ("hidden_size", "layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
                raise ValueError(f"{name} must be a whole number from 1 to 4096, got {value!r}")
        for name in ("preprocess_p", "output_scale"):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or value <= 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def state_floats(self) -> int:
        """Numbers of optimizer state per coordinate: a hidden and a cell state per layer."""
        return self.layers * 2 * self.hidden_size


def preprocess(grad: Tensor, p: float = 10.0) -> Tensor:
    """The paper's gradient preprocessing: an ``(n, 2)`` input from ``n`` gradients.

    Large gradients are given by their log magnitude (divided by ``p``) and their sign;
    those below ``exp(-p)`` by -1 and the gradient scaled up by ``exp(p)``.
    """
    g = grad.reshape(-1, 1)
    tiny = math.exp(-p)
    large = g.abs() >= tiny
    magnitude = torch.where(large, torch.log(g.abs().clamp_min(tiny)) / p, -torch.ones_like(g))
    direction = torch.where(large, torch.sign(g), g * math.exp(p))
    return torch.cat([magnitude, direction], dim=1)


class CoordinateLSTM(nn.Module):
    """The shared network: preprocessed gradients in, updates out, one row per coordinate.

    ``forward(grad, state)`` takes a gradient of any shape and its state
    (``initial_state(grad.numel())`` at first) and returns the update, of the
    gradient's shape (already multiplied by ``output_scale``), and the new state.  It is
    differentiable in the network's weights, which is how meta-training trains it.
    """

    def __init__(self, architecture: Architecture | None = None) -> None:
        super().__init__()
        self.architecture = architecture or Architecture()
        self.architecture.check()
        hidden, layers = self.architecture.hidden_size, self.architecture.layers
        self.cells = nn.ModuleList(nn.LSTMCell(2 if i == 0 else hidden, hidden)
                                   for i in range(layers))
        self.head = nn.Linear(hidden, 1)
        # the first updates are small, so the first children do not blow up (a child that
        # does gives the meta-gradient losses of hundreds, which Adam then has to forget)
        nn.init.uniform_(self.head.weight, -HEAD_INIT, HEAD_INIT)
        nn.init.zeros_(self.head.bias)

    def initial_state(self, numel: int, device: torch.device | str | None = None,
                      dtype: torch.dtype | None = None) -> Tensor:
        """Zero hidden and cell states for ``numel`` coordinates: ``(layers, 2, numel, hidden)``."""
        arch = self.architecture
        return torch.zeros(arch.layers, 2, numel, arch.hidden_size, device=device,
                           dtype=dtype or self.head.weight.dtype)

    def forward(self, grad: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        x = preprocess(grad, self.architecture.preprocess_p)
        new_state = []
        for layer, cell in enumerate(self.cells):
            h, c = cell(x, (state[layer, 0], state[layer, 1]))
            new_state.append(torch.stack([h, c]))
            x = h
        update = self.head(x).reshape(grad.shape) * self.architecture.output_scale
        return update, torch.stack(new_state)
