"""A rule becomes the source of a standalone ``torch.optim.Optimizer`` subclass.

The module written imports only torch (and math): the rule's params are the
constructor's keywords, checked against their declared ranges, with ``maximize`` (g is
the gradient's negative, per group too); the state lives in ``self.state[p]`` (``step``
and the tensor buffers as tensors, a buffer that depends on no tensor as a float, as
nos.Optimizer keeps them), so ``state_dict()`` and ``load_state_dict()`` work as torch's
own; the rule's text and LaTeX are its docstring.

The maths is the language's, written per tensor (``_update``, a readable reference, one
torch operation per operation of the rule, those of nos's reference executor) in the
order nos.Optimizer computes it: scalars (numbers, params, t, T, lr, schedules, the
tensor's facts ndim, rows, cols, numel, machine_eps) on Python floats with IEEE results
where Python would raise, ``sign(nan) = nan``, ``x ^ ±0.5`` as ``pow`` rather than
``sqrt``, nan-propagating ``max``/``min``/``clip``, the floored modulo of ``rd``;
comparisons as 1 or 0 in the tensor's dtype, ``where`` as ``torch.where(c != 0, a,
b)`` (nan is nonzero), ``lerp`` as ``torch.lerp``; ``sum``, ``mean``, ``norm``, ``rms``,
``amax`` one number per tensor (a 0-d tensor); a rule that reads rows or columns
(``rowmean``, ``colmean``, ``newton_schulz``) steps each tensor as its 2-D view, as
nos.Optimizer does (a vector of n is a column), and ``newton_schulz`` takes 2-D
parameters only.  A ``where`` on params and facts alone is decided before the step, as
nos.Optimizer compiles a group's program for it (nos.export.plan): only its branch runs,
and a buffer only the other branch needs is not kept (Adam's ``vmax`` without amsgrad).
A random rule draws its samples as nos.Optimizer does -- the same generator (one per
device, seeded by ``seed``, saved in the state dict) and the same order (by param group,
by bucket of step/device/dtype, by site, by tensor) -- so an exported rule steps as
nos.Optimizer with the same seed does; the roundings differ only where nos's compiler
fuses operations (``addcdiv``, ``a * x + b * y``), about 1e-16 relatively per step in
float64 (in float16 and bfloat16, where nos sums a step's terms once, by their
precision's roundings).

The later constructs.  A reduction over every parameter (``gsum gmean gnorm grms gamax``,
and ``clip_gnorm``, written out with the rest of the shorthand before export) makes
``_update`` a generator that yields the reduction's name and its tensor's part; ``step``
runs every tensor's step side by side (``_together``) and sends back the value over all
the tensors of all groups that have a gradient (nos.lang.ops.combine's own code, in
float64), as nos.Optimizer joins its buckets.  Such a rule has no switches (nos runs one
program for every group, keeping every buffer) and may not draw (refused: nos's two
executors draw in different orders then).  ``w = expr`` copies the new value into the
parameter.  A ``from`` value starts its buffer (``_from``, read on the parameter's 2-D
view: a vector is a column).  ``eval_w`` and ``train_w`` become ``eval()`` and
``train()``, as nos.Optimizer's: a group's ``train_mode``, the training value kept in
``state["w_train"]`` where the rule has no train_w, a step refused in between.
"""

from __future__ import annotations

import inspect
import textwrap
from string import Template

from nos.export.plan import (
    ExportError,
    Plan,
    Spelling,
    check_identifier,
    description,
    docstring_literal,
    float_literal,
    helpers_for,
    init_function,
    kept_function,
    keywords_of,
    make_plan,
    params_literal,
    quote,
    read_source,
    tuple_literal,
    update_function,
    view_function,
)
from nos.lang import ops
from nos.lang.rule import Rule

