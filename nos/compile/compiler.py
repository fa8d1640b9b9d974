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
from dataclasses import replace

from nos.compile.passes import optimize_program
from nos.compile.program import (
    FULL,
    SCALAR,
    TENSOR,
    Program,
    ProgramBuilder,
    Term,
    broadcast,
    order_by_stage,
)
from nos.lang.ops import OPS
from nos.lang.rule import Rule
from nos.lang.tree import TENSOR_FACTS, Node, Statement, live_statements, num


def _whole_update(update: int, is_tensor: bool, sets: bool = False) -> Term:
    if sets:
        return Term("set", (update,))
    if is_tensor:
        return Term("add", (update,))
    return Term("scalar", (), factors=((update, False),))


def switches(rule: Rule) -> frozenset[str]:
    """The params and tensor facts that decide a ``where`` by themselves
    (``where(amsgrad, a, b)``, ``where(momentum > 0, a, b)``, ``where(ndim >= 2, a, b)``):
    a group's program is compiled for their values, so the branch not taken costs nothing,
    not even its buffers."""
    statements = live_statements(rule.expanded().statements)
    params = {s.name for s in statements if s.kind == "param"} | TENSOR_FACTS
    found: set[str] = set()
    for s in statements:
        for node in s.expr.walk() if s.expr is not None else ():
            if node.op == "where" and node.args[0].names() <= params:
                found |= node.args[0].names()
    return frozenset(found)


def _constant(node: Node, values: dict[str, float]) -> float | None:
    """The value of an expression of numbers and known params, else None."""
    if node.op == "num":
        return float(node.value)  # type: ignore[arg-type]
    if node.op == "name":
        return values.get(str(node.value))
    op = OPS[node.op]
    if op.scalar is None or op.schedule or op.random or not op.elementwise:
        return None
    args = [_constant(a, values) for a in node.args]
    return None if any(a is None for a in args) else op.scalar(*args)


def _fold_where(node: Node, values: dict[str, float]) -> Node:
    """The expression with every ``where`` whose condition is known replaced by its branch."""
    if not node.args:
        return node
    if node.op == "where":
        known = _constant(node.args[0], values)
        if known is not None:
            return _fold_where(node.args[1] if known != 0 else node.args[2], values)
    args = tuple(_fold_where(a, values) for a in node.args)
    if args == node.args:
        return node
    if node.op in ("add", "sub") and args[1] == num(0.0):  # a branch taken was 0 (as the
        return args[0]  # compiler's own x + 0 = x)
    return replace(node, args=args)


def specialise(statements: tuple[Statement, ...], values: dict[str, float]
               ) -> tuple[Statement, ...]:
    """The statements with the branches that ``values`` (params known for a group) rule
    out removed: what they alone read is then dead."""
    if not values:
        return statements
    return tuple(s if s.expr is None else replace(s, expr=_fold_where(s.expr, values))
                 for s in statements)


def _build(live: list[Statement], zeros: frozenset[str], fixed: dict[str, float],
           numbers: set[str], shapes: dict[str, frozenset[str]]):
    """The builder's pass over the live statements, given which buffers are numbers and
    the shapes of the others."""
    b = ProgramBuilder(zeros)
    for s in live:
        if s.kind != "param":
            continue
        if s.name in zeros:
            b.env[s.name] = b.const(0.0)
        elif s.name in fixed:
            b.env[s.name] = b.const(float(fixed[s.name]))
        else:
            b.env[s.name] = b.input(s.name, SCALAR)
    for s in live:
        if s.kind == "state":
            b.env[s.name] = (b.input(s.name, SCALAR) if s.name in numbers
                             else b.input(s.name, TENSOR, shapes[s.name]))
    state_out: dict[str, int] = {}
    update = -1
    for s in live:
        if s.kind in ("param", "view"):  # a view is read outside the step
            continue
        value = b.expr(s.expr)  # type: ignore[arg-type]
        if s.kind == "state":
            state_out[s.name] = value
            b.env[s.name] = value
        elif s.kind == "let":
            b.env[s.name] = value
        elif s.sets:  # the parameter's new value, of its full shape
            update = value if b.kinds[value] == TENSOR and b.shape(value) == FULL else \
                b.emit("fill", (value,), kind=TENSOR, shape=FULL)
        else:
            update = value
    return b, state_out, update


