"""nos.evaluate (nos/evaluation.py): rewards, learning-rate search, failure statuses,
determinism, snapshots."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import nos
from nos.train.evaluation import evaluate


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("NOS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def test_adam_learns_mnist1d_and_reports_everything():
    result = evaluate("adam", "mnist1d", epochs=2, lr=1e-2, seed=0)
    assert result.status == "ok", result.error
    assert result.reward == result.val_accuracy > 0.3  # ten classes: chance is 0.1
    assert 0 < result.test_accuracy <= 1
    assert len(result.loss_curve) == len(result.val_curve) == 2
    assert result.loss_curve[1] < result.loss_curve[0]
    assert result.steps > 0 and result.seconds > 0 and result.lr == 1e-2


def test_learning_rate_grid_picks_the_best_short_run():
    result = evaluate("sgd", "digits", epochs=1, lr_grid=[1e-4, 1e-1], grid_epochs=0.5, seed=0)
    assert [g["lr"] for g in result.grid] == [1e-4, 1e-1]
    best = max(result.grid, key=lambda g: g["reward"])
    assert result.lr == best["lr"] == 1e-1
    assert result.status == "ok"


def test_same_rule_same_seed_same_reward():
    a = evaluate("powersign", "mnist1d", epochs=1, lr=0.05, seed=3)
    b = evaluate("powersign", "mnist1d", epochs=1, lr=0.05, seed=3)
    c = evaluate("powersign", "mnist1d", epochs=1, lr=0.05, seed=4)
    assert a.reward == b.reward and a.loss_curve == b.loss_curve
    assert a.loss_curve != c.loss_curve


@pytest.mark.parametrize("rule", ["exp(exp(g)) * 1e6", "g * 1e30", "exp(g * 1e4)"])
def test_diverging_rule_is_reported_not_raised(rule):
    result = evaluate(rule, "mnist1d", epochs=1, lr=1.0, floor=-1.0)
    assert result.status == "diverged", result
    assert result.reward == -1.0
    assert result.error


def test_diverging_everywhere_on_the_grid():
    result = evaluate("g * 1e30", "digits", epochs=1, lr_grid=[1.0, 10.0], grid_epochs=0.2)
    assert result.status == "diverged" and result.reward == 0.0
    assert all(g["status"] == "diverged" for g in result.grid)


@pytest.mark.parametrize("rule,words", [("g +", "unexpected end"), ("foo(g)", "unknown function"),
                                        ("drop(g, g)", "must not depend on tensors"),
                                        ("ld * g" + " * foo", "unknown name")])
def test_invalid_rule_status(rule, words):
    result = evaluate(rule, "digits", epochs=1, lr=0.1)
    assert result.status == "invalid"
    assert words in result.error
    assert result.reward == 0.0


def test_time_limit_gives_timeout():
    result = evaluate("adam", "mnist1d", epochs=50, lr=1e-3, time_limit=0.5)
    assert result.status == "timeout"
    assert result.reward == 0.0 and "time limit" in result.error


def test_rules_reading_T_get_the_training_length():
    result = evaluate("powersign_ld", "digits", epochs=1, lr=0.05)
    assert result.status == "ok"


def test_snapshot_ensemble_returns_m_snapshots():
    result = evaluate("momentum", "digits", epochs=6, lr=0.05, seed=0, snapshots=3,
                      schedule={"name": "sgdr", "T_0": 8, "T_mult": 2})
    assert result.status == "ok", result.error
    assert len(result.snapshot_accuracies) == 3
    assert 0 < result.ensemble_accuracy <= 1
    assert all(0 < a <= 1 for a in result.snapshot_accuracies)


def test_nos_eval_command_prints_json():
    out = subprocess.run([sys.executable, "-m", "nos.cli", "eval", "sign(g)", "--task", "digits",
                          "--epochs", "1", "--lr", "0.01", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["rule"] == "sign(g)" and data["status"] == "ok" and data["lr"] == 0.01


def test_nos_eval_bad_rule_exits_2():
    out = subprocess.run([sys.executable, "-m", "nos.cli", "eval", "sing(g)", "--task", "digits"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "did you mean 'sign'" in out.stderr
    assert "Traceback" not in out.stderr


def test_nos_baselines_table_and_plot(tmp_path):
    png = tmp_path / "curves.png"
    out = subprocess.run([sys.executable, "-m", "nos.cli", "baselines", "--task", "digits",
                          "--names", "sgd,adam", "--epochs", "1", "--lr-grid", "0.01,0.1",
                          "--grid-epochs", "0.3", "--seeds", "2", "--plot", str(png)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["baseline", "reward", "±"]
    assert {lines[2].split()[0], lines[3].split()[0]} == {"sgd", "adam"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_accepts_a_rule_object():
    rule = nos.parse("sign(g) * abs(m)")
    assert evaluate(rule, "digits", epochs=1, lr=0.01).rule == str(rule)


@pytest.mark.parametrize("rule", ["adam", "sign(g) + sign(m)"])
def test_batched_grid_picks_the_same_rate_as_one_at_a_time(rule):
    kwargs = dict(epochs=1, lr_grid=[1e-4, 1e-2, 1.0], grid_epochs=1, seed=0)
    one_by_one = evaluate(rule, "mnist1d", batched_grid=False, **kwargs)
    batched = evaluate(rule, "mnist1d", batched_grid=True, **kwargs)
    assert batched.lr == one_by_one.lr
    for a, b in zip(one_by_one.grid, batched.grid):
        assert a["lr"] == b["lr"] and a["status"] == b["status"]
        assert abs(a["reward"] - b["reward"]) < 0.02
    assert abs(batched.reward - one_by_one.reward) < 0.02


def test_nos_evaluate_is_the_function_even_after_importing_the_module():
    probe = ("import nos, nos.train.evaluation\n"
             "print(nos.evaluate is nos.train.evaluation.evaluate, nos.evaluate.__name__,\n"
             "      nos.EvalResult is nos.train.evaluation.EvalResult, callable(nos.evaluate))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "evaluate", "True", "True"]


def test_nos_evaluate_as_the_readme_shows():
    import nos.train.evaluation  # noqa: F401 - importing the module must not shadow the function

    result = nos.evaluate("adam", task="mnist1d", epochs=1, lr=1e-2, seed=0)
    assert isinstance(result, nos.EvalResult)
    assert result.status == "ok" and result.task == "mnist1d" and 0.1 < result.reward <= 1
