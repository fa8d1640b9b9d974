"""The funnel on a real local Ray: promotion by rank, baselines through every stage, the
protocol of each stage, and a run killed mid-stage resumed with nothing lost or run twice."""

from __future__ import annotations

import math
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from nos.search import config as cfg
from nos.search.driver import Search
from nos.search.funnel import candidates, geometric_median, parse_funnel, stage_seeds
from nos.search.store import Store
from tests.helpers import check_run
from tests.search.test_search import _write_toml, ray_cluster  # noqa: F401 - a fixture

BUDGET = 12
FUNNEL = {
    "search": {"controller": "random", "budget": BUDGET, "batch": 4, "seed": 3},
    "task": {"name": "mnist1d"},
    "evaluation": {"epochs": 0.5, "lr_grid": [0.01, 0.1], "grid_epochs": 0.25,
                   "time_limit": 120},
    "workers": {"count": 1, "threads": 1},
    "funnel": {"baselines": ["momentum", "adam"],
               "stages": [{"epochs": 1, "seeds": 2, "promote": 0.5, "lr_factors": [0.5, 1, 2]},
                          {"epochs": 1, "seeds": 2, "promote": 0.5, "max_rules": 1,
                           "tasks": ["mnist1d", "digits"], "transfer_epochs": 1}]},
}


def _trials(out) -> list[tuple]:
    """(stage, candidate, task, seed, status, reward, lr, finished_at), read with sqlite3."""
    db = sqlite3.connect(out / "nos.db")
    try:
        return db.execute("SELECT stage, candidate, task, seed, status, reward, lr, finished_at "
                          "FROM trials ORDER BY stage, candidate, task, seed").fetchall()
    finally:
        db.close()


@pytest.fixture(scope="module")
def funnel_run(ray_cluster, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("funnel") / "run"
    Search(cfg.validate(FUNNEL, "test"), out).run()
    return out


def test_the_funnel_promotes_the_top_fraction_and_every_baseline(funnel_run):
    check_run(funnel_run, BUDGET)
    with Store.open(funnel_run) as store:
        config = store.config
        trials = store.trials()
        pool = candidates(store.trained(), trials)
    funnel = parse_funnel(config["funnel"], config, "test")
    assert trials and all(t["status"] != "pending" for t in trials)
    for k, stage in enumerate((None, *funnel.stages)):
        tasks = ["mnist1d"] if stage is None else list(stage.tasks)
        seeds = stage_seeds(3, k, 1 if stage is None else stage.seeds)
        for name in ("momentum", "adam"):  # every baseline, at every stage, on every task
            rows = [t for t in trials if t["name"] == name and t["stage"] == k]
            assert sorted((t["task"], t["seed"]) for t in rows) == \
                sorted((task, s) for task in tasks for s in seeds)
    # every search candidate in the top fraction of the stage below, by the end, was promoted
    search = [c for c in pool.values() if c.source == "search"]
    ranked = sorted(search, key=lambda c: (-c.score(0, "mnist1d"), c.origin))
    baselines = {c.fingerprint for c in pool.values() if c.source == "baseline"}
    top = [c for c in ranked[:math.floor(0.5 * len(ranked))] if c.fingerprint not in baselines]
    assert top and all(1 in c.trials for c in top)
    assert not [c for c in search if c.fingerprint in baselines and c.trials]
    promoted = [c for c in search if 1 in c.trials]
    assert len({c.fingerprint for c in promoted}) == len(promoted)  # distinct behaviours
    assert 1 <= sum(1 for c in search if 2 in c.trials) <= 1  # max_rules
    # the finer grid around the rate the candidate chose at the stage below
    for c in promoted:
        settings = c.rows(1, "mnist1d")[0]["settings"]
        centre = c.stage0["lr"]
        assert settings["lr_grid"] == pytest.approx(sorted([centre * 0.5, centre, centre * 2]),
                                                    rel=1e-5)
        assert settings["epochs"] == 1 and settings["grid_epochs"] == 0.25
    for c in pool.values():
        if 2 in c.trials:
            lrs = c.lrs(1, "mnist1d")
            grid = c.rows(2, "mnist1d")[0]["settings"]["lr_grid"]
            assert grid[1] == pytest.approx(geometric_median(lrs), rel=1e-5)
            digits = c.rows(2, "digits")[0]["settings"]
            assert digits["lr_grid"] == [0.01, 0.1] and digits["epochs"] == 1


def test_a_run_killed_mid_stage_resumes_with_nothing_lost_or_run_twice(
        ray_cluster, tmp_path, funnel_run):  # noqa: F811
    toml = tmp_path / "funnel.toml"
    _write_toml(toml, {t: v for t, v in FUNNEL.items() if t != "funnel"})
    stages = "".join("\n[[funnel.stages]]\n" + "".join(
        f"{k} = {v!r}\n".replace("'", '"') for k, v in s.items())
        for s in FUNNEL["funnel"]["stages"])
    toml.write_text(toml.read_text() + '[funnel]\nbaselines = ["momentum", "adam"]\n' + stages)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "nos.cli", "search", "--config", str(toml), "--out",
               str(out), "--address", ray_cluster, "--quiet"]
    killed = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "NOS_FAULTS": "driver.trial:5"})
    assert killed.returncode == -9, killed.stderr
    before = _trials(out)
    done = [t for t in before if t[4] != "pending"]
    assert len(done) == 4 and any(t[4] == "pending" for t in before)
    finish = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finish.returncode == 0, finish.stderr
    after = _trials(out)
    check_run(out, BUDGET)
    assert all(t[4] != "pending" for t in after)
    assert [t for t in after if t[:4] in {d[:4] for d in done}] == done  # kept as they were
    # one worker: the resumed run trains what the run never stopped trained, once each
    reference = _trials(funnel_run)
    assert [t[:4] for t in after] == [t[:4] for t in reference]
    assert [t[5] for t in after] == pytest.approx([t[5] for t in reference], abs=1e-9)


