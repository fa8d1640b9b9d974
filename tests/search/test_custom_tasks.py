"""Users' own tasks in a search: the worked example (experiments/custom_task) run from a
folder outside the repository on a real local Ray, a task registered in a user's script
reaching the workers (and a task file, shipped by Ray, as the funnel's transfer task),
and bad tasks refused on the command line before anything starts or is written.

(tests/search/test_cluster.py runs the worked example on a real cluster.)"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nos import cli
from nos.search.store import Store
from nos.train.tasks.registry import file_hash

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "experiments" / "custom_task"


def copy_example(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("task.py", "search.toml"):
        shutil.copy(EXAMPLE / name, folder / name)
    return folder


def user_env() -> dict[str, str]:
    """The environment of a user's shell: nothing of this test process's Ray."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("RAY_") and k != "PYTHONPATH"}


def run_nos(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 300):
    return subprocess.run([sys.executable, "-m", "nos.cli", *args], cwd=cwd, env=env or
                          user_env(), capture_output=True, text=True, timeout=timeout)


def check_example_run(run: Path, task_file: Path, budget: int) -> list:
    """Every evaluation recorded, rewards 1/(1+mse) of the raw validation mse kept beside
    them, and where the task came from in the run's meta."""
    with Store.open(run) as store:
        rows = store.evaluations()
        tasks = store.note("tasks")
    assert len(rows) == budget and all(r.status != "pending" for r in rows)
    trained = [r for r in rows if r.status == "ok"]
    assert trained, [(r.status, r.error) for r in rows]
    for r in trained:
        assert math.isclose(r.reward, 1 / (1 + r.details["val_metric"]), rel_tol=1e-12)
        assert 0 < r.reward < 1 and r.test_metric > 0  # the raw test mse
        assert r.details["val_curve"][-1] == r.reward
    assert tasks[0]["kind"] == "file" and tasks[0]["path"] == str(task_file)
    assert tasks[0]["sha256"] == file_hash(task_file)
    assert tasks[0]["reward"] == "1/(1+validation mse)"
    return rows


@pytest.mark.slow  # half a minute; test_cluster.py runs the same from outside the repository
def test_the_worked_example_runs_from_a_folder_outside_the_repository(tmp_path, capsys):
    folder = copy_example(tmp_path / "project")
    out = run_nos(["search", "--config", "search.toml", "--out", "run", "--budget", "4",
                   "--workers", "1", "--json"], cwd=folder)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["finished"] == 4
    check_example_run(folder / "run", folder / "task.py", 4)
    assert cli.main(["inspect", str(folder / "run")]) == 0
    assert "reward: 1/(1+validation mse)" in capsys.readouterr().out


SCRIPT = '''
    """A user's script: a task defined here, registered, searched with a funnel whose
    last stage also trains on a task file (the worked example's)."""
    import json
    from dataclasses import dataclass
    from typing import ClassVar

    import torch

    import nos


    @dataclass(frozen=True)
    class Line(nos.Task):
        name: ClassVar[str] = "line"
        batch_size: ClassVar[int] = 16
        epochs: ClassVar[int] = 1
        metric_name: ClassVar[str] = "mae"
        higher_is_better: ClassVar[bool] = False

        slope: float = 2.0

        def make_data(self):
            x = torch.linspace(-1, 1, 96).unsqueeze(1)
            y = self.slope * x.squeeze(1)
            return nos.TaskData(x[::2], y[::2], x[1::4], y[1::4], x[3::4], y[3::4])

        def build_model(self):
            return torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.Flatten(0))

        def loss(self, output, target):
            return torch.nn.functional.mse_loss(output, target)

        def metric(self, output, target):
            return (output - target).abs().sum()


    nos.register_task("line", Line)
    summary = nos.search({
        "search": {"controller": "random", "budget": 3, "batch": 3, "cache": False},
        "task": {"name": "line", "slope": 3.0},
        "evaluation": {"epochs": 1, "lr": 0.05, "lr_grid": [0.05], "time_limit": 60},
        "workers": {"count": 1},
        "funnel": {"baselines": ["adam"],
                   "stages": [{"epochs": 1, "seeds": 1, "promote": 1.0, "transfer_epochs": 1,
                               "tasks": ["line", "tasks/task.py:DiabetesTask"]}]},
    }, "run")
    print(json.dumps({"finished": summary.finished, "counts": summary.counts}))
    '''