CALLS: dict[str, tuple[str | None, str | None]] = {
    "add": (None, None), "sub": (None, None), "mul": (None, None),
    "div": (None, "_div({0}, {1})"),
    "pow": ("_pow({0}, {1})", "_pow({0}, {1})"),
    "exp": ("torch.exp({0})", "_scalar(torch.exp, {0})"),
    "log": ("torch.log({0})", "_scalar(torch.log, {0})"),
    "sqrt": ("torch.sqrt({0})", "_scalar(torch.sqrt, {0})"),
    "abs": ("torch.abs({0})", "abs({0})"),
    "sign": ("_sign({0})", "_sign({0})"),
    "clip": ("_clip({0}, {1})", "_clip({0}, {1})"),
    "max": ("_max({0}, {1})", "_max({0}, {1})"),
    "min": ("_min({0}, {1})", "_min({0}, {1})"),
    "lt": ("_compare(torch.lt, torch.gt, {0}, {1})", "float({0} < {1})"),
    "le": ("_compare(torch.le, torch.ge, {0}, {1})", "float({0} <= {1})"),
    "gt": ("_compare(torch.gt, torch.lt, {0}, {1})", "float({0} > {1})"),
    "ge": ("_compare(torch.ge, torch.le, {0}, {1})", "float({0} >= {1})"),
    "eq": ("_compare(torch.eq, torch.eq, {0}, {1})", "float({0} == {1})"),
    "ne": ("_compare(torch.ne, torch.ne, {0}, {1})", "float({0} != {1})"),
    "where": ("_where({0}, {1}, {2})", None),  # of numbers: Python's a if c else b
    "lerp": ("_lerp({0}, {1}, {2})", "_lerp({0}, {1}, {2})"),
    "sum": ("torch.sum({0})", None),
    "mean": ("torch.mean({0})", None),
    "norm": ("torch.linalg.vector_norm({0})", None),
    "rms": ("_rms({0})", None),
    "amax": ("torch.amax({0})", None),
    "rowmean": ("_rowmean({0})", None),
    "colmean": ("_colmean({0})", None),
    "newton_schulz": ("_newton_schulz({0}, {1}, {2}, {3}, {4}, {5}, {6})", None),
    "drop": ("_drop({0}, {1}, drawn[{k}])", None),
    "cd": (None, "_cd({0}, t, T)"),
    "rd": (None, "_rd({0}, t, T)"),
    # over every parameter: this tensor's part yielded, the value over all sent back
    "gsum": ('(yield "gsum", torch.sum({0}))', None),
    "gmean": ('(yield "gmean", torch.sum({0}))', None),
    "gnorm": ('(yield "gnorm", torch.linalg.vector_norm({0}))', None),
    "grms": ('(yield "grms", torch.linalg.vector_norm({0}))', None),
    "gamax": ('(yield "gamax", torch.amax({0}))', None),
}

def _from_ops(fn, name: str) -> str:
    """An op table function's own source, renamed, for the generated module (one meaning,
    not a copy of it)."""
    source = inspect.getsource(fn)
    return "\n" + source.replace(f"def {fn.__name__}(", f"def {name}(", 1)


