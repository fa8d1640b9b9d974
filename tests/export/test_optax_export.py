"""``nos export --optax``: the written module, imported on its own from its file, is an
optax GradientTransformation that steps as nos.Optimizer does, at float64
(``jax_enable_x64``).

Every named rule trains a small model (a linear map, a bias and a 0-d scale, mean squared
error on 16 fixed examples; for muon, of 2-D parameters, a product of two matrices, its
newton_schulz in float64) for 50 steps in both: nos.Optimizer with torch's gradients,
the export under ``jax.jit`` with ``jax.grad``'s and ``optax.apply_updates``; the
parameters are compared after every step (tests/export/helpers.py: scaled error under
1e-10).  Random rules of the search space that draw nothing get the same gradients fed
to both (8 in the normal run, every such rule of the 200 behind the slow mark; of the
space with the tensor constructs 6, and every such rule of 200 behind the slow mark), and
so do the rules of helpers.CONSTRUCTS, with special values (30 steps; 50, with and without
special values, behind the slow mark, with the torch tests' semantics rules), and so
do the rules of helpers.LATER (reductions over every leaf, w = expr, from values, the
shorthand: with special values and on the small model, 30 steps); a rule with views
(schedulefree_adamw among the named rules) is refused.  newton_schulz in float32 and
bfloat16 is compared call by call.  Random rules draw from jax.random, not torch's
generator: their samples are checked for shape, dtype and distribution instead.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nos
from nos.export.optax_module import optax_source
from nos.export.plan import ExportError
from tests.export.helpers import (
    CONSTRUCTS,
    LATER,
    TENSOR_SPACES,
    check_agree,
    gradient,
    load_module,
    other_values,
    space_rules,
)

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
jnp = pytest.importorskip("jax.numpy")
jax.config.update("jax_enable_x64", True)

STEPS = 50
CONSTRUCT_STEPS = 30
TOTAL_STEPS = 30
LR = 0.01
DATA = np.random.default_rng(5)
X, Y = DATA.standard_normal((16, 4)), DATA.standard_normal((16, 3))
START = {"W": DATA.standard_normal((4, 3)), "b": DATA.standard_normal(3), "s": np.float64(1.5)}
# for rules of 2-D parameters (newton_schulz): a product of two matrices
MATRICES = {"W": DATA.standard_normal((4, 5)), "V": DATA.standard_normal((5, 3))}
BASELINES = list(nos.baselines())
DRAWLESS = [r for r in space_rules(200) if not nos.parse(r).is_random]
TENSOR_DRAWLESS = [r for r in space_rules(200, seed=5, spaces=TENSOR_SPACES)
                   if not nos.parse(r).is_random]  # with the tensor constructs


def prediction(x, params):
    if "V" in params:
        return (x @ params["W"]) @ params["V"]
    return (x @ params["W"] + params["b"]) * params["s"]


jax_grad = jax.jit(jax.grad(lambda params: jnp.mean((prediction(X, params) - Y) ** 2)))


def torch_grads(params: dict) -> None:
    for p in params.values():
        p.grad = None
    torch.mean((prediction(torch.tensor(X), params) - torch.tensor(Y)) ** 2).backward()


def transformation(rule: str, tmp_path, stem: str, **kwargs):
    module = load_module(optax_source(rule, name="exported"), tmp_path, stem)
    return module.exported(**kwargs)


def settings(rule: nos.Rule) -> dict:
    return {"total_steps": TOTAL_STEPS} if rule.needs_total_steps else {}


def start_of(rule: str) -> dict:
    """The model's parameters at the start: two matrices for a rule of 2-D parameters."""
    parsed = nos.parse(nos.baselines()[rule].text if rule in nos.baselines() else rule)
    return MATRICES if "newton_schulz" in parsed.expanded().functions else START


