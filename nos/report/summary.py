"""What a search found: the best distinct rules, the run's statistics, plots, and
re-training of the top rules against the baselines (also on another task).

Used by ``nos inspect``; every function takes an open :class:`nos.search.store.Store`.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from nos.lang.rule import parse
from nos.optim.param_options import check_params, format_params
from nos.report.compare import comparison_table, plot_trials, train_seeds
from nos.report.tables import one_line, table
from nos.search.store import Store
from nos.search.workers import evaluation_kwargs
from nos.train.evaluation import EvalResult

COMPARISON_BASELINES = ("adam", "momentum", "sgd", "powersign", "addsign")


def summary(store: Store, top: int) -> dict:
    """Top rules, counts by status, speed, and the best baseline measured for this run."""
    counts = store.counts_by_status()
    speed = store.speed()
    best_baseline = None
    baseline_rows = [r for r in store.retrains() if str(r["source"]).startswith("baseline:")
                     and r["task"] == store.config["task"]["name"]]
    if baseline_rows:
        by_name: dict[str, list[float]] = {}
        for r in baseline_rows:
            by_name.setdefault(r["source"].split(":", 1)[1], []).append(r["reward"])
        name, rewards = max(by_name.items(), key=lambda kv: statistics.fmean(kv[1]))
        best_baseline = {"name": name, "reward": statistics.fmean(rewards),
                         "runs": len(rewards)}
    trained = sum(v for k, v in counts.items()
                  if k in ("ok", "diverged", "timeout", "stopped", "failed"))
    finished = sum(v for k, v in counts.items() if k != "pending")
    recorded = store.note("tasks")  # runs from before tasks were noted: accuracy
    return {
        "run": str(store.path),
        "task": store.config["task"]["name"],
        "reward": recorded[0].get("reward", "validation accuracy") if recorded
        else "validation accuracy",
        "controller": store.config["search"]["controller"],
        "budget": store.config["search"]["budget"],
        "counts": counts,
        "speed": speed,
        "top": store.top(top),
        "best_baseline": best_baseline,
        "trainings_saved": finished - trained,
    }


def print_summary(info: dict, latex: bool = False) -> None:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(info["counts"].items()))
    speed = info["speed"]
    print(f"run {info['run']}: {info['controller']} on {info['task']}, "
          f"budget {info['budget']}; {counts}")
    if speed.get("evaluations"):
        print(f"speed: {speed['evaluations']} evaluations in {speed['wall_seconds']:.0f} s "
              f"({speed['per_second']:.3f}/s), {speed['mean_seconds']:.1f} s per training; "
              f"trainings saved by the cache and pruning: {info['trainings_saved']}")
    if info.get("reward", "validation accuracy") != "validation accuracy":
        print(f"reward: {info['reward']} (higher is better)")
    if info["best_baseline"]:
        b = info["best_baseline"]
        print(f"best baseline: {b['name']} {b['reward']:.4f} (mean of {b['runs']} runs)")
    rows = []
    for i, t in enumerate(info["top"], start=1):
        text = parse(t["rule"]).latex() if latex else one_line(t["rule"])
        rows.append([i, t["id"], t["reward"], t["lr"], t["count"], text])
    print(table(["#", "id", "reward", "lr", "sampled", "latex" if latex else "rule"], rows))


def show_rule(store: Store, eval_id: int) -> str:
    """One evaluation in full, with the rule's prelude definitions written out."""
    row = next((e for e in store.evaluations() if e.id == eval_id), None)
    if row is None:
        raise ValueError(f"no evaluation {eval_id} in {store.path} (ids 1..{store.count()})")
    lines = [f"evaluation {row.id} (batch {row.batch}): status {row.status}, "
             f"reward {row.reward}, lr {row.lr}, test {row.test_metric}, "
             f"{row.seconds or 0:.1f} s on {row.worker or '-'}",
             f"tokens: {list(row.tokens)}"]
    if row.error:
        lines.append(f"error: {row.error}")
    try:
        rule = parse(row.rule)
        lines += ["rule:", "  " + str(rule).replace("\n", "\n  "),
                  "with its prelude:", "  " + str(rule.expanded()).replace("\n", "\n  "),
                  "latex:", "  " + rule.latex().replace("\n", "\n  ")]
    except ValueError:
        lines += ["rule (does not parse):", "  " + row.rule]
    curve = (row.details or {}).get("val_curve")
    if curve:
        lines.append("validation accuracy by epoch: " + ", ".join(f"{v:.4f}" for v in curve))
    return "\n".join(lines)


