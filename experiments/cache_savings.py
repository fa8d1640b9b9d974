"""How many trainings the fingerprint cache and the pruning save in a random search.

    .venv/bin/python experiments/cache_savings.py [--samples 1000] [--seeds 3] [--units 1]

Samples token lists uniformly from the default space (the random controller's
proposals), probes each rule (nos/fingerprint.py) and counts, without training
anything, how many would be pruned as invalid or degenerate and how many repeat
the behaviour of an earlier rule (cached).  Writes
experiments/results/cache_savings.json.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from nos.controllers import make_controller

from nos.search.fingerprint import fingerprint
from nos.search.space import Space, SpaceConfig

HERE = Path(__file__).resolve().parent


def count(samples: int, seed: int, units: int) -> dict:
    space = Space(SpaceConfig(units=units))
    controller = make_controller("random", space, seed=seed)
    seen: set[str] = set()
    texts: set[str] = set()
    tally: Counter = Counter()
    for proposal in controller.ask(samples):
        probe = fingerprint(proposal.text)
        texts.add(proposal.text)
        if probe.status != "ok":
            tally[probe.status] += 1
        elif probe.digest in seen:
            tally["cached"] += 1
        else:
            seen.add(probe.digest)
            tally["trained"] += 1
    saved = samples - tally["trained"]
    return {"seed": seed, "units": units, "samples": samples, "distinct_texts": len(texts),
            **tally, "saved": saved, "saved_share": saved / samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--units", default="1,2")
    args = parser.parse_args()
    rows = []
    start = time.time()
    for units in (int(u) for u in args.units.split(",")):
        for seed in range(args.seeds):
            rows.append(count(args.samples, seed, units))
    print("| units | seed | samples | invalid | degenerate | cached | trained | saved |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['units']} | {r['seed']} | {r['samples']} | {r.get('invalid', 0)} | "
              f"{r.get('degenerate', 0)} | {r.get('cached', 0)} | {r['trained']} | "
              f"{r['saved_share']:.1%} |")
    print(f"\n({time.time() - start:.0f} s for {len(rows)} x {args.samples} probes)")
    out = HERE / "results" / "cache_savings.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
