"""A rule's expressions evaluated outside a step: initial values of states and views.

A state's ``from`` value is computed once, when its buffer is made; a view
(``eval_w``, ``train_w``) when ``optimizer.eval()`` or ``optimizer.train()`` is called.
Neither is on the step's hot path, so they are evaluated straight from the tree with
the op table's per-tensor forms, as the reference executor would compute them.
"""

from __future__ import annotations

import torch

from nos.lang.ops import OPS
from nos.lang.tree import Node

Value = float | torch.Tensor


def evaluate(node: Node, names: dict[str, Value], like: torch.Tensor | None = None) -> Value:
    """The value of ``node`` given the values of the names it reads; ``like`` (the
    parameter) gives a number the tensor shape a reduction or a matrix function needs."""
    if node.op == "num":
        return float(node.value)  # type: ignore[arg-type]
    if node.op == "name":
        return names[str(node.value)]
    op = OPS[node.op]
    args = [evaluate(a, names, like) for a in node.args]
    if op.elementwise and op.scalar is not None and not any(
            isinstance(a, torch.Tensor) for a in args):
        return op.scalar(*args)
    if not op.elementwise and not isinstance(args[0], torch.Tensor):
        if like is None:
            raise ValueError(f"{op.name} needs a tensor here")
        args[0] = torch.full_like(like, args[0])
    return op.tensor(*args)  # type: ignore[misc]
