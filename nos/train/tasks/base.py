"""What every child task shares: its data, its base class, the caches.

A task is a frozen dataclass whose fields are its options, so two tasks with
the same options are equal and share one in-process copy of their data.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# (task, device) -> data; a Ray actor evaluating rule after rule loads its data once
_LOADED: dict[tuple[Task, str], TaskData] = {}

# fixed seed of every split carved by the tasks; the splits never change between runs
SPLIT_SEED = 0


@dataclass(frozen=True)
class TaskData:
    """The three splits of a task, as whole tensors on one device.

    Inputs are float (token indices, int64, for charlm); targets are int64.
    """

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor

    def to(self, device: str | torch.device) -> TaskData:
        return TaskData(*(t.to(device) for t in self._tensors()))

    def _tensors(self) -> tuple[Tensor, ...]:
        return (self.train_x, self.train_y, self.val_x, self.val_y, self.test_x, self.test_y)

    def check(self, task: str) -> None:
        """Raise ValueError unless the splits are non-empty, aligned and int64-labelled."""
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if len(x) == 0 or len(x) != len(y):
                raise ValueError(f"{task}: {split} split has {len(x)} inputs and {len(y)} targets")
            if y.dtype != torch.int64:
                raise ValueError(f"{task}: {split} targets are {y.dtype}, expected torch.int64")


class Task(ABC):
    """A child network and the data it is trained on.

    Subclasses are frozen dataclasses whose fields are the task's options.
    ``loss``, ``correct`` and ``count`` work for outputs of shape (..., classes)
    and targets of shape (...): one prediction per target element.
    """

    name: ClassVar[str]
    batch_size: ClassVar[int]
    epochs: ClassVar[int]
    child: ClassVar[str]  # a few words naming the child network, for describe()

    @abstractmethod
    def build_model(self) -> torch.nn.Module:
        """A fresh child on the CPU; the caller seeds torch first."""

    @abstractmethod
    def _make_data(self) -> TaskData:
        """The splits on the CPU, built the same way every time."""

    def load(self, device: str | torch.device = "cpu") -> TaskData:
        """The task's data on ``device``, built once per process and device."""
        device = torch.device(device)
        key = (self, str(device))
        if key not in _LOADED:
            cpu_key = (self, "cpu")
            if cpu_key not in _LOADED:
                data = self._make_data()
                data.check(self.name)
                _LOADED[cpu_key] = data
            _LOADED[key] = _LOADED[cpu_key].to(device)
        return _LOADED[key]

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """Mean cross entropy over every prediction in the batch."""
        return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))

    def correct(self, output: Tensor, target: Tensor) -> Tensor:
        """Number of predictions equal to their target (a 0-dim tensor)."""
        return (output.argmax(dim=-1) == target).sum()

    def count(self, target: Tensor) -> int:
        """Number of predictions in the batch."""
        return target.numel()

    def parameter_count(self) -> int:
        # fork_rng keeps building a throwaway model from moving the caller's random stream
        with torch.random.fork_rng(devices=[]):
            return sum(p.numel() for p in self.build_model().parameters())

    def describe(self) -> str:
        """One line: the split sizes, the input shape, the child and its size."""
        data = self.load()
        shape = "x".join(str(s) for s in data.train_x.shape[1:])
        return (f"{self.name}: {len(data.train_x)} train / {len(data.val_x)} val / "
                f"{len(data.test_x)} test, inputs {shape}; child {self.child}, "
                f"{self.parameter_count():,} parameters")


def default_device() -> torch.device:
    """CUDA when there is a GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cache_dir() -> Path:
    """Where generated data is kept: ``$NOS_CACHE_DIR``, by default ``~/.cache/nos``."""
    return Path(os.environ.get("NOS_CACHE_DIR") or Path.home() / ".cache" / "nos")


def save_npz_atomically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` so that readers see the old file or the whole new one.

    A cache that cannot be written is not an error: the data is still returned
    by the caller, with a warning.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        warnings.warn(f"cannot write the cache file {path}: {error}", stacklevel=2)
        return
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def split_indices(n: int, fraction: float, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle range(n) with the fixed split seed; return (rest, carved), carved ~ fraction*n."""
    carved = round(n * fraction)
    if not 0 < carved < n:
        raise ValueError(f"{what}: carving a fraction {fraction} of {n} examples leaves "
                         f"{carved} and {n - carved}; both must be at least 1")
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    return order[carved:], order[:carved]


def check_fraction(task: str, option: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{task}: option {option} must be a number in (0, 1), got {value!r}")


def check_count(task: str, option: str, value: object, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{task}: option {option} must be an integer >= {minimum}, "
                         f"got {value!r}")
