"""Bad input: the parser under fuzzing, random token lists, and the command line's
one-line errors (exit status 2, nothing changed on disk); and the security rules."""

from __future__ import annotations

import json
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
from nos.search.fingerprint import fingerprint
from nos.search.space import Space

ROOT = Path(__file__).resolve().parents[2]
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


@pytest.mark.parametrize("count", [4_000, pytest.param(10_000, marks=pytest.mark.slow)])
def test_random_token_lists_compile_or_get_a_status(count):
    space = Space()
    rng = np.random.default_rng(1)
    statuses: dict[str, int] = {}
    for _ in range(count):
        tokens = space.sample(rng)
        result = fingerprint(space.to_text(tokens))
        statuses[result.status] = statuses.get(result.status, 0) + 1
    assert sum(statuses.values()) == count
    assert set(statuses) <= {"ok", "invalid", "degenerate"} and statuses["ok"] > count // 2


# --- the command line ---------------------------------------------------------------


def nos_cli(*args: str, cwd: Path | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nos.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd,
                          env=None if env is None else {**os.environ, **env})


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
    ("[evaluation]\nlr_grid = []\n", ["[evaluation] lr_grid", "empty list", "bad.toml"]),
    ("[evaluation]\nlr_grid = [nan]\n", ["[evaluation] lr_grid", "nan is not", "bad.toml"]),
    ("[evaluation]\nschedule = 'bogus'\n",
     ["[evaluation] schedule", "unknown schedule 'bogus'", "bad.toml"]),
    ("[evaluation]\nschedule = 'sgdr:T_0=50,T_x=2'\n",
     ["[evaluation] schedule", "unknown option 'T_x'", "bad.toml"]),
    ("[evaluation]\nschedule = {name = 'sgdr', T_0 = -5}\n",
     ["[evaluation] schedule", "T_0 must be a positive integer", "bad.toml"]),
    ("[evaluation]\nlr = -1\n", ["[evaluation] lr must be a positive, finite", "bad.toml"]),
    ("[evaluation]\nlr = nan\n", ["[evaluation] lr must be a positive, finite", "bad.toml"]),
    ("[evaluation]\nlr = inf\n", ["[evaluation] lr must be a positive, finite", "bad.toml"]),
    ("[evaluation]\nepochs = 0\n", ["[evaluation] epochs must be a positive", "bad.toml"]),
    ("[evaluation]\ngrid_epochs = -1.0\n", ["[evaluation] grid_epochs", "bad.toml"]),
    ("[evaluation]\nbatch_size = 0\n", ["[evaluation] batch_size must be a whole", "bad.toml"]),
    ("[evaluation]\ntime_limit = -5\n", ["[evaluation] time_limit", "bad.toml"]),
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
    (["parse", "update = g; update = m"], "a rule has one 'update = ...' or 'w = ...'"),
])
def test_command_line_errors_exit_2(tmp_path, args, words):
    before = snapshot(tmp_path)
    out = nos_cli(*args, cwd=tmp_path)
    assert out.returncode == 2, out
    assert words in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert snapshot(tmp_path) == before


BAD_SETTINGS = [
    (["eval", "adam", "--schedule", "bogus"], "--schedule is not usable: unknown schedule 'bogus'"),
    (["eval", "adam", "--schedule", "sgdr:T_0=50,T_x=2"], "unknown option 'T_x'"),
    (["eval", "adam", "--schedule", "sgdr:T_0=50,T_mult=two"], "T_mult must be an integer"),
    (["eval", "adam", "--schedule", "sgdr:T_0=0"], "T_0 must be a positive integer"),
    (["eval", "adam", "--schedule", "sgdr:T_0"], "is not key=value"),
    (["eval", "g", "--lr", "-1"], "--lr must be a positive, finite number, got -1.0"),
    (["eval", "g", "--lr", "nan"], "--lr must be a positive, finite number, got nan"),
    (["eval", "g", "--lr", "inf"], "--lr must be a positive, finite number, got inf"),
    (["eval", "g", "--lr", "0"], "--lr must be a positive, finite number, got 0.0"),
    (["eval", "g", "--lr-grid", ","], "--lr-grid must be a list of positive, finite numbers"),
    (["eval", "g", "--lr-grid", "0.1,0"], "0.0 is not"),
    (["eval", "g", "--lr-grid", "0.1,nan"], "nan is not"),
    (["eval", "g", "--grid-epochs", "0"], "--grid-epochs must be a positive"),
    (["eval", "g", "--epochs", "-2"], "--epochs must be a positive"),
    (["eval", "g", "--epochs", "inf"], "--epochs must be a positive, finite number"),
    (["eval", "g", "--snapshots", "2"], "--snapshots needs an SGDR schedule"),
    (["eval", "g", "--snapshots", "-1", "--schedule", "sgdr"], "--snapshots must be a whole"),
    (["eval", "g", "--time-limit", "nan"], "--time-limit must be"),
    (["baselines", "--names", "adam", "--lr", "-0.1"], "--lr must be a positive"),
    (["baselines", "--names", "adam", "--schedule", "cosine:eta_min=x"], "eta_min"),
]


