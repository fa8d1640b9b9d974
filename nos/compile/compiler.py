"""A Rule becomes a program: straight-line instructions over numbered slots.

Compiling a rule (with the prelude it uses) does once the work a step should
not repeat:

- dead statements are dropped, so only the buffers the update needs exist;
- every subexpression is typed: a *constant* is folded now, a *scalar*
  (numbers, params, t, T and the schedules) is computed once per step on
  Python floats, a *tensor* is computed element-wise;
- identical subexpressions are computed once; params equal to zero in a group
  are specialised away (``wd * w`` costs nothing when ``wd = 0``);
- ``a*x + b*y`` and ``a*v + b*x*z`` become one fused instruction, results that
  nothing reads afterwards are overwritten in place, and the update is folded
  into the parameter step (``addcdiv_``, ``addcmul_``), as torch.optim does by
  hand;
- reading a state before its statement gives the old buffer, after it the new
  value (slots are single-assignment); buffers are written back at the end.

Two executors read the same program and give bit-identical results: a
readable per-tensor reference (:func:`run_reference`) and the multi-tensor
path (:func:`run_foreach`, one ``torch._foreach_*`` call per instruction for
all tensors of a group).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from nos.compile.kernels import KERNELS
from nos.lang.ops import OPS, linear_decay
from nos.lang.rule import Node, Rule, Statement

CONST, SCALAR, TENSOR = "const", "scalar", "tensor"
NOISE_STD = 0.1  # noise ~ N(0, 0.01): variance 0.01


class RuleCompileError(ValueError):
    """A rule that parses but cannot be compiled (e.g. a random drop probability)."""


@dataclass(frozen=True)
class Instr:
    op: str  # a KERNELS name, "fill", "noise", "annealed_noise", or a scalar op
    args: tuple[int, ...]
    out: int
    kind: str  # SCALAR or TENSOR
    random: bool = False
    inplace: bool = False  # overwrite args[0]'s tensors instead of making new ones


@dataclass(frozen=True)
class Term:
    """One part of the step: ``params -= lr * coefficient * f(args)``.

    ``kind`` is ``add`` (x), ``addcdiv`` (x / y), ``addcmul`` (x * y), ``scale`` (the
    parameter itself, applied first as ``params *= 1 - lr * c``) or ``scalar`` (1).
    The coefficient is ``sign`` times the product of the factor slots
    (divided by those marked reciprocal).
    """

    kind: str
    args: tuple[int, ...]
    sign: float = 1.0
    factors: tuple[tuple[int, bool], ...] = ()


@dataclass
class Program:
    """The compiled rule: read by both executors."""

    rule: Rule
    n_slots: int
    consts: dict[int, float]
    inputs: dict[str, int]  # g, w, t, T, params, and each buffer's old value
    scalar_code: list[Instr]
    tensor_code: list[Instr]
    state_out: dict[str, int]  # buffer name -> slot of its new value
    update: int
    terms: list[Term]
    kinds: list[str]
    params: dict[str, Statement]  # the params the live code reads
    buffers: tuple[str, ...]
    needs_total_steps: bool
    random: bool
    copied: frozenset[str] = frozenset()  # buffers whose new value needs its own copy

    @property
    def instructions(self) -> int:
        return len(self.scalar_code) + len(self.tensor_code)


def _live_statements(statements: tuple[Statement, ...]) -> list[Statement]:
    """Statements the update depends on (a read buffer keeps its statement alive)."""
    update = next(s for s in statements if s.kind == "update")
    needed = set(update.expr.names())  # type: ignore[union-attr]
    while True:
        grown = set(needed)
        for s in statements:
            if s.name in needed and s.expr is not None:
                grown |= s.expr.names()
        if grown == needed:
            break
        needed = grown
    return [s for s in statements if s.kind == "update" or s.name in needed]


class _Builder:
    def __init__(self, zeros: frozenset[str]) -> None:
        self.zeros = zeros
        self.kinds: list[str] = []
        self.consts: dict[int, float] = {}
        self.inputs: dict[str, int] = {}
        self.scalar_code: list[Instr] = []
        self.tensor_code: list[Instr] = []
        self.memo: dict[tuple, int] = {}
        self.env: dict[str, int] = {}

    def slot(self, kind: str) -> int:
        self.kinds.append(kind)
        return len(self.kinds) - 1

    def const(self, value: float) -> int:
        key = ("const", value, math.copysign(1.0, value), value != value)
        if key not in self.memo:
            s = self.slot(CONST)
            self.consts[s] = value
            self.memo[key] = s
        return self.memo[key]

    def input(self, name: str, kind: str) -> int:
        if name not in self.inputs:
            self.inputs[name] = self.slot(kind)
        return self.inputs[name]

    def value(self, slot: int) -> float | None:
        return self.consts.get(slot)

    def simplify(self, op: str, args: tuple[int, ...]) -> int | None:
        """x+0, x-0, x*1, x/1, x^1 are x; w*0 is 0 (the parameter is finite, while any other
        value may be inf or nan, whose product with 0 is nan)."""
        if op == "pow" and self.value(args[1]) == 2.0 and self.kinds[args[0]] == TENSOR:
            return self.emit("mul", (args[0], args[0]))
        if len(args) != 2:
            return None
        a, b = args
        va, vb = self.value(a), self.value(b)
        if op in ("add", "sub") and vb == 0.0:
            return a
        if op == "add" and va == 0.0:
            return b
        if op == "sub" and va == 0.0:
            return self.emit("neg", (b,))
        if op in ("mul", "div", "pow") and vb == 1.0:
            return a
        if op == "mul" and va == 1.0:
            return b
        if op == "mul" and (va == 0.0 or vb == 0.0) and self.inputs.get("w") in (a, b):
            return self.const(0.0)
        return None

    def emit(self, op: str, args: tuple[int, ...], kind: str | None = None,
             random: bool = False) -> int:
        arg_kinds = [self.kinds[a] for a in args]
        if kind is None:
            kind = TENSOR if TENSOR in arg_kinds else SCALAR
            if kind == SCALAR and all(k == CONST for k in arg_kinds) and not random:
                return self.const(OPS[op].scalar(*(self.consts[a] for a in args)))
            simpler = self.simplify(op, args)
            if simpler is not None:
                return simpler
        key = (op, args)
        if not random and key in self.memo:
            return self.memo[key]
        out = self.slot(kind)
        code = self.tensor_code if kind == TENSOR else self.scalar_code
        code.append(Instr(op, args, out, kind, random))
        if not random:
            self.memo[key] = out
        return out

    def expr(self, node: Node) -> int:
        if node.op == "num":
            return self.const(float(node.value))  # type: ignore[arg-type]
        if node.op == "name":
            return self.name(str(node.value))
        args = tuple(self.expr(a) for a in node.args)
        op = OPS[node.op]
        for i in op.constant_args:
            if self.kinds[args[i]] == TENSOR:
                raise RuleCompileError(
                    f"argument {i + 1} of {op.signature} must not depend on tensors "
                    f"(line {node.line})"
                )
        if op.schedule:
            return self.emit(node.op, args + (self.input("t", SCALAR), self.input("T", SCALAR)),
                             kind=SCALAR)
        if op.random:
            return self.emit(node.op, (self.tensorize(args[0]), args[1]), kind=TENSOR,
                             random=True)
        return self.emit(node.op, args)

    def tensorize(self, slot: int) -> int:
        """A tensor slot for a value that may be a scalar (broadcast to the parameter)."""
        if self.kinds[slot] == TENSOR:
            return slot
        return self.emit("fill", (slot,), kind=TENSOR)

    def name(self, word: str) -> int:
        if word in self.env:
            return self.env[word]
        if word in ("g", "w"):
            return self.input(word, TENSOR)
        if word in ("t", "T"):
            return self.input(word, SCALAR)
        if word == "ld":
            return self.emit("ld", (self.input("t", SCALAR), self.input("T", SCALAR)),
                             kind=SCALAR)
        if word == "noise":
            return self.emit("noise", (), kind=TENSOR, random=True)
        if word == "annealed_noise":
            return self.emit("annealed_noise", (self.input("t", SCALAR),), kind=TENSOR,
                             random=True)
        raise RuleCompileError(f"'{word}' has no value here")  # parse() prevents this


def _whole_update(update: int, is_tensor: bool) -> Term:
    if is_tensor:
        return Term("add", (update,))
    return Term("scalar", (), factors=((update, False),))


@functools.lru_cache(maxsize=256)
def compile_rule(rule: Rule, zeros: frozenset[str] = frozenset(), optimize: bool = True
                 ) -> Program:
    """Compile a parsed rule and the prelude definitions it uses.

    ``zeros`` names params known to be 0 (specialised away); ``optimize=False``
    keeps the plain one-instruction-per-operation program.
    """
    expanded = rule.expanded()
    live = _live_statements(expanded.statements)
    b = _Builder(zeros)
    params = {s.name: s for s in live if s.kind == "param"}
    for name in params:
        b.env[name] = b.const(0.0) if name in zeros else b.input(name, SCALAR)
    buffers = tuple(s.name for s in live if s.kind == "state")
    for name in buffers:
        b.env[name] = b.input(name, TENSOR)
    state_out: dict[str, int] = {}
    update = -1
    for s in live:
        if s.kind == "param":
            continue
        value = b.expr(s.expr)  # type: ignore[arg-type]
        if s.kind == "state":
            value = b.tensorize(value)
            state_out[s.name] = value
            b.env[s.name] = value
        elif s.kind == "let":
            b.env[s.name] = value
        else:
            update = value
    program = Program(
        rule=rule, n_slots=len(b.kinds), consts=b.consts, inputs=b.inputs,
        scalar_code=b.scalar_code, tensor_code=b.tensor_code, state_out=state_out,
        update=update, terms=[_whole_update(update, b.kinds[update] == TENSOR)],
        kinds=b.kinds, params=params, buffers=buffers,
        needs_total_steps="T" in b.inputs,
        random=any(i.random for i in b.tensor_code) or any(i.random for i in b.scalar_code),
    )
    if optimize:
        from nos.compile.passes import optimize_program

        optimize_program(program, b)
    program.copied = _copied_buffers(program)
    return program


def _copied_buffers(program: Program) -> frozenset[str]:
    """The buffers that must copy their new value so that every buffer owns its tensors.

    A buffer may keep, without a copy, a tensor made this step (or its own old
    tensor) that no other buffer keeps.  Any other value (the gradient, the
    parameter, another buffer's old tensor, a tensor an earlier buffer already
    keeps) is copied: two buffers sharing one tensor would see each other's
    in-place updates on the next step.
    """
    made = {i.out for i in program.tensor_code}
    owned: set[int] = set()
    copied = set()
    for name, slot in program.state_out.items():
        if slot not in owned and (slot in made or slot == program.inputs[name]):
            owned.add(slot)
        else:
            copied.add(name)
    return frozenset(copied)


# --- scalar instructions -----------------------------------------------------------

_SCALAR_EXTRA: dict[str, Callable[..., float]] = {"ld": linear_decay}


def _scalar_fn(op: str) -> Callable[..., float]:
    return _SCALAR_EXTRA[op] if op in _SCALAR_EXTRA else OPS[op].scalar  # type: ignore[return-value]


def _scalars(program: Program, hyper: dict[str, float], t: int, total: int | None) -> list:
    env: list = [None] * program.n_slots
    for slot, value in program.consts.items():
        env[slot] = value
    for name, slot in program.inputs.items():
        if name == "t":
            env[slot] = float(t)
        elif name == "T":
            env[slot] = float(total)  # type: ignore[arg-type]
        elif name in program.params:
            env[slot] = float(hyper[name])
    for ins in program.scalar_code:
        env[ins.out] = _scalar_fn(ins.op)(*(env[a] for a in ins.args))
    return env


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
class Group:
    """One bucket of tensors stepped together: same group, device, dtype and step."""

    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    buffers: dict[str, list[torch.Tensor]]  # name -> one tensor per parameter
    hyper: dict[str, float]
    lr: float | torch.Tensor  # a tensor lr (one element) is never read on the host
    t: int
    total: int | None


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


def _scaled(term: Term, args: list, w, alpha: torch.Tensor, foreach: bool):
    """``alpha * term`` for a 0-d tensor alpha (a tensor lr), as new tensors."""
    mul = torch._foreach_mul if foreach else torch.mul
    if term.kind in ("scale", "add"):
        return mul(w if term.kind == "scale" else args[0], alpha)
    if term.kind == "addcdiv":
        out = (torch._foreach_div if foreach else torch.div)(args[0], args[1])
    else:
        out = mul(args[0], args[1])
    if foreach:
        torch._foreach_mul_(out, alpha)
        return out
    return out.mul_(alpha)


def _foreach_terms(program: Program, group: Group, env: list) -> None:
    """The terms of the step when the plain loop of :func:`run_foreach` does not do: a tensor
    lr (each coefficient a 0-d tensor on the device, never read on the host), or a sum of
    terms rounded once (:func:`_summed`)."""
    params = group.params
    tensor_lr = isinstance(group.lr, torch.Tensor)
    lr = _lr_tensor(group.lr, params[0]) if tensor_lr else group.lr  # type: ignore[arg-type]
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
            torch._foreach_add_(target, _scaled(term, args, params, alpha, foreach=True))
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
            target.add_(_scaled(term, args, p, alpha, foreach=False))  # type: ignore[arg-type]
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


def run_foreach(program: Program, group: Group, generator) -> None:
    """One step for a bucket with one ``torch._foreach_*`` call per instruction."""
    env = _scalars(program, group.hyper, group.t, group.total)
    _inputs(program, env, group.grads, group.params,
            {name: list(group.buffers[name]) for name in program.buffers})
    for ins in program.tensor_code:
        args = [env[a] for a in ins.args]
        if ins.op == "fill":
            env[ins.out] = [torch.full_like(p, args[0]) for p in group.params]
        elif ins.random and ins.op != "drop":
            env[ins.out] = _draw(ins, env, group.params, generator)
        else:
            if ins.op == "drop":
                args[1] = _draw(ins, env, group.params, generator)
            kernel = KERNELS[ins.op]
            env[ins.out] = (kernel.foreach_ if ins.inplace else kernel.foreach)(*args)
    for name, slot in program.state_out.items():
        value = env[slot]
        group.buffers[name][:] = [v.clone() for v in value] if name in program.copied else value
    if isinstance(group.lr, torch.Tensor) or _summed(program, group.params[0]):
        _foreach_terms(program, group, env)
        return
    for term in program.terms:  # the plain case: each term folded into the parameters
        alpha = -group.lr * _coefficient(term, env)
        args = [env[a] for a in term.args]
        if term.kind == "scale":
            torch._foreach_mul_(group.params, 1.0 + alpha)
        elif term.kind == "add":
            torch._foreach_add_(group.params, args[0], alpha=alpha)
        elif term.kind == "addcdiv":
            torch._foreach_addcdiv_(group.params, args[0], args[1], value=alpha)
        elif term.kind == "addcmul":
            torch._foreach_addcmul_(group.params, args[0], args[1], value=alpha)
        else:
            torch._foreach_add_(group.params, alpha)


def run_reference(program: Program, group: Group, generator) -> None:
    """The same step, one parameter tensor at a time: the readable reference."""
    scalars = _scalars(program, group.hyper, group.t, group.total)
    draws = {ins.out: _draw(ins, scalars, group.params, generator)
             for ins in program.tensor_code if ins.random}
    for i, (p, g) in enumerate(zip(group.params, group.grads, strict=False)):
        env = list(scalars)
        _inputs(program, env, g, p, {name: group.buffers[name][i] for name in program.buffers})
        for ins in program.tensor_code:
            args = [env[a] for a in ins.args]
            if ins.op == "fill":
                env[ins.out] = torch.full_like(p, args[0])
            elif ins.random and ins.op != "drop":
                env[ins.out] = draws[ins.out][i]
            else:
                if ins.op == "drop":
                    args[1] = draws[ins.out][i]
                kernel = KERNELS[ins.op]
                env[ins.out] = (kernel.tensor_ if ins.inplace else kernel.tensor)(*args)
        for name, slot in program.state_out.items():
            value = env[slot]
            group.buffers[name][i] = value.clone() if name in program.copied else value
        if isinstance(group.lr, torch.Tensor) or _summed(program, p):
            _terms(program, p, group.lr, env)
            continue
        for term in program.terms:
            alpha = -group.lr * _coefficient(term, env)
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


def describe(program: Program) -> str:
    """The program as readable lines (``nos parse --program``)."""
    names = {slot: name for name, slot in program.inputs.items()}

    def show(slot: int) -> str:
        if slot in program.consts:
            return repr(program.consts[slot])
        return names.get(slot, f"%{slot}")

    lines = [f"%{i.out} = {i.op}{'_' if i.inplace else ''}({', '.join(show(a) for a in i.args)})"
             f"  # {i.kind}" for i in program.scalar_code + program.tensor_code]
    lines += [f"{name} <- %{slot}" for name, slot in program.state_out.items()]
    for t in program.terms:
        coef = " * ".join(("1/" if r else "") + show(s) for s, r in t.factors) or "1"
        lines.append(f"w -= lr * {t.sign:g} * {coef} * {t.kind}({', '.join(map(show, t.args))})")
    return "\n".join(lines)


__all__ = ["Group", "Instr", "Program", "RuleCompileError", "Term", "compile_rule", "describe",
           "run_foreach", "run_reference"]
