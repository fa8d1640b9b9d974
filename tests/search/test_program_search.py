"""The program controller in real searches: a local Ray, the store, the command line,
and a driver SIGKILLed mid-run and resumed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from nos.controllers.mutations import simplify
from nos.controllers.program import resolve_rule

import nos
from nos.cli import main
from nos.compile.compiler import compile_rule
from nos.search.config import tomllib
from nos.search.store import Store
from tests.helpers import check_run
from tests.search.test_search import ray_cluster  # noqa: F401 - the module's local Ray

BUDGET = 16
# As a user would write it; the controller is left to `--controller program` in the CLI test.
CONFIG = """
[search]
budget = 16
batch = 4
seed = 0

[task]
name = "mnist1d"

[evaluation]
epochs = 0.2
lr_grid = [0.01, 0.1]
grid_epochs = 0.1

[controller]
start = ["adamw", "momentum"]
population = 6
sample_size = 2

[workers]
count = 2
threads = 1
"""
TRAINED = ("ok", "diverged", "timeout")


def check_program_rows(out) -> list:
    """The run holds the budget of finished rows, every one a valid program; the first
    two are the start rules, simplified."""
    rows = check_run(out, BUDGET)
    for row in rows:
        rule = nos.parse(row.rule)
        assert str(rule) == row.rule and row.tokens == ()
        compile_rule(rule)
    assert [r.rule for r in rows[:2]] == [str(simplify(resolve_rule(s)))
                                          for s in ("adamw", "momentum")]
    assert [r.batch for r in rows] == [i // 4 for i in range(BUDGET)]
    return rows


def test_a_program_search_runs_from_named_rules(ray_cluster, tmp_path):  # noqa: F811
    config = tomllib.loads(CONFIG)
    config["search"]["controller"] = "program"
    summary = nos.search(config, tmp_path / "run")
    assert summary.finished == BUDGET
    rows = check_program_rows(tmp_path / "run")
    assert len({r.rule for r in rows}) > 2  # the search moved past its start
    trained = [r.fingerprint for r in rows if r.status in TRAINED]
    assert len(trained) == len(set(trained))  # the cache trains a behaviour once
    assert any(r.status == "ok" and r.reward > 0 for r in rows)
    with Store.open(tmp_path / "run") as store:
        batch, told, _ = store.latest_checkpoint()
        assert (batch, told) == (BUDGET // 4 - 1, BUDGET)
    assert summary.top and all(str(nos.parse(t["rule"])) == t["rule"] for t in summary.top)


def recorded_rows(out) -> int:
    """Finished rows in the run's store so far; 0 while it is being created."""
    if not (out / "nos.db").exists():
        return 0
    try:
        with Store.open(out) as store:
            return store.count() - len(store.pending())
    except Exception:  # noqa: BLE001 - the file may be mid-creation
        return 0


@pytest.mark.slow  # half a minute; test_faults.py's slow cases kill it at every moment too
def test_a_killed_program_search_resumes_from_the_command_line(ray_cluster, tmp_path,  # noqa: F811
                                                              capsys):
    (tmp_path / "run.toml").write_text(CONFIG)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "nos.cli", "search", "--controller", "program",
               "--config", str(tmp_path / "run.toml"), "--out", str(out),
               "--address", ray_cluster, "--quiet"]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and recorded_rows(out) < 4 and driver.poll() is None:
        time.sleep(0.1)
    assert driver.poll() is None, driver.communicate()
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    with Store.open(out) as store:
        before = [r for r in store.evaluations() if r.status != "pending"]
    assert 0 < len(before) < BUDGET

    finish = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finish.returncode == 0, finish.stderr
    rows = check_program_rows(out)
    by_id = {r.id: r for r in rows}
    assert all(by_id[r.id] == r for r in before)  # nothing recorded was run again
    with Store.open(out) as store:
        assert store.latest_checkpoint()[1] == BUDGET

    assert main(["inspect", str(out), "--top", "3", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["controller"] == "program" and len(info["top"]) == 3
    assert main(["inspect", str(out), "--top", "3"]) == 0
    shown = capsys.readouterr().out
    for top in info["top"]:
        assert str(nos.parse(top["rule"])) == top["rule"]
        assert top["rule"].splitlines()[-1] in shown  # the rule's text, not its tokens