def run_both(rule: str, tx, kwargs: dict, fed: np.random.Generator | None = None,
             schedule=None, tolerance: float | None = None, special: bool = False,
             steps: int = STEPS) -> float:
    """nos.Optimizer and the transformation side by side: on the small model (of two
    matrices for a rule of 2-D parameters), or with gradients drawn from ``fed`` (a tenth
    of them special values with ``special``).  Returns the largest scaled error (at most
    ``tolerance``, else helpers.TOLERANCE)."""
    start = start_of(rule)
    theirs = {k: torch.tensor(v, requires_grad=True) for k, v in start.items()}
    reference = nos.Optimizer(list(theirs.values()), rule, lr=LR, **kwargs)
    params = {k: jnp.asarray(v) for k, v in start.items()}
    state = tx.init(params)
    update = jax.jit(tx.update)
    largest = {k: np.abs(v) for k, v in start.items()}
    worst = 0.0
    for k in range(steps):
        if fed is None:
            torch_grads(theirs)
            grads = jax_grad(params)
        else:
            drawn = {name: gradient(fed, np.shape(v), special=special)
                     for name, v in start.items()}
            for name, p in theirs.items():
                p.grad = torch.tensor(drawn[name])
            grads = {name: jnp.asarray(g) for name, g in drawn.items()}
        if schedule is not None:
            reference.param_groups[0]["lr"] = schedule(k)
        reference.step()
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        for name, p in theirs.items():
            expected = p.detach().numpy()
            largest[name] = np.fmax(largest[name], np.abs(expected))
            actual = np.asarray(params[name])
            assert actual.dtype == np.float64 and actual.shape == expected.shape
            worst = max(worst, check_agree(actual, expected, largest[name],
                                           f"{rule!r}, step {k + 1}, {name}", tolerance))
    return worst


@pytest.mark.parametrize("name", BASELINES)
def test_every_named_rule_trains_a_small_model_as_nos_optimizer(name, tmp_path):
    """(A rule with views, schedulefree_adamw, is refused: optax has no evaluation mode.)"""
    if any(s.kind == "view" for s in nos.baselines()[name].rule.statements):
        with pytest.raises(ExportError, match="are not exported to optax"):
            optax_source(name)
        return
    kwargs = settings(nos.baselines()[name].rule)
    if name == "muon":  # bfloat16 matrix products round otherwise in XLA: float64 here
        kwargs["ns_bits"] = 64
    tx = transformation(name, tmp_path, name, learning_rate=LR, **kwargs)
    run_both(name, tx, kwargs)


def test_params_and_a_schedule_are_honoured(tmp_path):
    values = {"beta1": 0.5, "beta2": 0.9, "eps": 1e-3, "weight_decay": 0.1}

    def schedule(count):
        return LR / (1.0 + count)

    tx = transformation("adam", tmp_path, "adam", learning_rate=schedule, **values)
    run_both("adam", tx, values, schedule=schedule)


@pytest.mark.parametrize("index", range(8))
def test_random_rules_that_draw_nothing(index, tmp_path):
    rule = DRAWLESS[index]
    parsed = nos.parse(rule)
    kwargs = {**settings(parsed), **other_values(parsed)}
    tx = transformation(rule, tmp_path, f"rule{index}", learning_rate=LR, **kwargs)
    run_both(rule, tx, kwargs, fed=np.random.default_rng(index))


@pytest.mark.parametrize("index", range(6))
def test_random_rules_with_tensor_constructs_that_draw_nothing(index, tmp_path):
    rule = TENSOR_DRAWLESS[index]
    parsed = nos.parse(rule)
    kwargs = {**settings(parsed), **other_values(parsed)}
    tx = transformation(rule, tmp_path, f"rule{index}", learning_rate=LR, **kwargs)
    run_both(rule, tx, kwargs, fed=np.random.default_rng(index), steps=CONSTRUCT_STEPS)


