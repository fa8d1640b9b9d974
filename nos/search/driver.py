"""The search: a controller proposes rules, Ray workers train children, the store keeps all.

The driver keeps every worker busy: it asks the controller for a batch of
proposals, records them (``pending``, in one transaction with the controller's
state) before dispatching them, records each result the moment it arrives, and
tells the controller a batch's rewards once the whole batch is in,
checkpointing the controller after every update.  Running again on the same
directory resumes: the controller comes back from its last checkpoint, which
has proposed exactly the stored batches, stored proposals are dispatched (not
asked again), pending evaluations are run again, and the run stops at the same
budget with nothing lost or recorded twice: with one worker, the same rules in
the same order as a run never stopped.

With a ``[funnel]`` table the best rules and the named baselines are trained
again at growing fidelity while the search goes on (:mod:`nos.search.funnel`):
each promotion's trainings are stored ``pending`` before they are dispatched,
go ahead of the search's own evaluations, and a resumed run dispatches the
pending ones again and promotes from what the store holds, so a run killed
mid-stage loses nothing and trains nothing twice.

A Python exception raised by an evaluation (a bug in a child network) is
recorded ``failed`` at once, with its message, and the worker goes on; only a
worker that died (its process or its node) is replaced and its evaluation
tried again, up to ``[workers] max_attempts`` times.

Every task the config names (``[task] name``, the funnel's stages) is resolved here,
before Ray starts or anything is written (``nos.train.tasks.registry``; a relative
file is taken from the config file's folder), and the search's task is made once with
its options and checked against the protocol; the workers get the resolved sources, and
the run's meta keeps where each task came from (note ``tasks``: spec, file, sha256).
"""

from __future__ import annotations

import io
import math
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from nos.controllers import Proposal, make_controller
from nos.lang.parser import RuleSyntaxError
from nos.lang.rule import parse
from nos.search import config as cfg
from nos.search import faults
from nos.search.devices import local_gpus, poisoned
from nos.search.pool import Job, WorkerPool, details, error_message, raised_in_task
from nos.search.space import Space, SpaceConfig
from nos.search.stages import Stages
from nos.search.store import Evaluation, Store


@dataclass
class SearchSummary:
    out: Path
    budget: int
    finished: int
    seconds: float
    counts: dict[str, int]
    best: dict | None
    top: list[dict] = field(default_factory=list)
    saved_by_cache: int = 0
    saved_by_pruning: int = 0

    @property
    def per_second(self) -> float:
        return self.finished / self.seconds if self.seconds > 0 else 0.0


