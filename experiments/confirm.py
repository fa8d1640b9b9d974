"""Does the funnel's winner hold up on more seeds?  The final stage's search rules and its
best baselines trained again at the final horizon on fresh seeds, each at the rate its
final-stage trainings chose (the geometric median), and compared with the best baseline
paired by seed.

    .venv/bin/python experiments/confirm.py runs/hour2-rnn --seeds 20 --rules 3

Writes experiments/results/confirm_<run>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from nos.report.funnel import funnel_report, paired_difference
from nos.search.funnel import candidates, geometric_median, parse_funnel
from nos.search.store import Store

SEED_BASE = 9000  # fresh: no stage of a funnel uses these


def _train(job: tuple[str, str, float, float, int]) -> tuple[str, int, float]:
    import torch

    from nos.train.evaluation import evaluate

    torch.set_num_threads(1)
    label, rule, lr, epochs, seed = job
    return label, seed, evaluate(rule, "mnist1d", epochs=epochs, lr=lr, seed=seed).reward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--rules", type=int, default=3, help="search rules of the final table")
    parser.add_argument("--baselines", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with Store.open(args.run) as store:
        report = funnel_report(store)
        pool = candidates(store.trained(), store.trials())
        config = store.config
    funnel = parse_funnel(config["funnel"], config, args.run)
    last, epochs = len(funnel.stages), funnel.stages[-1].epochs
    task = config["task"]["name"]
    rows = report["final"]["rows"]
    chosen = ([r for r in rows if r["source"] == "search"][:args.rules]
              + [r for r in rows if r["source"] == "baseline"][:args.baselines])
    jobs = []
    for r in chosen:
        c = pool[r["key"]]
        lr = geometric_median(c.lrs(last, task))
        jobs += [(r["label"], c.rule, lr, epochs, SEED_BASE + i) for i in range(args.seeds)]
    rewards: dict[str, dict[int, float]] = {}
    with ProcessPoolExecutor(args.workers) as executor:
        for label, seed, reward in executor.map(_train, jobs):
            rewards.setdefault(label, {})[seed] = reward
    best = max((r["label"] for r in chosen if r["source"] == "baseline"),
               key=lambda label: statistics.fmean(rewards[label].values()))
    out = {"run": args.run, "epochs": epochs, "seeds": args.seeds, "best_baseline": best,
           "rules": []}
    print(f"{args.run}: {epochs:g} epochs, {args.seeds} fresh seeds, each rule at its "
          f"final-stage rate; difference from {best}, paired by seed, 95% t interval")
    for r in chosen:
        label = r["label"]
        values = list(rewards[label].values())
        versus = paired_difference(rewards[label], rewards[best])
        lr = next(j[2] for j in jobs if j[0] == label)
        out["rules"].append({"label": label, "rule": r["rule"], "lr": lr,
                             "mean": statistics.fmean(values), "std": statistics.stdev(values),
                             **versus})
        print(f"  {statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}  "
              f"{versus['diff']:+.4f} [{versus['low']:+.4f}, {versus['high']:+.4f}]  "
              f"lr {lr:.3g}  {label}")
    path = Path("experiments/results") / f"confirm_{Path(args.run).name}.json"
    path.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
