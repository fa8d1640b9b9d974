"""The executors of a compiled program: one step for a bucket of tensors.

Both read the same program and give bit-identical results, as torch.optim's
single-tensor and foreach forms do: a readable per-tensor reference
(:func:`run_reference`) and the multi-tensor path (:func:`run_foreach`, one
``torch._foreach_*`` call per instruction for all tensors of a bucket).
Random draws come in the same order for both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from nos.compile.kernels import KERNELS
from nos.compile.program import NOISE_STD, Instr, Program, Term, shape_of
from nos.lang.ops import OPS, linear_decay

# --- scalar instructions -----------------------------------------------------------

_SCALAR_EXTRA: dict[str, Callable[..., float]] = {"ld": linear_decay}


def _scalar_fn(op: str) -> Callable[..., float]:
    return _SCALAR_EXTRA[op] if op in _SCALAR_EXTRA else OPS[op].scalar  # type: ignore[return-value]


def scalar_values(program: Program, hyper: dict[str, float], t: int, total: int | None,
                  lr: float | torch.Tensor = 0.0, facts: dict[str, float] | None = None,
                  numbers: dict[str, float] | None = None) -> list:
    """The slots computed on the host: constants, params, t, T, lr, the tensors' facts, the
    numbers the rule keeps (``numbers``, their old values) and the scalar code."""
    env: list = [None] * program.n_slots
    for slot, value in program.consts.items():
        env[slot] = value
    for name, slot in program.inputs.items():
        if name == "t":
            env[slot] = float(t)
        elif name == "T":
            env[slot] = float(total)  # type: ignore[arg-type]
        elif name == "lr":  # a tensor lr is read on the host only by rules that read lr
            env[slot] = float(lr)
        elif name in program.params:
            env[slot] = float(hyper[name])
        elif name in program.facts:
            env[slot] = float(facts[name])  # type: ignore[index]
        elif name in program.scalar_state:
            env[slot] = float((numbers or {}).get(name, 0.0))
    for ins in program.scalar_code:
        env[ins.out] = _scalar_fn(ins.op)(*(env[a] for a in ins.args))
    return env


def tensor_facts(p: torch.Tensor) -> dict[str, float]:
    """What a rule may know of one tensor on the host (``ndim``, ``rows``, ...)."""
    rows, cols = matrix_view(p).shape[-2:]
    return {"ndim": p.dim(), "rows": rows, "cols": cols, "numel": p.numel(),
            "machine_eps": torch.finfo(p.dtype).eps}


def matrix_view(p: torch.Tensor) -> torch.Tensor:
    """The tensor as rules that read rows or columns see it: a vector of n is a column
    (n, 1), a number is (1, 1), other tensors keep their shape (rows and columns are the
    last two dimensions).  A view: writing it writes the tensor."""
    if p.dim() >= 2:
        return p
    return p.reshape(-1, 1) if p.dim() == 1 else p.reshape(1, 1)


def _fill(ins: Instr, value, like: torch.Tensor) -> torch.Tensor:
    """A new tensor of the instruction's shape (for ``like``) holding a number or a tensor."""
    out = torch.empty(shape_of(ins.shape, like), dtype=like.dtype, device=like.device)
    return out.copy_(value) if isinstance(value, torch.Tensor) else out.fill_(value)


def _coefficient(term: Term, env: list) -> float:
    c = term.sign
    for slot, reciprocal in term.factors:
        c = OPS["div"].scalar(c, env[slot]) if reciprocal else c * env[slot]
    return c


# --- random draws: the same order for both executors -------------------------------


def _draw(ins: Instr, env: list, like: list[torch.Tensor], generator) -> list[torch.Tensor]:
    gen = generator(like[0].device) if like else None
    if ins.op == "noise":
        return [torch.randn(p.shape, generator=gen, dtype=p.dtype, device=p.device) * NOISE_STD
                for p in like]
    if ins.op == "annealed_noise":
        std = (1.0 + env[ins.args[0]]) ** -0.275  # variance 1 / (1 + t)^0.55
        return [torch.randn(p.shape, generator=gen, dtype=p.dtype, device=p.device) * std
                for p in like]
    p = env[ins.args[1]]
    scale = 0.0 if p >= 1 else 1.0 / (1.0 - p)
    return [(torch.rand(q.shape, generator=gen, dtype=q.dtype, device=q.device) >= p)
            .to(q.dtype) * scale for q in like]


