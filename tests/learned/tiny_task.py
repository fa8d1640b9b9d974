"""A task small enough to meta-train on in a second: three Gaussian blobs in 8 dimensions,
a 8-16-3 MLP.  Used by the tests, from Python and as ``tiny_task.py:Blobs`` on the command
line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

import nos


@dataclass(frozen=True)
class Blobs(nos.Task):
    name: ClassVar[str] = "blobs"
    batch_size: ClassVar[int] = 32
    epochs: ClassVar[int] = 2

    def make_data(self) -> nos.TaskData:
        generator = torch.Generator().manual_seed(0)
        centres = 1.5 * torch.randn(3, 8, generator=generator)

        def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            y = torch.randint(3, (n,), generator=generator)
            return centres[y] + torch.randn(n, 8, generator=generator), y

        return nos.TaskData(*draw(256), *draw(128), *draw(128))

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
