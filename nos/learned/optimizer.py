"""A meta-trained LSTM as a drop-in ``torch.optim.Optimizer``.

``LearnedOptimizer(params, "lstm.pt", lr=1.0)``, or ``nos.Optimizer(params,
"lstm.pt")``, which gives the same object: wherever a rule goes, a checkpoint
of ``nos learn`` goes too.  Each step runs the shared network on each parameter's
gradient with that parameter's own recurrent state and adds ``lr`` times its
output (:mod:`nos.learned.lstm`).  The state is created lazily on the first
step, as torch.optim's is, and is saved by ``state_dict()`` (plain tensors:
``step`` and ``lstm``, the hidden and cell states) and restored by
``load_state_dict()``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from typing import Any

import torch

from nos.learned.checkpoint import load_checkpoint
from nos.learned.lstm import CoordinateLSTM

DEFAULT_LR = 1.0  # the scale the network was meta-trained at
# nos.Optimizer's keywords that mean nothing to a learned optimizer: it reads no T and
# draws no noise, and steps one tensor at a time
IGNORED = ("seed", "foreach", "fused")


class LearnedOptimizer(torch.optim.Optimizer):
    """Steps parameters with a meta-trained coordinate-wise LSTM:
    ``w <- w + lr * 0.1 * LSTM(preprocess(g), state)``.

    Args:
        params: parameters or param groups, as for any torch optimizer.
        network: a ``.pt`` file written by ``nos learn`` (``nos.learned.save_checkpoint``),
            or a :class:`~nos.learned.lstm.CoordinateLSTM`.
        lr: scales the network's update, per group too; 1 (the default) is the scale it
            was meta-trained at.  A one-element tensor is accepted, as by torch.optim.
        maximize: step up the gradient: the network sees ``-g``.
        total_steps, seed, foreach, fused: accepted for ``nos.Optimizer``'s signature, and
            unused: the network reads no horizon and draws no noise.

    Raises:
        ValueError: a checkpoint that is not a learned optimizer, a learning rate that is
            not a positive finite number, or a keyword the optimizer does not take.
    """

    def __init__(self, params: Iterable[Any], network: str | os.PathLike | CoordinateLSTM,
                 lr: float | torch.Tensor | None = None, total_steps: int | None = None, *,
                 maximize: bool = False, **unused: Any) -> None:
        _refuse_unknown(unused)
        if isinstance(network, CoordinateLSTM):
            self.checkpoint, self.training = None, {}
        else:
            self.checkpoint = os.fspath(network)
            network, self.training = load_checkpoint(self.checkpoint)
        lr = DEFAULT_LR if lr is None else lr
        _check_lr(lr)
        self.network = network
        self._copies: dict[tuple[torch.device, torch.dtype], CoordinateLSTM] = {}
        super().__init__(params, {"lr": lr, "maximize": bool(maximize)})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "lr" in param_group:
            _check_lr(param_group["lr"])
        super().add_param_group(param_group)

    def network_for(self, device: torch.device, dtype: torch.dtype) -> CoordinateLSTM:
        """The network on ``device`` in ``dtype`` (a copy made once, then reused)."""
        key = (device, dtype)
        if key not in self._copies:
            copy = CoordinateLSTM(self.network.architecture).to(device=device, dtype=dtype)
            copy.load_state_dict(self.network.state_dict())
            self._copies[key] = copy.eval().requires_grad_(False)
        return self._copies[key]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse or param.is_complex():
                    raise RuntimeError("a learned optimizer steps dense real tensors only")
                state = self.state[param]
                network = self.network_for(param.device, param.dtype)
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["lstm"] = network.initial_state(param.numel(), param.device,
                                                          param.dtype)
                grad = -param.grad if group["maximize"] else param.grad
                update, state["lstm"] = network(grad, state["lstm"])
                param.add_(update.mul_(group["lr"]))
                state["step"] += 1
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the recurrent states and groups of ``state_dict()``; a state that does not
        fit this optimizer's network or parameters is refused before anything changes."""
        arch = self.network.architecture
        saved = state_dict.get("param_groups", [])
        ids = [i for group in saved for i in group.get("params", [])]
        params = [p for group in self.param_groups for p in group["params"]]
        for index, param in zip(ids, params):
            lstm = state_dict.get("state", {}).get(index, {}).get("lstm")
            expected = (arch.layers, 2, param.numel(), arch.hidden_size)
            if lstm is not None and tuple(lstm.shape) != expected:
                raise ValueError(f"learned-optimizer state of parameter {index} has shape "
                                 f"{tuple(lstm.shape)}, expected {expected}")
        super().load_state_dict(state_dict)

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "network": self.network,
                "checkpoint": self.checkpoint, "training": self.training, "_copies": {}}

    def __repr__(self) -> str:
        source = self.checkpoint or "a CoordinateLSTM"
        return f"LearnedOptimizer({source}, lr={self.defaults['lr']})"


def check_checkpoint(path: str | os.PathLike, params: dict[str, Any] | None = None) -> str:
    """``path`` as text, once its file has been read as a learned optimizer and ``params``
    (more keyword arguments of ``nos.Optimizer``) found to be ones it takes.

    Raises:
        ValueError: one line: what is wrong with the file, or the keyword it does not take.
    """
    load_checkpoint(path)
    _refuse_unknown({k: v for k, v in (params or {}).items() if k != "maximize"})
    return os.fspath(path)


def _refuse_unknown(keywords: dict[str, Any]) -> None:
    unknown = [key for key in keywords if key not in IGNORED]
    if unknown:
        raise ValueError(f"a learned optimizer takes no keyword {unknown[0]!r}: it has no "
                         "params (only lr and maximize)")


def _check_lr(lr: float | torch.Tensor) -> None:
    value = lr.item() if isinstance(lr, torch.Tensor) and lr.numel() == 1 else lr
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value <= 0):
        raise ValueError(f"Invalid learning rate: {lr!r}, must be a positive finite number")