HELPERS: dict[str, str] = {
    "_scalar": '''
def _scalar(fn, *args):
    """fn on Python floats through float64 0-d tensors: IEEE results (inf, nan) where
    Python's float maths would raise."""
    return float(fn(*(torch.tensor(float(a), dtype=torch.float64) for a in args)))
''',
    "_div": '''
def _div(a, b):
    """a / b of two floats, inf or nan for a zero b."""
    try:
        return a / b
    except ZeroDivisionError:
        return _scalar(torch.div, a, b)
''',
    "_pow": '''
def _pow(a, b):
    """a ^ b.  torch computes a tensor ^ 0.5 and ^ -0.5 as sqrt and rsqrt, which differ
    from pow at -0 and -inf: those exponents go to torch.pow as 0-d tensors."""
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) and abs(b) == 0.5:
            b = torch.full((), b, dtype=a.dtype, device=a.device)
        return torch.pow(a, b)
    if isinstance(b, torch.Tensor):
        return torch.pow(a, b)
    try:
        result = a**b
    except (OverflowError, ZeroDivisionError):
        return _scalar(torch.pow, a, b)
    return math.nan if isinstance(result, complex) else float(result)
''',
    "_sign": '''
def _sign(x):
    """-1, 0 or 1, and nan for nan (torch.sign(nan) is 0: max(sign(x), min(x, -1)))."""
    if isinstance(x, torch.Tensor):
        return torch.maximum(torch.sign(x), torch.clamp_max(x, -1.0))
    return x if x != x or x == 0 else math.copysign(1.0, x)
''',
    "_max": '''
def _max(a, b):
    """The element-wise maximum; nan where either is nan."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.maximum(a, b)
    if isinstance(a, torch.Tensor):
        return torch.clamp_min(a, b)
    if isinstance(b, torch.Tensor):
        return torch.clamp_min(b, a)
    return math.nan if a != a or b != b else max(a, b)
''',
    "_min": '''
def _min(a, b):
    """The element-wise minimum; nan where either is nan."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.minimum(a, b)
    if isinstance(a, torch.Tensor):
        return torch.clamp_max(a, b)
    if isinstance(b, torch.Tensor):
        return torch.clamp_max(b, a)
    return math.nan if a != a or b != b else min(a, b)
''',
    "_clip": '''
def _clip(x, c):
    """x clamped to [-c, c]: min(max(x, -c), c)."""
    return _min(_max(-c, x), c)
''',
    "_compare": '''
def _compare(fn, flipped, a, b):
    """1 where fn(a, b) holds, else 0, in the tensors' dtype (``flipped`` is fn with its
    operands swapped, for a number before a tensor); of two numbers, a float."""
    if isinstance(a, torch.Tensor):
        like = torch.promote_types(a.dtype, b.dtype) if isinstance(b, torch.Tensor) else a.dtype
        return fn(a, b).to(like)
    if isinstance(b, torch.Tensor):
        return flipped(b, a).to(b.dtype)
    return float(fn(torch.tensor(float(a), dtype=torch.float64), float(b)))
''',
    "_where": '''
def _where(c, a, b):
    """a where c is nonzero (nan included), else b: a new tensor in the dtype of a (of b
    when a is a number); of three numbers, a or b."""
    if not any(isinstance(x, torch.Tensor) for x in (c, a, b)):
        return a if c != 0 else b
    condition = c != 0 if isinstance(c, torch.Tensor) else torch.tensor(c != 0)
    if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
        return torch.where(condition, torch.tensor(a, dtype=c.dtype),
                           torch.tensor(b, dtype=c.dtype))
    like = a if isinstance(a, torch.Tensor) else b
    out = torch.where(condition, a, b)
    return out if out.dtype == like.dtype else out.to(like.dtype)
''',
    "_lerp": '''
def _lerp(a, b, weight):
    """torch.lerp: a + weight (b - a) where |weight| < 0.5, else b - (b - a) (1 - weight)
    (a number a or b broadcast like the other); of numbers, the same formula on floats."""
    if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
        if not isinstance(weight, torch.Tensor):
            return a + weight * (b - a) if abs(weight) < 0.5 else b - (b - a) * (1.0 - weight)
        a = torch.full_like(weight, a)
    if not isinstance(a, torch.Tensor):
        a = torch.full_like(b, a)
    elif not isinstance(b, torch.Tensor):
        b = torch.full_like(a, b)
    elif a.shape != b.shape:
        a, b = torch.broadcast_tensors(a, b)
    return torch.lerp(a, b, weight)
''',
    "_rms": _from_ops(ops._t_rms, "_rms"),
    "_rowmean": _from_ops(ops._t_rowmean, "_rowmean"),
    "_colmean": _from_ops(ops._t_colmean, "_colmean"),
    "_newton_schulz": _from_ops(ops.newton_schulz, "_newton_schulz"),
    "_apply": '''
def _apply(fn, x):
    """fn of a tensor, or of a number (which a where on params alone may give)."""
    return fn(x) if isinstance(x, torch.Tensor) else _scalar(fn, x)
''',
    "_tensor": '''
def _tensor(x, like):
    """x, or a number broadcast like the parameter."""
    return x if isinstance(x, torch.Tensor) else torch.full_like(like, x)
''',
    "_fill": '''
def _fill(value, like):
    """A new tensor of like's shape holding value (a number or a tensor that broadcasts)."""
    out = torch.empty_like(like)
    return out.copy_(value) if isinstance(value, torch.Tensor) else out.fill_(value)
''',
    "_matrix": '''
def _matrix(x):
    """x as the rule sees it where it reads rows or columns: a vector of n is a column
    (n, 1), a number (1, 1), a tensor of more dimensions keeps its shape (its rows and
    columns are the last two).  A view: writing it writes x."""
    if x.dim() >= 2:
        return x
    return x.reshape(-1, 1) if x.dim() == 1 else x.reshape(1, 1)
''',
    "_facts": '''
def _facts(p):
    """What the rule may read of the tensor: ndim, its 2-D view's rows and cols, numel and
    its dtype's machine_eps."""
    rows, cols = _matrix(p).shape[-2:]
    return {"ndim": float(p.dim()), "rows": float(rows), "cols": float(cols),
            "numel": float(p.numel()), "machine_eps": torch.finfo(p.dtype).eps}
''',
    "_zeros": '''
def _zeros(shape, p):
    """A buffer's first value for the parameter p: 0 for a number, else zeros of the shape
    SHAPES names (row, col: p's 2-D view's, the last or second-to-last dimension 1)."""
    if shape == "number":
        return 0.0
    if shape == "full":
        return torch.zeros_like(p, memory_format=torch.preserve_format)
    if shape == "one":
        return torch.zeros((), dtype=p.dtype, device=p.device)
    dims = list(_matrix(p).shape)
    if "row" in shape:
        dims[-1] = 1
    if "col" in shape:
        dims[-2] = 1
    return torch.zeros(dims, dtype=p.dtype, device=p.device)
''',
    "_combine": _from_ops(ops.combine, "_combine"),
    "_together": '''
def _together(steps, count):
    """Runs the tensors' steps side by side: at each reduction over every parameter, each
    step yields the reduction's name and its tensor's part, and is sent the value over
    all of them (``count`` elements; _combine, in float64) in its tensor's dtype."""
    values = [None] * len(steps)
    while steps:
        parts, done = [], 0
        for step, value in zip(steps, values):
            try:
                parts.append(step.send(value))
            except StopIteration:
                done += 1
        if done:
            assert done == len(steps), "every tensor runs the same reductions"
            return
        joined = _combine(parts[0][0], [part for _, part in parts], count)
        values = [joined.to(device=part.device, dtype=part.dtype) for _, part in parts]
''',
    "_first": '''
def _first(name, p, group):
    """A buffer's value before its tensor's first step: its from value (``_from``, read on
    p's 2-D view) in the buffer's shape (SHAPES), else 0."""
    starts = _from(_matrix(p), group, _facts(p))
    if name not in starts:
        return _zeros(SHAPES[name], p)
    if SHAPES[name] == "number":
        return float(starts[name])
    buffer = _zeros(SHAPES[name], p)
    target = _matrix(buffer) if SHAPES[name] == "full" else buffer
    value = starts[name]
    target.copy_(value) if isinstance(value, torch.Tensor) else target.fill_(value)
    return buffer
''',
    "_show": '''
def _show(view, p, state, group):
    """Sets p to a view of it (``_eval_w`` or ``_train_w``), read on its 2-D view with its
    buffers (a full one as the 2-D view too)."""
    w = _matrix(p)
    buffers = {name: _matrix(value) if isinstance(value, torch.Tensor)
               and value.shape == p.shape else value for name, value in state.items()}
    value = view(w, buffers, group, float(state["step"]), _facts(p))
    w.copy_(value) if isinstance(value, torch.Tensor) else w.fill_(value)
''',
    "_drop": '''
def _drop(x, p, uniform):
    """Dropout with this step's U[0, 1) samples: an element is kept where its sample is
    >= p, and scaled by 1 / (1 - p) (0 everywhere when p >= 1)."""
    scale = 0.0 if p >= 1 else 1.0 / (1.0 - p)
    return x * ((uniform >= p).to(uniform.dtype) * scale)
''',
    "_elapsed": '''
def _elapsed(t, T):
    """s = t - 1 (0 at the first step), clamped to T."""
    return min(max(t - 1.0, 0.0), T)
''',
    "_ld": '''
def _ld(t, T):
    """Linear decay max(0, (T - s) / T)."""
    return max(0.0, (T - _elapsed(t, T)) / T)
''',
    "_cd": '''
def _cd(n, t, T):
    """Cyclical (cosine) decay 0.5 * (1 + cos(2 pi n s / T))."""
    return 0.5 * (1.0 + math.cos(2.0 * math.pi * n * _elapsed(t, T) / T))
''',
    "_rd": '''
def _rd(n, t, T):
    """Restart decay 0.5 * (1 + cos(pi ((n s) mod T) / T)), the modulo floored."""
    return 0.5 * (1.0 + math.cos(math.pi * ((n * _elapsed(t, T)) % T) / T))
''',
}