def test_early_stopping_in_a_funnel_search(ray_cluster, tmp_path):  # noqa: F811
    data = {t: dict(v) for t, v in FUNNEL.items()}
    data["workers"] = {"count": 2, "threads": 1}
    data["stopping"] = {"loss_steps": 8, "min_results": 2, "margin": 0.0}
    summary = Search(cfg.validate(data, "test"), tmp_path / "run").run()
    assert summary.finished == BUDGET
    with Store.open(tmp_path / "run") as store:
        rows = store.evaluations()
        trials = store.trials()
    assert all(r.status != "pending" for r in rows)
    stopped = [r for r in rows if r.status == "stopped"]
    assert stopped, [r.status for r in rows]
    for r in stopped:  # the partial figures: its reward is where it stood when stopped
        assert r.error and ("loss has not fallen" in r.error or "below the stage" in r.error)
        curve = r.details["val_curve"]
        assert r.reward is not None and (not curve or r.reward == pytest.approx(curve[-1]))
    assert trials and all(t["status"] != "pending" for t in trials)
    assert not [t for t in trials if t["source"] == "baseline" and t["status"] == "stopped"]
    assert {t["stage"] for t in trials} == {0, 1, 2}  # the funnel ran to its end


def test_the_controller_is_asked_until_the_budget_or_the_time_limit(tmp_path):
    data = {t: dict(v) for t, v in FUNNEL.items()}
    data["search"] = {**data["search"], "seconds": 60}
    search = Search(cfg.validate(data, "test"), tmp_path / "run")
    search.started = time.time()
    assert search._asking(0) and search._asking(BUDGET - 1) and not search._asking(BUDGET)
    search.started = time.time() - 61
    assert not search._asking(0)  # past the time: no more proposals, for good
    search.started = time.time()
    assert not search._asking(0)


@pytest.mark.parametrize("table, message", [
    ({"funnel": {"stages": [{"epochs": 2, "promote": 1.5}]}}, "promote must be a fraction"),
    ({"funnel": {"stages": [{"seeds": 2}]}}, "epochs is required"),
    ({"funnel": {"stages": [{"epochs": 2, "tasks": ["digits"]}]}}, "must start with the search"),
    ({"funnel": {"stages": [{"epochs": 2, "tasks": ["mnist1d", "nope"]}]}}, "tasks must name"),
    ({"funnel": {"stages": [{"epochs": 2, "lr_factors": [0]}]}}, "lr_factors"),
    ({"funnel": {"stages": [{"epochs": 2, "speed": 1}]}}, "unknown key 'speed'"),
    ({"funnel": {"baselines": ["adam", "nope"]}}, "unknown rule 'nope'"),
    ({"funnel": {"stages": []}}, "at least one stage"),
    ({"stopping": {"margin": -0.1}}, "margin must be >= 0"),
    ({"stopping": {"loss_steps": "many"}}, "loss_steps has the wrong type"),
    ({"search": {"seconds": -1}}, "seconds must be >= 0"),
])
def test_bad_funnel_settings_are_refused_naming_the_key(table, message):
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.validate(table, "x.toml")


def test_a_config_without_a_funnel_keeps_its_identity():
    """Runs made before the funnel existed resume: the optional tables are absent unless
    given, and the time limit may change between a run and its resume."""
    plain = cfg.validate({}, "x")
    assert "funnel" not in plain and "stopping" not in plain
    timed = cfg.validate({"search": {"seconds": 60}}, "x")
    assert cfg.identity(timed) == cfg.identity(plain)
    assert cfg.validate({"funnel": {}}, "x")["funnel"] == {}  # the default stages


def test_a_search_candidate_that_behaves_as_a_baseline_is_not_trained_again():
    from nos.search.funnel import baseline_fingerprint, new_trials

    config = cfg.validate({**FUNNEL, "search": {**FUNNEL["search"]}}, "test")
    funnel = parse_funnel(config["funnel"], config, "test")
    adam = baseline_fingerprint("adam")
    assert adam and adam == baseline_fingerprint("adam")
    rows = [{"id": 1, "rule": "adam", "status": "ok", "reward": 0.9, "lr": 0.01,
             "fingerprint": adam},
            {"id": 2, "rule": "sign(m)", "status": "ok", "reward": 0.8, "lr": 0.01,
             "fingerprint": "f2"},
            {"id": 3, "rule": "g", "status": "ok", "reward": 0.1, "lr": 0.1,
             "fingerprint": "f3"},
            {"id": 4, "rule": "sign(g)", "status": "ok", "reward": 0.2, "lr": 0.1,
             "fingerprint": "f4"}]
    baseline = {"stage": 0, "candidate": "adam", "fingerprint": adam, "source": "baseline",
                "name": "adam", "origin": None, "task": "mnist1d", "seed": 3, "settings": {},
                "status": "ok", "reward": 0.9, "lr": 0.01}
    wanted = new_trials(config, funnel, candidates(rows, [baseline]))
    promoted = {t["candidate"] for t in wanted if t["stage"] == 1 and t["source"] == "search"}
    assert promoted == {"sign(m)"}  # the top half is adam (the baseline) and sign(m)
    assert {t["name"] for t in wanted if t["source"] == "baseline"} == {"momentum", "adam"}
