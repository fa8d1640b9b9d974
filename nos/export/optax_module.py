"""A rule becomes the source of a standalone optax ``GradientTransformation``.

The module written imports only jax and optax (and math).  Its function takes the
learning rate (a float or an optax schedule of the step count) and the rule's params as
keywords, checked against their declared ranges, and returns a transformation whose
``update`` gives ``-lr * update`` per leaf, optax's convention of updates to add
(``optax.apply_updates``).  The state holds the step count, the rule's buffers (each a
pytree like the params: per leaf an array of the leaf's shape, of its 2-D view's rows or
columns, a 0-d array for one number per leaf or a buffer that depends on no tensor, a
0-d zero where a switch leaves it unused) and, for a random rule, a PRNG key.

The maths is the language's, in the same ``_update`` as the torch export
(:mod:`nos.export.plan`) spelled with ``jax.numpy``: IEEE results throughout (jnp never
raises), ``sign(nan) = nan``, ``x ^ 0.5`` as ``pow``, nan-propagating ``max``/``min``/
``clip``, the floored modulo of ``rd``, comparisons as 1 or 0, ``where(c, a, b)`` with
nan nonzero, ``lerp`` by torch.lerp's formula, reductions per leaf, rows and columns of
each leaf's 2-D view, ``newton_schulz`` as torch's (products summed in float32 at least,
each addmm rounded once; under jit XLA keeps excess precision between bfloat16
operations).  ``lr`` is the schedule's value at the step, the facts (ndim, rows, ...)
each leaf's.  A ``where`` on params and facts alone is decided when the step is traced:
only its branch is computed.  Scalars are computed in each leaf's dtype, at least
float32 (float64 with ``jax_enable_x64``).  Random rules draw from ``jax.random`` with
the key in the state (seeded by ``seed``): the same distributions as nos.Optimizer, not
its samples.  A reduction over every parameter (``gsum gmean gnorm grms gamax``, and
``clip_gnorm``, written out with the rest of the shorthand) reads every leaf: each leaf's
step is a generator that yields the reduction's name and its part, run side by side
(``_together``), the parts joined in the leaves' widest dtype; such a rule has no
switches (nos runs one program for every group).  ``w = expr`` gives the update optax
adds as the new value less w (one rounding more than setting it).  ``init`` starts a
buffer at its ``from`` value (read on the leaf's 2-D view).  Refused (ExportError): a
reduction of a ``where`` on params alone that may give a number (traced, a number and a
0-d array look alike), newton_schulz's steps or bits read from anything but params (the
iteration is unrolled when traced), and views (``eval_w``, ``train_w``: an optax
transformation has no evaluation mode; the torch export has ``eval()`` and ``train()``).
"""

from __future__ import annotations

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
    "lt": ("_compare(jnp.less, {0}, {1})", "_compare(jnp.less, {0}, {1})"),
    "le": ("_compare(jnp.less_equal, {0}, {1})", "_compare(jnp.less_equal, {0}, {1})"),
    "gt": ("_compare(jnp.greater, {0}, {1})", "_compare(jnp.greater, {0}, {1})"),
    "ge": ("_compare(jnp.greater_equal, {0}, {1})", "_compare(jnp.greater_equal, {0}, {1})"),
    "eq": ("_compare(jnp.equal, {0}, {1})", "_compare(jnp.equal, {0}, {1})"),
    "ne": ("_compare(jnp.not_equal, {0}, {1})", "_compare(jnp.not_equal, {0}, {1})"),
    "lerp": ("_lerp({0}, {1}, {2})", "_lerp({0}, {1}, {2})"),
    "sum": ("jnp.sum({0})", None),
    "mean": ("jnp.mean({0})", None),
    "norm": ("_norm({0})", None),
    "rms": ("_rms({0})", None),
    "amax": ("jnp.max({0})", None),
    "rowmean": ("_rowmean({0})", None),
    "colmean": ("_colmean({0})", None),
    "newton_schulz": ("_newton_schulz({0}, {1}, {2}, {3}, {4}, {5}, {6})", None),
    "drop": ("_drop({0}, {1}, drawn[{k}])", None),
    "cd": (None, "_cd({0}, t, T)"),
    "rd": (None, "_rd({0}, t, T)"),
    # over every leaf: this leaf's part yielded, the value over all sent back
    "gsum": ('(yield "gsum", jnp.sum({0}))', None),
    "gmean": ('(yield "gmean", jnp.sum({0}))', None),
    "gnorm": ('(yield "gnorm", _norm({0}))', None),
    "grms": ('(yield "grms", _norm({0}))', None),
    "gamax": ('(yield "gamax", jnp.max({0}))', None),
}

