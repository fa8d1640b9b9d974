"""The compiler's optimisation passes over a program's tensor code.

Run in order by :func:`optimize_program`:

1. fold the update into the parameter step: ``update = m/c / d`` becomes one
   ``params.addcdiv_(m, d, value=-lr/c)``; sums split into several terms;
2. fuse ``a*x + b*y`` (``axpby``; a ``lerp`` when ``a + b = 1`` in float16 and
   bfloat16, see nos.compile.kernels), ``x + b*y`` (``axpy``) and ``a*v + b*x*z``
   (``axpbxz``, an ``addcmul``);
3. drop instructions nothing reads;
4. compute in place: an instruction overwrites its first operand when that is
   a temporary nothing reads afterwards, or the old value of a buffer that the
   instruction's result replaces (not when an in-place form of several passes
   would read that operand again as another argument).

Each pass keeps the program's meaning; the roundings may differ from the
plain program's (as torch.optim's fused forms differ from the formulas), and
both executors run the same optimised program, so they still agree exactly.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from nos.compile.kernels import KERNELS
from nos.compile.program import (
    FULL,
    ONE,
    TENSOR,
    Instr,
    Program,
    ProgramBuilder,
    Term,
    order_by_stage,
)

END = 1 << 30


def _uses(program: Program) -> Counter:
    uses: Counter = Counter()
    for ins in program.tensor_code:
        uses.update(ins.args)
    uses.update(program.state_out.values())
    for term in program.terms:
        uses.update(term.args)
    return uses


class _Passes:
    def __init__(self, program: Program, builder: ProgramBuilder) -> None:
        self.p = program
        self.b = builder

    def tensor(self, slot: int) -> bool:
        return self.b.kinds[slot] == TENSOR

    def producers(self) -> dict[int, Instr]:
        return {i.out: i for i in self.p.tensor_code}

    # 1. the update as terms of the parameter step --------------------------------------

    def scaled(self, slot: int, prod: dict, uses: Counter) -> tuple[int, tuple] | None:
        """(x, s, reciprocal) when slot is s*x or x/s, read only here, s a scalar."""
        ins = prod.get(slot)
        if ins is None or uses[slot] != 1 or ins.op not in ("mul", "div"):
            return None
        a, b = ins.args
        if ins.op == "mul" and self.tensor(a) != self.tensor(b):
            x, s = (a, b) if self.tensor(a) else (b, a)
            return x, ((s, False),)
        if ins.op == "div" and self.tensor(a) and not self.tensor(b):
            return a, ((b, True),)
        return None

    def peel(self, slot: int, factors: tuple, prod: dict, uses: Counter) -> tuple[int, tuple]:
        while (found := self.scaled(slot, prod, uses)) is not None:
            slot, more = found
            factors = factors + more
        return slot, factors

    def per_tensor_factor(self, ins: Instr, prod: dict, uses: Counter) -> tuple | None:
        """(u, a / d) when ins is (a * u) / d with a and d one number per tensor: the step
        is then ``params.addcmul_(u, a / d)``, without the full-size a * u (Adafactor's
        scale and clipping)."""
        if ins.op != "div" or self.b.shape(ins.args[1]) != ONE:
            return None
        inner = prod.get(ins.args[0])
        if inner is None or inner.op != "mul" or uses[ins.args[0]] != 1 or inner.random:
            return None
        a, u = inner.args
        if self.tensor(u) and self.b.shape(u) == ONE:
            a, u = u, a
        if not (self.tensor(a) and self.b.shape(a) == ONE and self.tensor(u)
                and self.b.shape(u) != ONE):
            return None
        return u, self.b.emit("div", (a, ins.args[1]))

    def terms(self) -> None:
        prod, uses = self.producers(), _uses(self.p)
        w = self.p.inputs.get("w")
        terms: list[Term] = []

        def visit(slot: int, sign: float, factors: tuple) -> None:
            if not self.tensor(slot):
                terms.append(Term("scalar", (), sign, factors + ((slot, False),)))
                return
            slot, factors = self.peel(slot, factors, prod, uses)
            if slot == w:
                terms.append(Term("scale", (), sign, factors))
                return
            ins = prod.get(slot)
            alone = ins is not None and uses[slot] == 1 and not ins.random
            if alone and ins.op in ("add", "sub"):
                visit(ins.args[0], sign, factors)
                visit(ins.args[1], -sign if ins.op == "sub" else sign, factors)
            elif alone and ins.op == "neg":
                visit(ins.args[0], -sign, factors)
            elif alone and (found := self.per_tensor_factor(ins, prod, uses)) is not None:
                terms.append(Term("addcmul", found, sign, factors))
            elif alone and ins.op in ("div", "mul") and all(map(self.tensor, ins.args)):
                x, factors = self.peel(ins.args[0], factors, prod, uses)
                y = ins.args[1]
                if ins.op == "mul":
                    y, factors = self.peel(y, factors, prod, uses)
                terms.append(Term("addcdiv" if ins.op == "div" else "addcmul", (x, y), sign,
                                  factors))
            else:
                terms.append(Term("add", (slot,), sign, factors))

        visit(self.p.update, 1.0, ())
        scale = [t for t in terms if t.kind == "scale"]
        reads_w = any(w in t.args for t in terms)
        if len(scale) > 1 or (reads_w and len(terms) > 1):
            # Each term writes the parameters in turn, so a term that reads w would see
            # it changed by the one before: keep the whole update as one term.
            return
        self.p.terms = scale + [t for t in terms if t.kind != "scale"]

    # 2. fused multiply-adds ----------------------------------------------------------

    def negate(self, slot: int) -> int:
        return self.b.emit("neg", (slot,))

    def fuse(self) -> None:
        prod, uses = self.producers(), _uses(self.p)

        def scaled_mul(slot: int):
            found = self.scaled(slot, prod, uses)
            if found is None or found[1][0][1]:  # x / s is not s * x
                return None
            return found[0], found[1][0][0]

        def scaled_product(slot: int):
            found = scaled_mul(slot)
            if found is None:
                return None
            inner = prod.get(found[0])
            if inner is None or inner.op != "mul" or uses[found[0]] != 1:
                return None
            if not all(map(self.tensor, inner.args)):
                return None
            return inner.args[0], inner.args[1], found[1]

        # a rule with reduced shapes is not fused: an operand of another shape would have
        # to broadcast inside the fused form
        uniform = all(shape == FULL for shape in self.b.shapes.values())
        code = []
        for ins in self.p.tensor_code:
            if ins.op in ("add", "sub") and all(map(self.tensor, ins.args)) and uniform:
                code.append(self.fused(ins, scaled_mul, scaled_product) or ins)
            else:
                code.append(ins)
        self.p.tensor_code = code

    def fused(self, ins: Instr, scaled_mul, scaled_product) -> Instr | None:
        a, b = ins.args
        sub = ins.op == "sub"
        sign = self.negate if sub else (lambda s: s)
        ma, mb = scaled_mul(a), scaled_mul(b)
        if ma and (pb := scaled_product(b)):
            return Instr("axpbxz", (ma[0], pb[0], pb[1], ma[1], sign(pb[2])), ins.out, TENSOR)
        if not sub and mb and (pa := scaled_product(a)):
            return Instr("axpbxz", (mb[0], pa[0], pa[1], mb[1], pa[2]), ins.out, TENSOR)
        if ma and mb:
            return Instr("axpby", (ma[0], mb[0], ma[1], sign(mb[1])), ins.out, TENSOR)
        if mb:
            return Instr("axpy", (a, mb[0], sign(mb[1])), ins.out, TENSOR)
        if ma and not sub:
            return Instr("axpy", (b, ma[0], ma[1]), ins.out, TENSOR)
        return None

    # 3. dead code ---------------------------------------------------------------------

    def prune(self) -> None:
        needed = set(self.p.state_out.values())
        for term in self.p.terms:
            needed.update(term.args)
        kept = []
        for ins in reversed(self.p.tensor_code):
            if ins.out in needed:
                kept.append(ins)
                needed.update(ins.args)
        self.p.tensor_code = kept[::-1]

    # 4. in place ----------------------------------------------------------------------

    def in_place(self) -> None:
        last: dict[int, int] = {}
        for index, ins in enumerate(self.p.tensor_code):
            for a in ins.args:
                last[a] = index
        for slot in self.p.state_out.values():
            last[slot] = END
        for term in self.p.terms:
            for a in term.args:
                last[a] = END
        old = {self.p.inputs[name]: name for name in self.p.buffers}
        fresh: set[int] = set()

        def free(slot: int, index: int, out: int) -> bool:
            if not self.tensor(slot) or last.get(slot) != index:
                return False
            return slot in fresh or (slot in old and self.p.state_out.get(old[slot]) == out)

        code = []
        for index, ins in enumerate(self.p.tensor_code):
            fresh.add(ins.out)
            kernel = KERNELS.get(ins.op)
            if kernel is None or kernel.tensor_ is None or ins.random and ins.op != "drop":
                code.append(ins)
                continue
            args = ins.args
            aliased = kernel.several_passes and args[0] in args[1:]
            shaped = [self.tensor(a) and self.b.shape(a) == ins.shape for a in args]
            if free(args[0], index, ins.out) and not aliased and shaped[0]:
                code.append(replace(ins, inplace=True))
            elif len(args) == 2 and free(args[1], index, ins.out) and args[0] != args[1] and \
                    shaped[1]:
                if kernel.commutative:
                    code.append(replace(ins, args=(args[1], args[0]), inplace=True))
                elif ins.op in ("sub", "div") and not self.tensor(args[0]):
                    code.append(replace(ins, op="r" + ins.op, args=(args[1], args[0]),
                                        inplace=True))
                elif ins.op in ("sub", "div") and shaped[0]:  # two tensors of one shape
                    code.append(replace(ins, op="t" + ins.op, args=(args[1], args[0]),
                                        inplace=True))
                else:
                    code.append(ins)
            else:
                code.append(ins)
        self.p.tensor_code = code


def optimize_program(program: Program, builder: ProgramBuilder, keep_terms: bool = False
                     ) -> None:
    """The passes in order; ``keep_terms`` keeps the step's terms as they are (a rule that
    sets the parameter)."""
    passes = _Passes(program, builder)
    if not keep_terms:
        passes.terms()
    passes.prune()
    passes.fuse()
    passes.prune()
    order_by_stage(program)  # in place decides on the order the executors run
    passes.in_place()
    program.n_slots = len(builder.kinds)
