"""The funnel: the search's best rules, and the baselines, trained again at growing fidelity.

Stage 0 is the search's own evaluation (the ``[evaluation]`` table, one seed).
Each further stage trains a candidate again, longer, on more seeds and possibly
on more tasks: a candidate is a distinct behaviour (its fingerprint), named by
the rule text first trained.  Promotion is asynchronous, in the manner of ASHA
(Li et al. 2020, *A System for Massively Parallel Hyperparameter Tuning*): as
soon as a candidate ranks among the top ``promote`` fraction of the candidates
finished at the stage below, its trainings at the next stage are queued, so no
worker waits for a stage to end.  A stage's ``max_rules`` caps how many search
candidates it takes: such a stage (the final few) is filled once the search and
the stages below it are settled, with the best of the top fraction, so that
the first to finish do not take every place; the baselines' trainings there,
and the lower stages, keep the workers busy until then.

The named baselines go through every stage under the same protocol: the same
seeds, epochs, tasks and learning-rate grids, promoted as soon as they finish
the stage below, never stopped early.  So every comparison is like for like.
A search candidate that behaves as a baseline (the same fingerprint) keeps its
place in the ranking but is not trained again: it is that baseline.

The protocol of one training at stage ``k >= 1`` on the ranking task (the
stage's first task): ``epochs``, seed ``search seed + 1000 k + i`` for
``i < seeds`` (fresh seeds at each stage, the same for every candidate), and a
finer learning-rate grid around the candidate's rate at the stage below
(``lr_factors`` times the geometric median of the rates its trainings there
chose), each point trained ``grid_epochs``.  On another task (a transfer
task), the task's own epochs (or ``transfer_epochs``) and the search's
``[evaluation] lr_grid``, since a rate tuned on one task does not carry over.

A candidate's score at a stage is its mean reward over the seeds of the ranking
task; diverged, timed-out and stopped trainings count with what they scored.

The optional ``[stopping]`` table stops hopeless trainings early (search
candidates only): a training whose loss has not fallen after ``loss_steps``
steps, and a training whose validation accuracy after an epoch is more than
``margin`` below the median of its stage and task at the same epoch, once
``min_results`` trainings there have finished.  They are recorded ``stopped``
with their partial figures.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

STAGE_SEED_STRIDE = 1000
DEFAULT_BASELINES = ("momentum", "nesterov", "adam", "adamw", "lion")
DEFAULT_LR_FACTORS = (0.5, 1.0, 2.0)
TRANSFER_TASKS = ("mnist1d", "digits", "charlm")
FINISHED_TRIAL = ("ok", "diverged", "timeout", "stopped", "invalid", "failed")


class FunnelConfigError(ValueError):
    """A bad ``[funnel]`` or ``[stopping]`` value; the message names the key."""


@dataclass(frozen=True)
class Stage:
    epochs: float
    seeds: int = 3
    promote: float = 0.1
    max_rules: int | None = None
    tasks: tuple[str, ...] = ()
    lr_factors: tuple[float, ...] = DEFAULT_LR_FACTORS
    grid_epochs: float | None = None  # default: a quarter of epochs
    transfer_epochs: float | None = None  # default: each transfer task's own

    @property
    def short(self) -> float:
        return self.grid_epochs if self.grid_epochs is not None else self.epochs / 4


@dataclass(frozen=True)
class Funnel:
    stages: tuple[Stage, ...]
    baselines: tuple[str, ...] = DEFAULT_BASELINES


@dataclass(frozen=True)
class Stopping:
    loss_steps: int = 300  # 0: off
    median: bool = True
    margin: float = 0.05
    min_results: int = 20


STAGE_KEYS = {"epochs": (int, float), "seeds": (int,), "promote": (int, float),
              "max_rules": (int,), "tasks": (list,), "lr_factors": (list,),
              "grid_epochs": (int, float), "transfer_epochs": (int, float)}
STOPPING_KEYS = {"loss_steps": (int,), "median": (bool,), "margin": (int, float),
                 "min_results": (int,)}


def _typed(where: str, key: str, value: Any, types: tuple[type, ...]) -> None:
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        raise FunnelConfigError(f"{where} {key} has the wrong type: {value!r}")


def default_stages(config: dict) -> list[dict]:
    """Two stages after the search's: 4x its epochs on 3 seeds (top 10%), then the top
    5 of those at the same horizon on 5 seeds and on two transfer tasks."""
    task = config["task"]["name"]
    epochs = 4 * config["evaluation"]["epochs"]
    others = [t for t in TRANSFER_TASKS if t != task][:2]
    return [{"epochs": epochs, "seeds": 3, "promote": 0.1},
            {"epochs": epochs, "seeds": 5, "promote": 0.25, "max_rules": 5,
             "tasks": [task, *others]}]


def parse_funnel(table: dict, config: dict, source: str) -> Funnel:
    """The ``[funnel]`` table, checked; FunnelConfigError names the key."""
    from nos.learned import is_checkpoint_path
    from nos.optim.baselines import baselines as named
    from nos.train.tasks import task_names

    where = f"{source}: [funnel]"
    unknown = sorted(set(table) - {"stages", "baselines"})
    if unknown:
        raise FunnelConfigError(f"{where}: unknown key '{unknown[0]}'; allowed: stages, baselines")
    names = table.get("baselines", list(DEFAULT_BASELINES))
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise FunnelConfigError(f"{where} baselines must be a list of names, got {names!r}")
    known = named()
    for n in names:  # a learned optimizer's .pt is read when its trainings run
        if n not in known and not is_checkpoint_path(n):
            raise FunnelConfigError(f"{where} baselines: unknown rule {n!r}; "
                                    f"named rules: {', '.join(known)}, or a learned "
                                    "optimizer's .pt")
    raw = table.get("stages", None)
    raw = default_stages(config) if raw is None else raw
    if not isinstance(raw, list) or not all(isinstance(s, dict) for s in raw):
        raise FunnelConfigError(f"{where} stages must be a list of tables ([[funnel.stages]])")
    if not raw:
        raise FunnelConfigError(f"{where} stages needs at least one stage")
    stages = []
    for i, values in enumerate(raw, start=1):
        at = f"{where} stage {i}:"
        for key, value in values.items():
            if key not in STAGE_KEYS:
                raise FunnelConfigError(f"{at} unknown key '{key}'; allowed: "
                                        f"{', '.join(STAGE_KEYS)}")
            _typed(at, key, value, STAGE_KEYS[key])
        if "epochs" not in values:
            raise FunnelConfigError(f"{at} epochs is required")
        stage = Stage(**{**values, "tasks": tuple(values.get("tasks") or
                                                  [config["task"]["name"]]),
                         "lr_factors": tuple(values.get("lr_factors", DEFAULT_LR_FACTORS))})
        _check_stage(stage, at, config["task"]["name"], task_names())
        stages.append(stage)
    return Funnel(tuple(stages), tuple(names))


def _check_stage(stage: Stage, at: str, task: str, tasks: Sequence[str]) -> None:
    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise FunnelConfigError(f"{at} {key} {what}, got {getattr(stage, key)!r}")

    need(math.isfinite(stage.epochs) and stage.epochs > 0, "epochs", "must be positive")
    need(stage.seeds >= 1, "seeds", "must be at least 1")
    need(0 < stage.promote <= 1, "promote", "must be a fraction in (0, 1]")
    need(stage.max_rules is None or stage.max_rules >= 1, "max_rules", "must be at least 1")
    need(stage.grid_epochs is None or stage.grid_epochs > 0, "grid_epochs", "must be positive")
    need(stage.transfer_epochs is None or stage.transfer_epochs > 0, "transfer_epochs",
         "must be positive")
    need(bool(stage.lr_factors) and all(isinstance(f, (int, float)) and not isinstance(f, bool)
                                        and math.isfinite(f) and f > 0
                                        for f in stage.lr_factors),
         "lr_factors", "must be a list of positive numbers")
    need(all(isinstance(t, str) and (t in tasks or ":" in t) for t in stage.tasks), "tasks",
         f"must name tasks among {', '.join(tasks)} or 'file.py:Factory', "
         "'package.module:Factory'")
    need(stage.tasks[0] == task, "tasks", f"must start with the search's task {task!r}")


def parse_stopping(table: dict, source: str) -> Stopping:
    where = f"{source}: [stopping]"
    for key, value in table.items():
        if key not in STOPPING_KEYS:
            raise FunnelConfigError(f"{where}: unknown key '{key}'; allowed: "
                                    f"{', '.join(STOPPING_KEYS)}")
        _typed(where, key, value, STOPPING_KEYS[key])
    stopping = Stopping(**table)
    if stopping.loss_steps < 0:
        raise FunnelConfigError(f"{where} loss_steps must be >= 0 (0: off), "
                                f"got {stopping.loss_steps}")
    if not (math.isfinite(stopping.margin) and stopping.margin >= 0):
        raise FunnelConfigError(f"{where} margin must be >= 0, got {stopping.margin}")
    if stopping.min_results < 1:
        raise FunnelConfigError(f"{where} min_results must be at least 1, "
                                f"got {stopping.min_results}")
    return stopping


# --- candidates and their scores ----------------------------------------------------------


@dataclass
class Candidate:
    """One rule in the funnel, and its figures at each stage it reached."""

    key: str  # fingerprint, or the rule text when there is none
    rule: str
    source: str  # "search" | "baseline"
    name: str | None = None
    origin: int | None = None
    fingerprint: str | None = None
    # stage -> task -> [trial rows]
    trials: dict[int, dict[str, list[dict]]] = field(default_factory=dict)
    stage0: dict | None = None  # the search's evaluation (search candidates)

    def rows(self, stage: int, task: str) -> list[dict]:
        return self.trials.get(stage, {}).get(task, [])

    def complete(self, stage: int, task: str) -> bool:
        if stage == 0 and self.source == "search":
            return self.stage0 is not None
        rows = self.rows(stage, task)
        return bool(rows) and all(r["status"] in FINISHED_TRIAL for r in rows)

    def score(self, stage: int, task: str, floor: float = 0.0) -> float | None:
        """Mean reward over the seeds, once every training of the stage and task is in."""
        if not self.complete(stage, task):
            return None
        if stage == 0 and self.source == "search":
            return _reward(self.stage0["reward"], floor)
        return statistics.fmean(_reward(r["reward"], floor) for r in self.rows(stage, task))

    def rewards(self, stage: int, task: str, floor: float = 0.0) -> list[float]:
        if stage == 0 and self.source == "search":
            return [] if self.stage0 is None else [_reward(self.stage0["reward"], floor)]
        return [_reward(r["reward"], floor) for r in self.rows(stage, task)
                if r["status"] in FINISHED_TRIAL]

    def lrs(self, stage: int, task: str) -> list[float]:
        if stage == 0 and self.source == "search":
            lr = None if self.stage0 is None else self.stage0["lr"]
            return [] if lr is None else [lr]
        return [r["lr"] for r in self.rows(stage, task) if r["lr"] is not None
                and r["status"] == "ok"]


def _reward(value: float | None, floor: float) -> float:
    return floor if value is None or not math.isfinite(value) else value


def candidates(search_rows: Sequence[dict], trials: Sequence[dict]) -> dict[str, Candidate]:
    """Every candidate of the run: the search's distinct trained rules (from ``search_rows``,
    the evaluations ``id, rule, status, reward, lr, fingerprint`` in id order) and the
    rules the funnel's trials name (baselines, promoted rules)."""
    from nos.search.store.schema import TRAINED

    out: dict[str, Candidate] = {}
    for row in search_rows:
        if row["status"] not in TRAINED:
            continue
        key = row["fingerprint"] or row["rule"]
        if key in out:
            continue
        out[key] = Candidate(key, row["rule"], "search", origin=row["id"],
                             fingerprint=row["fingerprint"], stage0=row)
    for t in trials:
        key = candidate_key(t)
        c = out.get(key)
        if c is None:
            c = out[key] = Candidate(key, t["candidate"], t["source"], name=t["name"],
                                     origin=t["origin"], fingerprint=t["fingerprint"])
        c.trials.setdefault(t["stage"], {}).setdefault(t["task"], []).append(t)
    return out


