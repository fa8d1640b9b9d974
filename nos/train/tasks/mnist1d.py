"""MNIST-1D: ten classes of 1-D signals of length 40, generated offline.

The dataset is made by the ``mnist1d`` package (Greydanus, 2020, "Scaling
down deep learning"), never downloaded, and kept on disk as a .npz keyed by
the generation arguments and the package version.
"""

from __future__ import annotations

import hashlib
import json
import random
import zipfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from nos.train.tasks.base import (
    Task,
    TaskData,
    cache_dir,
    check_count,
    check_fraction,
    save_npz_atomically,
    split_indices,
)

_ARRAYS = ("x", "y", "x_test", "y_test")


def generation_args(seed: int = 42, num_samples: int = 5000) -> dict:
    """The ``mnist1d`` package's default arguments with ``seed`` and ``num_samples`` set."""
    from mnist1d.data import get_dataset_args

    args = get_dataset_args(as_dict=True)
    args.pop("url", None)
    args.update(seed=seed, num_samples=num_samples)
    return args


def generate(args: dict) -> dict[str, np.ndarray]:
    """Run the generator; the global random states it seeds are restored afterwards."""
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(ObjectView(dict(args)))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {key: np.asarray(data[key]) for key in _ARRAYS}


def cache_path(args: dict, directory: Path) -> Path:
    key = json.dumps({"args": args, "mnist1d": version("mnist1d")}, sort_keys=True)
    return directory / f"mnist1d-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def load_arrays(args: dict, directory: Path | None = None) -> dict[str, np.ndarray]:
    """The generated arrays, read from the disk cache or generated and written there."""
    path = cache_path(args, cache_dir() if directory is None else directory)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as cached:
                return {key: cached[key] for key in _ARRAYS}
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            pass  # a damaged cache file is rebuilt below
    arrays = generate(args)
    save_npz_atomically(path, {**arrays, "args": np.array(json.dumps(args, sort_keys=True))})
    return arrays


@dataclass(frozen=True)
class Mnist1D(Task):
    """MNIST-1D with a small 1-D ConvNet child.

    The generator's train split (80% of ``num_samples``) is cut into train and
    validation (``val_fraction`` of it, fixed seed); the generator's own test
    split is the test set.  Inputs are float32 (N, 1, 40).  With the defaults:
    3200 train, 800 val, 1000 test.
    """

    name: ClassVar[str] = "mnist1d"
    batch_size: ClassVar[int] = 128
    epochs: ClassVar[int] = 10
    child: ClassVar[str] = "1-D ConvNet (3 conv + linear)"

    seed: int = 42
    num_samples: int = 5000
    val_fraction: float = 0.2

    def __post_init__(self) -> None:
        check_count(self.name, "seed", self.seed, minimum=0)
        check_count(self.name, "num_samples", self.num_samples, minimum=20)
        check_fraction(self.name, "val_fraction", self.val_fraction)

    def make_data(self) -> TaskData:
        arrays = load_arrays(generation_args(self.seed, self.num_samples))
        train, val = split_indices(len(arrays["y"]), self.val_fraction, self.name)

        def inputs(x: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(x, dtype=torch.float32).unsqueeze(1)

        def targets(y: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(y, dtype=torch.int64)

        x, y = arrays["x"], arrays["y"]
        return TaskData(inputs(x[train]), targets(y[train]), inputs(x[val]), targets(y[val]),
                        inputs(arrays["x_test"]), targets(arrays["y_test"]))

    def build_model(self) -> nn.Module:
        return nn.Sequential(
            nn.Conv1d(1, 16, 5, padding=2), nn.ReLU(),   # 40
            nn.Conv1d(16, 32, 5, stride=2), nn.ReLU(),   # 18
            nn.Conv1d(32, 32, 3, stride=2), nn.ReLU(),   # 8
            nn.Flatten(), nn.Linear(32 * 8, 10),
        )