SPELLING = Spelling(
    calls=CALLS, name="torch", tensorize="torch.full_like(w, {0})", clone="{0}.clone()",
    helpers=HELPERS, whole="{0}.expand_as(w)",
    numbers={"exp": "_apply(torch.exp, {0})", "log": "_apply(torch.log, {0})",
             "sqrt": "_apply(torch.sqrt, {0})", "abs": "abs({0})", "div": "_div({0}, {1})"},
    tensor_of="_tensor({0}, w)")
# The optimizer's own arguments: a rule's param of one of these names is refused.
OWN_ARGUMENTS = frozenset({"params", "lr", "total_steps", "seed", "maximize"})
# Names of the generated module and its constructor's body.
MODULE_NAMES = frozenset({"self", "defaults", "torch", "math", "unknown", "RULE", "PARAMS",
                          "BUFFERS", "SITES", "DEFAULT_LR", "Callable", "Iterable", "Any",
                          "annotations", "start", "view", "steps"})

MODULE = Template('''$docstring

from __future__ import annotations

${imports}from collections.abc import Callable, Iterable
from typing import Any

import torch

RULE = """
$rule
"""
# name: (default, low, high, low closed, high closed, range as text); None: any number
PARAMS = $params
BUFFERS = $buffers
${shapes}SITES = $sites  # the random draws of a step, in order: N(0, 1) or U[0, 1) samples
DEFAULT_LR = $lr


$helpers

$update
$kept$starts$views
$step

def _check_values(group: dict) -> None:
    """Refuses a learning rate or param value the rule does not allow."""
    lr = group["lr"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise ValueError(f"Invalid lr: {lr!r}, must be a number")
    if not lr >= 0:
        raise ValueError(f"Invalid lr: {lr}, must be >= 0")
    for name, (_, low, high, low_closed, high_closed, text) in PARAMS.items():
        value = group[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"Invalid {name}: {value!r}, must be a number")
        if text is None:
            continue
        above = value >= low if low_closed else value > low
        below = value <= high if high_closed else value < high
        if not (above and below):
            raise ValueError(f"Invalid {name}: {value}, must be in {text}")


class $name(torch.optim.Optimizer):
    $class_doc

    def __init__(self, params: Iterable, lr: float = DEFAULT_LR$keywords) -> None:
$init        defaults = {"lr": lr, "maximize": bool(maximize)$defaults}
$more        _check_values(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        allowed = {"params", "lr", "initial_lr", "maximize",$mode *PARAMS}
        unknown = sorted(set(param_group) - allowed)
        if unknown:
            raise ValueError(f"unknown hyperparameter {unknown[0]!r} for this rule; its "
                             f"params are: {', '.join(PARAMS) or 'none'}")
        super().add_param_group(param_group)
        _check_values(self.param_groups[-1])
$matrix
    @staticmethod
    def _with_grads(group: dict) -> list[torch.Tensor]:
        """The group's parameters that have gradients; refuses what the step cannot take."""
        params = []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("$name does not support sparse gradients")
            if torch.is_complex(p):
                raise RuntimeError("$name does not support complex parameters")
            params.append(p)
        return params

    def _buckets(self, group: dict, params: list[torch.Tensor]
                 ) -> dict[tuple, list[torch.Tensor]]:
        """The tensors by step number, device and dtype, in nos.Optimizer's order (which
        its random draws follow); a tensor's state is made on its first step$made."""
        buckets: dict[tuple, list[torch.Tensor]] = {}
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.int64)
$buffers_made            state["step"] += 1
            buckets.setdefault((int(state["step"]), p.device, p.dtype), []).append(p)
        return buckets
$random
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step, ``w <- w - lr * update``, for every parameter with a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # all that can refuse the step is done before any state or parameter changes
$refuse        work = [(group, self._with_grads(group)) for group in self.param_groups]
        total = $total
$run        return loss
$shows''')

