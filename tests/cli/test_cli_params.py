"""`--param KEY=VALUE` on `nos eval`, `nos baselines` and `nos inspect --retrain`: the value
syntax, the params reaching nos.Optimizer in every training, their record, and bad input
(one line, exit status 2, before any training)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import nos
from nos.optim.param_options import (
    ParamError,
    check_params,
    format_params,
    format_value,
    parse_param_options,
    parse_value,
)

ROOT = Path(__file__).resolve().parents[2]
SHORT = ["--task", "digits", "--epochs", "1", "--lr", "0.01", "--seed", "0"]


def nos_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The command as a real process, one thread for torch (two run side by side)."""
    return subprocess.run([sys.executable, "-m", "nos.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def nos_cli_many(commands: dict, env: dict | None = None) -> dict:
    """Several commands, two at a time."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {key: pool.submit(nos_cli, *args, env=env) for key, args in commands.items()}
        return {key: future.result() for key, future in futures.items()}


# --- the value syntax ---------------------------------------------------------------


@pytest.mark.parametrize("text, value", [
    ("5", 5), ("-3", -3), ("6", 6), ("1e-3", 1e-3), ("0.9", 0.9), ("1e3", 1000.0),
    (".5", 0.5), ("-2.5e-4", -2.5e-4), ("inf", math.inf),
    ("0.9,0.95", (0.9, 0.95)), ("0.9, 0.95", (0.9, 0.95)), ("none,1e-3", (None, 1e-3)),
    ("3.4445,-4.775,2.0315", (3.4445, -4.775, 2.0315)), ("1,2", (1, 2)),
    ("true", True), ("false", False), ("True", True), ("none", None), ("None", None),
    ("match_rms_adamw", "match_rms_adamw"), ("cuda:0", "cuda:0"),
])
def test_values_read_as_numbers_tuples_bools_none_or_text(text, value):
    parsed = parse_value(text)
    assert parsed == value and type(parsed) is type(value)
    if isinstance(value, tuple):
        assert [type(v) for v in parsed] == [type(v) for v in value]


def test_an_integer_literal_stays_an_int():
    assert parse_param_options(["ns_steps=6", "eps=1e-8"]) == {"ns_steps": 6, "eps": 1e-8}
    assert isinstance(parse_param_options(["ns_steps=6"])["ns_steps"], int)
    assert isinstance(parse_param_options(["wd=0.0"])["wd"], float)


def test_options_become_keyword_arguments_in_order():
    params = parse_param_options(["betas=0.9,0.95", "weight_decay=0.1", "amsgrad=true",
                                  "adjust_lr_fn=match_rms_adamw", "eps=none", "k = 2"])
    assert params == {"betas": (0.9, 0.95), "weight_decay": 0.1, "amsgrad": True,
                      "adjust_lr_fn": "match_rms_adamw", "eps": None, "k": 2}
    assert parse_param_options(None) == {} and parse_param_options([]) == {}


@pytest.mark.parametrize("value", [5, 0.9, 1e-8, -0.0, 0.1 + 0.2, True, False, None,
                                   (0.9, 0.95), (None, 1e-3), (1, 2), "match_rms_adamw"])
def test_format_value_reads_back_as_the_same_value(value):
    again = parse_value(format_value(value))
    assert again == value and type(again) is type(value)


def test_format_params_writes_the_option_syntax():
    params = {"beta1": 0.8, "betas": (0.9, 0.95), "flag": True, "eps": None}
    assert format_params(params) == "beta1=0.8 betas=0.9,0.95 flag=true eps=none"
    assert parse_param_options(format_params(params).split()) == params


@pytest.mark.parametrize("options, words", [
    (["betas"], ["'betas' is not KEY=VALUE"]),
    (["=3"], ["'=3' has no KEY"]),
    (["beta1="], ["'beta1=' has no VALUE"]),
    (["1x=2"], ["'1x'", "not a keyword name"]),
    (["beta1=0.8", "wd=0", "beta1=0.9"], ["beta1 given twice", "0.8 and 0.9"]),
    (["betas=0.9,"], ["betas", "empty element"]),
    (["betas=0.9,x"], ["betas", "'x' is not a number"]),
    (["betas=true,0.9"], ["betas", "'true' is not a number"]),
])
def test_malformed_options_are_refused_in_one_line(options, words):
    with pytest.raises(ParamError) as caught:
        parse_param_options(options)
    message = str(caught.value)
    assert all(w in message for w in words), message
    assert "\n" not in message


# --- the check against nos.Optimizer ------------------------------------------------


@pytest.mark.parametrize("params, words", [
    ({"beta1": 1.5}, ["beta1=1.5 for rule adam: ", "Invalid beta1: 1.5, must be in [0, 1)"]),
    ({"betas": (0.9, 0.9, 0.9)}, ["betas=0.9,0.9,0.9 for rule adam: ", "betas"]),
    ({"bogus": 1}, ["bogus=1 for rule adam", "'bogus'"]),  # the optimizer's words
    ({"weight_decay": 0.1, "eps": -1.0}, ["eps=-1.0 for rule adam", "Invalid eps"]),
    ({"lr": 0.1}, ["lr=0.1 for rule adam", "sets this keyword itself"]),
])
def test_check_names_the_key_and_the_rule(params, words):
    with pytest.raises(ParamError) as caught:
        check_params("adam", params, lr=0.01, name="adam")
    message = str(caught.value)
    assert all(w in message for w in words), message
    assert "\n" not in message and "wd=" not in message


def test_check_passes_what_the_optimizer_takes():
    check_params("adam", {"beta1": 0.8})
    check_params("adam", {"betas": (0.0, 0.999), "weight_decay": 0.1, "eps": 1e-6}, lr=0.1)
    check_params("momentum", {"momentum": 0.5})
    check_params("sign(g)", {})  # nothing given: nothing to check


def test_a_rule_the_optimizer_refuses_anyway_is_left_to_its_training():
    check_params("noise(g)", {"beta1": 0.5}, lr=-1.0)  # refused without the params too


# --- the params reach every training --------------------------------------------------


class _Spy(nos.Optimizer):
    made: list[dict] = []

    def __init__(self, params, rule="adam", lr=None, total_steps=None, **kwargs):
        _Spy.made.append(dict(kwargs))
        super().__init__(params, rule, lr, total_steps, **kwargs)


@pytest.mark.parametrize("batched", [False, True])
def test_every_training_of_an_evaluation_gets_the_params(monkeypatch, batched):
    import nos.train.evaluation as evaluation
    import nos.train.grid as grid

    monkeypatch.setattr(evaluation, "Optimizer", _Spy)
    monkeypatch.setattr(grid, "Optimizer", _Spy)
    _Spy.made = []
    params = {"betas": (0.0, 0.999), "weight_decay": 1e-4}
    result = nos.evaluate("adam", "digits", epochs=0.25, lr_grid=(0.01, 0.1), grid_epochs=0.25,
                          batched_grid=batched, params=params)
    assert result.status == "ok" and result.params == params
    trainings = 2 if batched else 3  # the grid (one batched model, or one per rate), the run
    assert len(_Spy.made) == trainings
    assert all(kw["betas"] == (0.0, 0.999) and kw["weight_decay"] == 1e-4 for kw in _Spy.made)


def test_evaluate_with_refused_params_is_invalid_before_training():
    result = nos.evaluate("adam", "digits", epochs=0.5, lr=0.01, params={"beta1": 1.5})
    assert result.status == "invalid" and result.steps == 0
    assert "beta1=1.5" in result.error and "must be in [0, 1)" in result.error
    assert result.params == {"beta1": 1.5}


def test_retrain_trains_and_records_with_the_params(tmp_path):
    from nos.report.summary import retrain
    from nos.search import config as cfg
    from nos.search.store import Store

    config = cfg.identity(cfg.validate({"search": {"controller": "random", "budget": 1},
                                        "task": {"name": "digits"},
                                        "evaluation": {"epochs": 0.5, "lr": 0.05}}, "test"))
    rule = "m_hat"
    with Store.create_or_open(tmp_path / "run", config) as store:
        (eval_id,) = store.add_proposals(0, [((0, 1), rule)])
        store.record(eval_id, status="ok", reward=0.8, lr=0.05, seconds=1.0)
        text = retrain(store, 1, 0.5, 1, None, baselines=("adam",), progress=False,
                       params={"beta1": 0.5})
        rows = store.retrains()
        with pytest.raises(ParamError, match=r"beta1=1.5 for rule top1 \(m_hat\): Invalid beta1"):
            retrain(store, 1, 0.5, 1, None, baselines=("adam",), progress=False,
                    params={"beta1": 1.5})
        assert len(store.retrains()) == 2  # refused before any training
    assert "--param beta1=0.5" in text.splitlines()[0]
    assert [r["source"] for r in rows] == ["top1", "baseline:adam"]
    assert all(r["details"]["params"] == {"beta1": 0.5} for r in rows)
    assert all(r["status"] == "ok" for r in rows)


# --- the command line -----------------------------------------------------------------


def test_eval_and_baselines_train_with_the_param_and_record_it():
    """Real runs of the command: the param changes the training (the default is the same
    evaluation without it); both commands record it and train alike."""
    runs = nos_cli_many({
        "eval": ["eval", "adam", *SHORT, "--json", "--param", "betas=0.0,0.999"],
        "baselines": ["baselines", "--names", "adam", *SHORT[:-2], "--json",
                      "--param", "betas=0.0,0.999"],
    })
    for name, out in runs.items():
        assert out.returncode == 0, (name, out.stderr)
    changed, baselines = (json.loads(runs[k].stdout) for k in ("eval", "baselines"))
    default = nos.evaluate("adam", "digits", epochs=1, lr=0.01, seed=0)
    assert default.status == changed["status"] == "ok"
    assert default.params == {} and changed["params"] == {"betas": [0.0, 0.999]}
    assert changed["reward"] != default.reward
    assert changed["loss_curve"] != default.loss_curve
    assert baselines["params"] == {"betas": [0.0, 0.999]}
    assert baselines["baselines"][0]["rewards"] == [changed["reward"]]


@pytest.mark.parametrize("args, expected", [
    (["eval", "adam", "--param", "beta1=1.5"],
     "--param beta1=1.5 for rule adam: Invalid beta1: 1.5, must be in [0, 1)"),
    (["eval", "adam", "--param", "betas"], "--param 'betas' is not KEY=VALUE"),
])
def test_bad_params_exit_2_with_one_line_before_any_training(tmp_path, args, expected):
    """A real run; mnist1d's data would be generated into NOS_CACHE_DIR by a training."""
    cache = tmp_path / "cache"
    out = nos_cli(*args, env={"NOS_CACHE_DIR": str(cache)})
    assert out.returncode == 2 and out.stdout == "", out.stderr
    assert out.stderr.startswith(f"nos eval: error: {expected}")
    assert len(out.stderr.splitlines()) == 1
    assert not cache.exists() or not any(cache.iterdir())


def test_the_text_output_names_the_params(capsys):
    from nos.cli import main

    assert main(["eval", "adam", *SHORT, "--param", "beta1=0.0", "--param", "eps=1e-6"]) == 0
    assert "params     beta1=0.0 eps=1e-06" in capsys.readouterr().out.splitlines()
    assert main(["baselines", "--names", "adam", *SHORT[:-2], "--param", "weight_decay=0.001"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "trained with --param weight_decay=0.001"


@pytest.mark.parametrize("args, expected", [
    (["eval", "adam", "--param", "betas=0.9,0.9,0.9"],
     "--param betas=0.9,0.9,0.9 for rule adam: "),
    (["eval", "adam", "--param", "bogus=1"], "--param bogus=1 for rule adam: "),
    (["eval", "adam", "--lr", "0.1", "--param", "lr=0.2"],
     "--param lr=0.2 for rule adam: the training sets this keyword itself"),
    (["eval", "sign(g) * m", "--param", "beta1=2"], "--param beta1=2 for rule 'sign(g) * m"),
    (["eval", "adam", "--param", "=3"], "--param '=3' has no KEY before '='"),
    (["eval", "adam", "--param", "weight_decay=0.1", "--param", "weight_decay=0.2"],
     "--param weight_decay given twice"),
    (["eval", "adam", "--param", "betas=0.9,x"], "--param betas: '0.9,x': 'x' is not"),
    (["baselines", "--names", "adam,sgd", "--param", "beta1=0.5"],
     "--param beta1=0.5 for rule sgd: "),
    (["inspect", "RUN", "--retrain", "1", "--param", "beta1=0.5"],
     "--param beta1=0.5 for rule top1 (sign(g)): "),
    (["inspect", "RUN", "--param", "beta1=0.5"], "--param is for --retrain"),
])
def test_each_command_refuses_bad_params_in_one_line(tmp_path, monkeypatch, capsys, args,
                                                      expected):
    from nos.cli import main
    from nos.search.store import Store
    from tests.report.test_inspect import recorded_run

    monkeypatch.setenv("NOS_CACHE_DIR", str(tmp_path / "cache"))
    run = recorded_run(tmp_path / "run")
    assert main([str(run) if a == "RUN" else a for a in args]) == 2
    out = capsys.readouterr()
    assert out.out == "" and len(out.err.splitlines()) == 1, out.err
    assert out.err.startswith(f"nos {args[0]}: error: {expected}"), out.err
    assert not (tmp_path / "cache").exists()
    with Store.open(run) as store:
        assert store.retrains() == []