HELPERS: dict[str, str] = {
    "_clip": '''
def _clip(x, c):
    """x clamped to [-c, c]: min(max(x, -c), c), nan where either is nan."""
    return jnp.minimum(jnp.maximum(-c, x), c)
''',
    "_compare": '''
def _compare(fn, a, b):
    """1 where fn(a, b) holds, else 0 (false for nan, but nan != x), in the operands'
    dtype.  A select, not a cast of the comparison: XLA rewrites x * cast(c) as
    select(c, x, 0), which gives 0 where x is inf or nan and c false."""
    dtype = jnp.result_type(a, b)
    return jnp.where(fn(a, b), jnp.ones((), dtype), jnp.zeros((), dtype))
''',
    "_lerp": '''
def _lerp(a, b, weight):
    """torch.lerp's formula: a + weight (b - a) where |weight| < 0.5, else
    b - (b - a) (1 - weight)."""
    diff = b - a
    return jnp.where(jnp.abs(weight) < 0.5, a + weight * diff, b - diff * (1.0 - weight))
''',
    "_norm": '''
def _norm(x):
    """The 2-norm of the array's elements, sqrt(sum(x^2))."""
    return jnp.linalg.norm(jnp.ravel(x))
''',
    "_rms": '''
def _rms(x):
    """The root mean square of the array's elements, norm(x) / sqrt(size)."""
    return _norm(x) / math.sqrt(max(x.size, 1))
''',
    "_rowmean": '''
def _rowmean(x):
    """The mean over the last axis, kept as 1."""
    return jnp.mean(x, axis=-1, keepdims=True) if x.ndim >= 2 else x
''',
    "_colmean": '''
def _colmean(x):
    """The mean over the second-to-last axis, kept as 1."""
    return jnp.mean(x, axis=-2, keepdims=True) if x.ndim >= 2 else x
''',
    "_newton_schulz": '''
def _newton_schulz(x, a, b, c, steps, eps, bits):
    """torch.optim.Muon's orthogonalisation of the 2-D x, computed in the dtype ``bits``
    names (16: bfloat16, 32: float32, 64: float64, 0: x's own): x / max(norm(x), eps),
    then ``steps`` of X <- a X + (b A + c A A) X, A = X X^T (on the transpose of a tall
    x); the result in x's dtype.  Products are summed in float32 at least and each
    ``addmm`` rounded once, as torch's; XLA's sums still round otherwise."""
    if x.ndim != 2:
        raise ValueError(f"newton_schulz needs a 2-D array, got shape {x.shape}")
    if steps != int(steps) or not 0 <= steps < 100:
        raise ValueError(f"newton_schulz steps must be a whole number in [0, 100), got {steps}")
    dtypes = {0: x.dtype, 16: jnp.bfloat16, 32: jnp.float32, 64: jnp.float64}
    if bits not in dtypes:
        raise ValueError(f"newton_schulz bits must be 0, 16, 32 or 64, got {bits:g}")
    o = x.astype(dtypes[bits])
    tall = x.shape[0] > x.shape[1]
    if tall:
        o = o.T
    wide = jnp.promote_types(o.dtype, jnp.float32)  # torch sums and scales in it
    norm = jnp.sqrt(jnp.sum(jnp.square(o.astype(wide)))).astype(o.dtype)
    o = o / jnp.maximum(norm, eps).astype(o.dtype)

    def addmm(x, m1, m2, beta, alpha=1.0):  # beta x + alpha m1 m2, rounded once
        product = jnp.matmul(m1, m2, preferred_element_type=wide)
        return (beta * x.astype(wide) + alpha * product).astype(x.dtype)

    for _ in range(int(steps)):
        gram = jnp.matmul(o, o.T, preferred_element_type=wide).astype(o.dtype)
        o = addmm(o, addmm(gram, gram, gram, b, c), o, a)
    if tall:
        o = o.T
    return o.astype(x.dtype)
''',
    "_known": '''
def _known(value):
    """value() computed now, not traced: it reads params and the leaf's facts alone."""
    with jax.ensure_compile_time_eval():
        return float(value())
''',
    "_fill": '''
def _fill(value, like):
    """value (a number or an array that broadcasts) in like's shape and dtype."""
    return jnp.broadcast_to(jnp.asarray(value, like.dtype), like.shape)
''',
    "_matrix": '''
def _matrix(x):
    """x as the rule sees it where it reads rows or columns: a vector of n is a column
    (n, 1), a number (1, 1), an array of more axes keeps its shape (its rows and columns
    are the last two)."""
    if x.ndim >= 2:
        return x
    return x.reshape(-1, 1) if x.ndim == 1 else x.reshape(1, 1)
''',
    "_facts": '''
def _facts(x):
    """What the rule may read of a leaf: ndim, its 2-D view's rows and cols, numel and its
    dtype's machine_eps."""
    rows, cols = _matrix(x).shape[-2:]
    return {"ndim": float(x.ndim), "rows": float(rows), "cols": float(cols),
            "numel": float(x.size), "machine_eps": float(jnp.finfo(x.dtype).eps)}
''',
    "_zeros": '''
def _zeros(shape, p):
    """A buffer's first value for the leaf p: zeros of the shape SHAPES names (row, col:
    p's 2-D view's, the last or second-to-last axis 1), a 0-d zero for a number (in the
    dtype of the step's numbers) or for a buffer the rule does not keep (none)."""
    if shape == "number":
        return jnp.zeros([], jnp.promote_types(p.dtype, jnp.float32))
    if shape == "full":
        return jnp.zeros_like(p)
    if shape in ("one", "none"):
        return jnp.zeros([], p.dtype)
    dims = list(_matrix(p).shape)
    if "row" in shape:
        dims[-1] = 1
    if "col" in shape:
        dims[-2] = 1
    return jnp.zeros(dims, p.dtype)
''',
    "_first": '''
def _first(name, p, group):
    """A buffer's first value for the leaf p: zeros of its shape (SHAPES), a 0-d zero where
    the rule does not keep it for these params and this leaf."""
    return _zeros(SHAPES[name] if name in _kept(group, _facts(p)) else "none", p)
''',
    "_combine": '''
def _combine(name, parts, count):
    """A reduction over every leaf from the leaves' parts (``count`` elements in all), in
    their widest dtype: sums add, norms join as the norm of the norms (as
    torch.nn.utils.clip_grad_norm_), maxima take the max."""
    dtype = jnp.promote_types(jnp.result_type(*parts), jnp.float32)
    stacked = jnp.stack([jnp.reshape(part, ()).astype(dtype) for part in parts])
    if name in ("gsum", "gmean"):
        total = jnp.sum(stacked)
        return total / max(count, 1) if name == "gmean" else total
    if name in ("gnorm", "grms"):
        norm = jnp.sqrt(jnp.sum(stacked * stacked))
        return norm / math.sqrt(max(count, 1)) if name == "grms" else norm
    return jnp.max(stacked)
''',
    "_together": '''
def _together(steps, count):
    """Runs the leaves' steps side by side: at each reduction over every leaf, each step
    yields the reduction's name and its leaf's part, and is sent the value over all of
    them (``count`` elements, _combine) in its leaf's dtype; their results, in order."""
    values = [None] * len(steps)
    while True:
        parts, results = [], []
        for step, value in zip(steps, values):
            try:
                parts.append(step.send(value))
            except StopIteration as stop:
                results.append(stop.value)
        if results or not steps:
            assert len(results) == len(steps), "every leaf runs the same reductions"
            return results
        joined = _combine(parts[0][0], [part for _, part in parts], count)
        values = [joined.astype(part.dtype) for _, part in parts]
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

SPELLING = Spelling(
    calls=CALLS, name="optax", tensorize="jnp.full_like(g, {0})", clone="{0}",
    helpers=HELPERS, whole="jnp.broadcast_to({0}, g.shape)",
    numbers={"div": "jnp.divide({0}, {1})"}, known="_known(lambda: {0})",
    scalar_where="jnp.where({0}, {1}, {2})", tensor_where="jnp.where({0}, {1}, {2})",
    read_lr='group["lr"]', static_args={"newton_schulz": (4, 6)})
# The function's own arguments: a rule's param of one of these names is refused.
OWN_ARGUMENTS = frozenset({"learning_rate", "total_steps", "seed"})
# Names of the generated module and its function's body.
MODULE_NAMES = frozenset({"hyper", "T", "init_fn", "update_fn", "unknown", "jax", "jnp", "optax",
                          "math", "RULE", "PARAMS", "BUFFERS", "SITES", "DEFAULT_LR", "Callable",
                          "Any", "NamedTuple", "annotations", "start", "results"})

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
${shapes}SITES = $sites  # the random draws of a step, in order: N(0, 1) or U[0, 1) samples
DEFAULT_LR = $lr


$helpers

$update
$kept$starts
$step

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
$matrix        buffers = {name: jax.tree_util.tree_map($zeros, params)
                   for name in BUFFERS}
        return $state(jnp.zeros([], jnp.int32), buffers$key_init)

    def update_fn(updates, state, params=None):
$needs_w        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        count = state.count + 1
        grads, treedef = jax.tree_util.tree_flatten(updates)
        weights = treedef.flatten_up_to(params) if params is not None else [None] * len(grads)
        old = {name: treedef.flatten_up_to(state.buffers[name]) for name in BUFFERS}
$keys        results = []
        for i, (g, w) in enumerate(zip(grads, weights, strict=True)):
            t = count.astype(jnp.promote_types(g.dtype, jnp.float32))
$drawn            results.append(_step(w, g, {name: old[name][i] for name in BUFFERS}, hyper, lr,
                                 t, T, $samples))
$together        steps, new = [], {name: [] for name in BUFFERS}
        for step, buffers in results:
            steps.append(step)
            for name in BUFFERS:
                new[name].append(buffers[name])
        buffers = {name: treedef.unflatten(new[name]) for name in BUFFERS}
        return treedef.unflatten(steps), $state(count, buffers$key_next)

    return optax.GradientTransformation(init_fn, update_fn)
''')

