"""The funnel of a run, stage by stage: who reached each stage and what every seed
scored there, the final ranking against the best baseline, and how well each stage's
ranking foretold the last one's.

Stage 0 is the search's own evaluation (one seed; the baselines trained the same way);
stages 1..K are the funnel's trials (:mod:`nos.search.funnel`).  A candidate's score at a
stage is the funnel's: its mean reward over the seeds of the ranking task once every
training there is in.  The final table compares each candidate with the best baseline
of the last stage seed by seed (the seeds of a stage are the same for every candidate):
the mean of the paired differences, with a 95% confidence interval from the t
distribution on ``n - 1`` degrees of freedom.

Used by ``nos inspect``; :func:`funnel_report` takes an open
:class:`nos.search.store.Store` and returns plain data (what ``--json`` prints).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from pathlib import Path

from nos.report.tables import mean_spread, one_line, table
from nos.search.funnel import (
    FINISHED_TRIAL,
    Candidate,
    candidates,
    parse_funnel,
    spearman,
    stage_seeds,
)
from nos.search.store import Store

# The 0.975 quantile of Student's t for 1..30 degrees of freedom (two-sided 95%);
# beyond 30 the normal's 1.96 is close enough for a report.
T_975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
Z_975 = 1.96


def t_quantile_975(df: int) -> float:
    """The two-sided 95% critical value of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    return T_975[df - 1] if df <= len(T_975) else Z_975


