"""The funnel's side of a running search: its queue of trainings, the promotions due after
each result, and the early-stopping settings of each training (``nos.search.funnel`` holds
the rules; this holds a run's state).

Every promotion's trainings are stored ``pending`` before they are queued, and a run that
starts (or resumes) takes the pending ones from the store and promotes from what the
store holds, so a run killed mid-stage loses nothing and trains nothing twice.
"""

from __future__ import annotations

from collections import deque

from nos.search import faults
from nos.search import funnel as fn
from nos.search.pool import details
from nos.search.store import Store


class Stages:
    """The trainings of a run's funnel (none without a ``[funnel]`` table) and the curves
    the early-stopping rule compares with (with a ``[stopping]`` table)."""

    def __init__(self, config: dict) -> None:
        self.config = config
        self.task = config["task"]["name"]
        self.funnel = fn.parse_funnel(config["funnel"], config, "config") \
            if "funnel" in config else None
        self.stopping = fn.parse_stopping(config["stopping"], "config") \
            if "stopping" in config else None
        self.queue: deque[dict] = deque()  # pending trials, highest stage first
        self.settled = False  # every proposal made and evaluated: the funnel may finish
        self.curves: dict[tuple[int, str], list[list[float]]] = {}  # finished val curves

    def load(self, store: Store) -> None:
        """The finished curves, the pending trials, and the promotions due now."""
        if self.stopping is not None:
            for row in store.evaluations("ok"):
                self.add_curve(0, self.task, row.details.get("val_curve"))
            for t in store.trials(status="ok"):
                self.add_curve(t["stage"], t["task"], t["details"].get("val_curve"))
        if self.funnel is None:
            return
        self.queue = deque(sorted(store.trials(status="pending"),
                                  key=lambda t: (-t["stage"], t["id"])))
        self.promote(store)

    def add_curve(self, stage: int, task: str, curve: list | None) -> None:
        if curve:
            self.curves.setdefault((stage, task), []).append(list(curve))

    def settle(self, store: Store) -> None:
        """The search is over: the funnel's stages finish with what they have."""
        self.settled = True
        self.promote(store)

    def promote(self, store: Store) -> None:
        """Queue the trainings every promotion due now asks for (stored first)."""
        if self.funnel is None:
            return
        pool = fn.candidates(store.trained(), store.trials())
        wanted = fn.new_trials(self.config, self.funnel, pool, self.settled)
        if not wanted:
            return
        ids = set(store.add_trials(wanted))
        faults.check("driver.promote")
        new = [t for t in store.trials(status="pending") if t["id"] in ids]
        self.queue = deque(sorted([*self.queue, *new], key=lambda t: (-t["stage"], t["id"])))

    def stop_settings(self, trial: dict | None) -> dict:
        """nos.evaluate's early-stopping arguments for a search candidate's training at
        stage 0 (``trial`` None) or in the funnel; none for a baseline, which goes through
        every stage whole."""
        if self.stopping is None or (trial is not None and trial["source"] == "baseline"):
            return {}
        stage, task = (0, self.task) if trial is None else (trial["stage"], trial["task"])
        out: dict = {}
        if self.stopping.loss_steps:
            out["stop_loss_steps"] = self.stopping.loss_steps
        below = fn.stop_thresholds(self.curves.get((stage, task), []), self.stopping)
        if below is not None:
            out["stop_below"] = below
        return out

    def record(self, store: Store, trial: dict, result: dict) -> None:
        store.record_trial(trial["id"], status=result["status"], reward=result["reward"],
                           lr=result["lr"], test_metric=result["test_metric"],
                           seconds=result["seconds"], worker=result["worker"],
                           error=result["error"],
                           details={**details(result), "epochs": result["epochs"]})
        if result["status"] == "ok":
            self.add_curve(trial["stage"], trial["task"], result["val_curve"])
