"""scikit-learn's bundled 8x8 handwritten digits (1797 images, offline)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from nos.train.tasks.base import Task, TaskData, check_fraction, split_indices

TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Digits(Task):
    """8x8 digits scaled to [0, 1], with a small 2-D ConvNet child.

    A fixed-seed shuffle puts 20% of the images in the test set and
    ``val_fraction`` of the rest in the validation set: with the defaults
    1150 train, 288 val, 359 test.  Inputs are float32 (N, 1, 8, 8).
    """

    name: ClassVar[str] = "digits"
    batch_size: ClassVar[int] = 64
    epochs: ClassVar[int] = 10
    child: ClassVar[str] = "2-D ConvNet (2 conv + linear)"

    val_fraction: float = 0.2

    def __post_init__(self) -> None:
        check_fraction(self.name, "val_fraction", self.val_fraction)

    def make_data(self) -> TaskData:
        from sklearn.datasets import load_digits

        images, labels = load_digits(return_X_y=True)
        x = torch.as_tensor(images / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
        y = torch.as_tensor(labels, dtype=torch.int64)
        rest, test = split_indices(len(y), TEST_FRACTION, self.name)
        train, val = split_indices(len(rest), self.val_fraction, self.name)
        train, val = rest[train], rest[val]

        def take(index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            index = torch.as_tensor(index)
            return x[index], y[index]

        return TaskData(*take(train), *take(val), *take(test))

    def build_model(self) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),              # 8x8
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),   # 4x4
            nn.Flatten(), nn.Linear(32 * 4 * 4, 10),
        )
