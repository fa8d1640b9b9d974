"""`nos inspect DIR --generalization`: the top rules and the baselines trained again and
their minima measured (JSON, text, plot), the rank correlations, and bad input refused in
one line with exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from nos.cli import main
from nos.report.generalization import correlations, print_generalization
from tests.report.test_inspect import PNG, recorded_run


def nos_inspect(*args: str, cache: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nos.cli", "inspect", *args],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NOS_CACHE_DIR": cache})


def run_record(gap: float, **measures: float | None) -> dict:
    return {"status": "ok", "gap": gap, **measures}


def test_correlations_rank_each_measure_against_the_gap():
    runs = [run_record(gap, sharpness=s, eigenvalue=e, ablation_area=a, test_metric=t)
            for gap, s, e, a, t in [(0.01, 1.0, 5.0, 0.9, 0.5), (0.02, 2.0, 4.0, 0.8, 0.5),
                                    (0.03, 3.0, 3.0, 0.7, 0.5), (0.04, 9.0, 2.0, None, 0.5)]]
    runs.append({"status": "diverged", "gap": None})
    got = correlations([{"runs": runs[:2]}, {"runs": runs[2:]}])
    assert got["sharpness"] == {"spearman": 1.0, "n": 4}
    assert got["eigenvalue"] == {"spearman": -1.0, "n": 4}
    assert got["ablation_area"] == {"spearman": -1.0, "n": 3}  # the missing area left out
    assert got["test_metric"]["spearman"] is None  # no spread: no correlation


def test_generalization_trains_measures_and_correlates(tmp_path, capsys):
    run = recorded_run(tmp_path / "run")
    png = tmp_path / "out.png"
    out = nos_inspect(str(run), "--generalization", "1", "--seeds", "1", "--json",
                      "--plot", str(png), cache=str(tmp_path / "cache"))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)["generalization"]
    assert report["task"] == "digits" and report["gap"] == "train accuracy - test accuracy"
    names = [c["name"] for c in report["candidates"]]
    assert names[0] == "top1" and report["candidates"][0]["rule"] == "sign(g)"
    assert "baseline:adam" in names and len(names) == 6
    for candidate in report["candidates"]:
        (measured,) = candidate["runs"]
        assert measured["status"] == "ok", measured
        assert measured["gap"] == pytest.approx(measured["train_metric"]
                                                - measured["test_metric"])
        assert measured["sharpness"] >= 0 and measured["eigenvalue"] != 0
        assert 0 <= measured["ablation_area"] <= 1
        curve = measured["ablation"]
        assert curve["scores"][0] == pytest.approx(measured["test_metric"])  # nothing ablated
        assert curve["units"] == 16 + 32  # the digits child's feature maps
    assert {c["n"] for c in report["correlations"].values()} == {6}
    assert png.read_bytes()[:8] == PNG
    assert (tmp_path / "out_generalization.png").read_bytes()[:8] == PNG

    print_generalization(report)
    text = capsys.readouterr().out
    assert "gap = train accuracy - test accuracy" in text
    assert "Spearman correlation with the gap over 6 networks: epsilon-sharpness" in text
    assert "baseline:momentum" in text and "sign(g)" in text


@pytest.mark.parametrize("args, message", [
    (["--generalization", "0"], "--generalization: must be at least 1"),
    (["--generalization", "--task", "nosuchtask"], "nosuchtask"),
])
def test_bad_input_is_one_line_and_exit_status_2(tmp_path, args, message):
    run = recorded_run(tmp_path / "run")
    before = (run / "nos.db").read_bytes()
    out = nos_inspect(str(run), *args, cache=str(tmp_path / "cache"))
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stdout == ""
    assert (run / "nos.db").read_bytes() == before


@pytest.mark.parametrize("args, message", [
    (["--generalization", "--param", "nosuchparam=1"], "nosuchparam"),
    (["SECOND", "--generalization"], "--generalization measures one run, got 2 directories"),
])
def test_bad_input_is_refused_before_any_training(tmp_path, capsys, args, message):
    run = recorded_run(tmp_path / "run")
    before = (run / "nos.db").read_bytes()
    args = [str(run) if a == "SECOND" else a for a in args]
    assert main(["inspect", str(run), *args]) == 2
    out = capsys.readouterr()
    assert message in out.err and len(out.err.strip().splitlines()) == 1, out.err
    assert out.out == ""
    assert (run / "nos.db").read_bytes() == before
