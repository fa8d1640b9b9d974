"""Tasks of one's own: the three ways in (a file or module spec, ``nos.register_task``, an
entry point), the protocol's checks with their one-line errors, a task source that
travels (pickled) to another folder, and a lower-is-better metric made a reward."""

from __future__ import annotations

import math
import pickle
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import nos
from nos.train.tasks import (
    TaskError,
    absolute_spec,
    get_task,
    resolve_task,
    reward,
    reward_rule,
    task_names,
)
from nos.train.tasks.registry import file_hash, unregister_task

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "experiments" / "custom_task"
SPEC = "task.py:DiabetesTask"


@pytest.fixture(autouse=True)
def _own_sys_path(monkeypatch):
    """A task file's folder joins sys.path when it is imported: only for this test."""
    monkeypatch.setattr(sys, "path", list(sys.path))


@pytest.fixture
def example(tmp_path) -> Path:
    """The worked example's task file, copied into a folder of its own."""
    folder = tmp_path / "mine"
    folder.mkdir()
    shutil.copy(EXAMPLE / "task.py", folder / "task.py")
    return folder


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


TINY = '''
    from dataclasses import dataclass
    from typing import ClassVar

    import torch
    from nos import Task, TaskData


    @dataclass(frozen=True)
    class Tiny(Task):
        name: ClassVar[str] = "tiny"
        batch_size: ClassVar[int] = 8
        epochs: ClassVar[int] = 1
        path_options: ClassVar[tuple] = ("data",)

        width: int = 4
        data: str = "data.csv"

        def make_data(self):
            g = torch.Generator().manual_seed(0)
            x = torch.randn(48, 3, generator=g)
            y = (x[:, 0] > 0).long()
            return TaskData(x[:32], y[:32], x[32:40], y[32:40], x[40:], y[40:])

        def build_model(self):
            return torch.nn.Sequential(torch.nn.Linear(3, self.width), torch.nn.ReLU(),
                                       torch.nn.Linear(self.width, 2))
    '''


