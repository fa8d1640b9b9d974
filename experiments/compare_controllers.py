"""Controllers compared on the quick config: rnn, random and evolution, several seeds each,
at the same budget.

    .venv/bin/python experiments/compare_controllers.py [--seeds 3] [--budget N] \
        [--out runs/compare]

For each run it records the mean reward of the last quarter of the samples, the
mean over all samples and the best reward found, and writes them to
experiments/results/controllers.json and a Markdown table on stdout.  Runs that
exist already in --out are resumed (or reused when complete).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from nos.search import config as cfg
from nos.search.driver import Search
from nos.search.store import Store
from nos.search.workers import start_ray

HERE = Path(__file__).resolve().parent


def rewards_in_order(out: Path) -> list[float]:
    with Store.open(out) as store:
        return [e.reward if e.reward is not None else 0.0 for e in store.evaluations()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(HERE / "quick.toml"))
    parser.add_argument("--controllers", default="rnn,random,evolution")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=None)
    parser.add_argument("--out", default="runs/compare")
    parser.add_argument("--results", default=str(HERE / "results" / "controllers.json"))
    args = parser.parse_args()

    base = cfg.load(args.config)
    if args.budget:
        base = cfg.override(base, "search", "budget", args.budget)
    start_ray(None, base["workers"]["count"] * base["workers"]["num_cpus"])
    runs = []
    for controller in args.controllers.split(","):
        for seed in range(args.seeds):
            config = cfg.override(cfg.override(base, "search", "controller", controller),
                                  "search", "seed", seed)
            out = Path(args.out) / f"{controller}-{seed}"
            start = time.time()
            summary = Search(config, out).run()
            rewards = rewards_in_order(out)
            quarter = rewards[-max(1, len(rewards) // 4):]
            runs.append({"controller": controller, "seed": seed, "out": str(out),
                         "evaluations": len(rewards), "seconds": time.time() - start,
                         "last_quarter_mean": statistics.fmean(quarter),
                         "first_quarter_mean": statistics.fmean(rewards[:len(quarter)]),
                         "mean": statistics.fmean(rewards), "best": max(rewards),
                         "best_rule": summary.best["rule"] if summary.best else None,
                         "counts": summary.counts})
            print(f"{controller} seed {seed}: last quarter {runs[-1]['last_quarter_mean']:.4f}, "
                  f"best {runs[-1]['best']:.4f} ({runs[-1]['seconds']:.0f} s)", flush=True)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps({"config": base, "runs": runs}, indent=2) + "\n")
    print("\n| controller | seeds | first quarter mean | last quarter mean | best found | "
          "best rule (seed 0) |")
    print("|---|---|---|---|---|---|")
    for controller in args.controllers.split(","):
        mine = [r for r in runs if r["controller"] == controller]
        firsts = [r["first_quarter_mean"] for r in mine]
        lasts = [r["last_quarter_mean"] for r in mine]
        bests = [r["best"] for r in mine]
        spread = statistics.stdev(lasts) if len(lasts) > 1 else 0.0
        print(f"| {controller} | {len(mine)} | {statistics.fmean(firsts):.4f} | "
              f"{statistics.fmean(lasts):.4f} ± {spread:.4f} | "
              f"{statistics.fmean(bests):.4f} (max {max(bests):.4f}) | `{mine[0]['best_rule']}` |")


if __name__ == "__main__":
    main()