@pytest.mark.parametrize("args,words", BAD_SETTINGS, ids=[" ".join(a) for a, _ in BAD_SETTINGS])
def test_bad_evaluation_settings_exit_2_before_any_training(tmp_path, args, words):
    """The child task's data would be generated into NOS_CACHE_DIR by the first training."""
    before = snapshot(tmp_path)
    out = nos_cli(*args, "--task", "mnist1d", cwd=tmp_path,
                  env={"NOS_CACHE_DIR": str(tmp_path / "cache")})
    assert out.returncode == 2, out
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert words in out.stderr and out.stderr.startswith(f"nos {args[0]}: error: "), out.stderr
    assert out.stdout == ""
    assert snapshot(tmp_path) == before  # no cache: nothing was loaded, let alone trained


class _Untouchable:
    """A task that fails the test if anything loads its data or builds its child."""

    name, batch_size, epochs = "untouchable", 32, 1

    def load(self, device="cpu"):
        raise AssertionError("data loaded despite a bad setting")

    def build_model(self):
        raise AssertionError("child built despite a bad setting")


@pytest.mark.parametrize("settings,message", [
    ({"lr": -1.0}, "lr must be a positive, finite number, got -1.0"),
    ({"lr": float("nan")}, "lr must be a positive, finite number, got nan"),
    ({"lr_grid": []}, "lr_grid must be a list of positive, finite numbers, got an empty list"),
    ({"lr_grid": [0.1, -0.1]}, "lr_grid must be a list of positive, finite numbers; -0.1 is not"),
    ({"grid_epochs": 0}, "grid_epochs must be a positive, finite number, got 0"),
    ({"epochs": float("inf")}, "epochs must be a positive, finite number, got inf"),
    ({"batch_size": 0}, "batch_size must be a whole number >= 1, got 0"),
    ({"snapshots": 3}, "snapshots needs an SGDR schedule"),
    ({"schedule": "bogus"}, "schedule is not usable: unknown schedule 'bogus'"),
    ({"schedule": {"name": "sgdr", "T_x": 2}}, "unknown option 'T_x' for schedule 'sgdr'"),
    ({"schedule": "sgdr:T_0=50,T_mult=0.5"}, "T_mult must be an integer, got 0.5"),
])
def test_evaluate_raises_on_a_bad_setting_before_touching_the_task(settings, message):
    from nos.train.settings import SettingError

    with pytest.raises(SettingError) as caught:
        nos.evaluate("adam", _Untouchable(), **settings)
    assert isinstance(caught.value, ValueError) and message in str(caught.value)
    assert caught.value.key == next(iter(settings))


def test_the_three_edges_give_the_same_message(tmp_path):
    """nos.evaluate, the command line and a config file name the same problem alike."""
    from nos.search import config as cfg

    with pytest.raises(ValueError) as direct:
        nos.evaluate("adam", _Untouchable(), schedule="sgdr:T_0=50,T_x=2")
    toml = write(tmp_path / "x.toml", "[evaluation]\nschedule = 'sgdr:T_0=50,T_x=2'\n")
    with pytest.raises(cfg.ConfigError) as loaded:
        cfg.load(toml)
    command = nos_cli("eval", "adam", "--schedule", "sgdr:T_0=50,T_x=2", cwd=tmp_path)
    assert str(loaded.value) == f"{toml}: [evaluation] {direct.value}"
    assert command.stderr.strip() == f"nos eval: error: --{direct.value}"


def test_a_bad_rule_is_still_a_status_not_an_error():
    result = nos.evaluate("sing(g)", "digits", epochs=1, lr=0.1)
    assert result.status == "invalid" and "did you mean 'sign'" in result.error


