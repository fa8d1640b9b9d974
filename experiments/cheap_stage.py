"""Which cheap reward predicts the longer one?  Variants of the search's stage-0 evaluation,
scored by their Spearman rank correlation with stage 1 of a funnel run (20 epochs, 3 seeds,
a finer learning-rate grid), over every candidate that reached stage 1.

    .venv/bin/python experiments/cheap_stage.py runs/hour-rnn runs/hour-program

Variants (each a nos.evaluate on mnist1d; the cost is in epochs of training):
  stage0      the run's own stage 0 (5 epochs, a 4-point grid of 1-epoch runs, seed 0)
  auc         the same training's mean validation accuracy over its epochs (no cost)
  val_loss    the same training's validation loss, negated (no cost)
  seeds3      stage 0 on 3 seeds, the mean
  epochs10    10 epochs, the grid's runs 2 epochs
  grid5       5 epochs, the grid's runs 5 epochs (the rate chosen at the horizon it is used)

Writes experiments/results/cheap_stage.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from nos.search.funnel import candidates, spearman
from nos.search.store import Store

GRID = [1e-3, 1e-2, 1e-1, 1.0]
VARIANTS = {  # name -> (evaluate's settings, seeds, cost in epochs)
    "seeds3": ({"epochs": 5, "lr_grid": GRID, "grid_epochs": 1}, (0, 1, 2), 27),
    "epochs10": ({"epochs": 10, "lr_grid": GRID, "grid_epochs": 2}, (0,), 18),
    "grid5": ({"epochs": 5, "lr_grid": GRID, "grid_epochs": 5}, (0,), 25),
}


def _evaluate(job: tuple[str, str, dict, tuple[int, ...]]) -> tuple[str, str, float]:
    import torch

    from nos.train.evaluation import evaluate

    torch.set_num_threads(1)
    key, variant, settings, seeds = job
    rewards = [evaluate(rule, "mnist1d", seed=s, time_limit=300, **settings).reward
               for rule in [job_rules[key]] for s in seeds]
    return key, variant, statistics.fmean(rewards)


job_rules: dict[str, str] = {}


def _init(rules: dict[str, str]) -> None:
    job_rules.update(rules)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="experiments/results/cheap_stage.json")
    args = parser.parse_args()
    rows = []
    for run in args.runs:
        with Store.open(run) as store:
            pool = candidates(store.trained(), store.trials())
            details = {e.id: e.details for e in store.evaluations()}
        for c in pool.values():
            target = c.score(1, "mnist1d")
            if c.source != "search" or target is None:
                continue
            curve = details[c.origin].get("val_curve") or [0.0]
            rows.append({"run": run, "key": f"{run}:{c.key}", "rule": c.rule,
                         "stage1": target, "final": c.score(2, "mnist1d"),
                         "stage0": c.score(0, "mnist1d"), "auc": statistics.fmean(curve),
                         "val_loss": -(details[c.origin].get("val_loss") or 1e9)})
    rules = {r["key"]: r["rule"] for r in rows}
    jobs = [(r["key"], name, settings, seeds) for r in rows
            for name, (settings, seeds, _) in VARIANTS.items()]
    by_key = {r["key"]: r for r in rows}
    with ProcessPoolExecutor(args.workers, initializer=_init, initargs=(rules,)) as pool:
        for key, variant, reward in pool.map(_evaluate, jobs):
            by_key[key][variant] = reward
    names = ["stage0", "auc", "val_loss", *VARIANTS]
    costs = {"stage0": 9, "auc": 9, "val_loss": 9, **{n: v[2] for n, v in VARIANTS.items()}}
    table = {}
    for name in names:
        pooled = spearman([r[name] for r in rows], [r["stage1"] for r in rows])
        per_run = {run: spearman([r[name] for r in rows if r["run"] == run],
                                 [r["stage1"] for r in rows if r["run"] == run])
                   for run in args.runs}
        table[name] = {"cost_epochs": costs[name], "spearman_pooled": pooled,
                       "spearman_per_run": per_run}
        shown = ", ".join(f"{Path(k).name} {v:+.2f}" for k, v in per_run.items()
                          if v is not None)
        print(f"{name:9s} cost {costs[name]:3d} epochs  Spearman with stage 1: "
              f"{pooled:+.3f} pooled (n {len(rows)}); {shown}")
    Path(args.out).write_text(json.dumps({"variants": table, "candidates": rows}, indent=1))


if __name__ == "__main__":
    main()