def paired_difference(a: dict[int, float], b: dict[int, float]) -> dict | None:
    """Mean of ``a[seed] - b[seed]`` over the seeds both have, with its 95% t interval
    (``low``, ``high``: None under two pairs); None when they share no seed."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = [a[s] - b[s] for s in seeds]
    mean = statistics.fmean(diffs)
    low = high = None
    if len(diffs) > 1:
        half = t_quantile_975(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
        low, high = mean - half, mean + half
    return {"diff": mean, "low": low, "high": high, "n": len(diffs)}


# --- the report ----------------------------------------------------------------------------


def funnel_report(store: Store) -> dict | None:
    """The run's funnel as plain data (None when the run has none):

    ``task``, ``baselines``, ``stopped_evaluations`` (search evaluations stopped early),
    ``stages`` (per stage: ``stage, epochs, seeds, tasks``, ``trial_counts`` by status and
    ``candidates``, best first, each with ``key, label, rule, source, origin, score`` and
    per task ``runs`` [{seed, reward, test, lr, status}], ``mean, std, test, finished,
    pending``), ``final`` (``stage, task, best_baseline, rows``) and ``correlations``
    (``to_final`` and ``consecutive``: ``from, to, n, spearman``)."""
    config = store.config
    if "funnel" not in config:
        return None
    funnel = parse_funnel(config["funnel"], config, str(store.path))
    task, seed = config["task"]["name"], config["search"]["seed"]
    floor = config["evaluation"]["floor"]
    trials = store.trials()
    pool = candidates(store.trained(), trials)
    tests = {e.id: e.test_metric for e in store.evaluations()}  # stage 0's test metrics
    counts = Counter((t["stage"], t["status"]) for t in trials)
    protocols = [{"stage": 0, "epochs": config["evaluation"]["epochs"],
                  "seeds": stage_seeds(seed, 0, 1), "tasks": [task]}]
    protocols += [{"stage": k, "epochs": s.epochs, "seeds": stage_seeds(seed, k, s.seeds),
                   "tasks": list(s.tasks), "transfer_epochs": s.transfer_epochs,
                   "promote": s.promote, "max_rules": s.max_rules}
                  for k, s in enumerate(funnel.stages, start=1)]
    stages = []
    for protocol in protocols:
        k = protocol["stage"]
        entries = [_entry(c, protocol, task, floor, tests)
                   for c in pool.values() if _reached(c, k)]
        entries.sort(key=lambda e: (e["score"] is None, -(e["score"] or 0.0),
                                    e["source"] != "baseline", e["origin"] or 0))
        stages.append({**protocol, "candidates": entries,
                       "trial_counts": {status: n for (s, status), n in sorted(counts.items())
                                        if s == k}})
    return {"task": task, "baselines": list(funnel.baselines),
            "stopped_evaluations": store.counts_by_status().get("stopped", 0),
            "stages": stages, "final": _final(stages[-1], task, floor),
            "correlations": _correlations(stages)}


def _reached(c: Candidate, stage: int) -> bool:
    return stage in c.trials or (stage == 0 and c.stage0 is not None)


def _entry(c: Candidate, protocol: dict, task: str, floor: float, tests: dict) -> dict:
    stage = protocol["stage"]
    figures = {}
    for t in protocol["tasks"]:
        if stage == 0 and c.source == "search":
            row = c.stage0
            runs = [{"seed": protocol["seeds"][0], "reward": row["reward"],
                     "test": tests.get(c.origin), "lr": row["lr"], "status": row["status"]}]
        else:
            runs = [{"seed": r["seed"], "reward": r["reward"], "test": r["test_metric"],
                     "lr": r["lr"], "status": r["status"]}
                    for r in sorted(c.rows(stage, t), key=lambda r: r["seed"])]
        if runs:
            figures[t] = _figures([{**r, "reward": _finite(r["reward"]),
                                    "test": _finite(r["test"])} for r in runs], floor)
    label = f"baseline:{c.name}" if c.source == "baseline" else c.rule
    return {"key": c.key, "label": label, "rule": c.rule, "source": c.source,
            "origin": c.origin, "score": c.score(stage, task, floor), "tasks": figures}


def _figures(runs: list[dict], floor: float) -> dict:
    done = [r for r in runs if r["status"] in FINISHED_TRIAL]
    values = [floor if r["reward"] is None else r["reward"] for r in done]
    mean, std = mean_spread(values) if values else (None, None)
    tests = [r["test"] for r in done if r["test"] is not None]
    return {"runs": runs, "mean": mean, "std": std,
            "test": statistics.fmean(tests) if tests else None, "finished": len(done),
            "pending": sum(1 for r in runs if r["status"] == "pending")}


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _final(stage: dict, task: str, floor: float) -> dict:
    """The candidates complete at the last stage on the ranking task, best first."""
    complete = [e for e in stage["candidates"] if e["score"] is not None]
    baselines = [e for e in complete if e["source"] == "baseline"]
    best = max(baselines, key=lambda e: e["score"]) if baselines else None
    transfer = stage["tasks"][1:]
    rows = []
    for e in sorted(complete, key=lambda e: -e["score"]):
        main = e["tasks"][task]
        row = {"key": e["key"], "label": e["label"], "rule": e["rule"], "source": e["source"],
               "origin": e["origin"], "mean": main["mean"], "std": main["std"],
               "test": main["test"], "n": main["finished"], "vs_best_baseline": None,
               "transfer": {t: {"mean": e["tasks"][t]["mean"], "std": e["tasks"][t]["std"]}
                            for t in transfer if t in e["tasks"]}}
        if best is not None:
            row["vs_best_baseline"] = paired_difference(_by_seed(e, task, floor),
                                                        _by_seed(best, task, floor))
        rows.append(row)
    return {"stage": stage["stage"], "task": task,
            "best_baseline": best["label"] if best else None, "rows": rows}


def _by_seed(entry: dict, task: str, floor: float) -> dict[int, float]:
    return {r["seed"]: floor if r["reward"] is None else r["reward"]
            for r in entry["tasks"][task]["runs"] if r["status"] in FINISHED_TRIAL}


def _correlations(stages: list[dict]) -> dict:
    scores = [{e["key"]: e["score"] for e in s["candidates"] if e["score"] is not None}
              for s in stages]
    last = len(stages) - 1

    def between(a: int, b: int) -> dict:
        keys = sorted(set(scores[a]) & set(scores[b]))
        rho = spearman([scores[a][k] for k in keys], [scores[b][k] for k in keys])
        return {"from": a, "to": b, "n": len(keys), "spearman": rho}

    return {"to_final": [between(k, last) for k in range(last)],
            "consecutive": [between(k, k + 1) for k in range(last)]}


# --- text and plot -------------------------------------------------------------------------


def print_funnel(report: dict, top: int = 10, final_only: bool = False) -> None:
    """Per-stage tables (the best ``top`` search candidates and every baseline; not with
    ``final_only``), the final table against the best baseline, and the rank correlations
    between stages."""
    print(f"\nfunnel on {report['task']}: {len(report['stages']) - 1} stages after the "
          f"search's; baselines {', '.join(report['baselines'])}; "
          f"search evaluations stopped early: {report['stopped_evaluations']}")
    for stage in [] if final_only else report["stages"]:
        print()
        print(_stage_table(stage, report["task"], top))
    print()
    print(_final_table(report["final"]))
    print()
    for kind, head in (("to_final", "to the last stage"), ("consecutive", "stage to stage")):
        parts = [f"{c['from']}->{c['to']} {_rho(c['spearman'])} (n {c['n']})"
                 for c in report["correlations"][kind]]
        print(f"Spearman rank correlation, {head}: " + "; ".join(parts))


def _stage_table(stage: dict, task: str, top: int) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in stage["trial_counts"].items()) or "none"
    head = (f"stage {stage['stage']}: {stage['epochs']:g} epochs, seeds "
            f"{', '.join(str(s) for s in stage['seeds'])}, tasks {', '.join(stage['tasks'])}; "
            f"trials: {counts}")
    search = [e for e in stage["candidates"] if e["source"] == "search"]
    shown = [e for e in stage["candidates"] if e["source"] == "baseline" or e in search[:top]]
    transfer = stage["tasks"][1:]
    rows = []
    for i, e in enumerate(shown, start=1):
        main = e["tasks"].get(task) or _EMPTY
        rewards = " ".join("-" if r["reward"] is None else f"{r['reward']:.4f}"
                           for r in main["runs"])
        rows.append([i, e["origin"], main["mean"], main["std"], main["test"],
                     f"{main['finished']}/{main['finished'] + main['pending']}", rewards,
                     *(_mean_std(e["tasks"].get(t)) for t in transfer), _short(e["label"])])
    more = len(search) - min(top, len(search))
    tail = f"\n... and {more} more search candidates (--json lists all)" if more > 0 else ""
    return (head + "\n" + table(["#", "id", "mean", "std", "test", "done", f"{task} by seed",
                                 *transfer, "candidate"], rows) + tail)


_EMPTY = {"runs": [], "mean": None, "std": None, "test": None, "finished": 0, "pending": 0}


def _final_table(final: dict) -> str:
    best = final["best_baseline"] or "none"
    head = (f"final (stage {final['stage']}, {final['task']}): difference from the best "
            f"baseline ({best}), paired by seed, with its 95% t interval")
    transfer = sorted({t for r in final["rows"] for t in r["transfer"]})
    rows = []
    for i, r in enumerate(final["rows"], start=1):
        rows.append([i, r["origin"], _mean_std(r), r["test"], _versus(r, best),
                     *(_mean_std(r["transfer"].get(t)) for t in transfer), _short(r["label"])])
    return head + "\n" + table(["#", "id", "mean ± std", "test", "vs best [95% CI]",
                                *transfer, "candidate"], rows)


def _versus(row: dict, best: str) -> str:
    d = row["vs_best_baseline"]
    if d is None:
        return "-"
    if row["label"] == best:
        return "reference"
    if d["low"] is None:
        return f"{d['diff']:+.4f}"
    return f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"


def _mean_std(figures: dict | None) -> str:
    if not figures or figures["mean"] is None:
        return "-"
    return f"{figures['mean']:.4f} ± {figures['std']:.4f}"


def _rho(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


def _short(text: str, width: int = 90) -> str:
    text = one_line(text)
    return text if len(text) <= width else text[:width - 3] + "..."


def funnel_plot_path(plot: str | Path, index: int | None = None) -> Path:
    """Where ``nos inspect --plot PNG`` puts a funnel's plot: PNG's stem suffixed
    ``_funnel`` (``_funnel1``, ``_funnel2``, ... for several runs)."""
    path = Path(plot)
    return path.with_name(f"{path.stem}_funnel{index or ''}{path.suffix}")


def plot_funnel(report: dict, path: str | Path) -> Path:
    """One panel per stage below the last: each candidate's score there against its score
    at the last stage, baselines marked and named, the Spearman value in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = report["stages"]
    last = len(stages) - 1
    final = {e["key"]: e["score"] for e in stages[last]["candidates"] if e["score"] is not None}
    fig, axes = plt.subplots(1, last, figsize=(4.5 * last, 4.2), squeeze=False)
    for k, (ax, corr) in enumerate(zip(axes[0], report["correlations"]["to_final"])):
        for e in stages[k]["candidates"]:
            if e["score"] is None or e["key"] not in final:
                continue
            x, y = e["score"], final[e["key"]]
            if e["source"] == "baseline":
                ax.scatter([x], [y], marker="s", color="C3", s=36, zorder=3)
                ax.annotate(e["label"].split(":", 1)[1], (x, y), fontsize=7,
                            xytext=(4, 4), textcoords="offset points")
            else:
                ax.scatter([x], [y], color="C0", s=18, alpha=0.8)
        ax.set_title(f"stage {k} vs {last}: Spearman {_rho(corr['spearman'])} "
                     f"(n {corr['n']})", fontsize=9)
        ax.set_xlabel(f"score at stage {k}")
        ax.set_ylabel(f"score at stage {last}")
        ax.margins(0.15)  # room for the baselines' names
        ax.grid(alpha=0.3)
    fig.suptitle(f"funnel on {report['task']} (squares: baselines)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
