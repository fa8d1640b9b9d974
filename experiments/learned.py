"""A learned LSTM optimizer against Adam, momentum and the best searched rule.

Reads a checkpoint of ``nos learn`` and measures, in one run:

- its optimizer state per parameter against Adam's (torch.optim.Adam and nos's
  ``adam``), counted from the state tensors after one step on the mnist1d child;
- the time of one optimizer step on that child against Adam's (median of
  interleaved rounds);
- the reward of each candidate on each task (``nos.evaluate`` with the task's
  own epochs and the decade learning-rate grid, seeds 0..S-1): the learned
  optimizer with its rate picked from the grid as every rule's is, the learned
  optimizer at lr 1 (the scale it was meta-trained at), ``adam``, ``momentum``,
  and the best rule of the one-hour funnel searches
  (``experiments/results/funnel.md``).

    OMP_NUM_THREADS=1 nos learn --task mnist1d --out runs/learned/mnist1d.pt
    OMP_NUM_THREADS=1 python experiments/learned.py runs/learned/mnist1d.pt \\
        --json experiments/results/learned.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

import nos
from nos.learned import LearnedOptimizer, load_checkpoint
from nos.learned.checkpoint import training_summary
from nos.train.tasks import get_task

BEST_SEARCHED = "clip(adam, 1e-3) * sqrt(abs(rmsprop))"  # funnel.md, first attempt's winner
TASKS = ("mnist1d", "digits", "charlm")


def candidates(checkpoint: str) -> list[tuple[str, str, float | None]]:
    """(name, rule, fixed lr or None for the grid)."""
    return [("learned LSTM", checkpoint, None), ("learned LSTM, lr 1", checkpoint, 1.0),
            ("adam", "adam", None), ("momentum", "momentum", None),
            ("best searched rule", BEST_SEARCHED, None)]


def state_numbers(optimizer: torch.optim.Optimizer) -> int:
    """Numbers held in the optimizer's per-parameter state tensors (step counters included)."""
    return sum(value.numel() for state in optimizer.state.values()
               for value in state.values() if isinstance(value, torch.Tensor))


def memory(checkpoint: str) -> dict:
    """State numbers per parameter of the mnist1d child after one step."""
    task = get_task("mnist1d")
    data = task.load(torch.device("cpu"))
    makers = {"learned LSTM": lambda p: LearnedOptimizer(p, checkpoint),
              "torch.optim.Adam": lambda p: torch.optim.Adam(p, lr=1e-3),
              "nos adam": lambda p: nos.Optimizer(p, "adam"),
              "nos momentum": lambda p: nos.Optimizer(p, "momentum", lr=0.1)}
    out = {}
    for name, make in makers.items():
        torch.manual_seed(0)
        model = task.build_model()
        optimizer = make(model.parameters())
        task.loss(model(data.train_x[:128]), data.train_y[:128]).backward()
        optimizer.step()
        params = sum(p.numel() for p in model.parameters())
        out[name] = {"params": params, "state_numbers": state_numbers(optimizer),
                     "per_param": state_numbers(optimizer) / params}
    return out


def step_times(checkpoint: str, rounds: int = 7, steps: int = 20) -> dict:
    """Median seconds per optimizer step (the step alone) on the mnist1d child."""
    task = get_task("mnist1d")
    data = task.load(torch.device("cpu"))
    makers = {"learned LSTM": lambda p: LearnedOptimizer(p, checkpoint),
              "torch.optim.Adam": lambda p: torch.optim.Adam(p, lr=1e-3)}
    times: dict[str, list[float]] = {name: [] for name in makers}
    for _ in range(rounds):  # interleaved, so that a busy moment hits both
        for name, make in makers.items():
            torch.manual_seed(0)
            model = task.build_model()
            optimizer = make(model.parameters())
            spent = 0.0
            for step in range(steps):
                optimizer.zero_grad()
                task.loss(model(data.train_x[:128]), data.train_y[:128]).backward()
                start = time.perf_counter()
                optimizer.step()
                spent += time.perf_counter() - start if step else 0.0  # the first makes state
            times[name].append(spent / (steps - 1))
    return {name: statistics.median(values) for name, values in times.items()}


def compare(checkpoint: str, tasks: list[str], seeds: int) -> list[dict]:
    rows = []
    for task in tasks:
        for name, rule, lr in candidates(checkpoint):
            results = [nos.evaluate(rule, task, lr=lr, seed=seed) for seed in range(seeds)]
            rewards = [r.reward for r in results]
            tests = [r.test_metric for r in results if r.test_metric is not None]
            rows.append({
                "task": task, "name": name, "rule": rule, "rewards": rewards,
                "mean": statistics.mean(rewards),
                "std": statistics.stdev(rewards) if len(rewards) > 1 else 0.0,
                "test": statistics.mean(tests) if tests else None,
                "metric": results[0].metric,
                "lrs": [r.lr for r in results], "statuses": [r.status for r in results],
                "seconds": sum(r.seconds for r in results) / len(results)})
            row = rows[-1]
            print(f"{task:8s} {name:20s} {row['mean']:.4f} ± {row['std']:.4f}  "
                  f"test {row['test'] if row['test'] is None else round(row['test'], 4)}  "
                  f"lr {row['lrs']}  {row['seconds']:.1f} s/seed  {row['statuses']}",
                  file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a .pt written by nos learn")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--json", default=None, help="write every figure here")
    args = parser.parse_args()
    _, training = load_checkpoint(args.checkpoint)
    print(f"checkpoint {args.checkpoint}: {training_summary(training)}")
    report = {"checkpoint": args.checkpoint, "training": training,
              "memory": memory(args.checkpoint), "step_seconds": step_times(args.checkpoint)}
    for name, row in report["memory"].items():
        print(f"state per parameter  {name:18s} {row['per_param']:.2f} numbers")
    adam = report["step_seconds"]["torch.optim.Adam"]
    for name, seconds in report["step_seconds"].items():
        print(f"step time            {name:18s} {seconds * 1e3:.3f} ms "
              f"({seconds / adam:.1f}x Adam)")
    report["comparison"] = compare(args.checkpoint, args.tasks.split(","), args.seeds)
    print(f"{'task':8s} {'optimizer':20s} reward (mean ± std)  test    lrs")
    for row in report["comparison"]:
        test = "-" if row["test"] is None else f"{row['test']:.4f}"
        print(f"{row['task']:8s} {row['name']:20s} {row['mean']:.4f} ± {row['std']:.4f}     "
              f"{test}  {','.join(f'{lr:g}' for lr in row['lrs'] if lr)}")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=1)


if __name__ == "__main__":
    main()
