"""The fused path: a rule's whole step compiled by ``torch.compile`` into one kernel
per parameter tensor (one pass over memory, as ``torch.optim.Adam(fused=True)``).

The step function is generated from the plain program (no hand fusion: the
compiler fuses everything itself).  Scalars travel as one float64 tensor so
that a new step number or learning rate does not trigger a recompilation (a tensor
lr joins that tensor on the device, without a read on the host).
Random rules are not supported here (their draws come from the optimizer's
generator); ``nos.Optimizer(..., fused=True)`` refuses them.  The results
agree with the reference path to rounding, not bit for bit: the generated
kernel may order the arithmetic differently.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from nos.compile.compiler import compile_rule
from nos.compile.executors import Bucket
from nos.compile.program import TENSOR, Program, shape_of
from nos.lang.ops import OPS
from nos.lang.rule import Rule


class FusedStep:
    """One compiled step function per rule and zero-param pattern."""

    def __init__(self, rule: Rule, zeros: frozenset[str],
                 fixed: tuple[tuple[str, float], ...] = ()) -> None:
        self.program = compile_rule(rule, zeros, optimize=False, fixed=fixed)
        if self.program.random:
            raise ValueError("fused=True does not support random rules (noise, drop); "
                             "use the default path")
        self.compile_seconds: float | None = None
        step = _step_function(self.program)
        # torch.compile keeps a function's compiled graphs on its code object and stops
        # compiling it after torch._dynamo.config.recompile_limit (8) graphs: with one code
        # object shared by every rule, the ninth rule on ran uncompiled.  One per rule:
        step.__code__ = step.__code__.replace()
        self._step = torch.compile(step, dynamic=False)

    def __call__(self, bucket: Bucket) -> None:
        env = bucket.scalars(self.program)
        slots = [s for s, kind in enumerate(self.program.kinds) if kind != TENSOR]
        device = bucket.params[0].device
        values = [float(env[s]) for s in slots] + [1.0]  # the 1 of _step_function
        if isinstance(bucket.lr, torch.Tensor):  # stays on the device: no host synchronisation
            to = {"device": device, "dtype": torch.float64, "non_blocking": device.type != "cpu"}
            scalars = torch.cat([torch.tensor(values, dtype=torch.float64).to(**to),
                                 bucket.lr.reshape(1).to(**to)])
        else:
            scalars = torch.tensor(values + [bucket.lr], dtype=torch.float64, device=device)
        buffers = [[_one_d(b) for b in bucket.buffers[name]] for name in self.program.buffers]
        params, grads = [_one_d(p) for p in bucket.params], [_one_d(g) for g in bucket.grads]
        start = time.perf_counter()
        self._step(params, grads, buffers, scalars)
        if self.compile_seconds is None:
            self.compile_seconds = time.perf_counter() - start


def _eager(fn: Callable) -> Callable:
    """A matrix function run as it is, outside the compiled kernel: its arithmetic (bfloat16
    matrix products in torch's order) is the point, and its constants are read on the host."""

    @torch.compiler.disable
    def apply(x, *constants):
        return fn(x, *(float(c) for c in constants))

    return apply


_EAGER = {name: _eager(op.tensor) for name, op in OPS.items() if op.matrix}


def _one_d(x: torch.Tensor) -> torch.Tensor:
    """A 0-d tensor as a 1-element view: torch.compile drops in-place writes to 0-d
    float64 inputs (the parameter and its buffers would never change)."""
    return x.view(1) if x.dim() == 0 else x


def _step_function(program: Program) -> Callable:
    scalar_slots = [s for s, kind in enumerate(program.kinds) if kind != TENSOR]
    index = {s: i for i, s in enumerate(scalar_slots)}
    one_index, lr_index = len(scalar_slots), len(scalar_slots) + 1
    code = [(ins.op, ins.args, ins.out, ins.shape) for ins in program.tensor_code]
    buffer_slots = [program.inputs[name] for name in program.buffers]
    outputs = [(program.buffers.index(name), slot) for name, slot in program.state_out.items()]
    g_slot, w_slot = program.inputs.get("g"), program.inputs.get("w")
    update = program.update
    update_is_tensor = program.kinds[update] == TENSOR
    sets = program.terms[0].kind == "set"
    inputs = set(program.inputs.values())

    def step(params: list, grads: list, buffers: list, scalars: torch.Tensor) -> None:
        for i, p in enumerate(params):
            # 0-d float64 scalars mix with a tensor of any dtype in its dtype; a .to(dtype)
            # here made torch.compile read the parameter after its update
            env: dict = {s: scalars[k] for s, k in index.items()}
            if g_slot is not None:
                env[g_slot] = grads[i]
            if w_slot is not None:
                env[w_slot] = p
            for b, slot in enumerate(buffer_slots):
                env[slot] = buffers[b][i]
            for op, args, out, shape in code:
                if op == "fill":
                    env[out] = p.new_zeros(shape_of(shape, p)) + env[args[0]]
                else:
                    env[out] = _EAGER.get(op, OPS[op].tensor)(*(env[a] for a in args))
            step_size = scalars[lr_index]
            delta = env[update] * step_size
            # A buffer that takes an input's value as it is (w, g, another buffer's old
            # value) gets it times a 1 that torch.compile cannot see: a plain copy (or a
            # clone) was read after the input's own update in the same kernel.
            one = scalars[one_index]
            new_values = [(b, env[slot] * one if slot in inputs else env[slot])
                          for b, slot in outputs]
            for b, value in new_values:
                buffers[b][i].copy_(value)
            if sets:  # the rule gives the parameter's new value
                p.copy_(env[update])
            else:
                p.sub_(delta if update_is_tensor else torch.zeros_like(p) + delta)

    return step