def test_a_schedule_too_long_for_the_run_is_refused_before_training(monkeypatch, tmp_path):
    monkeypatch.setenv("NOS_CACHE_DIR", str(tmp_path))
    with pytest.raises(ValueError, match=r"schedule is not usable: warmup must be in \[0, "):
        nos.evaluate("adam", "digits", epochs=1, lr=0.1,
                     schedule={"name": "warmup_cosine", "warmup": 10_000})
    out = nos_cli("eval", "adam", "--task", "digits", "--lr", "0.1", "--schedule",
                  "warmup_cosine:warmup=10000", env={"NOS_CACHE_DIR": str(tmp_path)})
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("nos eval: error: --schedule is not usable: warmup must be")
    assert len(out.stderr.strip().splitlines()) == 1


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
    # a call of the builtins (not a method such as Optimizer.eval, nor ``eval()`` in text)
    pattern = re.compile(r"(^|[^_.\w`])(?<!def )(eval|exec)\(|pickle\.loads?\(")
    offenders = []
    for folder in ("nos", "controllers", "grammar"):
        for path in (ROOT / folder).rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                code = line.split("#")[0]
                if pattern.search(code):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, offenders


def test_sql_uses_bound_parameters_only():
    sources = [path.read_text() for path in (ROOT / "nos").rglob("*.py")]
    assert sum("execute(" in source for source in sources) >= 2  # the store's modules
    for source in sources:
        for match in re.finditer(r"execute(?:many)?\((f?)([\"'])", source):
            assert match.group(1) != "f", "SQL built with an f-string"
        if "execute(" in source:
            assert ".format(" not in source and "%s" not in source


def test_checkpoints_load_with_weights_only():
    for path in list((ROOT / "nos").rglob("*.py")) + list((ROOT / "controllers").rglob("*.py")):
        for line in path.read_text().splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}: {line.strip()}"


ENV_DIFF = ("import os, json, sys\n"
            "before = dict(os.environ)\n"
            "for name in sys.argv[1:]:\n"
            "    __import__(name)\n"
            "after = dict(os.environ)\n"
            "print(json.dumps({k: after.get(k) for k in set(before) | set(after)\n"
            "                  if before.get(k) != after.get(k)}))\n")


def _clean_env(**extra: str) -> dict:
    """The environment of a fresh shell: no RAY_* or NOS_* left by this test process."""
    keep = ("PATH", "HOME", "LANG", "TMPDIR")
    return {**{k: os.environ[k] for k in keep if k in os.environ}, **extra}


def _env_changes(*modules: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", ENV_DIFF, *modules], capture_output=True,
                         text=True, timeout=120, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_environment_is_untouched_by_import():
    """Importing nos changes no variable; the workers module only asks Ray for its loopback
    default (unless the user set that variable) on top of what ``import ray`` itself sets."""
    env = _clean_env()
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in env
    assert _env_changes("nos", "nos.train.evaluation", "nos.search.driver", "nos.cli",
                        "nos.search.config", "nos.search.store", env=env) == {}
    by_ray = _env_changes("ray", env=env)
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in by_ray
    assert _env_changes("nos.search.workers", env=env) == {**by_ray,
                                                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    mine = _clean_env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1")
    assert _env_changes("nos.search.workers", env=mine) == by_ray  # the user's value is kept


def test_local_ray_listens_on_loopback_without_a_dashboard():
    """In a fresh environment (nothing set by this test process), the local Ray that
    ``nos search`` starts binds 127.0.0.1 and has no dashboard."""
    probe = ("from nos.search.workers import start_ray\n"
             "start_ray(None, 1)\n"
             "import ray\n"
             "from ray._private import worker\n"
             "print(ray.get_runtime_context().gcs_address)\n"
             "print(sorted({n['NodeManagerAddress'] for n in ray.nodes()}))\n"
             "print(repr(worker._global_node.address_info.get('webui_url')))\n"
             "ray.shutdown()\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=180, env=_clean_env(), cwd=ROOT)
    assert out.returncode == 0, out.stderr
    gcs, nodes, webui = out.stdout.strip().splitlines()[-3:]
    assert gcs.startswith("127.0.0.1:")
    assert nodes == "['127.0.0.1']"
    assert webui in ("None", "''")


@pytest.mark.parametrize("name", ["quick.toml", "paper.toml"])
def test_shipped_configs_are_valid(name):
    from nos.controllers import make_controller

    from nos.search import config as cfg
    from nos.search.space import Space, SpaceConfig
    from nos.train.tasks import task_names

    config = cfg.load(ROOT / "experiments" / name)
    assert config["task"]["name"] in task_names()
    space = Space(SpaceConfig.from_dict(config["space"]))
    make_controller(config["search"]["controller"], space, seed=0, **config["controller"])