# --- the executors -------------------------------------------------------------------


@dataclass
class Bucket:
    """One bucket of tensors stepped together: same group, device, dtype and step."""

    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    buffers: dict[str, list[torch.Tensor]]  # name -> one tensor per parameter
    hyper: dict[str, float]
    lr: float | torch.Tensor  # a tensor lr (one element) is never read on the host
    t: int
    total: int | None
    facts: dict[str, float] | None = None  # the tensors' facts, when the rule reads them
    numbers: dict[str, float] | None = None  # the numbers the rule keeps: old, then new

    def scalars(self, program: Program) -> list:
        """The host slots of this bucket's step; the numbers kept take their new values."""
        env = scalar_values(program, self.hyper, self.t, self.total, self.lr, self.facts,
                            self.numbers)
        self.numbers = {name: env[slot] for name, slot in (program.scalar_out or {}).items()}
        return env


LOW_PRECISION = (torch.float16, torch.bfloat16)


def _lr_tensor(lr: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A tensor lr as a 0-d tensor on the parameters' device, in the precision the step
    computes its scalars in (float64 beside float64 parameters, else float32).  A copy to
    an accelerator does not wait for it (as torch.optim's fused paths copy a tensor lr)."""
    dtype = torch.promote_types(torch.promote_types(lr.dtype, like.dtype), torch.float32)
    return lr.to(device=like.device, dtype=dtype,
                 non_blocking=like.device.type != "cpu").reshape(())


def _summed(program: Program, like: torch.Tensor) -> bool:
    """float16 and bfloat16 parameters take a step of several terms as one sum, rounded
    once: rounding them after each term would lose what torch (one update) keeps."""
    return len(program.terms) > 1 and like.dtype in LOW_PRECISION


def _unscaled(term: Term, args: list, w, foreach: bool):
    """The tensors of a term before its coefficient: a tensor lr's step adds them as
    ``target.addcmul_(x, alpha)``, which rounds as ``add_(x, alpha=a)`` does for a number."""
    if term.kind in ("scale", "add"):
        return w if term.kind == "scale" else args[0]
    if term.kind == "addcdiv":
        return (torch._foreach_div if foreach else torch.div)(args[0], args[1])
    return (torch._foreach_mul if foreach else torch.mul)(args[0], args[1])


def _foreach_terms(program: Program, bucket: Bucket, env: list) -> None:
    """The terms of the step when the plain loop of :func:`run_foreach` does not do: a tensor
    lr (each coefficient a 0-d tensor on the device, never read on the host), or a sum of
    terms rounded once (:func:`_summed`)."""
    params = bucket.params
    tensor_lr = isinstance(bucket.lr, torch.Tensor)
    lr = _lr_tensor(bucket.lr, params[0]) if tensor_lr else bucket.lr  # type: ignore[arg-type]
    summed = _summed(program, params[0])
    target = [torch.zeros_like(p) for p in params] if summed else params
    for term in program.terms:
        c = _coefficient(term, env)
        alpha = lr * -c if tensor_lr else -lr * c
        args = [env[a] for a in term.args]
        if term.kind == "scale" and not summed:
            torch._foreach_mul_(params, alpha + 1.0)
        elif term.kind == "scalar":  # the Tensor overload: a 0-d tensor is not a Scalar here
            (torch.ops.aten._foreach_add_.Tensor if tensor_lr else torch._foreach_add_)(
                target, alpha)
        elif tensor_lr:
            for t, x in zip(target, _unscaled(term, args, params, foreach=True), strict=True):
                t.addcmul_(x, alpha)
        elif term.kind in ("scale", "add"):
            torch._foreach_add_(target, params if term.kind == "scale" else args[0], alpha=alpha)
        elif term.kind == "addcdiv":
            torch._foreach_addcdiv_(target, args[0], args[1], value=alpha)
        else:
            torch._foreach_addcmul_(target, args[0], args[1], value=alpha)
    if summed:
        torch._foreach_add_(params, target)


def _terms(program: Program, p: torch.Tensor, lr: float | torch.Tensor, env: list) -> None:
    """:func:`_foreach_terms` for one parameter tensor (the same operations)."""
    tensor_lr = isinstance(lr, torch.Tensor)
    if tensor_lr:
        lr = _lr_tensor(lr, p)  # type: ignore[arg-type]
    summed = _summed(program, p)
    target = torch.zeros_like(p) if summed else p
    for term in program.terms:
        c = _coefficient(term, env)
        alpha = lr * -c if tensor_lr else -lr * c
        args = [env[a] for a in term.args]
        if term.kind == "scale" and not summed:
            p.mul_(alpha + 1.0)
        elif term.kind == "scalar":
            target.add_(alpha)
        elif tensor_lr:
            target.addcmul_(_unscaled(term, args, p, foreach=False), alpha)
        elif term.kind in ("scale", "add"):
            target.add_(p if term.kind == "scale" else args[0], alpha=alpha)
        elif term.kind == "addcdiv":
            target.addcdiv_(args[0], args[1], value=alpha)
        else:
            target.addcmul_(args[0], args[1], value=alpha)
    if summed:
        p.add_(target)


def _inputs(program: Program, env: list, grads, params, buffers) -> None:
    if "g" in program.inputs:
        env[program.inputs["g"]] = grads
    if "w" in program.inputs:
        env[program.inputs["w"]] = params
    for name in program.buffers:
        env[program.inputs[name]] = buffers[name]


def _complete(steps: Iterator) -> None:
    for _ in steps:
        raise RuntimeError("a rule with reductions over all parameters (gsum, gnorm, ...) "
                           "steps through nos.Optimizer, which joins every bucket")


def run_foreach(program: Program, bucket: Bucket, generator) -> None:
    """One step for a bucket with one ``torch._foreach_*`` call per instruction."""
    _complete(foreach_steps(program, bucket, generator))


def run_reference(program: Program, bucket: Bucket, generator) -> None:
    """The same step, one parameter tensor at a time: the readable reference."""
    _complete(reference_steps(program, bucket, generator))


def _joined(values: dict[int, torch.Tensor], reductions: list[Instr], like: torch.Tensor
            ) -> dict[int, torch.Tensor]:
    """The global reductions' values for tensors like ``like`` (their dtype and device)."""
    return {ins.out: values[ins.out].to(device=like.device, dtype=like.dtype)
            for ins in reductions}


def foreach_steps(program: Program, bucket: Bucket, generator
                  ) -> Iterator[dict[int, list[torch.Tensor]]]:
    """:func:`run_foreach` as a generator: at the end of each stage of a program with global
    reductions it yields their partial values, one per tensor ({slot: partials}), and takes
    back their joined values ({slot: 0-d tensor}) (:mod:`nos.lang.ops`, ``combine``)."""
    env = bucket.scalars(program)
    _inputs(program, env, bucket.grads, bucket.params,
            {name: list(bucket.buffers[name]) for name in program.buffers})
    for code, reductions in program.stages:  # type: ignore[union-attr]
        for ins in code:
            args = [env[a] for a in ins.args]
            if ins.op == "fill":
                value = args[0]  # a number, or one tensor per parameter (_foreach_norm: a tuple)
                each = isinstance(value, (list, tuple))
                env[ins.out] = [_fill(ins, value[i] if each else value, p)
                                for i, p in enumerate(bucket.params)]
            elif ins.random and ins.op != "drop":
                env[ins.out] = _draw(ins, env, bucket.params, generator)
            else:
                if ins.op == "drop":
                    args[1] = _draw(ins, env, bucket.params, generator)
                kernel = KERNELS[ins.op]
                env[ins.out] = (kernel.foreach_ if ins.inplace else kernel.foreach)(*args)
        if reductions:
            values = yield {ins.out: list(OPS[ins.op].foreach(env[ins.args[0]]))
                            for ins in reductions}
            joined = _joined(values, reductions, bucket.params[0])
            for slot, value in joined.items():  # each tensor its own copy: code may write it
                env[slot] = [value.clone() for _ in bucket.params]
    for name, slot in program.state_out.items():
        value = env[slot]
        bucket.buffers[name][:] = [v.clone() for v in value] if name in program.copied else value
    if program.terms[0].kind == "set":
        torch._foreach_copy_(bucket.params, env[program.terms[0].args[0]])
        return
    if isinstance(bucket.lr, torch.Tensor) or _summed(program, bucket.params[0]):
        _foreach_terms(program, bucket, env)
        return
    for term in program.terms:  # the plain case: each term folded into the parameters
        alpha = -bucket.lr * _coefficient(term, env)
        args = [env[a] for a in term.args]
        if term.kind == "scale":
            torch._foreach_mul_(bucket.params, 1.0 + alpha)
        elif term.kind == "add":
            torch._foreach_add_(bucket.params, args[0], alpha=alpha)
        elif term.kind == "addcdiv":
            torch._foreach_addcdiv_(bucket.params, args[0], args[1], value=alpha)
        elif term.kind == "addcmul":
            torch._foreach_addcmul_(bucket.params, args[0], args[1], value=alpha)
        else:
            torch._foreach_add_(bucket.params, alpha)


def reference_steps(program: Program, bucket: Bucket, generator
                    ) -> Iterator[dict[int, list[torch.Tensor]]]:
    """:func:`run_reference` as a generator (see :func:`foreach_steps`).  Each tensor runs a
    stage in turn; one without global reductions runs its whole step before the next
    tensor starts, keeping its temporaries in cache."""
    scalars = bucket.scalars(program)
    draws = {ins.out: _draw(ins, scalars, bucket.params, generator)
             for ins in program.tensor_code if ins.random}
    envs = []
    for i, p in enumerate(bucket.params):
        env = list(scalars)
        _inputs(program, env, bucket.grads[i], p,
                {name: bucket.buffers[name][i] for name in program.buffers})
        envs.append(env)
    last = len(program.stages) - 1  # type: ignore[arg-type]
    for stage, (code, reductions) in enumerate(program.stages):  # type: ignore[arg-type]
        for i, (p, env) in enumerate(zip(bucket.params, envs, strict=True)):
            for ins in code:
                args = [env[a] for a in ins.args]
                if ins.op == "fill":
                    env[ins.out] = _fill(ins, args[0], p)
                elif ins.random and ins.op != "drop":
                    env[ins.out] = draws[ins.out][i]
                else:
                    if ins.op == "drop":
                        args[1] = draws[ins.out][i]
                    kernel = KERNELS[ins.op]
                    env[ins.out] = (kernel.tensor_ if ins.inplace else kernel.tensor)(*args)
            if stage == last and not reductions:
                _finish(program, bucket, i, p, env)
        if reductions:
            values = yield {ins.out: [OPS[ins.op].tensor(env[ins.args[0]]) for env in envs]
                            for ins in reductions}
            joined = _joined(values, reductions, bucket.params[0])
            for env in envs:
                for slot, value in joined.items():
                    env[slot] = value.clone()
            if stage == last:
                for i, (p, env) in enumerate(zip(bucket.params, envs, strict=True)):
                    _finish(program, bucket, i, p, env)


def _finish(program: Program, bucket: Bucket, i: int, p: torch.Tensor, env: list) -> None:
    """Tensor i's buffers written back and its parameter stepped."""
    for name, slot in program.state_out.items():
        value = env[slot]
        bucket.buffers[name][i] = value.clone() if name in program.copied else value
    if program.terms[0].kind == "set":
        p.copy_(env[program.terms[0].args[0]])
        return
    if isinstance(bucket.lr, torch.Tensor) or _summed(program, p):
        _terms(program, p, bucket.lr, env)
        return
    for term in program.terms:
        alpha = -bucket.lr * _coefficient(term, env)
        args = [env[a] for a in term.args]
        if term.kind == "scale":
            p.mul_(1.0 + alpha)
        elif term.kind == "add":
            p.add_(args[0], alpha=alpha)
        elif term.kind == "addcdiv":
            p.addcdiv_(args[0], args[1], value=alpha)
        elif term.kind == "addcmul":
            p.addcmul_(args[0], args[1], value=alpha)
        else:
            p.add_(alpha)
