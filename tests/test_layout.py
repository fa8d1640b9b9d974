"""The package's shape: no import cycles, no private names reached for across modules,
no module named like a standard-library one, and each stage only imports stages below it.

Imports are read with ``ast`` from the source, so imports inside functions count too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Where each importable package lives in the source tree (see pyproject.toml).
PACKAGES = {"nos": ROOT / "nos", "nos.controllers": ROOT / "controllers",
            "nos.grammar": ROOT / "grammar"}
# The pipeline, lowest stage first: a module may import its own stage and those before it.
# A learned optimizer is an optimizer (stage nos.optim); its meta-training trains children.
STAGES = [("nos.lang",), ("nos.compile",), ("nos.optim", "nos.learned"), ("nos.export",),
          ("nos.train", "nos.learned.meta"),
          ("nos.analysis",),  # measures of trained children, read by the reports
          ("nos.search", "nos.controllers"), ("nos.report",), ("nos.cli",), ("nos",)]


def module_files() -> dict[str, Path]:
    modules = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


MODULES = module_files()


def resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import in the module."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = resolve(module, node, path.name == "__init__.py")
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in MODULES:
                    found.append((submodule, None, node.lineno))
                else:
                    found.append((source, alias.name, node.lineno))
    return [(m, n, line) for m, n, line in found if m.split(".")[0] == "nos"]


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for target, _, _ in imports_of(module):
            if target in MODULES and target != module:
                edges[module].add(target)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def stage(module: str) -> int:
    """The index of the module's stage: its longest matching package prefix."""
    matches = [(len(p), i) for i, packages in enumerate(STAGES) for p in packages
               if module == p or module.startswith(p + ".")]
    return max(matches)[1]


def test_the_checker_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_modules():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_private_name_is_imported_from_another_module():
    bad = [f"{m}:{line} imports {name} from {source}"
           for m in MODULES for source, name, line in imports_of(m)
           if name and name.startswith("_") and source != m]
    assert not bad, "\n".join(bad)


def test_scripts_import_no_private_name_of_the_package():
    bad = []
    for path in sorted((ROOT / "benchmarks").glob("*.py")) + sorted(
            (ROOT / "experiments").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nos"):
                bad += [f"{path.name}:{node.lineno} {alias.name}" for alias in node.names
                        if alias.name.startswith("_")]
    assert not bad, bad


def test_no_module_is_named_like_a_standard_library_module():
    stdlib = set(sys.stdlib_module_names)
    bad = [m for m in MODULES if m.rsplit(".", 1)[-1] in stdlib]
    assert not bad, f"modules named like standard-library ones: {bad}"


def test_each_stage_imports_only_stages_below_it():
    bad = [f"{m} (stage {STAGES[stage(m)]}) imports {t} (stage {STAGES[stage(t)]})"
           for m, targets in graph().items() for t in targets if stage(t) > stage(m)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("name", ["parse", "Rule", "RuleSyntaxError", "Optimizer", "baselines",
                                  "evaluate", "search"])
def test_the_public_api_is_what_the_package_exports(name):
    import nos

    assert name in nos.__all__
    assert callable(getattr(nos, name))


def test_nos_evaluate_is_the_function_after_every_module_is_imported():
    code = ("import importlib, pkgutil, nos\n"
            "for m in pkgutil.walk_packages(nos.__path__, 'nos.'):\n"
            "    importlib.import_module(m.name)\n"
            "import inspect\n"
            "assert inspect.isfunction(nos.evaluate), nos.evaluate\n"
            "assert inspect.isfunction(nos.search), nos.search\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
