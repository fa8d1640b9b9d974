"""Ray workers that evaluate rule after rule, and starting Ray itself.

A worker is an actor: it loads its task's data once, then evaluates each rule
it is sent.  One evaluation's resources (``num_cpus``, ``num_gpus``, fractions
allowed so several small children share a GPU) come from the config.  A
worker that dies is replaced by the driver, which decides whether to try its
evaluation again.

A worker is given its tasks as ``TaskSource`` objects (``nos.train.tasks.registry``),
not names, so that a task registered in the driver, or one in a file, reaches it; the
folder of a task file travels with the job as Ray's ``working_dir`` (``runtime_env``).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

# Before ray is imported: a local instance binds 127.0.0.1, not the machine's address.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray  # noqa: E402


def start_ray(address: str | None, num_cpus: float, num_gpus: float | None = None,
              dashboard: bool = False, runtime_env: dict | None = None) -> bool:
    """Join ``address`` or start a local Ray on loopback; True if this call started it.
    ``runtime_env``: the job's Ray runtime environment (what travels to every node)."""
    if ray.is_initialized():
        return False
    common: dict[str, Any] = {"configure_logging": True, "logging_level": "warning",
                              "log_to_driver": False}
    if runtime_env:
        common["runtime_env"] = runtime_env
    if address:
        if address != "auto":
            use_auth_token()
        ray.init(address=address, **common)
        return True
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {"num_cpus": max(1, int(round(num_cpus)))}
    if num_gpus is not None:  # this machine's GPUs (nos.search.devices.local_gpus)
        kwargs["num_gpus"] = num_gpus
    ray.init(address="local", include_dashboard=dashboard, _node_ip_address="127.0.0.1",
             **kwargs, **common)
    return True


def use_auth_token() -> None:
    """Send Ray's authentication token when one is at hand and the user set no mode.

    A cluster started with token authentication (``ray start`` does when a token exists,
    and Ray 2.60 makes one for a new local cluster) refuses a driver without the token.
    Ray looks for it itself only when the address is found automatically (``auto``); for
    an explicit HOST:PORT this does the same: with ``RAY_AUTH_MODE`` unset and a token in
    ``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``, the
    driver uses token mode.  A cluster without authentication accepts such a driver too.
    """
    try:
        from ray._private.authentication import authentication_token_setup as auth
    except ImportError:  # a Ray without token authentication
        return
    auth.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def runtime_env(sources: dict, out: str | Path | None = None) -> dict | None:
    """What must travel to the workers: the folder of the first task file as Ray's
    ``working_dir`` (without the run directory, if it lies inside), other task files
    (in other folders) as ``py_modules``.  None when every task is installed or built in."""
    files = [Path(s.path) for s in sources.values() if s.kind == "file"]
    if not files:
        return None
    folder = files[0].parent
    env: dict[str, Any] = {"working_dir": str(folder)}
    others = sorted({str(f) for f in files if f.parent != folder})
    if others:
        env["py_modules"] = others
    if out is not None:
        run = Path(os.path.abspath(out))
        if run.is_relative_to(folder) and run != folder:
            env["excludes"] = [f"/{run.relative_to(folder).as_posix()}"]
    return env


@ray.remote(max_restarts=0, max_task_retries=0)
class EvalWorker:
    """Evaluates rules on one task; the data is loaded once, when the actor starts.  The
    funnel's trainings on other tasks (``trial``) load those tasks once, when first asked.
    ``sources`` maps each task's name in the config to its ``TaskSource``."""

    def __init__(self, sources: dict, task: str, task_options: dict, evaluation: dict,
                 threads: int, num_gpus: float = 0.0) -> None:
        import torch

        from nos.search.devices import worker_device

        torch.set_num_threads(max(1, threads))
        self.device = worker_device(num_gpus, ray.get_gpu_ids(),
                                    os.environ.get("CUDA_VISIBLE_DEVICES"))
        self.sources = sources
        self.task = sources[task].make(task_options)
        self.task.load(self.device)
        self.tasks = {(task, _options_key(task_options)): self.task}
        self.evaluation = evaluation
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.node = ray.get_runtime_context().get_node_id()

    def where(self) -> tuple[str, str]:
        return self.name, self.node

    def evaluate(self, eval_id: int, rule: str, seed: int, extra: dict | None = None) -> dict:
        """One search evaluation; ``extra``: more keyword arguments of nos.evaluate (the
        early-stopping settings of the moment)."""
        return self._run(rule, self.task, seed, {**self.evaluation, **(extra or {})},
                         eval_id=eval_id)

    def trial(self, trial_id: int, rule: str, task: str, settings: dict, seed: int,
              extra: dict | None = None) -> dict:
        """One training of the funnel: ``settings`` are nos.evaluate's keyword arguments
        and the task's options (``task_options``)."""
        from nos.train.tasks import resolve_task

        settings = dict(settings)
        options = settings.pop("task_options", {}) or {}
        key = (task, _options_key(options))
        if key not in self.tasks:
            source = self.sources.get(task) or resolve_task(task)
            self.tasks[key] = source.make(options)
            self.tasks[key].load(self.device)
        return self._run(rule, self.tasks[key], seed, {**settings, **(extra or {})},
                         trial_id=trial_id)

    def _run(self, rule: str, task, seed: int, settings: dict, **ids: int) -> dict:
        from nos.search import faults
        from nos.train.evaluation import evaluate

        faults.check("worker.evaluate", rule)
        faults.hang("worker.hang", rule)
        faults.fail("worker.raise", rule)
        faults.cuda("worker.cuda", rule)
        started = time.time()
        result = evaluate(rule, task, seed=seed, device=self.device, **settings)
        out = result.to_dict()
        out.update(ids, worker=self.name, node=self.node, device=str(self.device),
                   started=started, finished=time.time())
        return out


def _options_key(options: dict) -> str:
    import json

    return json.dumps(options, sort_keys=True, default=str)


def evaluation_kwargs(config: dict) -> dict:
    """The keyword arguments of nos.evaluate from a config's [evaluation] table."""
    ev = config["evaluation"]
    return {"epochs": ev["epochs"], "lr": ev["lr"], "lr_grid": ev["lr_grid"],
            "grid_epochs": ev["grid_epochs"], "time_limit": ev["time_limit"],
            "floor": ev["floor"], "batch_size": ev["batch_size"], "schedule": ev["schedule"]}


def make_workers(config: dict, count: int, sources: dict | None = None) -> list:
    """``count`` workers for the config's task; ``sources``: every task's TaskSource by
    its name in the config (default: the task resolved here, from the current folder)."""
    from nos.train.tasks import resolve_task

    w = config["workers"]
    options = {"num_cpus": w["num_cpus"], "num_gpus": w["num_gpus"]}
    task = config["task"]["name"]
    sources = sources or {task: resolve_task(task)}
    task_options = {k: v for k, v in config["task"].items() if k != "name"}
    return [EvalWorker.options(**options).remote(sources, task, task_options,
                                                 evaluation_kwargs(config), w["threads"],
                                                 w["num_gpus"])
            for _ in range(count)]
