"""Search throughput: evaluations per second with 1 and 2 workers, how busy the workers
are, and how the cost of a search grows with its budget.

    .venv/bin/python benchmarks/search_throughput.py [--budget 300] [--scaling 100,300,1000]

Each search is the quick config (experiments/quick.toml) with the random
controller, in a fresh directory, on one local Ray started once.  "Busy" is the
time the workers spent inside evaluations (the rows' seconds) divided by
workers x the search's wall time from the first proposal to the last result.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from nos.search import config as cfg
from nos.search.driver import Search
from nos.search.store import Store
from nos.search.workers import start_ray

QUICK = Path(__file__).resolve().parents[1] / "experiments" / "quick.toml"


def one_search(workers: int, budget: int, seed: int = 0) -> dict:
    config = cfg.load(QUICK)
    for table, key, value in (("search", "controller", "random"), ("search", "budget", budget),
                              ("search", "seed", seed), ("workers", "count", workers)):
        config = cfg.override(config, table, key, value)
    out = Path(tempfile.mkdtemp(prefix="nos-bench-"))
    try:
        start = time.perf_counter()
        Search(config, out / "run").run()
        total = time.perf_counter() - start
        with Store.open(out / "run") as store:
            rows = store.evaluations()
            speed = store.speed()
        trained = [r for r in rows if r.status in ("ok", "diverged", "timeout", "failed")]
        busy = sum(r.seconds or 0.0 for r in trained)
        wall = speed["wall_seconds"]
        return {"workers": workers, "budget": budget, "evaluations": len(rows),
                "trained": len(trained), "wall": wall, "total": total,
                "per_second": len(rows) / wall, "trained_per_second": len(trained) / wall,
                "busy": busy / (workers * wall)}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=300)
    parser.add_argument("--scaling", default="100,300,1000")
    args = parser.parse_args()
    start_ray(None, 2)
    one_search(2, 20)  # warm up: data cache, imports in the workers
    print(f"quick config, random controller, budget {args.budget}")
    results = [one_search(w, args.budget) for w in (1, 2)]
    for r in results:
        print(f"  {r['workers']} worker(s): {r['per_second']:.2f} evaluations/s "
              f"({r['trained_per_second']:.2f} trainings/s, {r['trained']} of "
              f"{r['evaluations']} trained), busy {r['busy']:.0%}, wall {r['wall']:.1f} s")
    print(f"  speed-up with 2 workers: {results[1]['per_second'] / results[0]['per_second']:.2f}x")
    print("\ncost against budget (2 workers):")
    base = None
    for budget in (int(b) for b in args.scaling.split(",") if b):
        r = one_search(2, budget, seed=1)
        per = r["wall"] / r["evaluations"]
        base = base or per
        print(f"  budget {budget:5d}: {r['wall']:7.1f} s, {per * 1e3:6.1f} ms per evaluation "
              f"({per / base:.2f}x the smallest), busy {r['busy']:.0%}")


if __name__ == "__main__":
    main()
