"""Fault injection, for the tests that prove a search survives crashes.

``NOS_FAULTS="driver.tell:2,worker.evaluate:sign(g)"`` makes the process kill
itself with SIGKILL at the second time the driver reaches ``tell``, and any
worker that is asked to evaluate a rule containing ``sign(g)``.  Without the
variable (always, outside tests) every check is a dictionary lookup that
finds nothing.

Points: ``driver.ask`` (proposals asked, not yet stored), ``driver.dispatch``
(an evaluation sent, its start being written), ``driver.record`` (a result in
hand, not yet written), ``driver.tell`` (the controller updated, its
checkpoint not yet written), ``driver.checkpoint`` (just after a checkpoint),
``driver.trial`` (a funnel training's result in hand, not yet written),
``driver.promote`` (promotions stored, not yet queued),
``worker.evaluate`` (in a worker, before training), ``worker.hang``,
which makes the worker sleep forever instead of dying, and ``worker.raise``,
which makes the evaluation raise :class:`InjectedError` (as a bug in a child
network would) and leaves the worker alive, and ``worker.cuda``, which raises the
error of a lost CUDA context (the driver then retires the worker).
"""

from __future__ import annotations

import os
import signal
import time

_counts: dict[str, int] = {}


def _plan() -> dict[str, str]:
    spec = os.environ.get("NOS_FAULTS", "")
    plan = {}
    for item in filter(None, spec.split(",")):
        point, _, arg = item.partition(":")
        plan[point.strip()] = arg.strip()
    return plan


def _due(point: str, text: str) -> bool:
    if "NOS_FAULTS" not in os.environ:
        return False
    arg = _plan().get(point)
    if arg is None:
        return False
    if arg.isdigit():
        _counts[point] = _counts.get(point, 0) + 1
        return _counts[point] == int(arg)
    return not arg or arg in text


class InjectedError(Exception):
    """Raised where NOS_FAULTS asks for an exception (``fail``)."""


def cuda(point: str, text: str = "") -> None:
    """Raise the RuntimeError torch raises when a CUDA context is lost, if NOS_FAULTS asks."""
    if _due(point, text):
        raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")


def fail(point: str, text: str = "") -> None:
    """Raise InjectedError if NOS_FAULTS asks for it at this point."""
    if _due(point, text):
        raise InjectedError(f"fault injected at {point}")


def check(point: str, text: str = "") -> None:
    """SIGKILL this process if NOS_FAULTS asks for it at this point."""
    if _due(point, text):
        os.kill(os.getpid(), signal.SIGKILL)


def hang(point: str, text: str = "") -> None:
    """Never return, if NOS_FAULTS asks for it at this point."""
    while _due(point, text):
        time.sleep(3600)
