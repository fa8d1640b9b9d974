"""The search's workers: the pool of live ones and their replacements, a training in
flight, and how a worker's failure is told from a task's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def raised_in_task(err: Exception) -> bool:
    """True when ``err`` is an exception the evaluation raised in a live worker (a bug in
    a child network, a bad shape), False when the worker itself was lost (its process or
    node died: RayActorError, ActorDiedError, WorkerCrashedError, ...)."""
    import ray

    return (isinstance(err, ray.exceptions.RayTaskError)
            and not isinstance(getattr(err, "cause", None), ray.exceptions.RayError))


def details(result: dict) -> dict:
    """What a training's row keeps beyond its columns: curves, the grid, where it ran."""
    return {key: result.get(key) for key in ("loss_curve", "val_curve", "grid", "steps",
                                             "val_loss", "val_metric", "device")}


def error_message(err: Exception) -> str:
    """The first line of what went wrong: a task's own exception, not Ray's wrapper."""
    cause = getattr(err, "cause", None) or err
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


@dataclass
class Job:
    """A training in flight: a search evaluation (``row``, an Evaluation) or one of the
    funnel's trials (``row``, a dict), its worker, when it left and its time limit."""

    row: Any
    worker: Any
    since: float
    limit: float | None
    trial: bool = False


class WorkerPool:
    """The workers: idle ones, and replacements for lost ones while they start.

    A worker whose process died, or whose node went away, is not restarted in
    place: a new actor is started wherever Ray finds room, and joins the idle
    workers once it answers.  Until then the search goes on with the others.
    """

    def __init__(self, config: dict, workers: list, sources: dict | None = None) -> None:
        import ray

        self.config = config
        self.sources = sources
        self.idle = list(workers)
        self.starting: dict = {}
        self.names: dict = {}
        for worker, (name, _) in zip(workers, ray.get([w.where.remote() for w in workers])):
            self.names[worker] = name

    def replace(self, worker) -> None:
        import ray

        from nos.search.workers import make_workers

        ray.kill(worker, no_restart=True)
        self.names.pop(worker, None)
        new = make_workers(self.config, 1, self.sources)[0]
        self.starting[new.where.remote()] = new

    def started(self, future) -> None:
        import ray

        worker = self.starting.pop(future)
        try:
            self.names[worker] = ray.get(future)[0]
        except ray.exceptions.RayError:
            self.replace(worker)  # it died while starting: try again elsewhere
            return
        self.idle.append(worker)

    def close(self) -> None:
        import ray

        for worker in list(self.starting.values()) + self.idle:
            ray.kill(worker, no_restart=True)
        self.starting.clear()
        self.idle.clear()