def plot_rewards(stores: Sequence[Store], path: str | Path) -> Path:
    """Reward of each evaluation in order, its running mean and the best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for index, store in enumerate(stores):
        rows = [e for e in store.evaluations() if e.status != "pending"]
        rewards = [e.reward if e.reward is not None else 0.0 for e in rows]
        if not rewards:
            continue
        label = f"{store.config['search']['controller']} ({Path(store.path).name})"
        color = f"C{index}"
        xs = range(1, len(rewards) + 1)
        if len(stores) == 1:
            ax.scatter(xs, rewards, s=6, alpha=0.35, color=color, label="reward")
        window = max(1, len(rewards) // 20)
        running = [statistics.fmean(rewards[max(0, i - window + 1):i + 1])
                   for i in range(len(rewards))]
        best = [max(rewards[:i + 1]) for i in range(len(rewards))]
        ax.plot(xs, running, color=color, label=f"{label}: running mean ({window})")
        ax.plot(xs, best, color=color, linestyle="--", label=f"{label}: best so far")
    ax.set_xlabel("evaluation")
    ax.set_ylabel("reward")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def retrain(store: Store, k: int, epochs: float | None, seeds: int, task: str | None,
            baselines: Sequence[str] = COMPARISON_BASELINES, plot: str | None = None,
            progress: bool = True, params: dict | None = None) -> str:
    """Train the top k rules and the baselines again, record them, return the table.

    ``params``: keyword arguments of nos.Optimizer for every training (the rules'
    params); each candidate is checked with them before any training (ParamError,
    naming the key and the candidate), and each record's details keep them.
    """
    config = store.config
    task_name = task or config["task"]["name"]
    recorded = store.note("tasks")  # the search's task as resolved then: a file's full path
    spec = task or (recorded[0]["spec"] if recorded else task_name)
    settings = evaluation_kwargs(config)
    settings.pop("time_limit")
    settings["task_options"] = ({k2: v for k2, v in config["task"].items() if k2 != "name"}
                                if not task else {})
    if epochs is not None:
        settings["epochs"] = epochs
    params = dict(params or {})
    settings["params"] = params
    candidates = [(f"top{i}", t["rule"]) for i, t in enumerate(store.top(k), start=1)]
    candidates += [(f"baseline:{name}", name) for name in baselines]
    for name, rule in candidates:  # before any training
        text = one_line(rule)
        text = text if len(text) <= 60 else text[:57] + "..."
        check_params(rule, params, lr=settings["lr"],
                     name=name if rule in baselines else f"{name} ({text})")

    def record(source: str, r: EvalResult) -> None:
        store.add_retrain(rule=r.rule, source=source, task=task_name, seed=r.seed,
                          epochs=r.epochs, status=r.status, reward=r.reward, lr=r.lr,
                          test_metric=r.test_metric, seconds=r.seconds,
                          details={"val_curve": r.val_curve, "loss_curve": r.loss_curve,
                                   "params": r.params})
        if progress:
            print(f"  {source:18s} seed {r.seed}: {r.reward:.4f} ({r.status})", file=sys.stderr)

    trials = train_seeds(candidates, spec, seeds, settings, on_result=record)
    if plot:
        plot_trials(trials, plot, f"retrained on {task_name} ({seeds} seeds)")
    head = f"retrained on {task_name}, {settings['epochs']:g} epochs, {seeds} seeds"
    if params:
        head += f", --param {format_params(params)}"
    return head + "\n" + comparison_table(trials)
