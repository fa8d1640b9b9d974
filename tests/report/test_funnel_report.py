"""The funnel report on a real small funnel run (real Ray, started by the search): every
stage with its per-seed rewards and the baselines, the final table checked against a hand
computation on the stored trials read with sqlite3, the rank correlations, and
``nos inspect`` (text, JSON, plot) through a real subprocess."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from nos.report.funnel import funnel_report, paired_difference, t_quantile_975
from nos.search.driver import search
from nos.search.funnel import spearman
from nos.search.store import Store
from tests.report.test_inspect import PNG, recorded_run

TASK = "mnist1d"
BASELINES = ("momentum", "adam")
SEED = 0
LAST = 2
LAST_SEEDS = 3
FUNNEL = {
    "search": {"controller": "random", "budget": 12, "batch": 6, "seed": SEED},
    "task": {"name": TASK},
    "evaluation": {"epochs": 0.5, "lr_grid": [0.01, 0.1], "grid_epochs": 0.25,
                   "time_limit": 120},
    "workers": {"count": 1, "threads": 1},  # one: Ray starts it faster
    "funnel": {"baselines": list(BASELINES),
               "stages": [{"epochs": 1, "seeds": 2, "promote": 0.5},
                          {"epochs": 1, "seeds": LAST_SEEDS, "promote": 0.5, "max_rules": 2,
                           "tasks": [TASK, "digits"], "transfer_epochs": 0.5}]},
}
# Student's t, 0.975 quantile, from a printed table (not from the module under test)
T_975_PUBLISHED = {1: 12.706, 2: 4.303, 5: 2.571, 10: 2.228, 20: 2.086, 30: 2.042}


def nos_inspect(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nos.cli", "inspect", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def funnel_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("funnel") / "run"
    search(FUNNEL, out)
    return out


@pytest.fixture(scope="module")
def report(funnel_run) -> dict:
    with Store.open(funnel_run) as store:
        return funnel_report(store)


def stored_trials(run: Path, stage: int, task: str) -> dict[str, dict[int, float]]:
    """candidate key -> seed -> reward (the floor, 0, for none), read with sqlite3."""
    db = sqlite3.connect(run / "nos.db")
    try:
        rows = db.execute("SELECT source, name, fingerprint, candidate, seed, reward, status "
                          "FROM trials WHERE stage = ? AND task = ?", (stage, task)).fetchall()
    finally:
        db.close()
    assert rows and all(status != "pending" for *_, status in rows)
    out: dict[str, dict[int, float]] = {}
    for source, name, fingerprint, candidate, seed, reward, _ in rows:
        key = f"baseline:{name}" if source == "baseline" else fingerprint or candidate
        out.setdefault(key, {})[seed] = 0.0 if reward is None else reward
    return out


def test_every_stage_lists_its_protocol_per_seed_rewards_and_every_baseline(report, funnel_run):
    assert [s["stage"] for s in report["stages"]] == [0, 1, LAST]
    db = sqlite3.connect(funnel_run / "nos.db")
    try:
        counts = db.execute("SELECT stage, status, count(*) FROM trials "
                            "GROUP BY stage, status").fetchall()
        stopped = db.execute("SELECT count(*) FROM evaluations "
                             "WHERE status = 'stopped'").fetchone()[0]
    finally:
        db.close()
    assert report["stopped_evaluations"] == stopped
    for stage in report["stages"]:
        k = stage["stage"]
        seeds = [SEED] if k == 0 else [SEED + 1000 * k + i for i in range(2 if k == 1 else 3)]
        assert stage["seeds"] == seeds
        assert stage["tasks"] == ([TASK, "digits"] if k == LAST else [TASK])
        assert stage["trial_counts"] == {status: n for s, status, n in counts if s == k}
        by_key = {e["key"]: e for e in stage["candidates"]}
        for name in BASELINES:
            entry = by_key[f"baseline:{name}"]
            assert entry["label"] == f"baseline:{name}" and "update" in entry["rule"]
            for task in stage["tasks"]:
                figures = entry["tasks"][task]
                assert [r["seed"] for r in figures["runs"]] == seeds
                assert all(set(r) == {"seed", "reward", "test", "lr", "status"}
                           for r in figures["runs"])
                assert figures["finished"] == len(seeds) and figures["pending"] == 0
        search_entries = [e for e in stage["candidates"] if e["source"] == "search"]
        assert search_entries, f"no search candidate reached stage {k}"
        scores = [e["score"] for e in stage["candidates"]]
        assert scores == sorted(scores, reverse=True)
        for e in search_entries:
            figures = e["tasks"][TASK]
            assert [r["seed"] for r in figures["runs"]] == seeds
            assert e["score"] == pytest.approx(figures["mean"])


def test_final_table_agrees_with_a_hand_computation_on_the_stored_trials(report, funnel_run):
    stored = stored_trials(funnel_run, LAST, TASK)
    transfer = stored_trials(funnel_run, LAST, "digits")

    def mean(xs):
        return sum(xs) / len(xs)

    def std(xs):
        m = mean(xs)
        return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))

    best = max((k for k in stored if k.startswith("baseline:")),
               key=lambda k: mean(list(stored[k].values())))
    final = report["final"]
    assert final["stage"] == LAST and final["best_baseline"] == best
    assert {r["key"] for r in final["rows"]} == set(stored)
    means = [r["mean"] for r in final["rows"]]
    assert means == sorted(means, reverse=True)
    for row in final["rows"]:
        rewards = stored[row["key"]]
        assert row["n"] == LAST_SEEDS == len(rewards)
        assert row["mean"] == pytest.approx(mean(list(rewards.values())), abs=1e-12)
        assert row["std"] == pytest.approx(std(list(rewards.values())), abs=1e-12)
        diffs = [rewards[s] - stored[best][s] for s in sorted(rewards)]
        half = T_975_PUBLISHED[LAST_SEEDS - 1] * std(diffs) / math.sqrt(len(diffs))
        versus = row["vs_best_baseline"]
        assert versus["n"] == LAST_SEEDS
        assert versus["diff"] == pytest.approx(mean(diffs), abs=1e-12)
        assert versus["low"] == pytest.approx(mean(diffs) - half, abs=1e-4)
        assert versus["high"] == pytest.approx(mean(diffs) + half, abs=1e-4)
        digits = list(transfer[row["key"]].values())
        assert row["transfer"]["digits"]["mean"] == pytest.approx(mean(digits), abs=1e-12)
        assert row["transfer"]["digits"]["std"] == pytest.approx(std(digits), abs=1e-12)


def test_correlations_cover_every_transition_over_the_candidates_in_both(report, funnel_run):
    corr = report["correlations"]
    assert [(c["from"], c["to"]) for c in corr["to_final"]] == [(0, LAST), (1, LAST)]
    assert [(c["from"], c["to"]) for c in corr["consecutive"]] == [(0, 1), (1, LAST)]
    one = {k: sum(v.values()) / len(v) for k, v in stored_trials(funnel_run, 1, TASK).items()}
    last = {k: sum(v.values()) / len(v) for k, v in stored_trials(funnel_run, LAST, TASK).items()}
    both = sorted(set(one) & set(last))
    assert len(both) >= 3  # the baselines and at least one promoted rule
    expected = spearman([one[k] for k in both], [last[k] for k in both])
    for c in (corr["to_final"][1], corr["consecutive"][1]):
        assert c["n"] == len(both)
        assert c["spearman"] == pytest.approx(expected)
    assert corr["to_final"][0]["n"] == len(last)  # everyone at the last stage was at stage 0


def test_spearman_by_hand_with_ties():
    # ranks (1, 2.5, 2.5, 4) and (1, 3, 2, 4): covariance 4.5 over sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 3], [10, 30, 20, 40]) == pytest.approx(3 / math.sqrt(10))
    # ties on both sides: ranks (3, 1.5, 4, 1.5, 5) and (2.5, 4, 1, 5, 2.5): -7.5 / 9.5
    assert spearman([3, 1, 4, 1, 5], [2, 7, 1, 8, 2]) == pytest.approx(-15 / 19)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2], [1, 2]) is None  # under three pairs
    assert spearman([1, 1, 1], [1, 2, 3]) is None  # no spread


def test_t_quantiles_and_a_paired_interval_by_hand():
    for df, value in T_975_PUBLISHED.items():
        assert t_quantile_975(df) == pytest.approx(value, abs=6e-4)
    assert t_quantile_975(31) == t_quantile_975(1000) == 1.96
    # differences 0.1, 0.2, 0.0: mean 0.1, sample std 0.1
    d = paired_difference({1: 0.5, 2: 0.7, 3: 0.6, 9: 0.9}, {1: 0.4, 2: 0.5, 3: 0.6})
    half = 4.303 * 0.1 / math.sqrt(3)
    assert d["n"] == 3 and d["diff"] == pytest.approx(0.1)
    assert (d["low"], d["high"]) == pytest.approx((0.1 - half, 0.1 + half), abs=1e-4)
    assert paired_difference({1: 0.5}, {1: 0.4})["low"] is None
    assert paired_difference({1: 0.5}, {2: 0.4}) is None


def test_a_run_without_a_funnel_has_no_report(tmp_path):
    with Store.open(recorded_run(tmp_path / "run")) as store:
        assert funnel_report(store) is None


def test_inspect_shows_the_funnel_of_the_run_that_has_one(funnel_run, report, tmp_path):
    plain = recorded_run(tmp_path / "plain")  # no funnel, inspected beside the funnel run
    out = nos_inspect(str(funnel_run), str(plain), "--json")
    assert out.returncode == 0, out.stderr
    with_funnel, without = json.loads(out.stdout)
    assert with_funnel["funnel"] == json.loads(json.dumps(report))
    assert "funnel" not in without and without["top"]
    png = tmp_path / "out.png"
    out = nos_inspect(str(funnel_run), str(plain), "--plot", str(png))
    assert out.returncode == 0, out.stderr
    text, rest = out.stdout.split(f"run {plain}:")
    assert text.index("random on mnist1d") < text.index("funnel on mnist1d")
    for k in range(LAST + 1):
        assert f"stage {k}:" in text
    assert "baseline:momentum" in text and "baseline:adam" in text
    assert f"final (stage {LAST}, mnist1d)" in text and "reference" in text
    assert "Spearman rank correlation, to the last stage: 0->2" in text
    assert "sign(g)" in rest and "funnel on" not in rest and "final (stage" not in rest
    plot = tmp_path / "out_funnel.png"  # one run with a funnel: no index in the name
    assert f"funnel plotted to {plot}" in rest
    assert png.read_bytes()[:8] == PNG and plot.read_bytes()[:8] == PNG
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["out.png", "out_funnel.png"]