class Search:
    """One search run in ``out``: ``Search(config, out).run()``."""

    def __init__(self, config: dict, out: str | Path, *, address: str | None = None,
                 progress: bool = False, dashboard: bool = False,
                 base_dir: str | Path | None = None) -> None:
        self.dashboard = dashboard
        self.config = config
        self.out = Path(out)
        self.address = address
        # a local Ray gets the GPUs this machine has; refused now if the workers need more
        self.gpus = None if address else local_gpus(config["workers"]["num_gpus"])
        self.progress = progress
        self.space = Space(SpaceConfig.from_dict(config["space"]))
        search = config["search"]
        self.budget, self.batch_size, self.seed = search["budget"], search["batch"], search["seed"]
        self.seconds = search["seconds"]  # of this session's proposals (0: no limit)
        self.stopped_asking = False
        self.controller = make_controller(search["controller"], self.space, seed=self.seed,
                                          **config["controller"])
        self.cache = search["cache"]
        self.waiting: dict[str, list[Evaluation]] = {}  # fingerprint -> rows waiting on it
        self.max_attempts = config["workers"]["max_attempts"]
        self.time_limit = config["evaluation"]["time_limit"]
        self.floor = config["evaluation"]["floor"]
        self.stages = Stages(config)
        self.funnel = self.stages.funnel
        self.sources = self._resolve_tasks(base_dir)

    def _resolve_tasks(self, base_dir: str | Path | None) -> dict:
        """Every task the config names, resolved (a relative file from ``base_dir``), and
        the search's own made with its options: a TaskError names what is wrong."""
        from nos.train.tasks import resolve_task, reward_rule

        main = self.config["task"]["name"]
        names = dict.fromkeys([main, *(t for stage in (self.funnel.stages if self.funnel
                                                       else ()) for t in stage.tasks)])
        base = base_dir if base_dir is not None else Path.cwd()
        sources = {name: resolve_task(name, base) for name in names}
        task = sources[main].make({k: v for k, v in self.config["task"].items() if k != "name"})
        self.task_note = {"metric": getattr(task, "metric_name", "accuracy"),
                          "higher_is_better": getattr(task, "higher_is_better", True),
                          "reward": reward_rule(task)}
        return sources

    # --- the controller's side -------------------------------------------------------

    def _restore(self, store: Store) -> int:
        """Load the last checkpoint; returns the next batch to tell.

        Every batch of proposals is stored together with the controller's state right
        after it proposed them, and every tell is followed by a checkpoint, so the last
        checkpoint is the controller as it was after the last event the store holds: it
        has proposed exactly the stored batches and been told the batches before the
        one returned.  A resumed run therefore proposes what the run would have.
        """
        checkpoint = store.latest_checkpoint()
        self.told = 0
        if checkpoint is None:
            return 0
        batch, self.told, state = checkpoint
        self.controller.load_state_dict(torch.load(io.BytesIO(state), weights_only=True))
        return batch + 1

    def _state(self) -> bytes:
        buffer = io.BytesIO()
        torch.save(self.controller.state_dict(), buffer)
        return buffer.getvalue()

    def _ask(self, store: Store, batch: int, n: int, next_tell: int) -> list[Evaluation]:
        """Ask for batch ``batch``; its rows and the controller's state go in at once."""
        proposals = self.controller.ask(n)
        faults.check("driver.ask")
        rows = []
        for p in proposals:
            try:
                text = str(parse(p.text))
            except RuleSyntaxError:
                text = p.text
            rows.append((p.tokens, text))
        ids = set(store.add_proposals(batch, rows,
                                      checkpoint=(next_tell - 1, self.told, self._state())))
        return self._admit(store, [e for e in store.batch(batch) if e.id in ids])

    def _admit(self, store: Store, rows: list[Evaluation]) -> list[Evaluation]:
        """The rows that need a training; the others are recorded now.

        A rule pruned by its probe is recorded ``invalid`` or ``degenerate``; one that
        behaves like a rule already trained is recorded ``cached`` with its reward; one
        like a rule being trained now waits for that result.
        """
        if not self.cache:
            return rows
        from nos.search.fingerprint import fingerprint

        train = []
        for row in rows:
            probe = fingerprint(row.rule)
            if probe.status != "ok":
                store.record(row.id, status=probe.status, reward=self.floor, error=probe.reason,
                             details={"pruned": True})
                continue
            store.set_fingerprint(row.id, probe.digest)
            row = replace(row, fingerprint=probe.digest)
            if self._reuse(store, row):
                continue
            if probe.digest in self.waiting:
                self.waiting[probe.digest].append(row)
            else:
                self.waiting[probe.digest] = []
                train.append(row)
        return train

    def _reuse(self, store: Store, row: Evaluation) -> bool:
        original = store.cached_result(row.fingerprint) if row.fingerprint else None
        if original is None or original.id == row.id:
            return False
        store.record(row.id, status="cached", reward=original.reward, lr=original.lr,
                     test_metric=original.test_metric, seconds=0.0,
                     details={"cached_from": original.id})
        return True

    def _release(self, store: Store, row: Evaluation, queue: deque) -> None:
        """After row's result: rows that waited on its fingerprint reuse it, or train."""
        waiters = self.waiting.pop(row.fingerprint, []) if row.fingerprint else []
        for waiter in waiters:
            if not self._reuse(store, waiter):
                queue.append(waiter)
                self.waiting[waiter.fingerprint] = []

    def _tell_ready(self, store: Store, next_tell: int, asked_batches: int) -> int:
        """Tell every complete batch, in order; returns the next batch to tell."""
        while next_tell < asked_batches:
            rows = store.batch(next_tell)
            if not rows or any(r.status == "pending" for r in rows):
                break
            proposals = [Proposal(tuple(r.tokens), r.rule) for r in rows]
            rewards = [r.reward if r.reward is not None and math.isfinite(r.reward)
                       else self.floor for r in rows]
            self.controller.tell(proposals, rewards)
            faults.check("driver.tell")
            self.told += len(rows)
            store.save_checkpoint(next_tell, self.told, self._state())
            faults.check("driver.checkpoint")
            next_tell += 1
        return next_tell

    # --- the run ---------------------------------------------------------------------

    def run(self) -> SearchSummary:
        from nos.search.workers import make_workers, runtime_env, start_ray

        start = time.time()
        workers_wanted = self.config["workers"]["count"]
        with Store.create_or_open(self.out, cfg.identity(self.config)) as store:
            next_tell = self._restore(store)
            asked_batches = max((e.batch for e in store.evaluations()), default=-1) + 1
            queue = deque(self._admit(store, store.pending()))
            self.stages.load(store)
            self._note_tasks(store)
            need = workers_wanted * self.config["workers"]["num_cpus"]
            started_ray = start_ray(self.address, need, self.gpus, dashboard=self.dashboard,
                                    runtime_env=runtime_env(self.sources, self.out))
            try:
                pool = WorkerPool(self.config, make_workers(self.config, workers_wanted,
                                                       self.sources), self.sources)
                self._loop(store, pool, queue, next_tell, asked_batches)
            finally:
                if started_ray:
                    import ray

                    ray.shutdown()
            return self._summary(store, time.time() - start)

    def _note_tasks(self, store: Store) -> None:
        """Keep where each task came from in the run's meta; a resumed run whose task file
        changed says so (the run goes on with the file as it is now)."""
        import sys

        records = [source.record() for source in self.sources.values()]
        before = {r["name"]: r.get("sha256") for r in store.note("tasks") or []}
        for r in records:
            if r.get("sha256") and before.get(r["name"], r["sha256"]) != r["sha256"]:
                print(f"nos search: warning: task file {r['path']} has changed since this "
                      f"run last started", file=sys.stderr)
        store.set_note("tasks", [{**records[0], **self.task_note}, *records[1:]])

    def _loop(self, store: Store, pool: WorkerPool, queue: deque, next_tell: int,
              asked_batches: int) -> None:
        import ray

        in_flight: dict = {}  # future -> Job
        total = store.count()
        self.started = time.time()  # the workers are up: [search] seconds counts from here
        bar = self._bar(store) if self.progress else None
        while True:
            while pool.idle and (self.stages.queue or queue or self._asking(total)):
                if self.stages.queue:  # the funnel's trainings go first
                    trial = self.stages.queue.popleft()
                    worker = pool.idle.pop()
                    future = worker.trial.remote(trial["id"], trial["candidate"], trial["task"],
                                                 trial["settings"], trial["seed"],
                                                 self.stages.stop_settings(trial))
                    in_flight[future] = Job(trial, worker, time.monotonic(),
                                             trial["settings"]["time_limit"], trial=True)
                    faults.check("driver.dispatch")
                    store.mark_trial_started(trial["id"], pool.names.get(worker, ""))
                    continue
                if not queue:
                    n = min(self.batch_size, self.budget - total)
                    queue.extend(self._ask(store, asked_batches, n, next_tell))
                    asked_batches += 1
                    total += n
                    continue
                row = queue.popleft()
                worker = pool.idle.pop()
                future = worker.evaluate.remote(row.id, row.rule, self.seed,
                                                self.stages.stop_settings(None))
                in_flight[future] = Job(row, worker, time.monotonic(), self.time_limit)
                faults.check("driver.dispatch")
                store.mark_started(row.id, pool.names.get(worker, ""), "")
            next_tell = self._tell_ready(store, next_tell, asked_batches)
            if not self.stages.settled and not self._asking(total) and not queue and not any(
                    not job.trial for job in in_flight.values()):
                self.stages.settle(store)  # the search is over: the funnel takes what it has
                continue
            if not in_flight and not queue and not self.stages.queue \
                    and not self._asking(total):
                break
            waiting = list(in_flight) + list(pool.starting)
            if not waiting:
                time.sleep(0.5)  # every worker lost, replacements not placed yet
                continue
            ready, _ = ray.wait(waiting, num_returns=1, timeout=1.0)
            for future in ready:
                if future in pool.starting:
                    pool.started(future)
                    continue
                job = in_flight.pop(future)
                try:
                    result = ray.get(future)
                except ray.exceptions.RayError as err:
                    if raised_in_task(err) and not poisoned(str(err)):
                        self._record_error(store, job, err)  # the evaluation failed, not
                        finished = True                     # the worker
                        pool.idle.append(job.worker)
                    else:  # the worker is gone, or its CUDA context is: retire it
                        finished = self._failed_attempt(store, job, queue, err)
                        pool.replace(job.worker)
                else:
                    if result["status"] == "failed" and poisoned(result["error"]):
                        finished = self._failed_attempt(store, job, queue,
                                                        RuntimeError(result["error"]))
                        pool.replace(job.worker)  # its CUDA context is broken: retire it
                    else:
                        faults.check("driver.record")
                        if job.trial:
                            faults.check("driver.trial")
                            self.stages.record(store, job.row, result)
                        else:
                            self._record(store, job.row, result)
                        finished = True
                        pool.idle.append(job.worker)
                if finished and not job.trial:
                    self._release(store, job.row, queue)
                if finished:
                    self.stages.promote(store)
                if bar is not None:
                    self._advance(bar, store)
            self._watchdog(store, in_flight, pool, queue)
        self._tell_ready(store, next_tell, asked_batches)
        pool.close()
        if bar is not None:
            bar.close()

    def _asking(self, total: int) -> bool:
        """Whether the controller is asked for more: under the budget and, with ``[search]
        seconds``, within that many seconds of this session's start."""
        if total >= self.budget or self.stopped_asking:
            return False
        if self.seconds and time.time() - self.started > self.seconds:
            self.stopped_asking = True
            return False
        return True

    def _record(self, store: Store, row: Evaluation, result: dict) -> None:
        if result["status"] == "ok":
            self.stages.add_curve(0, self.config["task"]["name"], result["val_curve"])
        store.record(row.id, status=result["status"], reward=result["reward"], lr=result["lr"],
                     test_metric=result["test_metric"], seconds=result["seconds"],
                     worker=result["worker"], node=result["node"], error=result["error"],
                     details=details(result))

    def _record_error(self, store: Store, job: Job, err: Exception) -> None:
        """An exception raised by the evaluation itself: it would raise again, so it is
        recorded ``failed`` with its message at once."""
        self._finish(store, job, "failed", error_message(err)[:500])

    def _finish(self, store: Store, job: Job, status: str, error: str) -> None:
        """Record a job that has no result with the floor reward."""
        if job.trial:
            store.record_trial(job.row["id"], status=status, reward=self.floor, error=error)
        else:
            store.record(job.row.id, status=status, reward=self.floor, error=error)

    def _failed_attempt(self, store: Store, job: Job, queue: deque, err: Exception) -> bool:
        """Try the evaluation again, or record it failed; True once it is recorded."""
        if job.trial:
            attempts = next(t["attempts"] for t in store.trials(job.row["stage"])
                            if t["id"] == job.row["id"])
        else:
            attempts = store.get(job.row.id).attempts
        reason = error_message(err)
        if attempts < self.max_attempts:
            (self.stages.queue if job.trial else queue).appendleft(job.row)
            return False
        self._finish(store, job, "failed", f"worker lost {attempts} times: {reason}"[:500])
        return True

    def _watchdog(self, store: Store, in_flight: dict, pool: WorkerPool, queue: deque) -> None:
        """An evaluation far past its time limit is hung: kill its worker, record timeout."""
        now = time.monotonic()
        for future, job in list(in_flight.items()):
            if not job.limit:
                continue
            if now - job.since > job.limit + max(10.0, 0.5 * job.limit):
                in_flight.pop(future)
                pool.replace(job.worker)
                self._finish(store, job, "timeout",
                             f"no result after {now - job.since:.0f} s; worker replaced")
                if not job.trial:
                    self._release(store, job.row, queue)
                self.stages.promote(store)

    # --- reporting -------------------------------------------------------------------

    def _bar(self, store: Store):
        from tqdm import tqdm

        done = store.count() - len(store.pending())
        return tqdm(total=self.budget, initial=done, desc="search", unit="eval",
                    dynamic_ncols=True)

    def _advance(self, bar, store: Store) -> None:
        top = store.top(1)
        failures = sum(v for k, v in store.counts_by_status().items() if k == "failed")
        bar.update(1)
        if top:
            rule = top[0]["rule"]
            bar.set_postfix_str(f"best {top[0]['reward']:.4f} {rule[:40]} | failed {failures}")

    def _summary(self, store: Store, seconds: float) -> SearchSummary:
        counts = store.counts_by_status()
        top = store.top(10)
        finished = sum(v for k, v in counts.items() if k != "pending")
        return SearchSummary(out=self.out, budget=self.budget, finished=finished,
                             seconds=seconds, counts=counts, best=top[0] if top else None,
                             top=top, saved_by_cache=counts.get("cached", 0),
                             saved_by_pruning=counts.get("invalid", 0) + counts.get("degenerate",
                                                                                    0))


def search(config: dict | str | Path, out: str | Path, *, address: str | None = None,
           progress: bool = False) -> SearchSummary:
    """Run a search, or resume the one in ``out``; returns its summary (``.out`` is the run).

    ``config`` is a TOML file's path or a dict of the same tables (``{"search": {"budget":
    100}, "task": {"name": "digits"}}``), validated as ``nos search --config`` does; a
    task file named in it is taken from the file's folder (a dict's: the current one).
    Ray is joined at ``address`` or started on this machine.  ``nos inspect`` reads the run.
    """
    base = None
    if isinstance(config, (str, Path)):
        base = Path(config).parent
        config = cfg.load(config)
    else:
        config = cfg.validate(config, "search config")
    return Search(config, out, address=address, progress=progress, base_dir=base).run()