MATRIX_CHECK = """\
        for i, p in enumerate(jax.tree_util.tree_leaves(params)):
            if jnp.ndim(p) != 2:
                raise ValueError(f"{op} needs 2-D parameters; leaf {{i}} has shape "
                                 f"{{jnp.shape(p)}}")
"""

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
    if plan.views:
        raise ExportError(f"the views ({', '.join(plan.views)}) are not exported to optax, "
                          f"which has no evaluation mode; export the rule to torch "
                          f"(its eval and train methods)")
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
    kept = "\n" + kept_function(plan, SPELLING) + "\n" if plan.kept else ""
    step = _step_function(plan)
    starts = "\n" + init_function(plan, SPELLING) + "\n" + _start_function(plan) + "\n" \
        if plan.inits else ""
    if plan.plain_buffers:
        zeros = "jnp.zeros_like"
    elif plan.inits:
        zeros = "lambda p, name=name: _start(name, p, hyper)"
    elif plan.kept:
        zeros = "lambda p, name=name: _first(name, p, hyper)"
    else:
        zeros = "lambda p, name=name: _zeros(SHAPES[name], p)"
    together = ("        results = _together(results, sum(g.size for g in grads))\n"
                if plan.crosses else "")
    helpers = helpers_for(update + kept + starts + step + zeros + together, HELPERS)
    params = params_literal(plan)
    doc = _docstring(plan, name, source.baseline.doc if source.baseline else None)
    random = plan.random
    text = MODULE.substitute(
        docstring=docstring_literal(_module_doc(plan, name)),
        imports="import math\n" if "math." in helpers + update + params else "",
        rule=str(source.rule), params=params, buffers=tuple_literal(plan.buffers),
        sites=tuple_literal(plan.sites), lr=float_literal(source.lr), helpers=helpers,
        update=update, kept=kept, starts=starts, step=step, zeros=zeros,
        shapes=_shapes_literal(plan), together=together,
        matrix=MATRIX_CHECK.format(op=plan.matrix) if plan.matrix else "",
        name=name, state=state, doc=docstring_literal(doc, "    "),
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


def _start_function(plan: Plan) -> str:
    """``_start``: a buffer's first value for a leaf, its ``from`` value where it has one."""
    shape = ('SHAPES[name] if name in _kept(group, _facts(p)) else "none"' if plan.kept
             else "SHAPES[name]")
    return f'''def _start(name, p, group):
    """A buffer's first value for the leaf p: its from value (``_from``, read on p's 2-D
    view) in the buffer's shape (SHAPES), else zeros (a 0-d zero where the rule does not
    keep the buffer for these params and this leaf)."""
    shape = {shape}
    zeros = _zeros(shape, p)
    starts = _from(_matrix(p), group, _facts(p))
    if name not in starts or shape == "none":
        return zeros
    value = jnp.asarray(starts[name], zeros.dtype)
    if shape == "full":
        return jnp.broadcast_to(value, _matrix(p).shape).reshape(p.shape)
    return jnp.broadcast_to(value, zeros.shape)
'''


def _shapes_literal(plan: Plan) -> str:
    """The SHAPES table, where a buffer is not a plain array like the leaf."""
    if plan.plain_buffers and not plan.viewed:
        return ""
    rows = ", ".join(f"{quote(n)}: {quote(plan.buffer_shape(n))}" for n in plan.buffers)
    return ("# each buffer's shape: the leaf's (full), one number per leaf (one, a 0-d array), "
            "its\n# 2-D view's with the last (row) or second-to-last (col) axis 1, or a number "
            f"(number)\nSHAPES = {{{rows}}}\n")


def _step_function(plan: Plan) -> str:
    """``_step``: one leaf's step around ``_update``."""
    facts = ", facts" if plan.facts else ""
    call = "yield from _update" if plan.crosses else "_update"
    # the step optax adds: -lr * update, or the new value less the old
    move = "jnp.broadcast_to(update, g.shape) - w" if plan.sets else \
        "jnp.broadcast_to(-lr * update, g.shape)"
    lines = []
    if plan.facts or plan.kept:
        lines.append("facts = _facts(g)")
    if plan.kept:
        lines.append("kept = _kept(group, facts)")
    if plan.reads_lr:
        lines.append('group = {**group, "lr": lr}')
    plain = plan.plain_buffers and not plan.viewed
    if not plain:
        lines.append("dtype, shape = g.dtype, g.shape")
    if plan.viewed:
        kept = "name in kept and " if plan.kept else ""
        lines += ["g, w = _matrix(g), None if w is None else _matrix(w)",
                  f'state = {{name: _matrix(value) if {kept}SHAPES[name] == "full" else value',
                  "         for name, value in state.items()}"]
        if plan.random:
            lines.append("drawn = [_matrix(x) for x in drawn]")
    lines.append(f"update, buffers = {call}(w, g, state, group, t, T, drawn{facts})")
    if plain:
        lines += [f"step = ({move}).astype(g.dtype)",
                  "return step, {name: buffers[name].astype(g.dtype) for name in BUFFERS}"]
    else:
        lines += [f"step = ({move}).reshape(shape).astype(dtype)",
                  "new = {}",
                  "for name in BUFFERS:",
                  "    value = buffers[name]"]
        if plan.kept:
            lines += ["    if name not in kept:",
                      "        new[name] = value  # the 0-d zero it has kept from the start",
                      '    elif SHAPES[name] == "number":']
        else:
            lines.append('    if SHAPES[name] == "number":')
        lines += ["        new[name] = jnp.asarray(value, jnp.promote_types(dtype, jnp.float32))",
                  '    elif SHAPES[name] == "full":',
                  "        new[name] = value.reshape(shape).astype(dtype)",
                  "    else:",
                  "        new[name] = value.astype(dtype)",
                  "return step, new"]
    body = "\n".join("    " + line for line in lines)
    what = "the new value less w" if plan.sets else "-lr * update"
    joined = " (a generator, as\n    _update)" if plan.crosses else ""
    return ("def _step(w, g, state, group, lr, t, T, drawn):\n"
            f'    """One leaf\'s step: {what} and the buffers\' new values, in the leaf\'s '
            f'dtype{joined}."""\n'
            f"{body}\n")


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
    if plan.viewed:
        notes.append("The rule reads rows or columns: each leaf is stepped as its 2-D view (a "
                     "vector of n is a column (n, 1), a number (1, 1)); a buffer of rows or "
                     "columns keeps the view's shape.")
    if plan.matrix:
        notes.append(f"{plan.matrix} needs 2-D parameters (``init`` refuses others); its "
                     "matrix products are XLA's, which round otherwise than torch's (visibly "
                     "so in bfloat16).")
    if plan.kept:
        notes.append("A where on params (and the leaf's facts) alone takes one branch: the "
                     "other is not computed, and a buffer only it needs is a 0-d zero.")
    if plan.needs_total_steps:
        notes.append("``total_steps`` is the rule's T (it reads T, ld, cd or rd).")
    if plan.crosses:
        notes.append("The rule reduces over every leaf: the leaves' steps run side by side.")
    if plan.sets:
        notes.append("The rule gives the parameter's new value (``w = ...``): the update is "
                     "that value less the params, and no learning rate is applied but the "
                     "rule's own lr.")
    if plan.random:
        notes.append("noise, annealed_noise and drop draw from ``jax.random`` with the key in "
                     "the state, seeded by ``seed``: nos.Optimizer's distributions, not its "
                     "samples (those come from torch's generator).")
    return "\n\n".join([f"{name}: a nos rule as an optax transformation (written by "
                        "``nos export``).", description(plan, doc),
                        *(textwrap.fill(note, 88) for note in notes)])
