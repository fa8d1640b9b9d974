"""Batch size instead of decay (Smith et al., 2017), measured on mnist1d.

Each rule is trained three ways on the same seeds, with the same learning-rate grid
(whose short runs use neither the schedule nor the growing batch, so the rate picked
is the same for all three):

* ``constant``: the picked rate throughout;
* ``decay``: a step schedule dividing the rate by 5 every 5 epochs (``step_size`` in
  steps of the task's batch of 128: 125 steps);
* ``grow``: the same schedule with ``grow_batch``: the batch is multiplied by 5 where
  the rate would be divided by 5, up to ``--cap`` examples, then the rate decays.

It prints the mean final validation and test accuracy (with their spread over seeds),
the parameter updates and the seconds of each, and the phases of one ``grow`` run.

    .venv/bin/python experiments/batch_growth.py --seeds 0 1 2 3 4

Writes experiments/results/batch_growth.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import nos

STEPS_PER_EPOCH = 25  # mnist1d: 3200 training examples in batches of 128


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", nargs="+", default=["momentum", "adam"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, default=20)
    parser.add_argument("--every", type=int, default=5, help="epochs between decays")
    parser.add_argument("--factor", type=float, default=5.0, help="the rate is divided by it")
    parser.add_argument("--cap", type=int, default=1024, help="the largest batch")
    parser.add_argument("--out", default="experiments/results/batch_growth.json")
    args = parser.parse_args()

    schedule = {"name": "step", "step_size": args.every * STEPS_PER_EPOCH,
                "gamma": 1 / args.factor}
    ways = {"constant": {}, "decay": {"schedule": schedule},
            "grow": {"schedule": schedule, "grow_batch": args.cap}}
    runs = []
    for rule in args.rules:
        for seed in args.seeds:
            for way, settings in ways.items():
                result = nos.evaluate(rule, "mnist1d", epochs=args.epochs, seed=seed,
                                      device="cpu", **settings)
                runs.append({"rule": rule, "way": way, "seed": seed, "status": result.status,
                             "lr": result.lr, "val": result.val_accuracy,
                             "test": result.test_accuracy, "updates": result.steps,
                             "seconds": result.seconds, "phases": result.phases})
                print(f"{rule:9s} {way:8s} seed {seed}: val {result.val_accuracy:.4f} test "
                      f"{result.test_accuracy:.4f} updates {result.steps} lr {result.lr:g} "
                      f"({result.seconds:.1f} s)", flush=True)
    summary = summarize(runs, args.rules, list(ways))
    print()
    print("| rule | training | val acc | ± std | test acc | ± std | updates | s/run |")
    print("|---|---|---|---|---|---|---|---|")
    for row in summary:
        print(f"| {row['rule']} | {row['way']} | {row['val']:.4f} | {row['val_std']:.4f} | "
              f"{row['test']:.4f} | {row['test_std']:.4f} | {row['updates']:.0f} | "
              f"{row['seconds']:.1f} |")
    grown = next(r for r in runs if r["way"] == "grow")
    print("\nphases of", grown["rule"], "seed", grown["seed"], "(grow):")
    for phase in grown["phases"]:
        print(f"  batch {phase['batch_size']:5d}  lr {phase['lr']:.4g}  "
              f"updates {phase['updates']:4d}  examples {phase['examples']}")
    Path(args.out).write_text(json.dumps({"settings": vars(args), "schedule": schedule,
                                          "summary": summary, "runs": runs}, indent=1))
    print(f"\nwritten to {args.out}")


def summarize(runs: list[dict], rules: list[str], ways: list[str]) -> list[dict]:
    rows = []
    for rule in rules:
        for way in ways:
            mine = [r for r in runs if r["rule"] == rule and r["way"] == way
                    and r["status"] == "ok"]
            if not mine:
                continue

            def spread(key: str, mine: list[dict] = mine) -> tuple[float, float]:
                values = [r[key] for r in mine]
                return statistics.fmean(values), (statistics.stdev(values)
                                                  if len(values) > 1 else 0.0)

            (val, val_std), (test, test_std) = spread("val"), spread("test")
            rows.append({"rule": rule, "way": way, "runs": len(mine), "val": val,
                         "val_std": val_std, "test": test, "test_std": test_std,
                         "updates": statistics.fmean(r["updates"] for r in mine),
                         "seconds": statistics.fmean(r["seconds"] for r in mine)})
    return rows


if __name__ == "__main__":
    main()
