"""Where tasks come from: the built-in ones, ``register_task``, entry points, files, modules.

A task is named in one of these ways (``[task] name``, ``--task``, ``nos.evaluate(task=)``):

    mnist1d                   a built-in task
    mytask                    a task registered in this process (``nos.register_task``), or
                              by an installed package's entry point in the group ``nos.tasks``
                              (``[project.entry-points."nos.tasks"] mytask = "mypkg.tasks:MyTask"``)
    mypkg.tasks:MyTask        an importable module and a factory in it
    path/to/task.py:MyTask    a Python file and a factory in it; a relative path is taken
                              from ``base`` (the search: the config file's folder, or the
                              current one for the command line)

A factory is a callable, usually the task's class, that takes the task's options as
keyword arguments and returns a task (the protocol: ``nos.train.tasks.base``).

``resolve_task`` gives a :class:`TaskSource`: small, picklable and independent of the
process that made it, so it is what the search sends to its Ray workers.  A registered
factory travels inside it (pickled with the actor's arguments, by value when it was
defined in a script); a module or an entry point is imported again on the worker (its
package must be installed there); a file is found by its contents' hash in the worker's
working directory (the search ships the file's folder as Ray's ``working_dir``), then on
its ``sys.path``, then at its absolute path.  Every mistake is a :class:`TaskError`, one
line naming what is wrong, raised before anything trains.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from nos.train.tasks.base import Task
from nos.train.tasks.charlm import CharLM
from nos.train.tasks.cifar10 import Cifar10
from nos.train.tasks.digits import Digits
from nos.train.tasks.mnist1d import Mnist1D

BUILTIN: dict[str, type[Task]] = {task.name: task for task in (Mnist1D, Digits, Cifar10, CharLM)}
ENTRY_POINT_GROUP = "nos.tasks"
# what a task must have, in the order they are checked (see nos.train.tasks.base)
REQUIRED = ("name", "batch_size", "epochs", "load", "build_model", "loss", "metric", "count")
METHODS = ("load", "build_model", "loss", "metric", "count")
SPEC_FORMS = "'file.py:Factory' or 'package.module:Factory'"

_registered: dict[str, Callable[..., Any]] = {}


class TaskError(ValueError):
    """A task that cannot be found, imported, made or used; the message is one line."""


def register_task(name: str, factory: Callable[..., Any]) -> None:
    """Make ``factory`` (a task class, or a callable taking the options and returning a task)
    known as ``name`` in this process; a search sends it to its workers.  Registering a
    name again replaces the factory; a built-in task's name is refused."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][\w.-]*", name):
        raise TaskError(f"a task name is a word (letters, digits, _ . -), got {name!r}")
    if name in BUILTIN:
        raise TaskError(f"{name!r} is a built-in task; register yours under another name")
    if not callable(factory):
        raise TaskError(f"task {name!r}: the factory must be callable, got {factory!r}")
    _registered[name] = factory


def unregister_task(name: str) -> None:
    """Forget a task registered with ``register_task`` (no error if it is not)."""
    _registered.pop(name, None)


def task_names() -> list[str]:
    """The names a task can be given by: the built-in ones (the default, mnist1d, first),
    then those registered in this process, then the installed entry points'."""
    names = [*BUILTIN, *_registered]
    names += [ep.name for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in names]
    return names