@pytest.mark.slow
def test_every_random_rule_with_tensor_constructs_that_draws_nothing(tmp_path):
    """To 1e-6: ``... / (rowmean(adam) * colmean(adam) / (mean(adam) + 1e-8) + 1e-8)``
    divides by a mean of nearly +-1 values (Adam's first step) that cancels to some 1e-8,
    so an ulp of XLA's maths (its pow of the step's scalars) parts the runs by 1e-7 at the
    first step; nos.Optimizer against itself with its inputs moved by 1e-15 parts stays
    within 3e-14 (Adam's first step does not move), so that is no measure of it here."""
    for index, rule in enumerate(TENSOR_DRAWLESS):
        parsed = nos.parse(rule)
        tx = transformation(rule, tmp_path, f"rule{index}", learning_rate=LR,
                            **settings(parsed))
        run_both(rule, tx, settings(parsed), fed=np.random.default_rng(index),
                 special=index % 2 == 1, tolerance=1e-6)


@pytest.mark.slow
def test_the_semantics_rules_on_special_values(tmp_path):
    """The torch export's rules of the language's semantics (IEEE scalars, sign of nan, pow
    at -0 and -inf, ...) that draw nothing, on gradients with special values."""
    from tests.export.test_torch_export import SEMANTICS

    for index, rule in enumerate(SEMANTICS):
        parsed = nos.parse(rule)
        if parsed.is_random:
            continue
        tx = transformation(rule, tmp_path, f"rule{index}", learning_rate=LR,
                            **settings(parsed))
        run_both(rule, tx, settings(parsed), fed=np.random.default_rng(index), special=True)


@pytest.mark.slow
def test_every_random_rule_that_draws_nothing(tmp_path):
    for index, rule in enumerate(DRAWLESS):
        parsed = nos.parse(rule)
        tx = transformation(rule, tmp_path, f"rule{index}", learning_rate=LR,
                            **settings(parsed))
        run_both(rule, tx, settings(parsed), fed=np.random.default_rng(index))


@pytest.mark.parametrize("index", range(len(CONSTRUCTS)))
def test_the_new_constructs_on_special_values(index, tmp_path):
    """Each rule of helpers.CONSTRUCTS with its defaults, then with every param at another
    value (the switches the other way)."""
    rule = CONSTRUCTS[index]
    parsed = nos.parse(rule)
    for values in ({}, other_values(parsed)) if parsed.params else ({},):
        kwargs = {**settings(parsed), **values}
        tx = transformation(rule, tmp_path, f"rule{index}", learning_rate=LR, **kwargs)
        run_both(rule, tx, kwargs, fed=np.random.default_rng(index), special=True,
                 steps=CONSTRUCT_STEPS)


@pytest.mark.parametrize("index", range(len(LATER)))
def test_the_later_constructs_on_special_values(index, tmp_path):
    """Reductions over every leaf (each leaf's step runs side by side, under jax.jit),
    w = expr (the update optax adds is the new value less w), from values and the
    shorthand, with each rule's defaults, then with every param at another value; and on
    the small model."""
    rule = LATER[index]
    parsed = nos.parse(rule)
    for values in ({}, other_values(parsed)) if parsed.params else ({},):
        kwargs = {**settings(parsed), **values}
        tx = transformation(rule, tmp_path, f"rule{index}", learning_rate=LR, **kwargs)
        run_both(rule, tx, kwargs, fed=np.random.default_rng(index), special=True,
                 steps=CONSTRUCT_STEPS)
        run_both(rule, tx, kwargs, steps=CONSTRUCT_STEPS)


def test_random_draws_in_a_rule_of_global_reductions(tmp_path):
    """optax's draws are its own (per leaf, from the state's key): a rule with reductions
    over every leaf may draw (the torch export refuses it)."""
    tx = transformation("g / gnorm(g) + drop(g, 0.5)", tmp_path, "drawn", learning_rate=1.0,
                        seed=0)
    grads = {"a": jnp.ones((300,)), "b": jnp.ones((100,))}
    updates, _ = jax.jit(tx.update)(grads, tx.init(grads))
    steps = np.concatenate([np.asarray(u) for u in updates.values()])
    expected = -(1 / 20 + np.array([0.0, 2.0]))  # gnorm of 400 ones is 20
    assert np.isin(np.round(steps, 12), np.round(expected, 12)).all()
    assert 0.4 < np.mean(steps < -1) < 0.6


