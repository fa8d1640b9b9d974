"""A task of one's own, written as a user would: regression on scikit-learn's diabetes data.

442 patients, 10 standardized measurements each; the target is a measure of the
disease's progression a year later.  The child is a small MLP trained with the mean
squared error, and the metric is the mean squared error of the standardized target,
where lower is better: nos makes it the reward 1 / (1 + mse).

    nos eval adam --task experiments/custom_task/task.py:DiabetesTask
    nos search --config experiments/custom_task/search.toml --out runs/diabetes
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nos import Task, TaskData


@dataclass(frozen=True)
class DiabetesTask(Task):
    """A fixed shuffle puts ``test_fraction`` of the patients in the test split and
    ``val_fraction`` of the rest in the validation split (defaults: 283 / 71 / 88).
    Inputs and the target are standardized with the training split's mean and spread."""

    name: ClassVar[str] = "diabetes"
    batch_size: ClassVar[int] = 32
    epochs: ClassVar[int] = 10
    child: ClassVar[str] = "MLP (10-32-1, tanh)"
    metric_name: ClassVar[str] = "mse"
    higher_is_better: ClassVar[bool] = False

    hidden: int = 32  # the task's options: the other keys of [task]
    test_fraction: float = 0.2
    val_fraction: float = 0.2

    def make_data(self) -> TaskData:
        from sklearn.datasets import load_diabetes

        x, y = load_diabetes(return_X_y=True)
        order = np.random.default_rng(0).permutation(len(y))
        n_test = round(len(y) * self.test_fraction)
        n_val = round((len(y) - n_test) * self.val_fraction)
        test, val, train = np.split(order, [n_test, n_test + n_val])
        x = (x - x[train].mean(0)) / x[train].std(0)
        y = (y - y[train].mean()) / y[train].std()

        def split(index: np.ndarray) -> tuple[Tensor, Tensor]:
            return (torch.as_tensor(x[index], dtype=torch.float32),
                    torch.as_tensor(y[index], dtype=torch.float32))

        return TaskData(*split(train), *split(val), *split(test))

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(10, self.hidden), nn.Tanh(),
                             nn.Linear(self.hidden, 1), nn.Flatten(0))

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(output, target)

    def metric(self, output: Tensor, target: Tensor) -> Tensor:
        return ((output - target) ** 2).sum()  # summed: nos divides by count() over a split