RANDOM = '''
    def _generator(self, device: torch.device) -> torch.Generator | None:
        """The device's generator, seeded (or restored from a loaded state dict) on first
        use; None without a seed: torch's global generator."""
        if self.seed is None:
            return None
        if device not in self._generators:
            generator = torch.Generator(device)
            saved = self._saved_generators.pop(str(device), None)
            if saved is None:
                generator.manual_seed(self.seed)
            else:
                generator.set_state(saved)
            self._generators[device] = generator
        return self._generators[device]

    def _draw(self, params: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """A bucket's samples for this step: site by site, tensor by tensor."""
        generator = self._generator(params[0].device)
        return [[(torch.randn if site == "normal" else torch.rand)(
                    p.shape, generator=generator, dtype=p.dtype, device=p.device)
                 for p in params] for site in SITES]

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict; with a seed, also the generators' states (``generators``)."""
        state = super().state_dict()
        if self.seed is not None:
            states = dict(self._saved_generators)
            states.update({str(d): g.get_state() for d, g in self._generators.items()})
            state["generators"] = {"seed": self.seed, "states": states}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's ``load_state_dict``; a saved seed and generator states are restored."""
        super().load_state_dict(state_dict)
        saved = state_dict.get("generators")
        if saved is not None:
            self.seed = int(saved["seed"])
            self._generators = {}
            self._saved_generators = {name: s.cpu() for name, s in saved["states"].items()}
'''

