"""The child tasks a rule is scored on: data, child network, loss and metric.

``get_task(name, **options)`` gives a task; ``task.load(device)`` gives its
:class:`TaskData` (built once per process and device), ``task.build_model()`` a
fresh child.  The protocol a task follows, and how its metric becomes a reward,
are in ``nos.train.tasks.base``; where a task comes from (built in, registered,
an entry point, a module or a file) in ``nos.train.tasks.registry``.

    mnist1d   MNIST-1D generated offline, 1-D ConvNet (the default)
    digits    scikit-learn's 8x8 digits, small 2-D ConvNet
    cifar10   CIFAR-10 from a local directory, the paper's small ConvNet
    charlm    character-level LSTM language model
"""

from __future__ import annotations

from nos.train.tasks.base import Task, TaskData, default_device, reward, reward_rule
from nos.train.tasks.registry import (
    TaskError,
    TaskSource,
    absolute_spec,
    check_task,
    register_task,
    resolve_task,
    task_names,
)

__all__ = ["Task", "TaskData", "TaskError", "TaskSource", "absolute_spec", "check_task",
           "default_device", "get_task", "register_task", "resolve_task", "reward",
           "reward_rule", "task_names"]


def get_task(name: str, **options: object) -> Task:
    """The task called ``name`` (a built-in or registered name, an entry point,
    ``package.module:Factory`` or ``file.py:Factory``) made with ``options``."""
    return resolve_task(name).make(options)
