"""Bad input: the parser under fuzzing, random token lists, and the command line's
one-line errors (exit status 2, nothing changed on disk); and the security rules."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nos
from nos.fingerprint import fingerprint
from nos.space import Space

ROOT = Path(__file__).resolve().parents[1]
RULE_CHARS = "gwmtvTe0123456789.+-*/^(),;=#[] \n\tabcdilnoprsux_"
FRAGMENTS = ["g", "m", "w", "exp(", "log(", "clip(", "drop(", "max(", ")", "(", "+", "-", "*",
             "/", "^", "1e-8", "1e999", ",", "let ", "state ", "param ", "update", " = ", "\n",
             ";", " in ", "[", "0", "1", "inf", "(0, 1]", "x", "noise", "ld", "cd(", "#c\n",
             "\\\n", "\x00", "é", "--", "**"]


def _fuzz(text: str) -> None:
    try:
        rule = nos.parse(text)
    except nos.RuleSyntaxError as err:
        assert err.line >= 1 and err.column >= 1 and err.reason
        return
    assert nos.parse(str(rule)) == rule


@settings(max_examples=1000, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(alphabet=RULE_CHARS, max_size=80),
                 st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join),
                 st.text(max_size=40)))
def test_parser_fuzz_raises_only_rule_syntax_error(text):
    _fuzz(text)


@pytest.mark.slow
@settings(max_examples=100_000, deadline=2000,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(alphabet=RULE_CHARS, max_size=120),
                 st.lists(st.sampled_from(FRAGMENTS), max_size=60).map("".join),
                 st.text(max_size=60)))
def test_parser_fuzz_long(text):
    _fuzz(text)


def test_pathological_texts_are_refused_quickly():
    for text in ["(" * 100_000, "-" * 5_000 + "g", "g" + "+g" * 20_000, "exp(" * 2_000,
                 "g" * 200_000]:
        with pytest.raises(nos.RuleSyntaxError):
            nos.parse(text)


def test_ten_thousand_random_token_lists_compile_or_get_a_status():
    space = Space()
    rng = np.random.default_rng(1)
    statuses: dict[str, int] = {}
    for _ in range(10_000):
        tokens = space.sample(rng)
        result = fingerprint(space.to_text(tokens))
        statuses[result.status] = statuses.get(result.status, 0) + 1
    assert sum(statuses.values()) == 10_000
    assert set(statuses) <= {"ok", "invalid", "degenerate"} and statuses["ok"] > 5_000


# --- the command line ---------------------------------------------------------------


def nos_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nos.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*")}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


CONFIG_ERRORS = [
    ("[search]\nbudget = 'ten'\n", ["[search] budget must be an integer", "bad.toml"]),
    ("[search]\nbuget = 10\n", ["unknown key 'buget'", "[search]", "bad.toml"]),
    ("[serch]\nbudget = 10\n", ["unknown table [serch]", "bad.toml"]),
    ("[search]\nbudget = 10\n[[broken", ["not valid TOML", "bad.toml"]),
    ("[search]\ncontroller = 'genetic'\n", ["unknown controller 'genetic'", "bad.toml"]),
    ("[task]\nname = 'imagenet'\n", ["unknown task 'imagenet'", "bad.toml"]),
    ("[workers]\ncount = 0\n", ["[workers] count must be at least 1", "bad.toml"]),
    ("[evaluation]\nlr_grid = [0.1, -1]\n", ["lr_grid must be a list of positive", "bad.toml"]),
    ("[space]\nunits = 'two'\n", ["units"]),
    ("[controller]\nhiden = 32\n", ["hiden"]),
]


@pytest.mark.parametrize("text,words", CONFIG_ERRORS, ids=[w[0] for _, w in CONFIG_ERRORS])
def test_malformed_config_is_named_and_changes_nothing(tmp_path, text, words):
    config = write(tmp_path / "bad.toml", text)
    before = snapshot(tmp_path)
    out = nos_cli("search", "--config", str(config), "--out", str(tmp_path / "run"))
    assert out.returncode == 2, out
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Traceback" not in out.stderr
    for word in words:
        assert word in out.stderr, out.stderr
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("args,words", [
    (["search", "--config", "missing.toml", "--out", "run"], "config file not found"),
    (["search", "--controller", "genetic", "--out", "run"], "unknown controller 'genetic'"),
    (["search", "--budget", "0", "--out", "run"], "must be at least 1"),
    (["eval", "g +", "--task", "digits"], "unexpected end"),
    (["eval", "g", "--task", "imagenet"], "imagenet"),
    (["eval", "g", "--task", "digits", "--lr-grid", "a,b"], "expected numbers"),
    (["eval", "g", "--task", "cifar10", "--data-dir", "nowhere"], "nowhere"),
    (["baselines", "--names", "adam,adma"], "unknown baseline 'adma'"),
    (["inspect", "nowhere"], "nowhere"),
    (["parse", "update = g; update = m"], "repeated 'update'"),
])
def test_command_line_errors_exit_2(tmp_path, args, words):
    before = snapshot(tmp_path)
    out = nos_cli(*args, cwd=tmp_path)
    assert out.returncode == 2, out
    assert words in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert snapshot(tmp_path) == before


def test_inspect_refuses_what_is_not_a_run(tmp_path):
    text_file = write(tmp_path / "notes.txt", "hello")
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE t (x)")
    before = snapshot(tmp_path)
    for path in (text_file, other, tmp_path):
        out = nos_cli("inspect", str(path))
        assert out.returncode == 2 and "not a nos run" in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before


def test_search_into_an_unwritable_place_exits_2(tmp_path):
    blocker = write(tmp_path / "file", "x")
    before = snapshot(tmp_path)
    for out_dir in (blocker / "run", Path("/proc/nos-run")):
        out = nos_cli("search", "--budget", "1", "--out", str(out_dir))
        assert out.returncode == 2, out
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert snapshot(tmp_path) == before


# --- security -------------------------------------------------------------------------


def test_the_package_never_calls_eval_or_exec_or_bare_pickle_load():
    pattern = re.compile(r"(^|[^_.\w])(eval|exec)\(|pickle\.loads?\(")
    offenders = []
    for folder in ("nos", "controllers", "grammar"):
        for path in (ROOT / folder).rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                code = line.split("#")[0]
                if pattern.search(code):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, offenders


def test_sql_uses_bound_parameters_only():
    source = (ROOT / "nos" / "store.py").read_text()
    for match in re.finditer(r"execute(?:many)?\((f?)([\"'])", source):
        assert match.group(1) != "f", "SQL built with an f-string"
    assert ".format(" not in source and "%s" not in source


def test_checkpoints_load_with_weights_only():
    for path in list((ROOT / "nos").rglob("*.py")) + list((ROOT / "controllers").rglob("*.py")):
        for line in path.read_text().splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}: {line.strip()}"


def test_environment_is_untouched_by_import():
    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0") == "0"


def test_local_ray_listens_on_loopback_without_a_dashboard():
    probe = ("from nos.workers import start_ray\n"
             "start_ray(None, 1)\n"
             "import ray\n"
             "from ray._private import worker\n"
             "print(ray.get_runtime_context().gcs_address)\n"
             "print(sorted({n['NodeManagerAddress'] for n in ray.nodes()}))\n"
             "print(repr(worker._global_node.address_info.get('webui_url')))\n"
             "ray.shutdown()\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr
    gcs, nodes, webui = out.stdout.strip().splitlines()[-3:]
    assert gcs.startswith("127.0.0.1:")
    assert nodes == "['127.0.0.1']"
    assert webui in ("None", "''")


@pytest.mark.parametrize("name", ["quick.toml", "paper.toml"])
def test_shipped_configs_are_valid(name):
    from nos import config as cfg
    from nos.controllers import make_controller
    from nos.space import Space, SpaceConfig
    from nos.tasks import task_names

    config = cfg.load(ROOT / "experiments" / name)
    assert config["task"]["name"] in task_names()
    space = Space(SpaceConfig.from_dict(config["space"]))
    make_controller(config["search"]["controller"], space, seed=0, **config["controller"])
