"""The child tasks a rule is scored on: data, child network, loss and accuracy.

``get_task(name, **options)`` gives a :class:`Task`; ``task.load(device)``
gives its :class:`TaskData` (built once per process and device),
``task.build_model()`` a fresh child.  Accuracy is ``sum(correct) / sum(count)``.

    mnist1d   MNIST-1D generated offline, 1-D ConvNet (the default)
    digits    scikit-learn's 8x8 digits, small 2-D ConvNet
    cifar10   CIFAR-10 from a local directory, the paper's small ConvNet
    charlm    character-level LSTM language model
"""

from __future__ import annotations

from dataclasses import fields

from nos.train.tasks.base import Task, TaskData, default_device
from nos.train.tasks.charlm import CharLM
from nos.train.tasks.cifar10 import Cifar10
from nos.train.tasks.digits import Digits
from nos.train.tasks.mnist1d import Mnist1D

_TASKS: dict[str, type[Task]] = {task.name: task for task in (Mnist1D, Digits, Cifar10, CharLM)}

__all__ = ["Task", "TaskData", "default_device", "get_task", "task_names"]


def task_names() -> list[str]:
    """The registered task names, the default (mnist1d) first."""
    return list(_TASKS)


def get_task(name: str, **options: object) -> Task:
    """The task called ``name`` with ``options`` (see each task's docstring for its options)."""
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(_TASKS)}")
    cls = _TASKS[name]
    allowed = [field.name for field in fields(cls)]
    for option in options:
        if option not in allowed:
            raise ValueError(f"unknown option {option!r} for task {name}; "
                             f"its options: {', '.join(allowed) or 'none'}")
    return cls(**options)