def candidate_key(trial: dict) -> str:
    if trial["source"] == "baseline":
        return f"baseline:{trial['name']}"
    return trial["fingerprint"] or trial["candidate"]


# --- the protocol --------------------------------------------------------------------------


def stage_seeds(search_seed: int, stage: int, count: int) -> list[int]:
    if stage == 0:
        return [search_seed]
    return [search_seed + STAGE_SEED_STRIDE * stage + i for i in range(count)]


def geometric_median(values: Sequence[float]) -> float:
    return math.exp(statistics.median(math.log(v) for v in values))


def job_settings(config: dict, stage: Stage, index: int, task: str,
                 candidate: Candidate) -> dict:
    """The evaluation's keyword arguments for ``candidate`` at stage ``index`` on ``task``."""
    ev = config["evaluation"]
    main = task == config["task"]["name"]
    previous = candidate.lrs(index - 1, task)
    if previous:
        centre = geometric_median(previous)
        grid = sorted({float(f"{centre * f:.6g}") for f in stage.lr_factors})
        grid_epochs = stage.short if main else ev["grid_epochs"]
    else:
        grid, grid_epochs = list(ev["lr_grid"]), ev["grid_epochs"] if not main else stage.short
    epochs = stage.epochs if main else stage.transfer_epochs
    limit = ev["time_limit"]
    if limit:  # scaled by the work, with room for a slower task
        base = ev["epochs"] + len(ev["lr_grid"]) * ev["grid_epochs"]
        work = (epochs or 10 * ev["epochs"]) + len(grid) * grid_epochs
        limit = float(limit) * max(1.0, work / base) * (1 if main else 3)
    return {"epochs": epochs, "lr": None, "lr_grid": grid, "grid_epochs": grid_epochs,
            "time_limit": limit, "floor": ev["floor"],
            "batch_size": ev["batch_size"] if main else None,
            "schedule": ev["schedule"] if main else None,
            "task_options": ({k: v for k, v in config["task"].items() if k != "name"}
                             if main else {})}


