"""Rules trained again on several seeds under one protocol, and the table that compares them.

``nos baselines`` and ``nos inspect --retrain`` both train a list of named
candidates (a baseline's name or a rule's text) on each seed with the same
evaluation settings, and show the mean reward with its spread, the test
metric, the chosen learning rates and the curves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nos.report.tables import mean_spread, one_line, plot_curves, table
from nos.train.evaluation import EvalResult, evaluate


@dataclass
class Trials:
    """One candidate's evaluations, one per seed."""

    name: str
    rule: str
    results: list[EvalResult]

    @property
    def rewards(self) -> list[float]:
        return [r.reward for r in self.results]

    @property
    def mean(self) -> float:
        return mean_spread(self.rewards)[0]

    @property
    def std(self) -> float:
        return mean_spread(self.rewards)[1]

    @property
    def tests(self) -> list[float]:
        return [r.test_metric for r in self.results if r.test_metric is not None]

    @property
    def test_mean(self) -> float | None:
        return mean_spread(self.tests)[0] if self.tests else None

    @property
    def statuses(self) -> list[str]:
        return sorted({r.status for r in self.results})

    @property
    def lrs(self) -> str:
        return ",".join(f"{x:g}" for x in sorted({r.lr for r in self.results if r.lr}))

    def record(self) -> dict:
        return {"name": self.name, "rule": self.rule, "rewards": self.rewards,
                "mean": self.mean, "std": self.std, "test": self.tests,
                "lrs": [r.lr for r in self.results], "statuses": self.statuses}


def train_seeds(candidates: Sequence[tuple[str, str]], task: str, seeds: int, settings: dict,
                on_result: Callable[[str, EvalResult], None] | None = None) -> list[Trials]:
    """Each (name, rule) evaluated with ``settings`` on seeds 0..seeds-1, best mean first."""
    trials = []
    for name, rule in candidates:
        results = []
        for seed in range(seeds):
            result = evaluate(rule, task, seed=seed, **settings)
            results.append(result)
            if on_result is not None:
                on_result(name, result)
        trials.append(Trials(name, rule, results))
    return sorted(trials, key=lambda t: -t.mean)


def comparison_table(trials: Sequence[Trials], first: str = "rule") -> str:
    rows = [[t.name, t.mean, t.std, t.test_mean, t.lrs or "-", ",".join(t.statuses),
             sum(r.seconds for r in t.results) / len(t.results),
             "" if t.name == t.rule else one_line(t.rule)] for t in trials]
    metric = next((r.metric for t in trials for r in t.results), "accuracy")
    test = "test" if metric == "accuracy" else f"test {metric}"  # the raw metric, not a reward
    return table([first, "reward", "± std", test, "lr", "status", "s/run", "text"], rows)


def plot_trials(trials: Sequence[Trials], path: str, title: str) -> None:
    plot_curves({t.name: [r.val_curve for r in t.results] for t in trials}, path, title)
