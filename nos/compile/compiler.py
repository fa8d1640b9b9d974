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

Two executors (:mod:`nos.compile.executors`) read the same program and give
bit-identical results: a readable per-tensor reference and the multi-tensor
path, one ``torch._foreach_*`` call per instruction for all tensors of a bucket.
"""

from __future__ import annotations

import functools

from nos.compile.passes import optimize_program
from nos.compile.program import SCALAR, TENSOR, Program, ProgramBuilder, Term
from nos.lang.rule import Rule
from nos.lang.tree import live_statements


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
    live = list(live_statements(expanded.statements))
    b = ProgramBuilder(zeros)
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
