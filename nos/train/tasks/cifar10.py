"""CIFAR-10 from a local directory, in its binary or its python version.

Nothing is downloaded.  The python version is a pickle; it is read by an
unpickler that resolves only the few globals a numpy array needs, so a
batch file can hold data but never run code.
"""

from __future__ import annotations

import codecs
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from nos.train.tasks.base import (
    Task,
    TaskData,
    cache_dir,
    check_count,
    check_fraction,
    split_indices,
)

try:  # numpy >= 2 moved the module; files written by either numpy name either path
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

PIXELS = 3 * 32 * 32
CLASSES = 10
DATA_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
SUBFOLDERS = {"binary": "cifar-10-batches-bin", "python": "cifar-10-batches-py"}
SUFFIX = {"binary": ".bin", "python": ""}


class UnsafePickleError(pickle.UnpicklingError):
    """A CIFAR-10 python batch refers to something other than plain data."""


def _latin1_encode(text: str, encoding: str) -> bytes:
    # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(text, "latin1")
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafePickleError(f"_codecs.encode is allowed only with latin1, got {encoding!r}")
    return codecs.encode(text, "latin1")


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _BatchUnpickler(pickle.Unpickler):
    def __init__(self, handle: Any) -> None:
        super().__init__(handle, encoding="bytes")  # the official files come from Python 2

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise UnsafePickleError(
                f"refusing to load the global {module}.{name}; a CIFAR-10 batch "
                "holds only numpy arrays, lists, bytes and numbers")
        return allowed


def read_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3072) uint8 and labels (N,) int64 of one python-version batch."""
    with open(path, "rb") as handle:
        try:
            batch = _BatchUnpickler(handle).load()
        except UnsafePickleError as error:
            raise UnsafePickleError(f"{path}: {error}") from None
        except Exception as error:
            raise ValueError(f"{path}: not a CIFAR-10 python batch ({error})") from error
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a dict, found {type(batch).__name__}")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != PIXELS:
        raise ValueError(f"{path}: b'data' must be a uint8 array of shape (N, {PIXELS})")
    if not isinstance(labels, (list, np.ndarray)) or \
            not all(isinstance(v, (int, np.integer)) for v in labels):
        raise ValueError(f"{path}: b'labels' must be a list of integers")
    labels = _checked_labels(np.asarray(labels, dtype=np.int64), len(data), path)
    return np.array(data), labels  # a copy: unpickled arrays may share a read-only buffer


def read_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3072) uint8 and labels (N,) int64 of one binary-version batch."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % (PIXELS + 1):
        raise ValueError(f"{path}: {raw.size} bytes is not a whole number of "
                         f"{PIXELS + 1}-byte CIFAR-10 records")
    records = raw.reshape(-1, PIXELS + 1)
    return records[:, 1:].copy(), _checked_labels(records[:, 0].astype(np.int64), len(records),
                                                  path)


def _checked_labels(labels: np.ndarray, n: int, path: Path) -> np.ndarray:
    if labels.shape != (n,):
        raise ValueError(f"{path}: {labels.size} labels for {n} images")
    if labels.size and not 0 <= labels.min() <= labels.max() < CLASSES:
        raise ValueError(f"{path}: labels must lie in 0..{CLASSES - 1}, "
                         f"found {labels.min()}..{labels.max()}")
    return labels


def find_batches(data_dir: str | Path) -> tuple[str, list[Path], Path]:
    """(format, training batch files, test batch file) found in or under ``data_dir``."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise ValueError(f"CIFAR-10 directory {root} does not exist (nothing is downloaded)")
    for fmt in ("binary", "python"):
        for folder in (root, root / SUBFOLDERS[fmt]):
            suffix = SUFFIX[fmt]
            test = folder / f"test_batch{suffix}"
            train = [folder / f"{name}{suffix}" for name in DATA_BATCHES]
            train = [path for path in train if path.is_file()]
            if test.is_file() and train:
                return fmt, train, test
    raise ValueError(
        f"no CIFAR-10 files in {root}: expected data_batch_1.bin..data_batch_5.bin and "
        "test_batch.bin (binary version) or data_batch_1..data_batch_5 and test_batch "
        "(python version), directly or in cifar-10-batches-bin/ or cifar-10-batches-py/")


def read_cifar10(data_dir: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Training images, training labels, test images, test labels; images (N, 3, 32, 32) uint8."""
    fmt, train_files, test_file = find_batches(data_dir)
    read = read_binary_batch if fmt == "binary" else read_python_batch
    batches = [read(path) for path in train_files]
    test_x, test_y = read(test_file)
    train_x = np.concatenate([x for x, _ in batches]).reshape(-1, 3, 32, 32)
    train_y = np.concatenate([y for _, y in batches])
    return train_x, train_y, test_x.reshape(-1, 3, 32, 32), test_y


@dataclass(frozen=True)
class Cifar10(Task):
    """CIFAR-10 with the small ConvNet child of the paper's experiments.

    Options: ``data_dir`` (default ``$NOS_CACHE_DIR/cifar10``), ``val_fraction``
    of the training images carved out for validation (fixed seed), ``limit``
    to keep only the first N training images.  Pixels are normalised per
    channel with the mean and deviation of the training split; inputs are
    float32 (N, 3, 32, 32).  With all 50000 images: 45000 train, 5000 val,
    10000 test.
    """

    name: ClassVar[str] = "cifar10"
    batch_size: ClassVar[int] = 128
    epochs: ClassVar[int] = 5
    child: ClassVar[str] = "ConvNet (conv 32, pool, conv 64, pool, linear)"
    path_options: ClassVar[tuple[str, ...]] = ("data_dir",)

    data_dir: str | None = None
    val_fraction: float = 0.1
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", str(self.data_dir))
        check_fraction(self.name, "val_fraction", self.val_fraction)
        if self.limit is not None:
            check_count(self.name, "limit", self.limit, minimum=2)

    def directory(self) -> Path:
        return Path(self.data_dir) if self.data_dir is not None else cache_dir() / "cifar10"

    def make_data(self) -> TaskData:
        train_x, train_y, test_x, test_y = read_cifar10(self.directory())
        if self.limit is not None:
            train_x, train_y = train_x[:self.limit], train_y[:self.limit]
        train, val = split_indices(len(train_y), self.val_fraction, self.name)
        train, val = torch.as_tensor(train), torch.as_tensor(val)
        images = torch.as_tensor(train_x)
        labels = torch.as_tensor(train_y, dtype=torch.int64)
        train_images = images[train].float().div_(255.0)
        mean = train_images.mean(dim=(0, 2, 3), keepdim=True)
        std = train_images.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)

        def normalised(x: torch.Tensor) -> torch.Tensor:
            return x.float().div_(255.0).sub_(mean).div_(std)

        return TaskData(train_images.sub_(mean).div_(std), labels[train],
                        normalised(images[val]), labels[val],
                        normalised(torch.as_tensor(test_x)),
                        torch.as_tensor(test_y, dtype=torch.int64))

    def build_model(self) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),    # 16x16
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 8x8
            nn.Flatten(), nn.Linear(64 * 8 * 8, 10),
        )
