"""The task protocol, its base class, the caches.

A task is any object that gives these (nos.evaluate, the search's workers and
``nos eval`` use nothing else; ``check_task`` checks them):

    name: str                 a short name, shown with every result
    batch_size: int           the default minibatch size
    epochs: float             the default training budget
    load(device) -> TaskData  the train, validation and test splits on ``device``
    build_model() -> Module   a fresh child on the CPU (the caller seeds torch first)
    loss(output, target)      the training loss of a minibatch: a differentiable 0-dim tensor
    metric(output, target)    the SUM of the task's metric over a batch's predictions
                              (0-dim): correct predictions, squared errors, ...
    count(target) -> int      how many predictions the batch holds
    metric_name: str          what the metric is ("accuracy", "mse"); default "accuracy"
    higher_is_better: bool    the metric's direction; default True

The metric of a split is ``sum(metric) / sum(count)`` over its batches.  The
reward, which the search maximizes, is the validation metric itself when
higher is better, and ``1 / (1 + metric)`` when lower is better (``reward``;
such a metric must be non-negative: a squared error, a loss, bits per
character).  Both keep rewards in [0, 1] with the floor reward 0 the worst, so
controllers, the funnel and the early-stopping thresholds treat every task
alike; the raw metric is kept beside the reward (``val_metric``,
``test_metric``).

Subclassing :class:`Task` gives everything but the data and the child:
write ``make_data()`` and ``build_model()``, and the class attributes.  Its
defaults are a classification task's: cross entropy, accuracy.  A task is a
frozen dataclass whose fields are its options (the ``[task]`` table's other
keys), so two tasks with the same options are equal and share one in-process
copy of their data; the options that are file paths are named in
``path_options``, so the search resolves them against the config file's folder.
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

    def check(self, task: str, class_targets: bool = True) -> None:
        """Raise ValueError unless the splits are non-empty and aligned, and, with
        ``class_targets``, labelled with int64 class indices."""
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if len(x) == 0 or len(x) != len(y):
                raise ValueError(f"{task}: {split} split has {len(x)} inputs and {len(y)} targets")
            if class_targets and y.dtype != torch.int64:
                raise ValueError(f"{task}: {split} targets are {y.dtype}, expected torch.int64")


class Task(ABC):
    """A child network and the data it is trained on (the protocol: see the module).

    Subclasses are frozen dataclasses whose fields are the task's options.  The
    default ``loss``, ``metric`` (via ``correct``) and ``count`` are a
    classifier's: outputs of shape (..., classes), int64 targets of shape (...),
    one prediction per target element; a task with other targets overrides them.
    """

    name: ClassVar[str]
    batch_size: ClassVar[int]
    epochs: ClassVar[int]
    child: ClassVar[str] = "custom"  # a few words naming the child network, for describe()
    metric_name: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True
    path_options: ClassVar[tuple[str, ...]] = ()  # options that are file or folder paths

    @abstractmethod
    def build_model(self) -> torch.nn.Module:
        """A fresh child on the CPU; the caller seeds torch first."""

    @abstractmethod
    def make_data(self) -> TaskData:
        """The splits on the CPU, built the same way every time."""

    def load(self, device: str | torch.device = "cpu") -> TaskData:
        """The task's data on ``device``, built once per process and device."""
        device = torch.device(device)
        key = (self, str(device))
        if key not in _LOADED:
            cpu_key = (self, "cpu")
            if cpu_key not in _LOADED:
                data = self.make_data()
                # cross entropy, the default loss, needs class indices; other losses decide
                data.check(self.name, class_targets=type(self).loss is Task.loss)
                _LOADED[cpu_key] = data
            _LOADED[key] = _LOADED[cpu_key].to(device)
        return _LOADED[key]

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """Mean cross entropy over every prediction in the batch."""
        return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))

    def correct(self, output: Tensor, target: Tensor) -> Tensor:
        """Number of predictions equal to their target (a 0-dim tensor)."""
        return (output.argmax(dim=-1) == target).sum()

    def metric(self, output: Tensor, target: Tensor) -> Tensor:
        """The batch's sum of the task's metric; by default ``correct``."""
        return self.correct(output, target)

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


def reward(task: object, metric: float) -> float:
    """The reward of a task's validation ``metric``: the metric itself when higher is
    better, ``1 / (1 + metric)`` when lower is better (the metric must be >= 0)."""
    if getattr(task, "higher_is_better", True):
        return metric
    if metric < 0:
        raise ValueError(f"{getattr(task, 'name', task)}: its metric "
                         f"{getattr(task, 'metric_name', 'metric')} is {metric!r}; a metric "
                         "where lower is better must be non-negative")
    return 1.0 / (1.0 + metric)


def reward_rule(task: object) -> str:
    """How the task's reward is made, in words: ``validation accuracy``,
    ``1/(1+validation mse)``."""
    name = f"validation {getattr(task, 'metric_name', 'accuracy')}"
    return name if getattr(task, "higher_is_better", True) else f"1/(1+{name})"


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
