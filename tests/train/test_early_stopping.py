"""Early stopping of hopeless trainings (nos.train.evaluation, nos.train.grid): a run whose
loss has not fallen by ``stop_loss_steps``, a full run below the caller's per-epoch
validation thresholds (``stop_below``), and the settings that refuse bad values."""

from __future__ import annotations

import math

import pytest
import torch

from nos.optim.optimizer import resolve
from nos.train.evaluation import evaluate
from nos.train.grid import batched_grid
from nos.train.settings import SettingError, check_evaluation
from nos.train.tasks import get_task

# mnist1d: 3200 examples in batches of 128, 25 steps an epoch; digits: 18 steps an epoch
MNIST1D_STEPS = 25


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("NOS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(autouse=True)
def _one_thread():
    # children this small train fastest on one thread, and a busy machine does not stall them
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _same(a, b) -> None:
    """Two results equal in every figure but the time they took."""
    left, right = a.to_dict(), b.to_dict()
    left.pop("seconds"), right.pop("seconds")
    assert left == right


def test_gradient_ascent_is_stopped_at_the_step_with_its_partial_figures():
    # -g climbs the loss: by step 30 the mean of the last 7 losses is above the first 7's
    stopped = evaluate("-g", "mnist1d", epochs=3, lr=1e-2, seed=0, stop_loss_steps=30)
    assert stopped.status == "stopped"
    assert stopped.error.startswith("loss has not fallen after 30 steps (")
    assert stopped.steps == 30 and stopped.lr == 1e-2
    # one finished epoch and the partial one's mean loss; validation after finished ones
    assert len(stopped.loss_curve) == 2 and len(stopped.val_curve) == 1
    assert stopped.reward == stopped.val_accuracy and 0 < stopped.reward <= 1
    assert stopped.val_loss > 0 and 0 < stopped.test_accuracy <= 1
    # the same figures as a run that was only ever 30 steps long (1.2 epochs)
    short = evaluate("-g", "mnist1d", epochs=30 / MNIST1D_STEPS, lr=1e-2, seed=0)
    assert short.status == "ok" and short.steps == 30
    assert stopped.reward == short.reward
    assert stopped.val_loss == short.val_loss
    assert stopped.test_accuracy == short.test_accuracy
    assert stopped.loss_curve == short.loss_curve
    assert stopped.val_curve == short.val_curve[:1]


def test_a_run_no_longer_than_stop_loss_steps_is_not_judged():
    exact = evaluate("-g", "mnist1d", epochs=30 / MNIST1D_STEPS, lr=1e-2, stop_loss_steps=30)
    assert exact.status == "ok" and exact.steps == 30


@pytest.mark.parametrize("rule,lr", [("adam", 1e-2), ("momentum", 0.1)])
def test_a_learning_rule_is_not_stopped_and_its_result_is_unchanged(rule, lr):
    plain = evaluate(rule, "mnist1d", epochs=3, lr=lr, seed=1)
    watched = evaluate(rule, "mnist1d", epochs=3, lr=lr, seed=1, stop_loss_steps=20,
                       stop_below=[0.0, 0.0, 0.0])
    assert plain.status == "ok" and plain.steps == 3 * MNIST1D_STEPS
    _same(plain, watched)


def test_a_learning_rule_on_the_grid_is_unchanged():
    kwargs = dict(epochs=2, lr_grid=[1e-2, 1e-1], grid_epochs=2, seed=0, batched_grid=False)
    plain = evaluate("momentum", "digits", **kwargs)
    watched = evaluate("momentum", "digits", stop_loss_steps=20, **kwargs)
    assert [g["status"] for g in watched.grid] == ["ok", "ok"]
    _same(plain, watched)


def test_stop_below_stops_at_the_first_epoch_below_its_threshold():
    full = evaluate("adam", "mnist1d", epochs=3, lr=1e-2, seed=0)
    stopped = evaluate("adam", "mnist1d", epochs=3, lr=1e-2, seed=0, stop_below=[0.99] * 3)
    assert stopped.status == "stopped"
    assert stopped.steps == MNIST1D_STEPS
    assert stopped.val_curve == full.val_curve[:1] and stopped.loss_curve == full.loss_curve[:1]
    assert stopped.reward == stopped.val_curve[-1] == stopped.val_accuracy
    assert stopped.val_loss > 0 and 0 < stopped.test_accuracy <= 1
    assert "below the stage's 0.99 at epoch 1" in stopped.error


def test_stop_below_reads_the_threshold_of_each_epoch():
    full = evaluate("adam", "mnist1d", epochs=3, lr=1e-2, seed=0)
    # no threshold (None, or past the list's end) and one the run clears do not stop it
    assert evaluate("adam", "mnist1d", epochs=3, lr=1e-2, seed=0,
                    stop_below=[None, 0.0]).status == "ok"
    stopped = evaluate("adam", "mnist1d", epochs=3, lr=1e-2, seed=0,
                       stop_below=[0.0, full.val_curve[1] + 1e-6])
    assert stopped.status == "stopped" and "at epoch 2" in stopped.error
    assert stopped.steps == 2 * MNIST1D_STEPS
    assert stopped.reward == stopped.val_curve[-1] == full.val_curve[1]


@pytest.mark.parametrize("epochs", [1, 2])
def test_stop_below_never_stops_the_last_epoch(epochs):
    plain = evaluate("adam", "mnist1d", epochs=epochs, lr=1e-2, seed=0)
    last_only = [None] * (epochs - 1) + [0.99]
    watched = evaluate("adam", "mnist1d", epochs=epochs, lr=1e-2, seed=0, stop_below=last_only)
    assert watched.status == "ok" and len(watched.val_curve) == epochs
    _same(plain, watched)


def test_stop_below_leaves_the_grid_alone():
    result = evaluate("adam", "digits", epochs=2, lr_grid=[1e-3, 1e-2], grid_epochs=1,
                      seed=0, stop_below=[0.99, 0.99], batched_grid=False)
    assert [g["status"] for g in result.grid] == ["ok", "ok"]
    assert all(g["reward"] > 0 for g in result.grid)
    assert result.status == "stopped" and result.lr == 1e-2 and len(result.val_curve) == 1


@pytest.mark.parametrize("batched", [False, True])
def test_a_stopped_grid_point_is_never_chosen(batched):
    # momentum at lr 1 climbs (2.18 -> 3.19 by step 20); its floor reward, set above any
    # accuracy the grid reaches, would win if a stopped point could be chosen
    result = evaluate("momentum", "digits", epochs=1, lr_grid=[0.1, 1.0], grid_epochs=2,
                      seed=0, floor=0.99, stop_loss_steps=20, batched_grid=batched)
    assert [g["status"] for g in result.grid] == ["ok", "stopped"]
    assert result.grid[1]["reward"] == 0.99 and result.grid[0]["reward"] < 0.99
    assert result.status == "ok" and result.lr == 0.1


@pytest.mark.parametrize("batched", [False, True])
def test_no_usable_grid_point_and_one_stopped_is_a_stopped_evaluation(batched):
    # -g climbs at lr 0.1 and explodes at lr 1
    result = evaluate("-g", "digits", epochs=1, lr_grid=[0.1, 1.0], grid_epochs=2, seed=0,
                      floor=-1.0, stop_loss_steps=20, batched_grid=batched)
    assert [g["status"] for g in result.grid] == ["stopped", "diverged"]
    assert all(g["reward"] == -1.0 for g in result.grid)
    assert result.status == "stopped" and result.reward == -1.0 and result.lr is None
    assert "1 of 2 stopped" in result.error


def test_a_grid_that_only_diverged_is_still_diverged():
    result = evaluate("g * 1e30", "digits", epochs=1, lr_grid=[1.0, 10.0], grid_epochs=2,
                      stop_loss_steps=20, batched_grid=False)
    assert result.status == "diverged"
    assert result.error == "diverged at every learning rate of the grid"


def test_batched_grid_freezes_a_model_whose_loss_has_not_fallen():
    task = get_task("digits")
    data = task.load(torch.device("cpu"))
    rule = resolve("momentum")[0]
    common = dict(epochs=2, seed=0, batch_size=task.batch_size, device=torch.device("cpu"),
                  floor=-1.0)
    plain = batched_grid(rule, task, data, [0.1, 1.0], **common)
    watched = batched_grid(rule, task, data, [0.1, 1.0], stop_loss_steps=20, **common)
    assert [g["status"] for g in plain] == ["ok", "ok"]
    assert [g["status"] for g in watched] == ["ok", "stopped"]
    assert watched[0] == plain[0] and watched[1]["reward"] == -1.0


@pytest.mark.parametrize("key,value", [
    ("stop_loss_steps", 0), ("stop_loss_steps", -5), ("stop_loss_steps", 2.5),
    ("stop_loss_steps", True), ("stop_loss_steps", "300"),
    ("stop_below", 0.5), ("stop_below", "0.5"), ("stop_below", {"1": 0.5}),
    ("stop_below", [0.5, math.nan]), ("stop_below", [math.inf]), ("stop_below", ["0.5"]),
    ("stop_below", [True]),
])
def test_bad_stop_settings_are_refused_before_training(key, value):
    with pytest.raises(SettingError, match=f"^{key} ") as caught:
        evaluate("adam", "digits", epochs=1, lr=1e-2, **{key: value})
    assert isinstance(caught.value, ValueError) and caught.value.key == key


@pytest.mark.parametrize("settings", [
    {"stop_loss_steps": None, "stop_below": None}, {"stop_loss_steps": 1},
    {"stop_loss_steps": 300, "stop_below": [0.5, None, 0.62]}, {"stop_below": (0.1,)},
    {"stop_below": []},
])
def test_good_stop_settings_are_accepted(settings):
    assert check_evaluation(settings) == settings