TOTAL_STEPS_CHECK = '''\
        if total_steps is None:
            raise ValueError("this rule reads T (directly or through ld, cd or rd): "
                             "pass total_steps")
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) \\
                or total_steps < 1:
            raise ValueError(f"Invalid total_steps: {total_steps!r}, must be an integer >= 1")
        self.total_steps = total_steps'''

SEED_CHECK = '''\
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"Invalid seed: {seed!r}, must be an integer or None")
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}
        self._saved_generators: dict[str, torch.Tensor] = {}  # loaded, not yet used'''


MATRIX_CHECK = """\
        for i, p in enumerate(self.param_groups[-1]["params"]):
            if p.dim() != 2:
                raise ValueError(f"{op} needs 2-D parameters; parameter {{i}} of group "
                                 f"{{len(self.param_groups) - 1}} has shape {{tuple(p.shape)}}")
"""


RUN = """\
        for group, params in work:
            for (t, _, _), bucket in self._buckets(group, params).items():
{draw}                for {each} in {bucket}:
                    _step(p, self.state[p], group, float(t), total,
                          {samples})
"""

# a rule with reductions over every parameter: every tensor's step runs side by side
RUN_TOGETHER = """\
        steps = [_step(p, self.state[p], group, float(t), total, [])
                 for group, params in work
                 for (t, _, _), bucket in self._buckets(group, params).items()
                 for p in bucket]
        _together(steps, sum(p.numel() for _, params in work for p in params))
"""

REFUSE_IN_EVAL = """\
        if not all(group["train_mode"] for group in self.param_groups):
            raise RuntimeError("the parameters hold the evaluation view (eval_w): call "
                               "optimizer.train() before step()")
"""

SHOWS = '''
    @torch.no_grad()
    def eval(self) -> None:
        """Sets every parameter to the rule's evaluation view, ``eval_w``, to evaluate or
        save the model; ``train()`` goes back.{kept}"""
        for group in self.param_groups:
            if group["train_mode"]:
                for p in group["params"]:
                    state = self.state.get(p)
                    if state:  # a parameter never stepped is its own view
{keep}                        _show(_eval_w, p, state, group)
                group["train_mode"] = False

    @torch.no_grad()
    def train(self) -> None:
        """Sets every parameter back to its training value{back_doc}; a
        step needs it."""
        for group in self.param_groups:
            if not group["train_mode"]:
                for p in group["params"]:
                    state = self.state.get(p)
                    if state:
                        {back}
                group["train_mode"] = True
'''


def _shows(plan: Plan) -> str:
    """The ``eval()`` and ``train()`` methods of a rule with views (as nos.Optimizer's)."""
    if "train_w" in plan.views:
        return SHOWS.format(kept="", keep="", back_doc=" (the rule's ``train_w``)",
                            back="_show(_train_w, p, state, group)")
    return SHOWS.format(kept="  The training value is kept meanwhile (in\n        "
                        "``state[\"w_train\"]``).",
                        keep='                        state["w_train"] = p.detach().clone()\n',
                        back_doc=", kept by ``eval()``",
                        back='p.copy_(state.pop("w_train"))')


def _shapes_literal(plan: Plan) -> str:
    """The SHAPES table, where a buffer is not a plain tensor like the parameter or the rule
    reads rows or columns."""
    if plan.plain_buffers and not plan.viewed:
        return ""
    rows = ", ".join(f"{quote(n)}: {quote(plan.buffer_shape(n))}" for n in plan.buffers)
    return ("# each buffer's shape: the parameter's (full), one number per tensor (one, a 0-d "
            "tensor),\n# its 2-D view's with the last (row) or second-to-last (col) dimension "
            f"1, or a float (number)\nSHAPES = {{{rows}}}\n")


