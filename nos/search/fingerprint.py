"""Pay once per distinct rule: a functional fingerprint, and pruning before training.

As AutoML-Zero does, each compiled rule runs a few steps on a fixed probe —
fixed parameters, a fixed gradient sequence with magnitudes from 1e-6 to 10,
fixed seeds for ``noise`` and ``drop`` — and its rounded updates are hashed.
Rules with the same fingerprint behave the same and share one evaluation:
``g * 1``, ``g + 0``, ``(g + g) / 2`` and ``g`` all fall together.

The probe also prunes: a rule whose updates are NaN or infinite is
``invalid``; one whose updates are all zero, or do not change when the
gradients do, is ``degenerate``.  Neither is worth training.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from nos.compile.compiler import compile_rule
from nos.compile.executors import Bucket, run_reference
from nos.compile.program import RuleCompileError
from nos.lang.parser import RuleSyntaxError
from nos.lang.rule import Rule, parse

PROBE_STEPS = 8
SIGNIFICANT = 6  # digits kept when hashing the updates
SHAPES = ((7,), (3, 5))


@dataclass(frozen=True)
class Fingerprint:
    status: str  # "ok", "invalid" or "degenerate"
    digest: str | None  # None unless status is "ok"
    reason: str = ""


@functools.lru_cache(maxsize=1)
def _probe() -> tuple[list[torch.Tensor], list[list[torch.Tensor]], list[list[torch.Tensor]]]:
    """Parameters, and two gradient sequences (the second to test dependence on g)."""
    gen = torch.Generator().manual_seed(20170907)

    def varied(shape) -> torch.Tensor:
        magnitude = 10 ** (torch.rand(shape, generator=gen, dtype=torch.float64) * 7 - 6)
        sign = torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, 1.0).double()
        return magnitude * sign

    params = [varied(s) * 10 for s in SHAPES]
    grads = [[varied(s) for s in SHAPES] for _ in range(PROBE_STEPS)]
    other = [[varied(s) for s in SHAPES] for _ in range(PROBE_STEPS)]
    return params, grads, other


def _updates(rule: Rule, grads: list[list[torch.Tensor]]) -> np.ndarray:
    program = compile_rule(rule)
    if program.scalar_state or program.viewed or program.facts or program.switches or any(
            program.buffer_shape(name) for name in program.buffers) or program.crosses or \
            program.inits or program.terms[0].kind == "set":
        return _optimizer_updates(rule, grads)
    params0, _, _ = _probe()
    params = [p.clone() for p in params0]
    buffers = {name: [torch.zeros_like(p) for p in params] for name in program.buffers}
    hyper = {name: s.default for name, s in program.params.items()}
    gens: dict = {}

    def generator(device):
        if device not in gens:
            gens[device] = torch.Generator(device).manual_seed(0)
        return gens[device]

    steps = []
    for t, g in enumerate(grads, start=1):
        before = [p.clone() for p in params]
        group = Bucket(params, [x.clone() for x in g], buffers, hyper, 1.0, t, PROBE_STEPS)
        run_reference(program, group, generator)
        steps.append(torch.cat([_moved(b, p) for b, p in zip(before, params)]))
    return torch.stack(steps).numpy()


def _optimizer_updates(rule: Rule, grads: list[list[torch.Tensor]]) -> np.ndarray:
    """The probe through nos.Optimizer, for rules whose buffers are numbers or of reduced
    shapes, that read a tensor's facts or switch on a param, reduce over every parameter
    (both probe tensors: the optimizer joins its buckets), start a buffer at a ``from``
    value or set the parameter (``w = expr``) (the plain program above is kept for the
    others, whose digests stored runs hold)."""
    from nos.optim.optimizer import Optimizer

    params = [p.clone().requires_grad_(False) for p in _probe()[0]]
    opt = Optimizer(params, rule, lr=1.0, total_steps=PROBE_STEPS, foreach=False, seed=0)
    steps = []
    for g in grads:
        before = [p.clone() for p in params]
        for p, x in zip(params, g):
            p.grad = x.clone()
        opt.step()
        steps.append(torch.cat([_moved(b, p) for b, p in zip(before, params)]))
    return torch.stack(steps).numpy()


def _moved(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """The step taken, with the rounding noise of the parameter's own magnitude cleared
    (``w - a - b`` and ``w - b - a`` differ by an ulp of ``w``, not of the step)."""
    step = (before - after).flatten()
    noise = 1e-12 * before.abs().flatten().clamp_min(1.0)
    return torch.where(step.abs() <= noise, torch.zeros_like(step), step)


def _digest(values: np.ndarray) -> str:
    text = ",".join(f"{v:.{SIGNIFICANT - 1}e}" for v in values.ravel())
    return hashlib.sha1(text.replace("-0.00000e+00", "0.00000e+00").encode()).hexdigest()


def fingerprint(rule: Rule | str) -> Fingerprint:
    """Run the probe; never raises for a bad rule (it is ``invalid``)."""
    try:
        rule = parse(rule) if isinstance(rule, str) else rule
        updates = _updates(rule, _probe()[1])
    except (RuleSyntaxError, RuleCompileError, ValueError) as err:
        return Fingerprint("invalid", None, str(err).splitlines()[0])
    if not np.isfinite(updates).all():
        return Fingerprint("invalid", None, "NaN or infinite update on the probe")
    if not updates.any():
        return Fingerprint("degenerate", None, "the update is always zero")
    if np.array_equal(updates, _updates(rule, _probe()[2])):
        return Fingerprint("degenerate", None, "the update does not depend on the gradient")
    return Fingerprint("ok", _digest(updates))