@pytest.mark.slow
def test_the_new_constructs_for_longer(tmp_path):
    for index, rule in enumerate(CONSTRUCTS):
        parsed = nos.parse(rule)
        kwargs = {**settings(parsed), **other_values(parsed)}
        for special in (False, True):
            tx = transformation(rule, tmp_path, f"rule{index}", learning_rate=LR, **kwargs)
            run_both(rule, tx, kwargs, fed=np.random.default_rng(100 + index), special=special)


def test_newton_schulz_computes_as_torchs_in_every_precision(tmp_path):
    """The export's newton_schulz against nos's on the same matrices (wide, tall; of tiny,
    unit and large elements).  Products summed in float32 at least and each addmm
    rounded once, as torch's: float64 and float32 agree to their roundings (float32's
    sums go in another order), bfloat16 run eagerly exactly here (XLA elsewhere may sum
    otherwise: a bfloat16 rounding is allowed).  Traced (jax.jit, as optax runs it), XLA
    keeps more precision between bfloat16 operations than it rounds to
    (xla_allow_excess_precision): within 0.1 of the float64 result, as torch's bfloat16
    result is (up to 0.02 here).  Over a training run a low precision's rounding of nearly
    equal inputs makes the runs part, so the runs compare float64 (muon with ns_bits =
    64, the rules of helpers.CONSTRUCTS)."""
    from nos.lang.ops import newton_schulz

    module = load_module(optax_source("newton_schulz(g, 3, -4, 2, 5, 1e-7, 16)"), tmp_path, "ns")
    compiled = jax.jit(module._newton_schulz, static_argnums=(4, 6))
    rng = np.random.default_rng(11)
    args = (3.4445, -4.775, 2.0315, 5.0, 1e-7)
    for shape in [(3, 4), (5, 2)]:
        for scale in (1e-3, 1.0, 1e3):
            x = rng.standard_normal(shape) * scale
            exact = newton_schulz(torch.tensor(x), *args, 64).numpy()
            for bits, tolerance in ((64, 1e-13), (32, 1e-5), (16, 0.1)):  # 0: x's, float64
                expected = exact if bits == 16 else \
                    newton_schulz(torch.tensor(x), *args, bits).numpy()
                actual = np.asarray(compiled(jnp.asarray(x), *args, float(bits)))
                assert actual.dtype == np.float64 and actual.shape == shape
                error = np.abs(actual - expected).max() / max(1.0, np.abs(expected).max())
                assert error <= tolerance, (shape, scale, bits, error)
            if scale == 1.0 and shape == (3, 4):  # eagerly, bfloat16 as torch rounds it
                expected = newton_schulz(torch.tensor(x), *args, 16).numpy()
                actual = np.asarray(module._newton_schulz(jnp.asarray(x), *args, 16.0))
                assert np.abs(actual - expected).max() <= 2.0 ** -8, shape


def test_a_rule_that_reads_lr_reads_the_schedule(tmp_path):
    def schedule(count):
        return LR / (1.0 + count)

    rule = "100 * lr * g + sign(g) + where(lr < 0.005, g, 0)"
    tx = transformation(rule, tmp_path, "lr", learning_rate=schedule)
    run_both(rule, tx, {}, schedule=schedule)