def _buffers_made(plan: Plan) -> str:
    """The code of ``_buckets`` that makes a tensor's buffers."""
    if plan.plain_buffers:
        return ("                for name in BUFFERS:\n"
                "                    state[name] = torch.zeros_like(p, memory_format="
                "torch.preserve_format)\n")
    names = "_kept(group, _facts(p))" if plan.kept else "BUFFERS"
    first = "_first(name, p, group)" if plan.inits else "_zeros(SHAPES[name], p)"
    return (f"            for name in {names}:\n"
            "                if name not in state:\n"
            f"                    state[name] = {first}\n")


def _step_function(plan: Plan) -> str:
    """``_step``: one tensor's step around ``_update``."""
    facts = ", _facts(p)" if plan.facts else ""
    call = "yield from _update" if plan.crosses else "_update"
    apply = "copy_(update)" if plan.sets else 'add_(update, alpha=-group["lr"])'
    lines = ['g = torch.neg(p.grad) if group.get("maximize", False) else p.grad']
    if plan.viewed:
        drawn = "[_matrix(x) for x in drawn]" if plan.random else "drawn"
        lines += ["w = _matrix(p)",
                  'old = {name: _matrix(state[name]) if SHAPES[name] == "full" else state[name]',
                  "       for name in BUFFERS if name in state}",
                  f"update, buffers = {call}(w, _matrix(g), old, group, t, T, {drawn}{facts})",
                  "for name, value in buffers.items():",
                  "    if value is not None:",
                  '        state[name] = value.reshape(p.shape) if SHAPES[name] == "full" '
                  "else value",
                  f"w.{apply}"]
    else:
        lines.append(f"update, buffers = {call}(p, g, state, group, t, T, drawn{facts})")
        lines.append("state.update((name, value) for name, value in buffers.items() "
                     "if value is not None)" if plan.kept else "state.update(buffers)")
        lines.append(f"p.{apply}")
    body = "\n".join("    " + line for line in lines)
    then = "w <- the rule's new value" if plan.sets else "w <- w - lr * update"
    joined = " (a generator, as\n    _update)" if plan.crosses else ""
    returns = "" if plan.crosses else " -> None"
    return ("def _step(p: torch.Tensor, state: dict, group: dict, t: float, T: float | None,\n"
            f"          drawn: list){returns}:\n"
            f'    """One tensor\'s step: the rule\'s update and buffers, then {then} (g is\n'
            f'    the gradient, or its negative with maximize){joined}."""\n'
            f"{body}\n")


def class_name(text: str) -> str:
    """``powersign_ld`` -> ``PowersignLd``."""
    return "".join(part[:1].upper() + part[1:] for part in text.split("_") if part)


