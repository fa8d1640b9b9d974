"""A learned optimizer as one of the funnel's baselines: accepted by the config, trained at
stage 0 under its absolute path, and (slow) through every stage of a real search."""

from __future__ import annotations

import sqlite3

import pytest

import nos
from nos.learned import CoordinateLSTM, save_checkpoint
from nos.search import config as cfg
from nos.search.funnel import new_trials, parse_funnel
from tests.learned.test_meta import TASK
from tests.search.test_search import ray_cluster  # noqa: F401 - a fixture


@pytest.fixture
def checkpoint(tmp_path) -> str:
    path = tmp_path / "lstm.pt"
    save_checkpoint(path, CoordinateLSTM(), {"task": "blobs"})
    return str(path)


def _config(baselines: list[str], task: str = TASK) -> dict:
    return cfg.validate({
        "search": {"controller": "random", "budget": 4, "batch": 2, "seed": 3},
        "task": {"name": task},
        "evaluation": {"epochs": 0.5, "lr_grid": [0.1, 1.0], "grid_epochs": 0.25},
        "workers": {"count": 1, "threads": 1},
        "funnel": {"baselines": baselines,
                   "stages": [{"epochs": 1, "seeds": 1, "promote": 0.5, "max_rules": 1}]},
    }, "test")


def test_the_funnel_takes_a_learned_optimizer_among_its_baselines(checkpoint, monkeypatch):
    monkeypatch.chdir(checkpoint.rsplit("/", 1)[0])
    config = _config(["adam", "lstm.pt"])
    funnel = parse_funnel(config["funnel"], config, "test")
    trials = {t["name"]: t for t in new_trials(config, funnel, {})}
    learned = trials["lstm.pt"]
    assert learned["candidate"] == checkpoint and learned["fingerprint"] is None
    assert learned["source"] == "baseline" and trials["adam"]["fingerprint"]
    result = nos.evaluate(learned["candidate"], learned["task"], seed=learned["seed"],
                          **learned["settings"])
    assert result.status == "ok" and result.rule == checkpoint


def test_a_funnel_baseline_that_is_neither_is_refused():
    with pytest.raises(cfg.ConfigError, match="unknown rule 'lstm.pth'.*learned optimizer"):
        _config(["adam", "lstm.pth"])


@pytest.mark.slow
def test_a_search_with_a_learned_baseline_trains_it_at_every_stage(
        ray_cluster, tmp_path, checkpoint):  # noqa: F811
    from nos.search.driver import Search

    out = tmp_path / "run"
    Search(_config(["momentum", checkpoint], task="mnist1d"), out).run()
    db = sqlite3.connect(out / "nos.db")
    try:
        rows = db.execute("SELECT stage, status FROM trials WHERE candidate = ?",
                          (checkpoint,)).fetchall()
    finally:
        db.close()
    assert sorted(stage for stage, _ in rows) == [0, 1]
    assert all(status == "ok" for _, status in rows)
