"""``nos export --optax``: the written module, imported on its own from its file, is an
optax GradientTransformation that steps as nos.Optimizer does, at float64
(``jax_enable_x64``).

Every named rule trains a small model (a linear map, a bias and a 0-d scale, mean squared
error on 16 fixed examples) for 50 steps in both: nos.Optimizer with torch's gradients,
the export under ``jax.jit`` with ``jax.grad``'s and ``optax.apply_updates``; the
parameters are compared after every step (tests/export/helpers.py: scaled error under
1e-10).  Random rules of the search space that draw nothing get the same gradients fed
to both (8 in the normal run, every such rule of the 200 behind the slow mark).  Random
rules draw from jax.random, not torch's generator: their samples are checked for shape,
dtype and distribution instead.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nos
from nos.export.optax_module import optax_source
from tests.export.helpers import check_agree, load_module, other_values, space_rules

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
jnp = pytest.importorskip("jax.numpy")
jax.config.update("jax_enable_x64", True)

STEPS = 50
TOTAL_STEPS = 30
LR = 0.01
DATA = np.random.default_rng(5)
X, Y = DATA.standard_normal((16, 4)), DATA.standard_normal((16, 3))
START = {"W": DATA.standard_normal((4, 3)), "b": DATA.standard_normal(3), "s": np.float64(1.5)}
BASELINES = list(nos.baselines())
DRAWLESS = [r for r in space_rules(200) if not nos.parse(r).is_random]


def jax_loss(params):
    return jnp.mean(((X @ params["W"] + params["b"]) * params["s"] - Y) ** 2)


jax_grad = jax.jit(jax.grad(jax_loss))


def torch_grads(params: dict) -> None:
    for p in params.values():
        p.grad = None
    x, y = torch.tensor(X), torch.tensor(Y)
    torch.mean(((x @ params["W"] + params["b"]) * params["s"] - y) ** 2).backward()


def transformation(rule: str, tmp_path, stem: str, **kwargs):
    module = load_module(optax_source(rule, name="exported"), tmp_path, stem)
    return module.exported(**kwargs)


def settings(rule: nos.Rule) -> dict:
    return {"total_steps": TOTAL_STEPS} if rule.needs_total_steps else {}


def run_both(rule: str, tx, kwargs: dict, fed: np.random.Generator | None = None,
             schedule=None) -> float:
    """nos.Optimizer and the transformation side by side: on the small model, or with
    gradients drawn from ``fed``.  Returns the largest scaled error."""
    theirs = {k: torch.tensor(v, requires_grad=True) for k, v in START.items()}
    reference = nos.Optimizer(list(theirs.values()), rule, lr=LR, **kwargs)
    params = {k: jnp.asarray(v) for k, v in START.items()}
    state = tx.init(params)
    update = jax.jit(tx.update)
    largest = {k: np.abs(v) for k, v in START.items()}
    worst = 0.0
    for k in range(STEPS):
        if fed is None:
            torch_grads(theirs)
            grads = jax_grad(params)
        else:
            drawn = {name: fed.standard_normal(np.shape(v)) for name, v in START.items()}
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
                                           f"{rule!r}, step {k + 1}, {name}"))
    return worst


@pytest.mark.parametrize("name", BASELINES)
def test_every_named_rule_trains_a_small_model_as_nos_optimizer(name, tmp_path):
    kwargs = settings(nos.baselines()[name].rule)
    tx = transformation(name, tmp_path, name, learning_rate=LR, **kwargs)
    run_both(name, tx, kwargs)


def test_params_and_a_schedule_are_honoured(tmp_path):
    values = {"beta1": 0.5, "beta2": 0.9, "eps": 1e-3, "wd": 0.1}

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


@pytest.mark.slow
def test_every_random_rule_that_draws_nothing(tmp_path):
    for index, rule in enumerate(DRAWLESS):
        parsed = nos.parse(rule)
        tx = transformation(rule, tmp_path, f"rule{index}", learning_rate=LR,
                            **settings(parsed))
        run_both(rule, tx, settings(parsed), fed=np.random.default_rng(index))


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
