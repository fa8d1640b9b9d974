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

A Python exception raised by an evaluation (a bug in a child network) is
recorded ``failed`` at once, with its message, and the worker goes on; only a
worker that died (its process or its node) is replaced and its evaluation
tried again, up to ``[workers] max_attempts`` times.
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
from nos.search.space import Space, SpaceConfig
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


def _raised_in_task(err: Exception) -> bool:
    """True when ``err`` is an exception the evaluation raised in a live worker (a bug in
    a child network, a bad shape), False when the worker itself was lost (its process or
    node died: RayActorError, ActorDiedError, WorkerCrashedError, ...)."""
    import ray

    return (isinstance(err, ray.exceptions.RayTaskError)
            and not isinstance(getattr(err, "cause", None), ray.exceptions.RayError))


class _Pool:
    """The workers: idle ones, and replacements for lost ones while they start.

    A worker whose process died, or whose node went away, is not restarted in
    place: a new actor is started wherever Ray finds room, and joins the idle
    workers once it answers.  Until then the search goes on with the others.
    """

    def __init__(self, config: dict, workers: list) -> None:
        import ray

        self.config = config
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
        new = make_workers(self.config, 1)[0]
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


class Search:
    """One search run in ``out``: ``Search(config, out).run()``."""

    def __init__(self, config: dict, out: str | Path, *, address: str | None = None,
                 progress: bool = False, dashboard: bool = False) -> None:
        self.dashboard = dashboard
        self.config = config
        self.out = Path(out)
        self.address = address
        self.progress = progress
        self.space = Space(SpaceConfig.from_dict(config["space"]))
        search = config["search"]
        self.budget, self.batch_size, self.seed = search["budget"], search["batch"], search["seed"]
        self.controller = make_controller(search["controller"], self.space, seed=self.seed,
                                          **config["controller"])
        self.cache = search["cache"]
        self.waiting: dict[str, list[Evaluation]] = {}  # fingerprint -> rows waiting on it
        self.max_attempts = config["workers"]["max_attempts"]
        self.time_limit = config["evaluation"]["time_limit"]
        self.grace = max(10.0, 0.5 * (self.time_limit or 0))  # past the limit: hung
        self.floor = config["evaluation"]["floor"]

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
        from nos.search.workers import make_workers, start_ray

        start = time.time()
        workers_wanted = self.config["workers"]["count"]
        with Store.create_or_open(self.out, cfg.identity(self.config)) as store:
            next_tell = self._restore(store)
            asked_batches = max((e.batch for e in store.evaluations()), default=-1) + 1
            queue = deque(self._admit(store, store.pending()))
            need = workers_wanted * self.config["workers"]["num_cpus"]
            started_ray = start_ray(self.address, need, self.config["workers"]["num_gpus"]
                                    * workers_wanted or None, dashboard=self.dashboard)
            try:
                pool = _Pool(self.config, make_workers(self.config, workers_wanted))
                self._loop(store, pool, queue, next_tell, asked_batches)
            finally:
                if started_ray:
                    import ray

                    ray.shutdown()
            return self._summary(store, time.time() - start)

    def _loop(self, store: Store, pool: _Pool, queue: deque, next_tell: int,
              asked_batches: int) -> None:
        import ray

        in_flight: dict = {}  # future -> (evaluation, worker, dispatched at)
        total = store.count()
        bar = self._bar(store) if self.progress else None
        while True:
            while pool.idle and (queue or total < self.budget):
                if not queue:
                    n = min(self.batch_size, self.budget - total)
                    queue.extend(self._ask(store, asked_batches, n, next_tell))
                    asked_batches += 1
                    total += n
                    continue
                row = queue.popleft()
                worker = pool.idle.pop()
                future = worker.evaluate.remote(row.id, row.rule, self.seed)
                in_flight[future] = (row, worker, time.monotonic())
                faults.check("driver.dispatch")
                store.mark_started(row.id, pool.names.get(worker, ""), "")
            next_tell = self._tell_ready(store, next_tell, asked_batches)
            if not in_flight and not queue and total >= self.budget:
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
                row, worker, _ = in_flight.pop(future)
                try:
                    result = ray.get(future)
                except ray.exceptions.RayError as err:
                    if _raised_in_task(err):  # the worker is fine; the evaluation failed
                        self._record_error(store, row, err)
                        finished = True
                        pool.idle.append(worker)
                    else:  # the worker is gone
                        finished = self._failed_attempt(store, row, queue, err)
                        pool.replace(worker)
                else:
                    faults.check("driver.record")
                    self._record(store, row, result)
                    finished = True
                    pool.idle.append(worker)
                if finished:
                    self._release(store, row, queue)
                if bar is not None:
                    self._advance(bar, store)
            self._watchdog(store, in_flight, pool, queue)
        self._tell_ready(store, next_tell, asked_batches)
        pool.close()
        if bar is not None:
            bar.close()

    def _record(self, store: Store, row: Evaluation, result: dict) -> None:
        details = {"loss_curve": result["loss_curve"], "val_curve": result["val_curve"],
                   "grid": result["grid"], "steps": result["steps"],
                   "val_loss": result["val_loss"]}
        store.record(row.id, status=result["status"], reward=result["reward"], lr=result["lr"],
                     test_metric=result["test_accuracy"], seconds=result["seconds"],
                     worker=result["worker"], node=result["node"], error=result["error"],
                     details=details)

    def _record_error(self, store: Store, row: Evaluation, err: Exception) -> None:
        """An exception raised by the evaluation itself: it would raise again, so it is
        recorded ``failed`` with its message at once."""
        cause = getattr(err, "cause", None) or err
        text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        message = f"{type(cause).__name__}: {text}" if text else type(cause).__name__
        store.record(row.id, status="failed", reward=self.floor, error=message[:500])

    def _failed_attempt(self, store: Store, row: Evaluation, queue: deque,
                        err: Exception) -> bool:
        """Try the evaluation again, or record it failed; True once it is recorded."""
        attempts = store.get(row.id).attempts
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if attempts < self.max_attempts:
            queue.appendleft(row)
            return False
        store.record(row.id, status="failed", reward=self.floor,
                     error=f"worker lost {attempts} times: {reason}"[:500])
        return True

    def _watchdog(self, store: Store, in_flight: dict, pool: _Pool, queue: deque) -> None:
        """An evaluation far past its time limit is hung: kill its worker, record timeout."""
        if not self.time_limit:
            return
        now = time.monotonic()
        for future, (row, worker, since) in list(in_flight.items()):
            if now - since > self.time_limit + self.grace:
                in_flight.pop(future)
                pool.replace(worker)
                store.record(row.id, status="timeout", reward=self.floor,
                             error=f"no result after {now - since:.0f} s; worker replaced")
                self._release(store, row, queue)

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
    100}, "task": {"name": "digits"}}``), validated as ``nos search --config`` does; Ray
    is joined at ``address`` or started on this machine.  ``nos inspect`` reads the run.
    """
    if isinstance(config, (str, Path)):
        config = cfg.load(config)
    else:
        config = cfg.validate(config, "search config")
    return Search(config, out, address=address, progress=progress).run()
