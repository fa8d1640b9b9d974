"""`nos inspect` on a small recorded run: the table, JSON, LaTeX, one rule, plots, retrain."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nos.search import config as cfg
from nos.search.store import Store

PNG = b"\x89PNG\r\n\x1a\n"


def nos_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nos.cli", "inspect", *args],
                          capture_output=True, text=True, timeout=300)


def recorded_run(path: Path, controller: str = "random") -> Path:
    config = cfg.identity(cfg.validate({"search": {"controller": controller, "budget": 6},
                                        "task": {"name": "digits"},
                                        "evaluation": {"epochs": 0.5, "lr": 0.05}}, "test"))
    rows = [((0, 1, 2, 3, 4), "sign(g)", "ok", 0.8, 0.05),
            ((1, 1, 2, 3, 4), "g", "ok", 0.6, 0.1),
            ((2, 1, 2, 3, 4), "g ^ g", "invalid", 0.0, None),
            ((3, 1, 2, 3, 4), "sign(g)", "cached", 0.8, 0.05),
            ((4, 1, 2, 3, 4), "exp(g * 100)", "diverged", 0.0, 1.0),
            ((5, 1, 2, 3, 4), "clip(m_hat, 1e-4) * exp(v_hat)", "ok", 0.7, 0.01)]
    with Store.create_or_open(path, config) as store:
        ids = store.add_proposals(0, [(tokens, rule) for tokens, rule, *_ in rows])
        for eval_id, (_, _, status, reward, lr) in zip(ids, rows):
            store.record(eval_id, status=status, reward=reward, lr=lr, seconds=1.0,
                         test_metric=reward, details={"val_curve": [reward / 2, reward]})
    return path


def test_inspect_prints_the_top_distinct_rules_and_counts(tmp_path):
    run = recorded_run(tmp_path / "run")
    out = nos_cli(str(run), "--top", "3")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "random on digits" in text and "cached 1" in text and "invalid 1" in text
    lines = [line for line in text.splitlines() if line[:2].strip().isdigit()]
    assert [line.split()[-1] for line in lines[:1]] == ["sign(g)"]
    assert "clip(m_hat, 1e-4) * exp(v_hat)" in lines[1]
    assert len(lines) == 3
    assert "sign(g)" in lines[0] and lines[0].split()[4] == "2"  # sampled twice


def test_inspect_json_latex_and_one_rule(tmp_path):
    run = recorded_run(tmp_path / "run")
    data = json.loads(nos_cli(str(run), "--json").stdout)
    assert data["top"][0]["rule"] == "sign(g)" and data["counts"]["ok"] == 3
    assert data["trainings_saved"] == 2
    latex = nos_cli(str(run), "--latex").stdout
    assert r"\operatorname{sign}\left(g\right)" in latex
    one = nos_cli(str(run), "--rule", "6")
    assert one.returncode == 0
    assert "state m = beta1 * m + (1 - beta1) * g" in one.stdout  # the prelude, expanded
    assert "let m_hat = m / (1 - beta1^t)" in one.stdout
    missing = nos_cli(str(run), "--rule", "99")
    assert missing.returncode == 2 and "no evaluation 99" in missing.stderr


def test_inspect_plots_one_or_several_runs(tmp_path):
    a = recorded_run(tmp_path / "a", "random")
    b = recorded_run(tmp_path / "b", "evolution")
    png = tmp_path / "rewards.png"
    out = nos_cli(str(a), str(b), "--plot", str(png))
    assert out.returncode == 0, out.stderr
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 10_000


@pytest.mark.parametrize("task", [None, "mnist1d"])
def test_retrain_records_and_prints_a_table(tmp_path, task, monkeypatch):
    monkeypatch.setenv("NOS_CACHE_DIR", str(tmp_path / "cache"))
    run = recorded_run(tmp_path / "run")
    png = tmp_path / "curves.png"
    args = [str(run), "--retrain", "1", "--epochs", "0.5", "--seeds", "2",
            "--retrain-plot", str(png)] + (["--task", task] if task else [])
    out = nos_cli(*args)
    assert out.returncode == 0, out.stderr
    expected_task = task or "digits"
    assert f"retrained on {expected_task}" in out.stdout
    assert "top1" in out.stdout and "baseline:adam" in out.stdout
    assert png.read_bytes()[:8] == PNG
    with Store.open(run) as store:
        rows = store.retrains()
    assert {r["task"] for r in rows} == {expected_task}
    assert len(rows) == 2 * 6  # top rule + 5 baselines, two seeds each
