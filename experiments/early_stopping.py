"""What early stopping gains: the same search with and without a ``[stopping]`` table.

The random controller's proposals do not depend on rewards, so with the same seed both
runs propose the same rules; they run side by side (one worker each, the machine shared
evenly), and for each seed this prints each run's wall time, its evaluations per hour,
how many trainings were stopped, and whether the top rules are the same.

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
count = 1
num_cpus = 1
threads = 1
"""
STOPPING = """
[stopping]
loss_steps = {loss_steps}
margin = {margin}
min_results = 20
"""


def run_pair(budget: int, seed: int, loss_steps: int, margin: float, root: Path) -> dict:
    runs = {}
    for name, extra in (("plain", ""), ("stopping", STOPPING.format(loss_steps=loss_steps,
                                                                       margin=margin))):
        config = root / f"{name}-{seed}.toml"
        config.write_text(BASE.format(budget=budget, seed=seed) + extra)
        out = root / f"{name}-{seed}"
        command = [sys.executable, "-m", "nos.cli", "search", "--config", str(config),
                   "--out", str(out), "--quiet"]
        runs[name] = (subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, text=True), out, time.time())
    figures = {}
    for name, (process, out, started) in runs.items():
        _, err = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"{name} run failed: {err.strip().splitlines()[-1]}")
        wall = time.time() - started
        with Store.open(out) as store:
            counts = store.counts_by_status()
            top = store.top(10)
        figures[name] = {"wall_seconds": wall, "per_hour": budget / wall * 3600,
                         "counts": counts,
                         "top": [(t["fingerprint"] or t["rule"], t["rule"], t["reward"])
                                 for t in top]}
    plain = [key for key, _, _ in figures["plain"]["top"]]
    stopped = [key for key, _, _ in figures["stopping"]["top"]]
    return {"seed": seed, "budget": budget, **figures,
            "speedup": figures["plain"]["wall_seconds"] / figures["stopping"]["wall_seconds"],
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
                  f"{r['speedup']:.2f}x; stopped {r['stopping']['counts'].get('stopped', 0)}; "
                  f"top-10 overlap {r['top10_overlap']}/10, top-5 same order "
                  f"{r['top5_same_order']}", flush=True)
    speedups = [r["speedup"] for r in results]
    print(f"median speed-up {statistics.median(speedups):.2f}x over {len(results)} seeds")
    Path(args.out).write_text(json.dumps({"loss_steps": args.loss_steps, "margin": args.margin,
                                          "runs": results}, indent=1))


if __name__ == "__main__":
    main()
