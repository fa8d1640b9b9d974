"""The minimum a rule reaches on a task, measured: how well it generalises, how sharp it
is, how much it leans on single units.

``train_and_measure(rule, task, ...)`` trains the task's child with the rule the way
``nos.evaluate`` does (the same learning-rate grid, seed and budget), then measures
the final network with :func:`measure`:

* the task's metric and reward on the whole training and test splits, and the
  **generalisation gap**: training reward minus test reward (for a classification
  task, training accuracy minus test accuracy; it grows as the network fits its
  training set better than new data);
* the **epsilon-sharpness** and the **top Hessian eigenvalue** of the training loss,
  on a fixed subset of the training set (its first ``examples`` inputs, one batch);
* the **ablation curve** of the test reward and its area.

Every measure runs with the network in ``eval()`` mode (no dropout, frozen batch
statistics).  Reading them needs Dinh et al.'s caveat (``nos.analysis.sharpness``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from nos.analysis.ablation import AblationCurve, ablation_curve
from nos.analysis.sharpness import epsilon_sharpness, top_eigenvalue
from nos.optim.optimizer import resolve
from nos.train.evaluation import EvalResult, evaluate, metric_and_loss, train_child
from nos.train.settings import check_schedule
from nos.train.tasks import Task, TaskData, get_task, reward


@dataclass(frozen=True)
class MeasureSettings:
    """How the minimum is measured: the sharpness box ``eps`` and its ascent ``steps``; the
    power iteration's most ``iterations`` and its relative ``tolerance``; the ablation's
    random ``orders`` and the ``points`` of its curve; and the number of training
    ``examples`` (the split's first) on which the loss of the first two is taken."""

    eps: float = 1e-3
    steps: int = 10
    iterations: int = 30
    tolerance: float = 1e-3
    orders: int = 3
    points: int | None = 21
    examples: int = 512


@dataclass
class Minimum:
    """The measures of one trained network (``None`` where a measure could not be taken:
    ``ablation_area`` of a child without activation modules)."""

    train_metric: float
    test_metric: float
    train_reward: float
    test_reward: float
    train_loss: float
    test_loss: float
    gap: float  # train_reward - test_reward
    sharpness: float
    eigenvalue: float
    ablation: AblationCurve | None = None

    @property
    def ablation_area(self) -> float | None:
        return None if self.ablation is None else self.ablation.area

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "ablation"}
        out["ablation_area"] = self.ablation_area
        out["ablation"] = None if self.ablation is None else self.ablation.to_dict()
        return out


@dataclass
class Measured:
    """One training of a rule (``evaluation``, as ``nos.evaluate`` returns it) and the
    measures of the network it ends with (``None`` unless its status is ``ok``)."""

    evaluation: EvalResult
    minimum: Minimum | None = None
    details: dict[str, Any] = field(default_factory=dict)


def split_metric(task: Task, model: nn.Module, x: Tensor, y: Tensor,
                 batch: int = 1024) -> tuple[float, float]:
    """The task's metric over a whole split (sum over batches / count) and its mean loss,
    as nos.evaluate computes them (in eval mode); the model's mode is kept."""
    was_training = model.training
    try:
        return metric_and_loss(task, model, x, y, batch)
    finally:
        model.train(was_training)


def measure(task: Task, model: nn.Module, data: TaskData,
            settings: MeasureSettings = MeasureSettings(), seed: int = 0) -> Minimum:
    """Every measure of the trained ``model`` (see the module); ``seed`` seeds the
    sharpness search's start, the power iteration's start and the ablation orders."""
    model.eval()
    train_metric, train_loss = split_metric(task, model, data.train_x, data.train_y)
    test_metric, test_loss = split_metric(task, model, data.test_x, data.test_y)
    train_reward, test_reward = reward(task, train_metric), reward(task, test_metric)
    x, y = data.train_x[:settings.examples], data.train_y[:settings.examples]
    params = [p for p in model.parameters() if p.requires_grad]

    def loss() -> Tensor:
        return task.loss(model(x), y)

    sharpness = epsilon_sharpness(loss, params, eps=settings.eps, steps=settings.steps,
                                  seed=seed)
    eigenvalue = top_eigenvalue(loss, params, iterations=settings.iterations,
                                tolerance=settings.tolerance, seed=seed)
    try:
        curve = ablation_curve(
            model, lambda m: reward(task, split_metric(task, m, data.test_x, data.test_y)[0]),
            data.test_x[:1], orders=settings.orders, points=settings.points, seed=seed)
    except ValueError:  # a child without units to ablate
        curve = None
    return Minimum(train_metric=train_metric, test_metric=test_metric,
                   train_reward=train_reward, test_reward=test_reward, train_loss=train_loss,
                   test_loss=test_loss, gap=train_reward - test_reward, sharpness=sharpness,
                   eigenvalue=eigenvalue, ablation=curve)


def train_and_measure(rule: str, task: str | Task, *, seed: int = 0,
                      settings: MeasureSettings = MeasureSettings(),
                      device: str | torch.device = "cpu", task_options: dict | None = None,
                      **evaluation: Any) -> Measured:
    """Train ``rule`` on ``task`` as ``nos.evaluate(rule, task, seed=seed, **evaluation)``
    does, then measure the network it ends with.

    ``evaluate`` picks the learning rate (or takes the given one) and scores the run;
    the chosen run is then trained once more with the same rate and seed, which gives
    the same network (training is deterministic for a seed on one device), and that
    network is measured.  A rule whose evaluation is not ``ok`` is not measured.
    """
    task_obj = get_task(task, **(task_options or {})) if isinstance(task, str) else task
    device = torch.device(device)
    result = evaluate(rule, task_obj, seed=seed, device=device, **evaluation)
    if result.status != "ok":
        return Measured(result)
    data = task_obj.load(device)
    batch_size = evaluation.get("batch_size") or task_obj.batch_size
    run = train_child(resolve(rule)[0], task_obj, data, lr=result.lr, epochs=result.epochs,
                      seed=seed, batch_size=batch_size, device=device, deadline=math.inf,
                      schedule=check_schedule(evaluation.get("schedule")), hyper=result.params,
                      grow_batch=evaluation.get("grow_batch"))
    return Measured(result, measure(task_obj, run.model, data, settings, seed=seed))


__all__ = ["MeasureSettings", "Measured", "Minimum", "measure", "split_metric",
           "train_and_measure"]
