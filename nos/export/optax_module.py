"""A rule becomes the source of a standalone optax ``GradientTransformation``.

The module written imports only jax and optax (and math).  Its function takes the
learning rate (a float or an optax schedule of the step count) and the rule's params as
keywords, checked against their declared ranges, and returns a transformation whose
``update`` gives ``-lr * update`` per leaf, optax's convention of updates to add
(``optax.apply_updates``).  The state holds the step count, the rule's buffers (each a
pytree like the params) and, for a random rule, a PRNG key.

The maths is the language's, in the same ``_update`` as the torch export
(:mod:`nos.export.plan`) spelled with ``jax.numpy``: IEEE results throughout (jnp never
raises), ``sign(nan) = nan``, ``x ^ 0.5`` as ``pow``, nan-propagating ``max``/``min``/
``clip``, the floored modulo of ``rd``.  Scalars are computed in each leaf's dtype, at
least float32 (float64 with ``jax_enable_x64``).  Random rules draw from ``jax.random``
with the key in the state (seeded by ``seed``): the same distributions as nos.Optimizer,
not its samples.
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
    "div": (None, "jnp.divide({0}, {1})"),
    "pow": ("jnp.power({0}, {1})", "jnp.power({0}, {1})"),
    "exp": ("jnp.exp({0})", "jnp.exp({0})"),
    "log": ("jnp.log({0})", "jnp.log({0})"),
    "sqrt": ("jnp.sqrt({0})", "jnp.sqrt({0})"),
    "abs": ("jnp.abs({0})", "jnp.abs({0})"),
    "sign": ("jnp.sign({0})", "jnp.sign({0})"),
    "clip": ("_clip({0}, {1})", "_clip({0}, {1})"),
    "max": ("jnp.maximum({0}, {1})", "jnp.maximum({0}, {1})"),
    "min": ("jnp.minimum({0}, {1})", "jnp.minimum({0}, {1})"),
    "drop": ("_drop({0}, {1}, drawn[{k}])", None),
    "cd": (None, "_cd({0}, t, T)"),
    "rd": (None, "_rd({0}, t, T)"),
}

HELPERS: dict[str, str] = {
    "_clip": '''
def _clip(x, c):
    """x clamped to [-c, c]: min(max(x, -c), c), nan where either is nan."""
    return jnp.minimum(jnp.maximum(-c, x), c)
''',
    "_drop": '''
def _drop(x, p, uniform):
    """Dropout with this step's U[0, 1) samples: an element is kept where its sample is
    >= p, and scaled by 1 / (1 - p) (0 everywhere when p >= 1)."""
    scale = jnp.where(p >= 1, 0.0, jnp.divide(1.0, 1.0 - p))
    return x * ((uniform >= p).astype(uniform.dtype) * scale)
''',
    "_elapsed": '''
def _elapsed(t, T):
    """s = t - 1 (0 at the first step), clamped to T."""
    return jnp.minimum(jnp.maximum(t - 1.0, 0.0), T)
''',
    "_ld": '''
def _ld(t, T):
    """Linear decay max(0, (T - s) / T)."""
    return jnp.maximum(0.0, (T - _elapsed(t, T)) / T)
''',
    "_cd": '''
def _cd(n, t, T):
    """Cyclical (cosine) decay 0.5 * (1 + cos(2 pi n s / T))."""
    return 0.5 * (1.0 + jnp.cos(2.0 * math.pi * n * _elapsed(t, T) / T))
''',
    "_rd": '''
def _rd(n, t, T):
    """Restart decay 0.5 * (1 + cos(pi ((n s) mod T) / T)), the modulo floored."""
    return 0.5 * (1.0 + jnp.cos(math.pi * jnp.mod(n * _elapsed(t, T), T) / T))
''',
}

SPELLING = Spelling(calls=CALLS, tensorize="jnp.full_like(g, {0})", clone="{0}", helpers=HELPERS)
# The function's own arguments: a rule's param of one of these names is refused.
OWN_ARGUMENTS = frozenset({"learning_rate", "total_steps", "seed"})
# Names of the generated module and its function's body.
MODULE_NAMES = frozenset({"hyper", "T", "init_fn", "update_fn", "unknown", "jax", "jnp", "optax",
                          "math", "RULE", "PARAMS", "BUFFERS", "SITES", "DEFAULT_LR", "Callable",
                          "Any", "NamedTuple", "annotations"})

MODULE = Template('''$docstring

from __future__ import annotations

${imports}from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

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

def _check_values(learning_rate: Any, hyper: dict) -> None:
    """Refuses a learning rate or param value the rule does not allow."""
    if not callable(learning_rate):
        if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)):
            raise ValueError(f"Invalid learning_rate: {learning_rate!r}, must be a number or "
                             "a schedule")
        if not learning_rate >= 0:
            raise ValueError(f"Invalid learning_rate: {learning_rate}, must be >= 0")
    for name, (_, low, high, low_closed, high_closed, text) in PARAMS.items():
        value = hyper[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"Invalid {name}: {value!r}, must be a number")
        if text is None:
            continue
        above = value >= low if low_closed else value > low
        below = value <= high if high_closed else value < high
        if not (above and below):
            raise ValueError(f"Invalid {name}: {value}, must be in {text}")
$sample

class $state(NamedTuple):
    """The state of ``$name``: the step count and the rule's buffers (each a pytree like
    the params)$key_doc."""

    count: jax.Array
    buffers: dict[str, Any]
$key_field

def $name(learning_rate: float | Callable[[jax.Array], Any] = DEFAULT_LR$keywords
          ) -> optax.GradientTransformation:
    $doc
$init    hyper = {$values}
$more    _check_values(learning_rate, hyper)
    hyper = {name: float(value) for name, value in hyper.items()}
    T = $total

    def init_fn(params):
        buffers = {name: jax.tree_util.tree_map(jnp.zeros_like, params) for name in BUFFERS}
        return $state(jnp.zeros([], jnp.int32), buffers$key_init)

    def update_fn(updates, state, params=None):
$needs_w        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        count = state.count + 1
        grads, treedef = jax.tree_util.tree_flatten(updates)
        weights = treedef.flatten_up_to(params) if params is not None else [None] * len(grads)
        old = {name: treedef.flatten_up_to(state.buffers[name]) for name in BUFFERS}
$keys        steps, new = [], {name: [] for name in BUFFERS}
        for i, (g, w) in enumerate(zip(grads, weights, strict=True)):
            t = count.astype(jnp.promote_types(g.dtype, jnp.float32))
$drawn            update, buffers = _update(w, g, {name: old[name][i] for name in BUFFERS}, hyper,
                                      t, T, $samples)
            steps.append((-lr * update).astype(g.dtype))
            for name in BUFFERS:
                new[name].append(buffers[name].astype(g.dtype))
        buffers = {name: treedef.unflatten(new[name]) for name in BUFFERS}
        return treedef.unflatten(steps), $state(count, buffers$key_next)

    return optax.GradientTransformation(init_fn, update_fn)
''')

SAMPLE = '''

def _sample(site: str, key: jax.Array, like: jax.Array) -> jax.Array:
    """One site's samples for a leaf: N(0, 1) or U[0, 1)."""
    if site == "normal":
        return jax.random.normal(key, like.shape, like.dtype)
    return jax.random.uniform(key, like.shape, like.dtype)
