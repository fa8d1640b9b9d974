"""Do the rules a search found reach minima that generalise?  ``nos inspect DIR
--generalization``.

The top rules of a run and the comparison baselines are trained again under the run's
evaluation settings (as ``--retrain`` does: the same learning-rate grid and budget, on
the run's task or another), one network per rule and seed, and each network is measured
(``nos.analysis.minimum``): test accuracy, the generalisation gap (training accuracy
minus test accuracy; for a task whose metric is not accuracy, training reward minus
test reward), Keskar's epsilon-sharpness, the top Hessian eigenvalue and the area under
the ablation curve.  Across every measured network (rules and baselines, every seed),
Spearman's rank correlation of each measure with the gap says whether it ranks the
networks the way their generalisation does.  Nothing is written to the run.
"""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from nos.analysis.minimum import Measured, MeasureSettings, train_and_measure
from nos.optim.param_options import check_params, format_params
from nos.report.summary import COMPARISON_BASELINES
from nos.report.tables import one_line, table
from nos.search.funnel import spearman
from nos.search.store import Store
from nos.search.workers import evaluation_kwargs
from nos.train.tasks import get_task

# the measures correlated with the gap, with the names the table and the plot give them
MEASURES = {"sharpness": "epsilon-sharpness", "eigenvalue": "top Hessian eigenvalue",
            "ablation_area": "ablation area", "test_metric": "test metric"}


def generalization_report(store: Store, k: int, *, epochs: float | None = None,
                          seeds: int = 1, task: str | None = None, params: dict | None = None,
                          baselines: Sequence[str] = COMPARISON_BASELINES,
                          settings: MeasureSettings | None = None,
                          progress: bool = True, device: str = "cpu") -> dict:
    """Train and measure the run's top ``k`` rules and ``baselines`` on ``seeds`` seeds;
    plain data (what ``--json`` prints).  The task is checked, and every candidate with
    ``params``, before any training (ValueError naming what is wrong).  ``settings``: how
    the networks are measured (``MeasureSettings()`` by default)."""
    settings = settings or MeasureSettings()
    config = store.config
    task_name = task or config["task"]["name"]
    recorded = store.note("tasks")  # the search's task as resolved then: a file's full path
    spec = task or (recorded[0]["spec"] if recorded else task_name)
    options = {key: v for key, v in config["task"].items() if key != "name"} if not task else {}
    task_obj = get_task(spec, **options)
    evaluation = evaluation_kwargs(config)
    evaluation.pop("time_limit")
    if epochs is not None:
        evaluation["epochs"] = epochs
    params = dict(params or {})
    candidates = [(f"top{i}", t["rule"]) for i, t in enumerate(store.top(k), start=1)]
    candidates += [(f"baseline:{name}", name) for name in baselines]
    for name, rule in candidates:
        check_params(rule, params, lr=evaluation["lr"], name=name)
    rows = []
    for name, rule in candidates:
        runs = []
        for seed in range(seeds):
            measured = train_and_measure(rule, task_obj, seed=seed, settings=settings,
                                         device=device, params=params, **evaluation)
            runs.append(_run_record(measured, seed))
            if progress:
                _announce(name, runs[-1])
        rows.append(_candidate(name, rule, runs))
    return {"run": str(store.path), "task": task_name, "metric": task_obj.metric_name,
            "epochs": evaluation["epochs"] or task_obj.epochs, "seeds": seeds,
            "params": params, "gap": _gap_words(task_obj.metric_name),
            "settings": asdict(settings),
            "candidates": rows, "correlations": correlations(rows)}


def _run_record(measured: Measured, seed: int) -> dict:
    result = measured.evaluation
    record = {"seed": seed, "status": result.status, "lr": result.lr, "error": result.error}
    if measured.minimum is not None:
        record.update(measured.minimum.to_dict())
    return record


def _announce(name: str, run: dict) -> None:
    if run["status"] != "ok":
        print(f"  {name:18s} seed {run['seed']}: {run['status']}", file=sys.stderr)
        return
    print(f"  {name:18s} seed {run['seed']}: test {run['test_metric']:.4f}, gap "
          f"{run['gap']:+.4f}, sharpness {run['sharpness']:.3g}, eigenvalue "
          f"{run['eigenvalue']:.3g}", file=sys.stderr)


def _candidate(name: str, rule: str, runs: list[dict]) -> dict:
    ok = [r for r in runs if r["status"] == "ok"]
    means = {key: _mean([r.get(key) for r in ok])
             for key in ("test_metric", "train_metric", "gap", "sharpness", "eigenvalue",
                         "ablation_area")}
    return {"name": name, "rule": rule, "runs": runs, "measured": len(ok), **means}