def test_a_task_registered_in_a_script_reaches_the_workers(tmp_path):
    """The class lives only in the script (``__main__``): the workers get it pickled by
    value inside the task's source, for the search's evaluations and the funnel's.  The
    task file, named relative to the current folder, travels as Ray's working_dir."""
    (tmp_path / "search_line.py").write_text(textwrap.dedent(SCRIPT))
    (tmp_path / "tasks").mkdir()
    shutil.copy(EXAMPLE / "task.py", tmp_path / "tasks" / "task.py")
    out = subprocess.run([sys.executable, "search_line.py"], cwd=tmp_path, env=user_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["finished"] == 3
    with Store.open(tmp_path / "run") as store:
        rows, trials, tasks = store.evaluations(), store.trials(), store.note("tasks")
    assert tasks[0]["kind"] == "registered" and tasks[0]["factory"] == "__main__.Line"
    assert tasks[1]["kind"] == "file" and tasks[1]["path"] == str(tmp_path / "tasks/task.py")
    ok = [r for r in rows if r.status == "ok"]
    assert ok and all(math.isclose(r.reward, 1 / (1 + r.details["val_metric"])) for r in ok)
    assert all(t["status"] in ("ok", "diverged") for t in trials), \
        [(t["status"], t["error"]) for t in trials]  # random rules may diverge; none failed
    adam = {(t["stage"], t["task"]) for t in trials if t["source"] == "baseline"
            and t["status"] == "ok"}
    assert adam == {(0, "line"), (1, "line"), (1, "tasks/task.py:DiabetesTask")}
    for t in trials:
        if t["status"] == "ok":
            assert math.isclose(t["reward"], 1 / (1 + t["details"]["val_metric"]))


BAD_FILES = {
    "syntax.py": "def (\n",
    "imports.py": "import nos_no_such_module\n",
    "nothing.py": "X = 1\n",
    "partial.py": "class Task:\n    name = 'partial'\n    batch_size = 8\n    epochs = 1\n"
                  "    def load(self, device): ...\n    def build_model(self): ...\n",
}
BAD = [  # (task name in the config, or --task, and the words of the one-line error)
    ("syntax.py:Task", ["search.toml", "syntax.py does not import", "SyntaxError"]),
    ("imports.py:Task", ["search.toml", "No module named 'nos_no_such_module'"]),
    ("nothing.py:Task", ["search.toml", "nothing.py has no attribute 'Task'"]),
    ("partial.py:Task", ["search.toml", "lacks loss, metric, count"]),
    ("missing.py:Task", ["search.toml", "missing.py does not exist"]),
    ("nos_no_such_module:Task", ["search.toml", "task module 'nos_no_such_module'"]),
    ("imagenet", ["search.toml", "unknown task 'imagenet'"]),
    ("--task nothing.py:Task", ["--task", "nothing.py has no attribute 'Task'"]),
]


@pytest.mark.parametrize("name,words", BAD, ids=[b[0] for b in BAD])
def test_a_bad_task_is_one_line_exit_2_and_nothing_written(tmp_path, monkeypatch, capsys,
                                                          name, words):
    config = tmp_path / "conf"
    config.mkdir()
    for file, text in BAD_FILES.items():
        (config / file).write_text(text)
    args = ["search", "--config", str(config / "search.toml"), "--out", str(tmp_path / "run")]
    if name.startswith("--task"):
        monkeypatch.chdir(config)  # a file on the command line is taken from here
        args += name.split()
        name = "digits"
    (config / "search.toml").write_text(f'[task]\nname = "{name}"\n')
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = sorted(p.name for p in tmp_path.iterdir())
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no run directory


def test_task_files_are_taken_from_the_config_folder_or_the_current_one(tmp_path,
                                                                      monkeypatch, capsys):
    """A config's task file from the config's folder, --task's from the current one (nos
    eval, nos baselines)."""
    folder = copy_example(tmp_path / "project")
    (folder / "search.toml").write_text('[task]\nname = "task.py:DiabetesTask"\nhiden = 3\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert cli.main(["search", "--config", "project/search.toml", "--out", "run"]) == 2
    assert "unknown option 'hiden' for task task.py:DiabetesTask" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert cli.main(["eval", "adam", "--task", "project/task.py:DiabetesTask", "--lr", "0.01",
                     "--epochs", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"] == "diabetes" and result["metric"] == "mse"
    assert result["reward"] == 1 / (1 + result["val_metric"])
    assert cli.main(["baselines", "--task", "project/task.py:Nope", "--names", "adam"]) == 2
    err = capsys.readouterr().err
    assert "task.py has no attribute 'Nope'" in err and len(err.strip().splitlines()) == 1
