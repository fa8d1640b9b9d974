"""The learning-rate grid as one batched model.

The paper picks each rule's learning rate by a short run at every rate of a
grid.  Here the K short runs train together: the child's parameters are
stacked (``torch.func.stack_module_state``), one ``vmap``-ed forward pass of
``functional_call`` serves all K models on the same minibatch, the rule steps
the stacked parameters (it is element-wise, so this is K independent
optimizers), and each model then takes its own learning rate:
``w <- w0 + lr_k (w1 - w0)`` where ``w1`` is the step at ``lr = 1``.  The models
start from the same initial weights and see the same minibatches as the
unbatched runs would, so they choose the same rate, within rounding.  A model
that diverges is frozen and scored with the floor reward; so is one whose loss
has not fallen by step ``stop_loss_steps`` (status ``stopped``, judged as
``nos.train.evaluation`` judges one run).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence

import torch
from torch.func import functional_call, stack_module_state, vmap

from nos.lang.rule import Rule
from nos.optim.optimizer import Optimizer
from nos.train.tasks import Task, TaskData, reward


class GridTimeout(Exception):
    pass


def batchable(rule: Rule) -> bool:
    """Whether the stacked models step as K independent optimizers whose step scales with
    the rate: an element-wise rule (no reduction over a tensor, a row or every parameter;
    a per-tensor norm of the stack would mix the K models) that neither reads ``lr`` nor
    sets the parameter."""
    from nos.compile.compiler import compile_rule
    from nos.compile.program import FULL

    program = compile_rule(rule)
    return (not program.viewed and not program.crosses and "lr" not in program.inputs
            and program.terms[0].kind != "set"
            and all(program.shape(slot) == FULL for slot in range(program.n_slots)
                    if program.kinds[slot] == "tensor"))


def batched_grid(rule: Rule, task: Task, data: TaskData, lrs: Sequence[float], *,
                 epochs: float, seed: int, batch_size: int, device: torch.device,
                 deadline: float = math.inf, explode: float = 20.0,
                 floor: float = 0.0, stop_loss_steps: int | None = None,
                 hyper: dict | None = None) -> list[dict]:
    """Short runs at every rate of ``lrs`` at once; ``[{"lr", "reward", "status"}]``.
    ``hyper``: more keyword arguments of nos.Optimizer (the rule's params)."""
    k = len(lrs)
    torch.manual_seed(seed)
    model = task.build_model().to(device)
    params, buffers = stack_module_state([model] * k)
    params = {name: p.detach().clone().requires_grad_(True) for name, p in params.items()}
    base = copy.deepcopy(model).to("meta")

    def forward(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(base, (p, b), (x,))

    batched = vmap(forward, in_dims=(0, 0, None))
    n = len(data.train_x)
    total = max(1, round(epochs * math.ceil(n / batch_size)))
    opt = Optimizer(list(params.values()), rule, lr=1.0, total_steps=total, seed=seed,
                    **(hyper or {}))
    rates = torch.tensor(lrs, dtype=next(iter(params.values())).dtype, device=device)
    alive = torch.ones(k, dtype=torch.bool, device=device)
    first: list[float | None] = [None] * k
    # each model's losses up to the step where they are judged: 0 (never) when off
    stop_at = stop_loss_steps if stop_loss_steps is not None and total > stop_loss_steps else 0
    early_losses: list[list[float]] = []
    stopped = [False] * k
    order = torch.Generator().manual_seed(seed)
    step = 0
    while step < total:
        perm = torch.randperm(n, generator=order).to(device)
        for i in range(0, n, batch_size):
            if step >= total:
                break
            idx = perm[i:i + batch_size]
            out = batched(params, buffers, data.train_x[idx])
            losses = torch.stack([task.loss(out[j], data.train_y[idx]) for j in range(k)])
            values = losses.detach().tolist()
            for j, value in enumerate(values):
                first[j] = value if first[j] is None else first[j]
                if alive[j] and (not math.isfinite(value)
                                 or value > explode * max(first[j], 1e-3)):
                    alive[j] = False
            opt.zero_grad(set_to_none=True)
            torch.where(alive, losses, torch.zeros_like(losses)).sum().backward()
            before = [p.detach().clone() for p in params.values()]
            opt.step()
            with torch.no_grad():
                for p, w0 in zip(params.values(), before):
                    shape = (k,) + (1,) * (p.dim() - 1)
                    moved = w0 + rates.view(shape) * (p - w0)
                    p.copy_(torch.where(alive.view(shape), moved, w0))
            step += 1
            if step <= stop_at:
                early_losses.append(values)
                if step == stop_at:
                    _stop_unless_loss_fell(early_losses, alive, stopped)
            if time.monotonic() > deadline:
                raise GridTimeout(f"time limit reached at step {step} of the grid")
    return _score(task, data, batched, params, buffers, lrs, alive, stopped, floor)


def _stop_unless_loss_fell(losses: list[list[float]], alive: torch.Tensor,
                           stopped: list[bool]) -> None:
    """Freeze each live model whose mean loss over its last steps is not below its first."""
    w = max(1, min(50, len(losses) // 4))
    for j in range(len(stopped)):
        first = sum(row[j] for row in losses[:w]) / w
        last = sum(row[j] for row in losses[-w:]) / w
        if alive[j] and not last < first:
            alive[j] = False
            stopped[j] = True


def _score(task: Task, data: TaskData, batched, params: dict, buffers: dict,
           lrs: Sequence[float], alive: torch.Tensor, stopped: list[bool],
           floor: float) -> list[dict]:
    finite = [all(torch.isfinite(p[j]).all() for p in params.values()) for j in range(len(lrs))]
    with torch.no_grad():
        out = batched(params, buffers, data.val_x)
    grid = []
    for j, lr in enumerate(lrs):
        ok = bool(alive[j]) and finite[j]
        value = reward(task, (task.metric(out[j], data.val_y) / task.count(data.val_y)).item()) \
            if ok else floor
        status = "ok" if ok else "stopped" if stopped[j] and finite[j] else "diverged"
        grid.append({"lr": lr, "reward": value, "status": status})
    return grid
