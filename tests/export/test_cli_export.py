"""``nos export`` on the command line: a real subprocess writes a module that imports
without nos; bad input gets one line on stderr, exit status 2 and nothing written; the
README's example runs as written, with nos made unimportable."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nos.cli import main
from nos.export.optax_module import optax_source
from nos.export.torch_module import torch_source
from tests.export.helpers import load_module

ROOT = Path(__file__).resolve().parents[2]
WITHOUT_NOS = "import sys\nsys.modules['nos'] = None  # import nos fails from here on\n"


def nos_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nos.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def listing(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_export_writes_a_module_that_imports_on_its_own(tmp_path):
    out = nos_cli("export", "adam", "--torch", "-o", "nos_adam.py", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "" and "nos_adam.py" in out.stderr
    written = (tmp_path / "nos_adam.py").read_text()
    assert written == torch_source("adam")
    module = load_module(written, tmp_path, "copy")
    assert issubclass(module.Adam, torch.optim.Optimizer)


@pytest.mark.parametrize("args,words", [
    (["adamm", "--torch", "-o", "x.py"], "unknown rule 'adamm': neither a named rule (sgd,"),
    (["adam", "-o", "x.py"], "one of the arguments --torch --optax is required"),
])
def test_bad_input_exits_2_in_one_line_and_writes_nothing(tmp_path, args, words):
    before = listing(tmp_path)
    out = nos_cli("export", *args, cwd=tmp_path)
    assert out.returncode == 2, out
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("nos export: error: ") and words in out.stderr, out.stderr
    assert out.stdout == ""
    assert listing(tmp_path) == before


def run_main(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(args)
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("args,words", [
    (["g +", "--torch"], "line 1, column 4: unexpected end of the rule"),
    (["adam", "--torch", "--optax"], "not allowed with argument"),
    (["drop(g, g)", "--torch", "-o", "x.py"], "argument 2 of drop(x, p) must not depend on"),
    (["adam", "--torch", "--name", "class", "-o", "x.py"], "--name must be a Python identifier"),
    (["adam", "--optax", "--lr", "-1", "-o", "x.py"], "must be a finite number >= 0, got -1.0"),
    (["adam", "--torch", "-o", "missing/x.py"], "is not a writable directory"),
    (["adam", "--torch", "-o", "."], "it is a directory"),
    (["param seed = 1\nupdate = seed * g", "--torch", "-o", "x.py"], "'seed' has the name of"),
    (["param f = 0 in [0, 1]\nupdate = sum(where(f, g, 2)) * g", "--optax", "-o", "x.py"],
     "sum (line 2) of a where on params alone with a number and a tensor branch is not "
     "exported to optax"),
    (["newton_schulz(g, 3, -4, 2, t, 1e-7, 16)", "--optax", "-o", "x.py"],
     "argument 5 of newton_schulz(x, a, b, c, steps, eps, bits) (line 1) must read params"),
    (["param f = 1 in [0, 1]\nupdate = where(f, noise, g)", "--torch", "-o", "x.py"],
     "in a branch of a where on params alone is not exported"),
    (["g / gnorm(g) + drop(g, 0.5)", "--torch", "-o", "x.py"],
     "a random draw (noise, annealed_noise, drop) in a rule with reductions over every "
     "parameter (gsum, gnorm, clip_gnorm, ...) is not exported"),
    (["schedulefree_adamw", "--optax", "-o", "x.py"],
     "the views (eval_w, train_w) are not exported to optax, which has no evaluation mode"),
    (["winmax(g, 0.5)", "--torch", "-o", "x.py"],
     "line 1, column 11: the window of winmax must be a whole number in [1, 1000]"),
])
def test_more_bad_input(tmp_path, monkeypatch, capsys, args, words):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(["export", *args], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and words in err, err
    assert list(tmp_path.iterdir()) == []


def test_rules_from_files_and_standard_output(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "found.nos").write_text("# found by a search\nexp(sign(g) * sign(m)) * g\n")
    code, out, _ = run_main(["export", "found.nos", "--optax", "--name", "found"], capsys)
    assert code == 0 and out == optax_source("exp(sign(g) * sign(m)) * g", name="found")
    code, out, _ = run_main(["export", "powersign", "--torch", "--lr", "0.5"], capsys)
    assert code == 0 and "class Powersign(torch.optim.Optimizer)" in out
    assert "DEFAULT_LR = 0.5" in out


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Take the rule with you")
    return text[start:text.index("\n## ", start + 1)]


def blocks(section: str, language: str) -> list[str]:
    parts = section.split("```")
    return [part[len(language) + 1:] for part in parts[1::2] if part.startswith(language + "\n")]


def test_the_readme_example_runs_without_nos(tmp_path, monkeypatch, capsys):
    pytest.importorskip("optax")
    section = readme_section()
    monkeypatch.chdir(tmp_path)
    for line in blocks(section, "sh")[0].strip().splitlines():
        command = shlex.split(line)
        assert command[:2] == ["nos", "export"]
        assert run_main(command[1:], capsys)[0] == 0, line
    code = WITHOUT_NOS + "\n".join(blocks(section, "python"))
    # one thread: on a busy machine, threads waiting for one another make the tiny
    # model's steps 100 times slower
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert "loss" in out.stdout and (tmp_path / "adam_state.pt").exists()