@dataclass(frozen=True)
class TaskSource:
    """How to get a task's factory, wherever this is unpickled; see the module docstring.

    ``kind`` is ``builtin``, ``registered``, ``entry_point``, ``module`` or ``file``;
    ``target`` is ``module:attr`` (module, entry point) or the attribute (file);
    ``base`` is the folder that relative path options (``path_options``) are taken from.
    """

    name: str
    kind: str
    target: str = ""
    path: str | None = None
    sha256: str | None = None
    base: str | None = None
    factory: Callable[..., Any] | None = field(default=None, compare=False, repr=False)

    def load(self) -> Callable[..., Any]:
        """The factory."""
        if self.kind == "builtin":
            return BUILTIN[self.name]
        if self.kind == "registered":
            return self.factory
        if self.kind == "file":
            return _attribute(_import_file(self._locate(), self.sha256), self.target,
                              f"task file {self.path}")
        module, attr = self.target.split(":", 1)
        return _attribute(_import_module(module), attr, f"task module {module!r}")

    def make(self, options: dict | None = None) -> Any:
        """The task made with ``options`` (relative path options taken from ``base``),
        checked against the protocol."""
        factory = self.load()
        task = _call(factory, self.name, self._with_paths(factory, dict(options or {})))
        check_task(task, self.name)
        return task

    def record(self) -> dict[str, Any]:
        """What a run stores of its task's origin; ``spec`` names it from any folder."""
        spec = {"file": f"{self.path}:{self.target}", "module": self.target,
                "entry_point": self.target}.get(self.kind, self.name)
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "spec": spec}
        if self.kind == "file":
            out.update(path=self.path, sha256=self.sha256)
        if self.kind == "registered":
            out["factory"] = (f"{getattr(self.factory, '__module__', '?')}."
                              f"{getattr(self.factory, '__qualname__', repr(self.factory))}")
        return out

    def _with_paths(self, factory: Callable[..., Any], options: dict) -> dict:
        if self.base is None:
            return options
        for key in getattr(factory, "path_options", ()):
            value = options.get(key)
            if isinstance(value, (str, os.PathLike)):
                options[key] = os.path.join(self.base, os.path.expanduser(os.fspath(value)))
        return options

    def _locate(self) -> Path:
        """This node's copy of the file: the working directory's (Ray's ``working_dir``),
        one on ``sys.path``, or the file itself, whichever has the same contents."""
        assert self.path is not None and self.sha256 is not None
        original = Path(self.path)
        for folder in (os.getcwd(), *sys.path, str(original.parent)):
            candidate = Path(folder or os.curdir) / original.name
            if candidate.is_file() and file_hash(candidate) == self.sha256:
                return candidate
        raise TaskError(f"task file {original.name} (sha256 {self.sha256[:12]}) is not on "
                        f"this node: not in {os.getcwd()}, on sys.path or at {self.path}")


def resolve_task(name: str, base: str | Path | None = None) -> TaskSource:
    """The source of the task called ``name``; a relative file is taken from ``base``
    (default: the current folder).  Imports what it names, so a bad one fails here."""
    if not isinstance(name, str) or not name.strip():
        raise TaskError(f"a task is a name or {SPEC_FORMS}, got {name!r}")
    folder = os.path.abspath(base) if base is not None else None
    if ":" in name:
        source = _resolve_spec(name, folder or os.getcwd(), folder)
    elif name in BUILTIN:
        source = TaskSource(name, "builtin", base=folder)
    elif name in _registered:
        source = TaskSource(name, "registered", base=folder, factory=_registered[name])
    else:
        found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if not found:
            raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}; "
                            f"or give {SPEC_FORMS}")
        source = TaskSource(name, "entry_point", f"{found[0].module}:{found[0].attr}",
                            base=folder)
    factory = source.load()
    if not callable(factory):
        raise TaskError(f"task {name!r}: {source.target or name} is not callable (a task "
                        f"factory takes the options and returns a task), got {factory!r}")
    return source


def _resolve_spec(name: str, where: str, base: str | None) -> TaskSource:
    left, attr = name.rsplit(":", 1)
    if not left or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", attr):
        raise TaskError(f"task {name!r}: expected {SPEC_FORMS}")
    if _is_file(left):
        path = Path(absolute_spec(name, where).rsplit(":", 1)[0])
        if not path.is_file():
            raise TaskError(f"task file {path} does not exist (task {name!r})")
        return TaskSource(name, "file", attr, str(path), file_hash(path), base)
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", left):
        raise TaskError(f"task {name!r}: {left!r} is neither a .py file nor a module name; "
                        f"expected {SPEC_FORMS}")
    return TaskSource(name, "module", f"{left}:{attr}", base=base)