def _mean(values: Sequence[float | None]) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(values) if values else None


def _gap_words(metric: str) -> str:
    if metric == "accuracy":
        return "train accuracy - test accuracy"
    return f"train reward - test reward (reward of {metric})"


def correlations(candidates: Sequence[dict]) -> dict:
    """Spearman's rank correlation of each measure with the gap over every measured network
    (each rule's and baseline's every seed): ``{measure: {"spearman", "n"}}``; the
    correlation is None under three networks or when either side does not vary."""
    runs = [r for c in candidates for r in c["runs"] if r["status"] == "ok"]
    out = {}
    for key in MEASURES:
        pairs = [(r[key], r["gap"]) for r in runs
                 if r.get(key) is not None and math.isfinite(r[key])]
        rho = spearman([a for a, _ in pairs], [b for _, b in pairs])
        out[key] = {"spearman": rho, "n": len(pairs)}
    return out


def print_generalization(report: dict) -> None:
    """The table of means over seeds, then the correlations."""
    metric = "acc" if report["metric"] == "accuracy" else report["metric"]
    print(f"generalization on {report['task']}, {report['epochs']:g} epochs, "
          f"{report['seeds']} seed{'s' if report['seeds'] != 1 else ''}"
          + (f", --param {format_params(report['params'])}" if report["params"] else "")
          + f"; gap = {report['gap']}")
    rows = [[c["name"], c["test_metric"], c["train_metric"], c["gap"], c["sharpness"],
             c["eigenvalue"], c["ablation_area"], f"{c['measured']}/{len(c['runs'])}",
             "" if c["name"].endswith(":" + c["rule"]) else one_line(c["rule"])]
            for c in report["candidates"]]
    print(table(["rule", f"test {metric}", f"train {metric}", "gap", "sharpness",
                 "top eig", "ablation", "ok", "text"], rows))
    parts = [f"{MEASURES[key]} {_rho(value['spearman'])}"
             for key, value in report["correlations"].items()]
    n = max((value["n"] for value in report["correlations"].values()), default=0)
    print(f"Spearman correlation with the gap over {n} networks: " + ", ".join(parts))


def _rho(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def generalization_plot_path(plot: str | Path) -> Path:
    """Where ``--plot out.png`` puts the generalization figure: ``out_generalization.png``."""
    path = Path(plot)
    return path.with_name(f"{path.stem}_generalization{path.suffix or '.png'}")


def plot_generalization(report: dict, path: str | Path) -> Path:
    """Each measure against the gap (one point per network; rules as circles, baselines as
    squares) and the mean ablation curve of each rule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 4.5))
    for index, candidate in enumerate(report["candidates"]):
        ok = [r for r in candidate["runs"] if r["status"] == "ok"]
        style = dict(color=f"C{index % 10}", marker="s" if ":" in candidate["name"] else "o",
                     label=candidate["name"])
        for ax, key in zip(axes, ("sharpness", "eigenvalue", "ablation_area"), strict=False):
            points = [(r[key], r["gap"]) for r in ok if r.get(key) is not None]
            if points:
                ax.scatter(*zip(*points, strict=True), s=30, alpha=0.8, **style)
        curves = [r["ablation"] for r in ok if r.get("ablation")]
        if curves:
            fractions = [a / curves[0]["units"] for a in curves[0]["ablated"]]
            scores = [statistics.fmean(c) for c in zip(*(c["scores"] for c in curves),
                                                      strict=True)]
            axes[3].plot(fractions, scores, color=style["color"], label=candidate["name"])
    for ax, key in zip(axes, ("sharpness", "eigenvalue", "ablation_area"), strict=False):
        rho = report["correlations"][key]["spearman"]
        ax.set_xlabel(MEASURES[key])
        ax.set_ylabel(f"gap ({report['gap']})")
        ax.set_title(f"Spearman {_rho(rho)}")
        ax.grid(alpha=0.3)
    axes[1].set_xscale("symlog")
    axes[3].set_xlabel("fraction of units ablated")
    axes[3].set_ylabel("test accuracy" if report["metric"] == "accuracy" else "test reward")
    axes[3].set_title("ablation curves (mean over seeds)")
    axes[3].grid(alpha=0.3)
    axes[3].legend(fontsize=7)
    fig.suptitle(f"{report['run']}: {report['task']}")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["MEASURES", "correlations", "generalization_plot_path", "generalization_report",
           "plot_generalization", "print_generalization"]
