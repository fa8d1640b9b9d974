"""Meta-training: a short run lowers the meta-loss; settings are checked; the command line
meta-trains, evaluates the checkpoint like a rule and refuses bad input in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nos.cli import main
from nos.learned import CoordinateLSTM, load_checkpoint
from nos.learned.meta import MetaSettings, meta_train, training_loss
from tests.learned.tiny_task import Blobs

TASK_FILE = Path(__file__).with_name("tiny_task.py")
TASK = f"{TASK_FILE}:Blobs"
SHORT = ["--meta-steps", "4", "--unroll", "5", "--episode-steps", "10"]


def test_a_short_meta_training_lowers_the_meta_loss():
    """30 meta-steps on the blobs: the loss of children the LSTM never trained on (other
    seeds), measured with the real optimizer, falls well below the untrained LSTM's."""
    task = Blobs()
    settings = MetaSettings(meta_steps=30, unroll=10, episode_steps=40, seed=0)
    result = meta_train(task, settings, device="cpu")
    torch.manual_seed(settings.seed)
    untrained = CoordinateLSTM()  # the weights meta-training started from
    seeds = (100, 101, 102)
    before = [training_loss(untrained, task, steps=40, seed=s, device="cpu") for s in seeds]
    after = [training_loss(result.network, task, steps=40, seed=s, device="cpu") for s in seeds]
    assert sum(after) < 0.6 * sum(before), (before, after)
    assert len(result.losses) == 30 and result.episodes == 8 and result.skipped == 0
    assert sum(result.losses[-5:]) < sum(result.losses[:5])
    record = result.record()
    assert record["task"] == "blobs" and record["meta_steps"] == 30 and record["seed"] == 0
    assert len(record["meta_losses"]) == 30


@pytest.mark.parametrize("settings, message", [
    (MetaSettings(meta_steps=0), "meta_steps must be"),
    (MetaSettings(unroll=-1), "unroll must be"),
    (MetaSettings(meta_lr=0.0), "meta_lr must be"),
    (MetaSettings(clip=float("inf")), "clip must be"),
])
def test_bad_settings_are_refused_before_training(settings, message):
    with pytest.raises(ValueError, match=message):
        meta_train(Blobs(), settings, device="cpu")


def _nos(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("nos")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "nos.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_nos_learn_then_nos_eval_on_the_command_line(tmp_path):
    out = tmp_path / "blobs.pt"
    learned = _nos("learn", "--task", TASK, "--out", str(out), *SHORT, "--seed", "2",
                   "--quiet", cwd=tmp_path)
    assert learned.returncode == 0, learned.stderr
    assert f"learned optimizer written to {out}" in learned.stdout
    _, training = load_checkpoint(out)
    assert (training["task"], training["seed"], training["meta_steps"]) == ("blobs", 2, 4)
    evaluated = _nos("eval", str(out), "--task", TASK, "--lr", "1", "--epochs", "1", "--json",
                     cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    assert result["status"] == "ok" and result["rule"] == str(out) and result["lr"] == 1.0
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    refused = _nos("eval", str(bad), "--task", TASK, cwd=tmp_path)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert "bad.pt is not a learned optimizer" in refused.stderr


@pytest.mark.parametrize("args, message", [
    (["--out", "x.txt"], "must end in .pt"),
    (["--out", "x.pt", "--task", "nosuchtask"], "nosuchtask"),
    (["--out", "x.pt", "--meta-steps", "0"], "--meta-steps"),
    (["--out", "x.pt", "--meta-lr", "-1"], "--meta-lr"),
    (["--out", "missing/x.pt"], "not a writable directory"),
    (["--out", "x.pt", "--device", "abacus"], "unknown device 'abacus'"),
    ([], "--out"),
])
def test_nos_learn_refuses_bad_input_in_one_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    try:
        status = main(["learn", *args, *SHORT[2:]])
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2 and message in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_nos_baselines_takes_a_learned_optimizer_among_the_names(tmp_path, capsys):
    out = tmp_path / "blobs.pt"
    assert main(["learn", "--task", TASK, "--out", str(out), *SHORT, "--quiet"]) == 0
    capsys.readouterr()
    status = main(["baselines", "--task", TASK, "--names", f"adam,{out}", "--lr", "0.5",
                   "--epochs", "1", "--json"])
    assert status == 0
    names = {row["name"] for row in json.loads(capsys.readouterr().out)["baselines"]}
    assert names == {"adam", str(out)}
    assert main(["baselines", "--task", TASK, "--names", f"{tmp_path}/none.pt"]) == 2
    assert "no such file" in capsys.readouterr().err