def stage0_settings(config: dict) -> dict:
    """The search's own evaluation, for a baseline at stage 0."""
    from nos.search.workers import evaluation_kwargs

    return {**evaluation_kwargs(config),
            "task_options": {k: v for k, v in config["task"].items() if k != "name"}}


def baseline_rule(name: str) -> str:
    """A named rule's text; for a learned optimizer's .pt, its absolute path (the workers
    may run in another folder)."""
    import os

    from nos.learned import is_checkpoint_path
    from nos.optim.baselines import baselines

    if is_checkpoint_path(name):
        return os.path.abspath(name)
    return str(baselines()[name].rule)


def baseline_fingerprint(name: str) -> str | None:
    """The probe's digest of a named rule (None for a learned optimizer: not probed)."""
    from nos.learned import is_checkpoint_path
    from nos.search.fingerprint import fingerprint

    if is_checkpoint_path(name):
        return None
    return fingerprint(baseline_rule(name)).digest


def new_trials(config: dict, funnel: Funnel, pool: dict[str, Candidate],
               settled: bool = False) -> list[dict]:
    """The trainings to queue now: the baselines' first ones, and every promotion due.

    ``settled``: the search has made and evaluated all its proposals.  A stage with
    ``max_rules`` (the final few) takes the best ``max_rules`` of the top fraction once
    the search and the stages below it are settled, so that the first finishers do not
    take its places; an uncapped stage promotes as soon as a rule ranks in its top
    fraction, and once settled takes at least one.  Baselines go on at once.
    """
    seed = config["search"]["seed"]
    task = config["task"]["name"]
    floor = config["evaluation"]["floor"]
    out = []
    for name in funnel.baselines:
        c = pool.get(f"baseline:{name}")
        if c is None or not c.rows(0, task):
            out.append({"stage": 0, "candidate": baseline_rule(name),
                        "fingerprint": baseline_fingerprint(name),
                        "source": "baseline", "name": name, "origin": None, "task": task,
                        "seed": seed, "settings": stage0_settings(config)})
    # a search candidate that behaves as a baseline is in the funnel already, as that baseline
    known = {c.fingerprint for c in pool.values() if c.source == "baseline" and c.fingerprint}
    for k, stage in enumerate(funnel.stages, start=1):
        below = [c for c in pool.values() if c.score(k - 1, task, floor) is not None]
        search = sorted((c for c in below if c.source == "search"),
                        key=lambda c: (-c.score(k - 1, task, floor), c.origin or 0))
        allowed = math.floor(stage.promote * len(search) + 1e-9)
        settled = settled and all(c.complete(j, t) for c in pool.values()
                                  for j in range(k) for t in c.trials.get(j, {}))
        if stage.max_rules is not None:  # the best few, once everything below is in
            allowed = min(stage.max_rules, max(allowed, 1)) if settled and search else 0
        elif settled and search:
            allowed = max(allowed, 1)
        taken = sum(1 for c in pool.values() if c.source == "search" and k in c.trials)
        chosen = [c for c in search[:allowed] if k not in c.trials and c.fingerprint not in known]
        chosen = chosen[:max(0, (stage.max_rules or len(search)) - taken)]
        chosen += [c for c in below if c.source == "baseline" and k not in c.trials]
        for c in chosen:
            for t in stage.tasks:
                settings = job_settings(config, stage, k, t, c)
                for s in stage_seeds(seed, k, stage.seeds):
                    out.append({"stage": k, "candidate": c.rule, "fingerprint": c.fingerprint,
                                "source": c.source, "name": c.name, "origin": c.origin,
                                "task": t, "seed": s, "settings": settings})
    return out


def stop_thresholds(curves: Sequence[Sequence[float]], stopping: Stopping) -> list[float] | None:
    """Per-epoch thresholds for the median rule: the median validation accuracy at each
    epoch, less the margin, over the finished trainings' curves (None: too few yet)."""
    if not stopping.median or len(curves) < stopping.min_results:
        return None
    longest = max(len(c) for c in curves)
    out = []
    for e in range(longest):
        at = [c[e] for c in curves if len(c) > e]
        if len(at) < stopping.min_results:
            break
        out.append(statistics.median(at) - stopping.margin)
    return out or None


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None under 3 pairs or no spread."""
    if len(xs) != len(ys) or len(xs) < 3:
        return None
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for m in range(i, j + 1):
            ranks[order[m]] = (i + j) / 2 + 1
        i = j + 1
    return ranks