def test_what_optax_cannot_take_is_refused(tmp_path):
    """A reduction of what a switch may leave a number (traced, a number and a 0-d array
    look alike), newton_schulz's steps read from the step, views (eval_w, train_w);
    torch takes them.  A rule of
    2-D parameters refuses other leaves at init."""
    from nos.export.torch_module import torch_source

    for rule, words in [
        ("param f = 0 in [0, 1]\nupdate = sum(where(f, g, 2)) * g",
         "sum (line 2) of a where on params alone with a number and a tensor branch is "
         "not exported to optax"),
        ("newton_schulz(g, 3, -4, 2, t, 1e-7, 64)",
         "argument 5 of newton_schulz(x, a, b, c, steps, eps, bits) (line 1) must read params "
         "alone to be exported to optax"),
        ("state z = z - lr * g from w\nw = lerp(w, z, 0.5)\neval_w = z",
         "the views (eval_w) are not exported to optax, which has no evaluation mode; export "
         "the rule to torch (its eval and train methods)"),
    ]:
        with pytest.raises(ExportError) as caught:
            optax_source(rule)
        assert words in str(caught.value)
        torch_source(rule)
    tx = transformation("muon", tmp_path, "muon")
    with pytest.raises(ValueError, match=r"newton_schulz needs 2-D parameters; leaf 1 has "
                       r"shape \(3,\)"):
        tx.init({"a": jnp.ones((2, 2)), "b": jnp.ones(3)})


def steps_of(rule: str, tmp_path, grads: np.ndarray, steps: int = 2, seed: int = 0) -> list:
    """The updates of the first steps of a random rule, lr = 1, params at 0."""
    tx = transformation(rule, tmp_path, "random", learning_rate=1.0, seed=seed)
    params = {"w": jnp.zeros(grads.shape)}
    state = tx.init(params)
    out = []
    for _ in range(steps):
        updates, state = tx.update({"w": jnp.asarray(grads)}, state, params)
        out.append(np.asarray(updates["w"]))
    return out


def test_random_rules_draw_the_right_distributions(tmp_path):
    n = 100_000
    ones = np.ones(n)
    first, second = steps_of("noise", tmp_path, ones)
    assert first.shape == (n,) and first.dtype == np.float64
    for sample in (first, second):  # -lr * noise: N(0, 0.01)
        assert abs(sample.mean()) < 5 * 0.1 / np.sqrt(n)
        assert abs(sample.std() / 0.1 - 1) < 0.01
    assert abs(np.corrcoef(first, second)[0, 1]) < 0.015  # fresh samples each step
    again = steps_of("noise", tmp_path, ones, seed=0)[0]
    other = steps_of("noise", tmp_path, ones, seed=1)[0]
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    for t, sample in enumerate(steps_of("annealed_noise", tmp_path, ones), start=1):
        assert abs(sample.std() / (1.0 + t) ** -0.275 - 1) < 0.01
    dropped = steps_of("drop(g, 0.3)", tmp_path, ones, steps=1)[0]
    assert abs(np.mean(dropped == 0) - 0.3) < 0.006
    assert np.allclose(dropped[dropped != 0], -1 / 0.7, rtol=1e-15, atol=0)
    assert not np.any(steps_of("drop(g, 1)", tmp_path, ones, steps=1)[0])


def test_bad_settings_are_refused(tmp_path):
    module = load_module(optax_source("powersign_rd", name="exported"), tmp_path, "prd")
    with pytest.raises(ValueError, match="pass total_steps"):
        module.exported()
    with pytest.raises(ValueError, match=r"Invalid periods: -1, must be in \(0, inf\)"):
        module.exported(total_steps=10, periods=-1)
    with pytest.raises(ValueError, match="Invalid learning_rate: -0.1"):
        module.exported(learning_rate=-0.1, total_steps=10)
    with pytest.raises(TypeError):
        module.exported(total_steps=10, momentum=0.9)
    tx = transformation("sgdw", tmp_path, "sgdw", learning_rate=LR)
    params = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="reads w: pass params"):
        tx.update(params, tx.init(params))


def test_the_module_imports_jax_and_optax_only():
    import ast

    imported = set()
    for node in ast.walk(ast.parse(optax_source("drop(adam, 0.1) * cd(2) + noise"))):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    assert imported <= {"__future__", "math", "collections.abc", "typing", "jax", "jax.numpy",
                        "optax"}, imported