'''

TOTAL_STEPS_CHECK = '''\
    if total_steps is None:
        raise ValueError("this rule reads T (directly or through ld, cd or rd): "
                         "pass total_steps")
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"Invalid total_steps: {total_steps!r}, must be an integer >= 1")
'''

SEED_CHECK = '''\
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"Invalid seed: {seed!r}, must be an integer")
'''


def optax_source(rule: Rule | str, name: str | None = None, lr: float | None = None) -> str:
    """The source of a standalone module holding the rule as an optax transformation.

    ``rule`` is a Rule, rule text or a named rule (``"adam"``); ``name`` the function's
    name (the named rule's, else ``exported_rule``); ``lr`` the default learning rate.
    ExportError (a ValueError) for what cannot be exported.
    """
    source = read_source(rule, lr)
    plan = make_plan(source.rule)
    name = name or (source.baseline.name if source.baseline else "exported_rule")
    state = "".join(p[:1].upper() + p[1:] for p in name.split("_") if p) + "State"
    name = check_identifier(name, MODULE_NAMES | {state})
    keywords = keywords_of(plan, OWN_ARGUMENTS, MODULE_NAMES | {name, state})
    signature = keywords.signature()
    init = ""
    if plan.needs_total_steps:
        signature.insert(len(keywords.plain), "total_steps: int | None = None")
        init += TOTAL_STEPS_CHECK
    if plan.random:
        signature.insert(len(keywords.plain) + plan.needs_total_steps, "seed: int = 0")
        init += SEED_CHECK
    update = update_function(plan, SPELLING)
    helpers = helpers_for(update, HELPERS)
    params = params_literal(plan)
    doc = _docstring(plan, name, source.baseline.doc if source.baseline else None)
    random = plan.random
    text = MODULE.substitute(
        docstring=docstring_literal(_module_doc(plan, name)),
        imports="import math\n" if "math." in helpers + update + params else "",
        rule=str(source.rule), params=params, buffers=tuple_literal(plan.buffers),
        sites=tuple_literal(plan.sites), lr=float_literal(source.lr), helpers=helpers,
        update=update, name=name, state=state, doc=docstring_literal(doc, "    "),
        sample=SAMPLE if random else "",
        key_doc=" and the PRNG key of the draws" if random else "",
        key_field="    key: jax.Array\n" if random else "",
        keywords=(",\n" + " " * (len(name) + 5) + "*, " + (",\n" + " " * (len(name) + 5)).join(
            signature)) if signature else "",
        init=init, values=keywords.values(), more=keywords.rest_block("    ", "hyper"),
        total="float(total_steps)" if plan.needs_total_steps else "None",
        key_init=", jax.random.PRNGKey(seed)" if random else "",
        needs_w=('        if params is None:\n'
                 '            raise ValueError("this rule reads w: pass params to update")\n')
        if plan.reads_w else "",
        keys=("        keys = jax.random.split(state.key, 1 + len(grads) * len(SITES))\n"
              if random else ""),
        drawn=("            drawn = [_sample(site, keys[1 + i * len(SITES) + k], g)\n"
               "                     for k, site in enumerate(SITES)]\n") if random else "",
        samples="drawn" if random else "[]",
        key_next=", keys[0]" if random else "",
    )
    return "\n".join(line.rstrip() for line in text.split("\n")).rstrip("\n") + "\n"


def _module_doc(plan: Plan, name: str) -> str:
    return (f"{name}: a nos rule as a standalone optax transformation.\n\nWritten by "
            f"``nos export``; it imports jax and optax only.  The rule::\n\n"
            + "\n".join("    " + line for line in str(plan.rule).split("\n"))
            + f"\n\nUse it as any optax transformation: ``tx = {name}(learning_rate=...)``; "
            f"its docstring\nhas the rule with its prelude, its LaTeX and its params.")


def _docstring(plan: Plan, name: str, doc: str | None) -> str:
    notes = ["``learning_rate`` is a float or an optax schedule (a function of the step "
             "count); ``update(grads, state, params)`` returns ``-lr * update`` for each leaf, "
             "to add with ``optax.apply_updates``."]
    if plan.reads_w:
        notes.append("The rule reads w: pass ``params`` to ``update``.")
    if plan.needs_total_steps:
        notes.append("``total_steps`` is the rule's T (it reads T, ld, cd or rd).")
    if plan.random:
        notes.append("noise, annealed_noise and drop draw from ``jax.random`` with the key in "
                     "the state, seeded by ``seed``: nos.Optimizer's distributions, not its "
                     "samples (those come from torch's generator).")
    return "\n\n".join([f"{name}: a nos rule as an optax transformation (written by "
                        "``nos export``).", description(plan, doc),
                        *(textwrap.fill(note, 88) for note in notes)])
