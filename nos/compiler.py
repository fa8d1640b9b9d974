"""A Rule becomes a program: straight-line instructions over numbered slots.

Compiling a rule (with the prelude it uses) does the work once that a step
should not repeat:

- dead statements are dropped, so only the buffers the update needs exist;
- every subexpression is typed: a *constant* is folded now, a *scalar*
  (numbers, params, t, T and the schedules) is computed once per step on
  Python floats, a *tensor* is computed element-wise;
- identical subexpressions are computed once;
- reading a state before its statement gives the old buffer, after it the
  new value (the slots are single-assignment), and buffers are written back
  at the end of the step.

Two executors read the same program and give bit-identical results: a
readable per-tensor reference (:func:`run_reference`) and the multi-tensor
path (:func:`run_foreach`, one ``torch._foreach_*`` call per instruction for
all tensors of a group).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from nos.ops import OPS, linear_decay
from nos.rule import Node, Rule, Statement

CONST, SCALAR, TENSOR = "const", "scalar", "tensor"
NOISE_STD = 0.1  # noise ~ N(0, 0.01): variance 0.01


class RuleCompileError(ValueError):
    """A rule that parses but cannot be compiled (e.g. a random drop probability)."""


@dataclass(frozen=True)
class Instr:
    op: str  # an OPS name, or "noise" / "annealed_noise" / "ld"
    args: tuple[int, ...]
    out: int
    kind: str  # SCALAR or TENSOR
    random: bool = False


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
    kinds: list[str]
    params: dict[str, Statement]  # the params the live code reads
    buffers: tuple[str, ...]
    needs_total_steps: bool
    random: bool
    fresh: set[int] = field(default_factory=set)  # slots holding newly made tensors

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
    def __init__(self) -> None:
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
        key = ("const", value, math.copysign(1.0, value))
        if key not in self.memo:
            s = self.slot(CONST)
            self.consts[s] = value
            self.memo[key] = s
        return self.memo[key]

    def input(self, name: str, kind: str) -> int:
        if name not in self.inputs:
            self.inputs[name] = self.slot(kind)
        return self.inputs[name]

    def emit(self, op: str, args: tuple[int, ...], kind: str | None = None,
             random: bool = False) -> int:
        arg_kinds = [self.kinds[a] for a in args]
        if kind is None:
            kind = TENSOR if TENSOR in arg_kinds else SCALAR
            if kind == SCALAR and all(k == CONST for k in arg_kinds) and not random:
                return self.const(OPS[op].scalar(*(self.consts[a] for a in args)))
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
                    f"(in {node.op}(...), line {node.line})"
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


def compile_rule(rule: Rule) -> Program:
    """Compile a parsed rule and the prelude definitions it uses."""
    expanded = rule.expanded()
    live = _live_statements(expanded.statements)
    b = _Builder()
    params = {s.name: s for s in live if s.kind == "param"}
    for name in params:
        b.env[name] = b.input(name, SCALAR)
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
    reads = {i.op for i in b.tensor_code} | {i.op for i in b.scalar_code}
    fresh = {i.out for i in b.tensor_code}
    return Program(
        rule=rule,
        n_slots=len(b.kinds),
        consts=b.consts,
        inputs=b.inputs,
        scalar_code=b.scalar_code,
        tensor_code=b.tensor_code,
        state_out=state_out,
        update=update,
        kinds=b.kinds,
        params=params,
        buffers=buffers,
        needs_total_steps="T" in b.inputs,
        random=bool({"noise", "annealed_noise", "drop"} & reads),
        fresh=fresh,
    )


# --- scalar instructions that are not OPS rows -----------------------------------

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


# --- random draws: the same order for both executors -----------------------------


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


def _combine_drop(x, mask):
    return torch.mul(x, mask)


# --- the executors ------------------------------------------------------------------


@dataclass
class Group:
    """One bucket of tensors stepped together: same group, device, dtype and step."""

    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    buffers: dict[str, list[torch.Tensor]]  # name -> one tensor per parameter
    hyper: dict[str, float]
    lr: float
    t: int
    total: int | None


def _write_back(program: Program, env: list, group: Group, per_tensor: bool) -> None:
    for name, slot in program.state_out.items():
        value = env[slot]
        old = group.buffers[name]
        if slot in program.fresh:
            new = value
        elif per_tensor:
            new = [v.clone() for v in value]
        else:
            new = torch._foreach_mul(value, 1.0) if value else []
        old[:] = new


def run_foreach(program: Program, group: Group, generator) -> None:
    """One step for a bucket with one ``torch._foreach_*`` call per instruction."""
    env = _scalars(program, group.hyper, group.t, group.total)
    if "g" in program.inputs:
        env[program.inputs["g"]] = group.grads
    if "w" in program.inputs:
        env[program.inputs["w"]] = group.params
    for name in program.buffers:
        env[program.inputs[name]] = list(group.buffers[name])
    for ins in program.tensor_code:
        args = [env[a] for a in ins.args]
        if ins.op == "fill":
            env[ins.out] = [torch.full_like(p, args[0]) for p in group.params]
        elif ins.random:
            draws = _draw(ins, env, group.params, generator)
            env[ins.out] = torch._foreach_mul(args[0], draws) if ins.op == "drop" else draws
        else:
            env[ins.out] = OPS[ins.op].foreach(*args)
    _write_back(program, env, group, per_tensor=False)
    update = env[program.update]
    if program.kinds[program.update] == TENSOR:
        torch._foreach_add_(group.params, update, alpha=-group.lr)
    else:
        torch._foreach_add_(group.params, -group.lr * update)


def run_reference(program: Program, group: Group, generator) -> None:
    """The same step, one parameter tensor at a time: the readable reference."""
    scalars = _scalars(program, group.hyper, group.t, group.total)
    draws = {ins.out: _draw(ins, scalars, group.params, generator)
             for ins in program.tensor_code if ins.random}
    for i, (p, g) in enumerate(zip(group.params, group.grads)):
        env = list(scalars)
        if "g" in program.inputs:
            env[program.inputs["g"]] = g
        if "w" in program.inputs:
            env[program.inputs["w"]] = p
        for name in program.buffers:
            env[program.inputs[name]] = group.buffers[name][i]
        for ins in program.tensor_code:
            args = [env[a] for a in ins.args]
            if ins.op == "fill":
                env[ins.out] = torch.full_like(p, args[0])
            elif ins.random:
                draw = draws[ins.out][i]
                env[ins.out] = _combine_drop(args[0], draw) if ins.op == "drop" else draw
            else:
                env[ins.out] = OPS[ins.op].tensor(*args)
        for name, slot in program.state_out.items():
            value = env[slot]
            group.buffers[name][i] = value if slot in program.fresh else value.clone()
        update = env[program.update]
        if program.kinds[program.update] == TENSOR:
            p.add_(update, alpha=-group.lr)
        else:
            p.add_(-group.lr * update)


def describe(program: Program) -> str:
    """The program as readable lines (for debugging and `nos parse --program`)."""
    names = {slot: name for name, slot in program.inputs.items()}

    def show(slot: int) -> str:
        if slot in program.consts:
            return repr(program.consts[slot])
        return names.get(slot, f"%{slot}")

    lines = [f"%{i.out} = {i.op}({', '.join(show(a) for a in i.args)})  # {i.kind}"
             for i in program.scalar_code + program.tensor_code]
    lines += [f"{name} <- %{slot}" for name, slot in program.state_out.items()]
    lines.append(f"update = {show(program.update)}")
    return "\n".join(lines)