def absolute_spec(name: str, base: str | Path | None = None) -> str:
    """``name`` with a relative task file made absolute from ``base`` (default: the
    current folder); any other name unchanged."""
    if not isinstance(name, str) or ":" not in name:
        return name
    left, attr = name.rsplit(":", 1)
    if _is_file(left):
        left = os.path.abspath(os.path.join(base or os.getcwd(), os.path.expanduser(left)))
        return f"{left}:{attr}"
    return name


def make_task(name: str, options: dict | None = None, base: str | Path | None = None) -> Any:
    """``resolve_task(name, base).make(options)``: the task, checked."""
    return resolve_task(name, base).make(options)


def check_task(task: Any, name: str) -> None:
    """Raise TaskError naming the first part of the protocol that ``task`` lacks."""
    kind = type(task).__name__
    missing = [attr for attr in REQUIRED if not hasattr(task, attr)]
    if missing:
        raise TaskError(f"task {name!r}: the {kind} it makes lacks {', '.join(missing)} "
                        f"(a task has {', '.join(REQUIRED)}; see nos.train.tasks.base)")
    for method in METHODS:
        if not callable(getattr(task, method)):
            raise TaskError(f"task {name!r}: {kind}.{method} must be a method")
    if not isinstance(task.name, str) or not task.name:
        raise TaskError(f"task {name!r}: {kind}.name must be a non-empty string, "
                        f"got {task.name!r}")
    if isinstance(task.batch_size, bool) or not isinstance(task.batch_size, int) \
            or task.batch_size < 1:
        raise TaskError(f"task {name!r}: {kind}.batch_size must be a whole number >= 1, "
                        f"got {task.batch_size!r}")
    if isinstance(task.epochs, bool) or not isinstance(task.epochs, (int, float)) \
            or not task.epochs > 0:
        raise TaskError(f"task {name!r}: {kind}.epochs must be a positive number, "
                        f"got {task.epochs!r}")
    if not isinstance(getattr(task, "metric_name", "accuracy"), str):
        raise TaskError(f"task {name!r}: {kind}.metric_name must be a string")
    if not isinstance(getattr(task, "higher_is_better", True), bool):
        raise TaskError(f"task {name!r}: {kind}.higher_is_better must be true or false")


def file_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _is_file(left: str) -> bool:
    return left.endswith(".py") or "/" in left or os.sep in left


def _call(factory: Callable[..., Any], name: str, options: dict) -> Any:
    if isinstance(factory, type) and is_dataclass(factory):
        allowed = [f.name for f in fields(factory) if f.init]
        for option in options:
            if option not in allowed:
                raise TaskError(f"unknown option {option!r} for task {name}; "
                                f"its options: {', '.join(allowed) or 'none'}")
    try:
        return factory(**options)
    except ValueError:
        raise  # the task's own message about an option's value
    except Exception as err:  # a user's factory: whatever it raises is named in one line
        raise TaskError(f"task {name!r} could not be made with options {options}: "
                        f"{_one_line(err)}") from None


def _import_module(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except Exception as err:
        raise TaskError(f"task module {module!r} does not import: {_one_line(err)}") from None


def _import_file(path: Path, sha256: str | None) -> Any:
    """The file as a module named after its stem and contents, imported once per process;
    its folder joins ``sys.path`` so that it can import the files beside it."""
    stem = re.sub(r"\W", "_", path.stem)
    module_name = f"nos_task_{stem}_{(sha256 or file_hash(path))[:12]}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise TaskError(f"task file {path} cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up while it runs
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[module_name]
        raise TaskError(f"task file {path} does not import: {_one_line(err)}") from None
    return module


def _attribute(module: Any, attr: str, where: str) -> Any:
    value = module
    for part in attr.split("."):
        if not hasattr(value, part):
            raise TaskError(f"{where} has no attribute {attr!r}")
        value = getattr(value, part)
    return value


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
