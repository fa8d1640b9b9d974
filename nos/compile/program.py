"""The program a rule compiles to: straight-line instructions over numbered slots.

A slot holds a *constant* (folded at compile time), a *scalar* (numbers,
params, t, T, lr, the schedules, a tensor's facts such as ``ndim`` and the
per-tensor numbers a rule keeps: computed once per step on Python floats) or a
*tensor*.  A tensor slot also has a *shape*: the parameter's own (``FULL``), or
reduced over the last dimension (``row``), the second-to-last (``col``), both,
or to one number per tensor (``ONE``); shapes broadcast against each other.
:class:`ProgramBuilder` emits instructions, folding constants, simplifying
``x + 0``-like forms and computing identical subexpressions once;
:mod:`nos.compile.passes` then rewrites the tensor code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nos.lang.ops import OPS
from nos.lang.rule import Rule
from nos.lang.tree import TENSOR_FACTS, Node, Statement

CONST, SCALAR, TENSOR = "const", "scalar", "tensor"
NOISE_STD = 0.1  # noise ~ N(0, 0.01): variance 0.01

# A tensor slot's shape: the axes it is reduced over (kept as 1, or gone for ONE).
FULL: frozenset[str] = frozenset()
ROW = frozenset({"row"})  # the last dimension reduced
COL = frozenset({"col"})  # the second-to-last dimension reduced
ONE = frozenset({"row", "col", "lead"})  # one number per tensor (a 0-d tensor)
REDUCED = {"all": ONE, "row": ROW, "col": COL, "global": ONE}
GLOBAL = frozenset(name for name, op in OPS.items() if op.reduce == "global")
# The operations whose result depends on how many elements hold a value (the others, mean,
# rms, amax, rowmean and colmean, give the same on a reduced value as on it broadcast).
WHOLE = frozenset({"sum", "norm", "newton_schulz"}) | GLOBAL


def broadcast(*shapes: frozenset[str]) -> frozenset[str]:
    """The shape of an element-wise result: reduced only where every operand is."""
    out = ONE
    for shape in shapes:
        out = out & shape
    return out


def shape_of(shape: frozenset[str], like) -> tuple[int, ...]:
    """The concrete shape of a slot for a parameter's tensor ``like`` (its 2-D view when
    the rule reads rows or columns)."""
    if shape == ONE:
        return ()
    dims = list(like.shape)
    if "row" in shape and dims:
        dims[-1] = 1
    if "col" in shape and len(dims) >= 2:
        dims[-2] = 1
    return tuple(dims)


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
    shape: frozenset[str] = FULL  # of a tensor result


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
    shapes: dict[int, frozenset[str]] | None = None  # tensor slot -> shape
    scalar_state: tuple[str, ...] = ()  # buffers that are numbers kept on the host
    viewed: bool = False  # reads rows or columns: tensors are stepped as 2-D views
    facts: tuple[str, ...] = ()  # the per-tensor facts (ndim, rows, ...) the code reads
    scalar_out: dict[str, int] | None = None  # number buffer -> slot of its new value
    switches: frozenset[str] = frozenset()  # params a group's program is compiled for
    # The tensor code in stages, each ended by the global reductions (gsum, gnorm, ...) that
    # the next reads: a step runs a stage on every tensor of every group, then joins the
    # reductions' partial values (nos.lang.ops.combine).  One stage without reductions for
    # most rules.
    stages: list[tuple[list[Instr], list[Instr]]] | None = None
    inits: dict[str, Node] | None = None  # buffer or number -> its value before a first step

    @property
    def crosses(self) -> bool:
        """Reads reductions over all the parameters (a step joins every bucket)."""
        return any(reductions for _, reductions in self.stages or ())

    def shape(self, slot: int) -> frozenset[str]:
        return (self.shapes or {}).get(slot, FULL)

    def buffer_shape(self, name: str) -> frozenset[str]:
        return self.shape(self.inputs[name])

    @property
    def instructions(self) -> int:
        return len(self.scalar_code) + len(self.tensor_code)


class ProgramBuilder:
    """Builds a program's slots and instructions, folding constants and sharing repeats."""

    def __init__(self, zeros: frozenset[str]) -> None:
        self.zeros = zeros
        self.kinds: list[str] = []
        self.shapes: dict[int, frozenset[str]] = {}
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

    def input(self, name: str, kind: str, shape: frozenset[str] = FULL) -> int:
        if name not in self.inputs:
            self.inputs[name] = self.slot(kind)
            if kind == TENSOR:
                self.shapes[self.inputs[name]] = shape
        return self.inputs[name]

    def shape(self, slot: int) -> frozenset[str]:
        return self.shapes.get(slot, FULL) if self.kinds[slot] == TENSOR else ONE

    def value(self, slot: int) -> float | None:
        return self.consts.get(slot)

    def simplify(self, op: str, args: tuple[int, ...]) -> int | None:
        """x+0, x-0, x*1, x/1, x^1 are x; w*0 is 0 (the parameter is finite, while any other
        value may be inf or nan, whose product with 0 is nan)."""
        if op == "pow" and self.value(args[1]) == 2.0 and self.kinds[args[0]] == TENSOR:
            return self.emit("mul", (args[0], args[0]))
        if op == "where" and self.value(args[0]) is not None:  # the branch taken is known
            return args[1] if self.value(args[0]) != 0 else args[2]
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
             random: bool = False, shape: frozenset[str] | None = None) -> int:
        arg_kinds = [self.kinds[a] for a in args]
        if kind is None and op in OPS and not OPS[op].elementwise:
            kind = TENSOR
            reduced = OPS[op].reduce
            shape = REDUCED[reduced] | self.shape(args[0]) if reduced else self.shape(args[0])
        if kind is None:
            kind = TENSOR if TENSOR in arg_kinds else SCALAR
            if kind == SCALAR and all(k == CONST for k in arg_kinds) and not random:
                return self.const(OPS[op].scalar(*(self.consts[a] for a in args)))
            simpler = self.simplify(op, args)
            if simpler is not None:
                return simpler
        key = (op, args, shape)
        if not random and key in self.memo:
            return self.memo[key]
        out = self.slot(kind)
        if kind == TENSOR:
            if shape is None:  # an element-wise result, or a draw (noise: the full shape)
                shapes = [self.shape(a) for a in args if self.kinds[a] == TENSOR]
                shape = broadcast(*shapes) if shapes else FULL
            self.shapes[out] = shape
        code = self.tensor_code if kind == TENSOR else self.scalar_code
        code.append(Instr(op, args, out, kind, random, shape=shape or FULL))
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
                             random=True, shape=FULL)  # a mask of the parameter's shape
        if not op.elementwise:
            args = (self.tensorize(args[0]),) + args[1:]
            if node.op in WHOLE and self.shape(args[0]) != FULL:
                # a reduced value stands for its value at every element: sum(rowmean(g)) is
                # sum(g), as if the row were broadcast (and a group's program, which may
                # narrow a shape, agrees with the rule's)
                args = (self.emit("fill", (args[0],), kind=TENSOR, shape=FULL),) + args[1:]
        return self.emit(node.op, args)

    def tensorize(self, slot: int, shape: frozenset[str] = FULL) -> int:
        """A tensor slot for a value that may be a scalar (broadcast to ``shape``)."""
        if self.kinds[slot] == TENSOR:
            return slot
        return self.emit("fill", (slot,), kind=TENSOR, shape=shape)

    def name(self, word: str) -> int:
        if word in self.env:
            return self.env[word]
        if word in ("g", "w"):
            return self.input(word, TENSOR)
        if word in ("t", "T", "lr") or word in TENSOR_FACTS:
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


def order_by_stage(program: Program) -> None:
    """Order the tensor code by stage and cut it into ``program.stages``.

    An instruction's stage is the latest stage of its operands; a global reduction runs
    at the end of its operand's stage and its value is there from the next one.
    """
    ready: dict[int, int] = {}
    keyed = []
    for index, ins in enumerate(program.tensor_code):
        level = max((ready.get(a, 0) for a in ins.args), default=0)
        is_global = ins.op in GLOBAL
        ready[ins.out] = level + 1 if is_global else level
        keyed.append((level, is_global, index, ins))
    keyed.sort(key=lambda k: k[:3])
    program.tensor_code = [k[3] for k in keyed]
    stages: list[tuple[list[Instr], list[Instr]]] = []
    for level, is_global, _, ins in keyed:
        while len(stages) <= level:
            stages.append(([], []))
        stages[level][1 if is_global else 0].append(ins)
    program.stages = stages or [([], [])]