def torch_source(rule: Rule | str, name: str | None = None, lr: float | None = None) -> str:
    """The source of a standalone module holding the rule as a torch.optim.Optimizer.

    ``rule`` is a Rule, rule text or a named rule (``"adam"``); ``name`` the class name
    (the named rule's, else ``ExportedRule``); ``lr`` the default learning rate (the
    named rule's, else nos.Optimizer's default).  ExportError (a ValueError) for what
    cannot be exported.
    """
    source = read_source(rule, lr)
    plan = make_plan(source.rule)
    if plan.crosses and plan.random:
        raise ExportError("a random draw (noise, annealed_noise, drop) in a rule with "
                          "reductions over every parameter (gsum, gnorm, clip_gnorm, ...) is "
                          "not exported: nos.Optimizer's two executors draw it in different "
                          "orders")
    default = class_name(source.baseline.name) if source.baseline else "ExportedRule"
    name = check_identifier(name or default, MODULE_NAMES)
    keywords = keywords_of(plan, OWN_ARGUMENTS, MODULE_NAMES)
    signature = keywords.signature()
    init = []
    if plan.needs_total_steps:
        signature.insert(len(keywords.plain), "total_steps: int | None = None")
        init.append(TOTAL_STEPS_CHECK)
    if plan.random:
        signature.insert(len(keywords.plain) + plan.needs_total_steps,
                         "seed: int | None = None")
        init.append(SEED_CHECK)
    signature.insert(len(keywords.plain) + plan.needs_total_steps + plan.random,
                     "maximize: bool = False")
    update = update_function(plan, SPELLING)
    kept = "\n" + kept_function(plan, SPELLING) + "\n" if plan.kept else ""
    starts = "\n" + init_function(plan, SPELLING) + "\n" if plan.inits else ""
    views = "".join("\n" + view_function(plan, SPELLING, view) + "\n" for view in plan.views)
    step = _step_function(plan)
    made = _buffers_made(plan)
    run = RUN_TOGETHER if plan.crosses else RUN.format(
        draw="                drawn = self._draw(bucket)\n" if plan.random else "",
        samples="[samples[i] for samples in drawn]" if plan.random else "[]",
        each="i, p" if plan.random else "p",
        bucket="enumerate(bucket)" if plan.random else "bucket")
    shows = _shows(plan) if plan.views else ""
    helpers = helpers_for(update + kept + starts + views + step + made + run + shows, HELPERS)
    params = params_literal(plan)
    doc = _docstring(plan, name, source.baseline.doc if source.baseline else None)
    text = MODULE.substitute(
        docstring=docstring_literal(_module_doc(plan, name)),
        imports="import math\n" if "math." in helpers + update + params else "",
        rule=str(source.rule), params=params, buffers=tuple_literal(plan.buffers),
        sites=tuple_literal(plan.sites), lr=float_literal(source.lr), helpers=helpers,
        update=update, kept=kept, starts=starts, views=views, step=step, name=name,
        class_doc=docstring_literal(doc, "    "),
        shapes=_shapes_literal(plan), buffers_made=made,
        made="" if plan.plain_buffers else ", a buffer\n        when the rule first needs it",
        matrix=MATRIX_CHECK.format(op=plan.matrix) if plan.matrix else "",
        keywords=(",\n                 *, " + ",\n                 ".join(signature))
        if signature else "",
        init="".join(block + "\n" for block in init),
        defaults=((", " + keywords.values()) if keywords.plain else "")
        + (', "train_mode": True' if plan.views else ""),
        mode=' "train_mode",' if plan.views else "",
        more=keywords.rest_block("        ", "defaults"),
        random=RANDOM if plan.random else "",
        refuse=REFUSE_IN_EVAL if plan.views else "", run=run, shows=shows,
        total="float(self.total_steps)" if plan.needs_total_steps else "None",
    )
    return "\n".join(line.rstrip() for line in text.split("\n")).rstrip("\n") + "\n"


def _module_doc(plan: Plan, name: str) -> str:
    return (f"{name}: a nos rule as a standalone torch optimizer.\n\nWritten by ``nos "
            f"export``; it imports torch only.  The rule::\n\n"
            + "\n".join("    " + line for line in str(plan.rule).split("\n"))
            + f"\n\nUse it as any torch optimizer: ``{name}(model.parameters(), lr=...)``; "
            f"its docstring\nhas the rule with its prelude, its LaTeX and its params.")


def _docstring(plan: Plan, name: str, doc: str | None) -> str:
    notes = ["``maximize=True`` steps up the gradient (the rule's g is the gradient's "
             "negative), per group too."]
    if plan.viewed:
        notes.append("The rule reads rows or columns: each tensor is stepped as its 2-D view "
                     "(a vector of n is a column (n, 1), a number (1, 1)); a buffer of rows or "
                     "columns keeps the view's shape.")
    if plan.matrix:
        notes.append(f"{plan.matrix} needs 2-D parameters: others are refused.")
    if plan.kept:
        notes.append("A where on params (and the tensor's facts) alone takes one branch: the "
                     "other is not computed, and a buffer only it needs is not kept.")
    if plan.needs_total_steps:
        notes.append("``total_steps`` is the rule's T (it reads T, ld, cd or rd).")
    if plan.crosses:
        notes.append("The rule reduces over every parameter (of every group, with a "
                     "gradient): a step runs every tensor's step side by side.")
    if plan.sets:
        notes.append("The rule gives the parameter's new value (``w = ...``): no lr is "
                     "applied but the rule's own.")
    if plan.views:
        notes.append("``eval()`` sets every parameter to the rule's ``eval_w`` (to evaluate "
                     "or save the model) and ``train()`` back; ``step()`` needs the training "
                     "value.")
    if plan.random:
        notes.append("``seed`` seeds the generator of noise, annealed_noise and drop (one per "
                     "device, saved by ``state_dict()``); the samples are nos.Optimizer's with "
                     "the same seed, drawn in the same order.  Without a seed they come from "
                     "torch's global generator.")
    return "\n\n".join([f"{name}: a nos rule as a torch optimizer (written by ``nos export``).",
                        description(plan, doc), *(textwrap.fill(note, 88) for note in notes)])