def test_file_spec_from_a_base_folder_makes_the_task(example, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the base, not the current folder, anchors the file
    source = resolve_task(SPEC, base=example)
    assert source.kind == "file" and source.path == str(example / "task.py")
    assert source.sha256 == file_hash(example / "task.py")
    assert source.record()["spec"] == f"{example / 'task.py'}:DiabetesTask"
    task = source.make({"hidden": 8})
    assert task.name == "diabetes" and task.hidden == 8 and not task.higher_is_better
    data = task.load()
    assert data.train_y.dtype == torch.float32
    assert (len(data.train_x), len(data.val_x), len(data.test_x)) == (283, 71, 88)
    assert absolute_spec("mine/task.py:DiabetesTask") == f"{example / 'task.py'}:DiabetesTask"
    assert absolute_spec("digits") == "digits" and absolute_spec("a.b:C") == "a.b:C"
    with pytest.raises(TaskError, match=r"task file .*missing\.py does not exist"):
        resolve_task("missing.py:DiabetesTask", base=example)


def test_a_source_travels_pickled_and_finds_its_file_by_contents(example, tmp_path,
                                                                monkeypatch):
    """What a Ray worker does: the source arrives pickled, in a process whose working
    directory holds a copy of the file (Ray's working_dir), the original gone."""
    source = pickle.loads(pickle.dumps(resolve_task(SPEC, base=example)))
    shipped = tmp_path / "shipped"
    shutil.copytree(example, shipped)
    shutil.rmtree(example)
    monkeypatch.chdir(shipped)
    assert source.make().name == "diabetes"
    (shipped / "task.py").write_text("# edited\n")  # another file of that name is not it
    with pytest.raises(TaskError, match="task.py .* is not on this node"):
        source.make()


def test_path_options_are_taken_from_the_base(tmp_path):
    write(tmp_path / "cfg" / "tiny.py", TINY)
    task = resolve_task("tiny.py:Tiny", base=tmp_path / "cfg").make({"data": "d/x.csv"})
    assert task.data == str(tmp_path / "cfg" / "d" / "x.csv")
    assert resolve_task("tiny.py:Tiny", base=tmp_path / "cfg").make(
        {"data": "/abs/x.csv"}).data == "/abs/x.csv"


def test_registered_task_is_made_by_name_and_pickles_with_its_factory(tmp_path):
    module = write(tmp_path / "tiny_registered.py", TINY)
    factory = resolve_task(f"{module}:Tiny").load()
    nos.register_task("tiny-registered", factory)
    try:
        assert "tiny-registered" in task_names()
        source = resolve_task("tiny-registered")
        assert source.kind == "registered" and source.factory is factory
        assert pickle.loads(pickle.dumps(source)).make({"width": 5}).width == 5
        assert get_task("tiny-registered", width=2).width == 2
        result = nos.evaluate("adam", "tiny-registered", lr=0.01, epochs=1)
        assert result.status == "ok" and result.reward == result.val_accuracy
    finally:
        unregister_task("tiny-registered")
    with pytest.raises(TaskError, match="unknown task 'tiny-registered'"):
        resolve_task("tiny-registered")
    with pytest.raises(TaskError, match="'digits' is a built-in task"):
        nos.register_task("digits", factory)
    with pytest.raises(TaskError, match="must be callable"):
        nos.register_task("other", 3)


def test_entry_point_and_module_spec(tmp_path, monkeypatch):
    """An installed package's entry point (group nos.tasks), found by importlib.metadata."""
    write(tmp_path / "nos_tasks_demo" / "__init__.py", TINY)
    write(tmp_path / "nos_tasks_demo-0.1.dist-info" / "METADATA",
          "Metadata-Version: 2.1\nName: nos-tasks-demo\nVersion: 0.1\n")
    write(tmp_path / "nos_tasks_demo-0.1.dist-info" / "entry_points.txt",
          "[nos.tasks]\ntiny-demo = nos_tasks_demo:Tiny\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "tiny-demo" in task_names()
    source = resolve_task("tiny-demo")
    assert (source.kind, source.target) == ("entry_point", "nos_tasks_demo:Tiny")
    assert pickle.loads(pickle.dumps(source)).make({"width": 3}).width == 3
    module = resolve_task("nos_tasks_demo:Tiny")
    assert module.kind == "module" and module.make().name == "tiny"


BAD = [  # (the file's text, the spec, words the one-line error must hold)
    ("x = (\n", "bad.py:Task", ["bad.py does not import", "SyntaxError"]),
    ("import nos_no_such_module\n", "bad.py:Task",
     ["bad.py does not import", "No module named 'nos_no_such_module'"]),
    ("", "bad.py:Task", ["bad.py has no attribute 'Task'"]),
    ("Task = 3\n", "bad.py:Task", ["is not callable"]),
    ("class Task:\n    name = 't'\n    batch_size = 8\n    epochs = 1\n"
     "    def load(self, device): ...\n    def build_model(self): ...\n"
     "    def loss(self, o, t): ...\n    def count(self, t): ...\n",
     "bad.py:Task", ["lacks metric", "see nos.train.tasks.base"]),
    ("class Task:\n    name = 't'\n    batch_size = 0\n    epochs = 1\n"
     "    load = build_model = loss = metric = count = print\n",
     "bad.py:Task", ["Task.batch_size must be a whole number >= 1, got 0"]),
    ("from dataclasses import dataclass\nfrom nos import Task as Base\n"
     "@dataclass(frozen=True)\nclass Task(Base):\n    name = 't'\n    batch_size = 8\n"
     "    epochs = 1\n    def make_data(self): ...\n",
     "bad.py:Task", ["could not be made", "abstract method", "build_model"]),
    ("", "nos_no_such_module:Task",
     ["task module 'nos_no_such_module' does not import", "ModuleNotFoundError"]),
    ("", "nos.train.tasks.base:NoSuch", ["task module 'nos.train.tasks.base'",
                                         "no attribute 'NoSuch'"]),
    ("", "bad.py:", ["expected 'file.py:Factory' or 'package.module:Factory'"]),
    ("", "no such:Task", ["neither a .py file nor a module name"]),
    ("", "mnist2d", ["unknown task 'mnist2d'", "mnist1d, digits"]),
]


@pytest.mark.parametrize("text,spec,words", BAD, ids=[b[1] + str(i) for i, b in enumerate(BAD)])
def test_a_bad_task_is_one_line_naming_what_is_wrong(tmp_path, text, spec, words):
    write(tmp_path / "bad.py", text)
    with pytest.raises(TaskError) as caught:
        resolve_task(spec, base=tmp_path).make()
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_unknown_option_of_a_users_task_is_named(example):
    with pytest.raises(TaskError, match="unknown option 'hiden'.*hidden, test_fraction"):
        resolve_task(SPEC, base=example).make({"hiden": 8})


def test_lower_is_better_metric_becomes_one_over_one_plus_metric(example):
    task = resolve_task(SPEC, base=example).make()
    result = nos.evaluate("adam", task, lr=0.01, epochs=3, seed=0)
    assert result.status == "ok" and result.metric == "mse" and not result.higher_is_better
    assert result.reward == 1 / (1 + result.val_metric) and 0 < result.reward < 1
    assert result.val_curve[-1] == result.reward
    assert result.test_metric > 0 and result.val_accuracy is None
    assert result.test_accuracy is None
    # the metric is the mean squared error of the standardized target: a model that
    # predicts the mean scores about 1, a trained one less
    assert result.val_metric < 1.0
    # the grid picks the rate with the lowest validation mse: the highest reward
    picked = nos.evaluate("adam", task, lr_grid=[1e-4, 1e-2], grid_epochs=1, epochs=1)
    rewards = {point["lr"]: point["reward"] for point in picked.grid}
    assert picked.lr == max(rewards, key=rewards.get)
    assert reward(task, 0.0) == 1.0 and reward(task, 3.0) == 0.25
    assert reward_rule(task) == "1/(1+validation mse)"
    with pytest.raises(ValueError, match="must be non-negative"):
        reward(task, -0.5)


def test_a_classification_reward_is_its_accuracy(example):
    result = nos.evaluate("adam", "digits", lr=0.01, epochs=1, seed=0)
    assert result.metric == "accuracy" and result.higher_is_better
    assert result.reward == result.val_accuracy == result.val_metric
    assert result.test_accuracy == result.test_metric
    task = get_task("digits")
    data = task.load()
    assert reward(task, 0.75) == 0.75 and reward_rule(task) == "validation accuracy"
    assert math.isclose(task.metric(torch.eye(10)[data.val_y], data.val_y).item(),
                        len(data.val_y))
