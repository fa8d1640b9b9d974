"""What early stopping gains: the same search with and without a ``[stopping]`` table.

The random controller's proposals do not depend on rewards, so with the same seed both
runs propose the same rules.  For each seed the two run one after the other (the order
alternating from seed to seed), each on the whole machine with the quick config's
two workers; this prints each run's wall time, its evaluations per hour, the seconds
its workers spent training, how many trainings were stopped, and whether the top rules
are the same.

    .venv/bin/python experiments/early_stopping.py --budget 300 --seeds 0 1

Writes experiments/results/early_stopping.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nos.search.store import Store

BASE = """
[search]
controller = "random"
budget = {budget}
batch = 20
seed = {seed}

[task]
name = "mnist1d"

[evaluation]
epochs = 5
lr_grid = [1e-3, 1e-2, 1e-1, 1.0]
grid_epochs = 1
time_limit = 120

[workers]
count = 2
num_cpus = 1
threads = 1
"""
STOPPING = """
[stopping]
loss_steps = {loss_steps}
margin = {margin}
min_results = 20
"""


def run_one(config: Path, out: Path) -> dict:
    command = [sys.executable, "-m", "nos.cli", "search", "--config", str(config),
               "--out", str(out), "--quiet"]
    started = time.time()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.time() - started
    if done.returncode != 0:
        raise SystemExit(f"{out.name} failed: {done.stderr.strip().splitlines()[-1]}")
    with Store.open(out) as store:
        rows = store.evaluations()
        counts = store.counts_by_status()
        top = store.top(10)
    budget = len(rows)
    return {"wall_seconds": wall, "per_hour": budget / wall * 3600,
            "training_seconds": sum(r.seconds or 0.0 for r in rows), "counts": counts,
            "top": [(t["fingerprint"] or t["rule"], t["rule"], t["reward"]) for t in top]}


def run_pair(budget: int, seed: int, loss_steps: int, margin: float, root: Path) -> dict:
    variants = [("plain", ""), ("stopping", STOPPING.format(loss_steps=loss_steps,
                                                             margin=margin))]
    figures = {}
    for name, extra in variants if seed % 2 == 0 else variants[::-1]:
        config = root / f"{name}-{seed}.toml"
        config.write_text(BASE.format(budget=budget, seed=seed) + extra)
        figures[name] = run_one(config, root / f"{name}-{seed}")
    plain = [key for key, _, _ in figures["plain"]["top"]]
    stopped = [key for key, _, _ in figures["stopping"]["top"]]
    return {"seed": seed, "budget": budget, **figures,
            "speedup": figures["plain"]["wall_seconds"] / figures["stopping"]["wall_seconds"],
            "training_saved": 1 - figures["stopping"]["training_seconds"]
            / figures["plain"]["training_seconds"],
            "top10_same_set": set(plain) == set(stopped),
            "top10_overlap": len(set(plain) & set(stopped)),
            "top5_same_order": plain[:5] == stopped[:5]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--loss-steps", type=int, default=20)
    parser.add_argument("--margin", type=float, default=0.05)
    parser.add_argument("--out", default="experiments/results/early_stopping.json")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            r = run_pair(args.budget, seed, args.loss_steps, args.margin, Path(tmp))
            results.append(r)
            print(f"seed {seed}: plain {r['plain']['wall_seconds']:.0f} s "
                  f"({r['plain']['per_hour']:.0f}/h), stopping "
                  f"{r['stopping']['wall_seconds']:.0f} s ({r['stopping']['per_hour']:.0f}/h), "
                  f"{r['speedup']:.2f}x; training seconds {r['plain']['training_seconds']:.0f} "
                  f"-> {r['stopping']['training_seconds']:.0f} ({r['training_saved']:.0%} saved); "
                  f"stopped {r['stopping']['counts'].get('stopped', 0)}; "
                  f"top-10 overlap {r['top10_overlap']}/10, top-5 same order "
                  f"{r['top5_same_order']}", flush=True)
    speedups = [r["speedup"] for r in results]
    saved = [r["training_saved"] for r in results]
    print(f"median over {len(results)} seeds: {statistics.median(speedups):.2f}x evaluations "
          f"per hour, {statistics.median(saved):.0%} of the training time saved")
    Path(args.out).write_text(json.dumps({"loss_steps": args.loss_steps, "margin": args.margin,
                                          "runs": results}, indent=1))


if __name__ == "__main__":
    main()
