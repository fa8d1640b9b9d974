"""The learning-rate grid: five short runs one after another, or as one batched model.

    .venv/bin/python benchmarks/lr_grid.py [--task mnist1d] [--rule adam] [--repeats 5]

Prints the time of one short run at a single learning rate, of the 5-point grid
trained one rate at a time, and of the same grid trained as one vmap-ed model
(nos.train.grid), as ratios to the single run, measured in one run of this script,
and whether both ways pick the same rate.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from nos.optim.optimizer import resolve
from nos.train.evaluation import DEFAULT_LR_GRID, EvalResult, search_lr, train_child
from nos.train.tasks import get_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mnist1d")
    parser.add_argument("--rule", default="adam")
    parser.add_argument("--grid-epochs", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = get_task(args.task)
    data = task.load("cpu")
    rule, _ = resolve(args.rule)
    common = {"seed": 0, "batch_size": task.batch_size, "device": torch.device("cpu"),
              "deadline": math.inf, "progress": False}
    times: dict[str, list[float]] = {"single": [], "sequential": [], "batched": []}
    picked = {}
    for _ in range(args.repeats):
        start = time.perf_counter()
        train_child(rule, task, data, lr=1e-3, epochs=args.grid_epochs, **common)
        times["single"].append(time.perf_counter() - start)
        for mode in ("sequential", "batched"):
            result = EvalResult(rule=str(rule), task=task.name, status="ok", reward=0.0)
            start = time.perf_counter()
            picked[mode] = search_lr(rule, task, data, DEFAULT_LR_GRID, args.grid_epochs,
                                      result, 0.0, common, batched=mode == "batched")
            times[mode].append(time.perf_counter() - start)
    single = statistics.median(times["single"])
    print(f"task {args.task}, rule {args.rule}, grid {list(DEFAULT_LR_GRID)}, "
          f"{args.grid_epochs:g} epoch each, {torch.get_num_threads()} thread(s), "
          f"median of {args.repeats}")
    for mode, values in times.items():
        median = statistics.median(values)
        print(f"  {mode:10s} {median:7.3f} s  {median / single:5.2f}x one single-lr run")
    print(f"  chosen lr: sequential {picked['sequential']}, batched {picked['batched']}")


if __name__ == "__main__":
    main()