@functools.lru_cache(maxsize=256)
def compile_rule(rule: Rule, zeros: frozenset[str] = frozenset(), optimize: bool = True,
                 fixed: tuple[tuple[str, float], ...] = ()) -> Program:
    """Compile a parsed rule and the prelude definitions it uses.

    ``zeros`` names params known to be 0 and ``fixed`` gives the values of others
    (both specialised away); ``optimize=False`` keeps the plain
    one-instruction-per-operation program.
    """
    expanded = rule.expanded()
    known = {**dict(fixed), **dict.fromkeys(zeros, 0.0)}
    live = list(live_statements(specialise(expanded.statements, known)))
    fixed_values = dict(fixed)
    # A buffer is a number kept on the host until its value needs a tensor; a tensor
    # buffer widens until its shape holds its value (a fixed point: shapes only grow).
    numbers = {s.name for s in live if s.kind == "state"}
    shapes: dict[str, frozenset[str]] = {}
    for s in live:  # a buffer that starts at the parameter is a tensor of its shape
        if s.kind == "state" and s.init is not None and "w" in s.init.names():
            numbers.discard(s.name)
            shapes[s.name] = FULL
    base = None
    if zeros or fixed:  # a buffer is what it is in the rule's own program, in every group
        base = compile_rule(rule, optimize=optimize)
        numbers &= set(base.scalar_state)
        shapes = {name: base.buffer_shape(name) for name in base.buffers}
    while True:
        b, state_out, update = _build(live, zeros, fixed_values, numbers, shapes)
        changed = False
        for name, slot in state_out.items():
            if b.kinds[slot] != TENSOR:
                continue
            if name in numbers:
                numbers.discard(name)
                shapes[name] = b.shape(slot)
                changed = True
            elif broadcast(shapes[name], b.shape(slot)) != shapes[name]:
                shapes[name] = broadcast(shapes[name], b.shape(slot))
                changed = True
        if not changed:
            break
    buffers = tuple(s.name for s in live if s.kind == "state" and s.name not in numbers)
    for name in buffers:  # a buffer's new value in the buffer's shape
        slot = state_out[name]
        if b.kinds[slot] != TENSOR or b.shape(slot) != shapes[name]:
            state_out[name] = b.emit("fill", (slot,), kind=TENSOR, shape=shapes[name])
    scalar_out = {name: state_out.pop(name) for name in list(state_out) if name in numbers}
    params = {s.name: s for s in live if s.kind == "param"}
    sets = any(s.sets for s in live)
    used_ops = {i.op for i in b.tensor_code}
    program = Program(
        rule=rule, n_slots=len(b.kinds), consts=b.consts, inputs=b.inputs,
        scalar_code=b.scalar_code, tensor_code=b.tensor_code, state_out=state_out,
        update=update, terms=[_whole_update(update, b.kinds[update] == TENSOR, sets)],
        kinds=b.kinds, params=params, buffers=buffers,
        needs_total_steps="T" in b.inputs,
        random=any(i.random for i in b.tensor_code) or any(i.random for i in b.scalar_code),
        shapes=b.shapes, scalar_state=tuple(scalar_out), scalar_out=scalar_out,
        viewed=any(op in OPS and (OPS[op].reduce in ("row", "col") or OPS[op].matrix)
                   for op in used_ops) or (base is not None and base.viewed),
        facts=tuple(sorted(TENSOR_FACTS & set(b.inputs))),
        switches=switches(rule),
        inits={s.name: s.init for s in live if s.kind == "state" and s.init is not None},
    )
    if optimize:
        optimize_program(program, b, keep_terms=sets)
    order_by_stage(program)
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
    lines += [f"{name} <- {show(slot)}"
              for name, slot in {**program.state_out, **program.scalar_out}.items()]
    for t in program.terms:
        coef = " * ".join(("1/" if r else "") + show(s) for s, r in t.factors) or "1"
        lines.append(f"w -= lr * {t.sign:g} * {coef} * {t.kind}({', '.join(map(show, t.args))})")
    return "\n".join(lines)
