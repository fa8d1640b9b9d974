"""A rule becomes the source of a standalone ``torch.optim.Optimizer`` subclass.

The module written imports only torch (and math): the rule's params are the
constructor's keywords, checked against their declared ranges; the state lives in
``self.state[p]`` as tensors (``step`` included), so ``state_dict()`` and
``load_state_dict()`` work as torch's own; the rule's text and LaTeX are its docstring.

The maths is the language's, written per tensor (``_update``, a readable reference, one
torch operation per operation of the rule) in the order nos.Optimizer computes it:
scalars (numbers, params, t, T, schedules) on Python floats with IEEE results where
Python would raise, ``sign(nan) = nan``, ``x ^ ±0.5`` as ``pow`` rather than
``sqrt``, nan-propagating ``max``/``min``/``clip``, the floored modulo of ``rd``.  A
random rule draws its samples as nos.Optimizer does -- the same generator (one per
device, seeded by ``seed``, saved in the state dict) and the same order (by param group,
by bucket of step/device/dtype, by site, by tensor) -- so an exported rule steps as
nos.Optimizer with the same seed does; the roundings differ only where nos's compiler
fuses operations (``addcdiv``, ``a * x + b * y``), about 1e-16 relatively per step.
"""

from __future__ import annotations

import textwrap
from string import Template

from nos.export.plan import (
    Plan,
    Spelling,
    check_identifier,
    description,
    docstring_literal,
    float_literal,
    helpers_for,
    keywords_of,
    make_plan,
    params_literal,
    read_source,
    tuple_literal,
    update_function,
)
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
    "drop": ("_drop({0}, {1}, drawn[{k}])", None),
    "cd": (None, "_cd({0}, t, T)"),
    "rd": (None, "_rd({0}, t, T)"),
}

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

SPELLING = Spelling(calls=CALLS, tensorize="torch.full_like(w, {0})", clone="{0}.clone()",
                    helpers=HELPERS)
# The optimizer's own arguments: a rule's param of one of these names is refused.
OWN_ARGUMENTS = frozenset({"params", "lr", "total_steps", "seed"})
# Names of the generated module and its constructor's body.
MODULE_NAMES = frozenset({"self", "defaults", "torch", "math", "unknown", "RULE", "PARAMS",
                          "BUFFERS", "SITES", "DEFAULT_LR", "Callable", "Iterable", "Any",
                          "annotations"})

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
SITES = $sites  # the random draws of a step, in order: N(0, 1) or U[0, 1) samples
DEFAULT_LR = $lr


$helpers

$update

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
$init        defaults = {"lr": lr$defaults}
$more        _check_values(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        unknown = sorted(set(param_group) - {"params", "lr", "initial_lr", *PARAMS})
        if unknown:
            raise ValueError(f"unknown hyperparameter {unknown[0]!r} for this rule; its "
                             f"params are: {', '.join(PARAMS) or 'none'}")
        super().add_param_group(param_group)
        _check_values(self.param_groups[-1])

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

    def _buckets(self, params: list[torch.Tensor]) -> dict[tuple, list[torch.Tensor]]:
        """The tensors by step number, device and dtype, in nos.Optimizer's order (which
        its random draws follow); a tensor's state is made on its first step."""
        buckets: dict[tuple, list[torch.Tensor]] = {}
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.int64)
                for name in BUFFERS:
                    state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
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
        work = [(group, self._with_grads(group)) for group in self.param_groups]
        total = $total
        for group, params in work:
            for (t, _, _), bucket in self._buckets(params).items():
$draw                for $each in $bucket:
                    state = self.state[p]
                    update, buffers = _update(p, p.grad, state, group, float(t), total,
                                              $samples)
                    state.update(buffers)
                    p.add_(update, alpha=-group["lr"])
        return loss
''')

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
    update = update_function(plan, SPELLING)
    helpers = helpers_for(update, HELPERS)
    params = params_literal(plan)
    doc = _docstring(plan, name, source.baseline.doc if source.baseline else None)
    text = MODULE.substitute(
        docstring=docstring_literal(_module_doc(plan, name)),
        imports="import math\n" if "math." in helpers + update + params else "",
        rule=str(source.rule), params=params, buffers=tuple_literal(plan.buffers),
        sites=tuple_literal(plan.sites), lr=float_literal(source.lr), helpers=helpers,
        update=update, name=name, class_doc=docstring_literal(doc, "    "),
        keywords=(",\n                 *, " + ",\n                 ".join(signature))
        if signature else "",
        init="".join(block + "\n" for block in init),
        defaults=(", " + keywords.values()) if keywords.plain else "",
        more=keywords.rest_block("        ", "defaults"),
        random=RANDOM if plan.random else "",
        draw="                drawn = self._draw(bucket)\n" if plan.random else "",
        samples="[samples[i] for samples in drawn]" if plan.random else "[]",
        each="i, p" if plan.random else "p",
        bucket="enumerate(bucket)" if plan.random else "bucket",
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
    notes = []
    if plan.needs_total_steps:
        notes.append("``total_steps`` is the rule's T (it reads T, ld, cd or rd).")
    if plan.random:
        notes.append("``seed`` seeds the generator of noise, annealed_noise and drop (one per "
                     "device, saved by ``state_dict()``); the samples are nos.Optimizer's with "
                     "the same seed, drawn in the same order.  Without a seed they come from "
                     "torch's global generator.")
    return "\n\n".join([f"{name}: a nos rule as a torch optimizer (written by ``nos export``).",
                        description(plan, doc), *(textwrap.fill(note, 88) for note in notes)])
