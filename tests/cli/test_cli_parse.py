"""`nos parse` as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import nos


def nos_cli(*args: str, stdin: str | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nos.cli", *args], input=stdin,
                          capture_output=True, text=True, cwd=cwd, timeout=120)


def test_parse_prints_canonical_text(tmp_path):
    out = nos_cli("parse", "((exp(sign(g)*sign(m))))*g", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "exp(sign(g) * sign(m)) * g\n"


def test_parse_reads_stdin_and_files(tmp_path):
    rule_file = tmp_path / "rule.nos"
    rule_file.write_text("state m = 0.5*m + g\nupdate = sign(m)\n")
    by_file = nos_cli("parse", str(rule_file))
    by_stdin = nos_cli("parse", "-", stdin=rule_file.read_text())
    assert by_file.returncode == by_stdin.returncode == 0
    assert by_file.stdout == by_stdin.stdout == "state m = 0.5 * m + g\nupdate = sign(m)\n"


def test_parse_json_and_latex():
    out = nos_cli("parse", "--json", "clip(m_hat, 1e-4) * exp(v_hat)")
    data = json.loads(out.stdout)
    assert data["rule"] == "clip(m_hat, 1e-4) * exp(v_hat)"
    assert data["state"] == ["m", "v"]
    assert data["params"] == {"beta1": 0.9, "beta2": 0.999}
    assert data["primitives"] == ["g", "t"]
    latex = nos_cli("parse", "--latex", "exp(g) - exp(m_hat)")
    assert latex.stdout.strip() == r"\Delta w = e^{g} - e^{\hat{m}}"


def test_parse_baseline_name_prints_its_full_text():
    out = nos_cli("parse", "adam")
    assert out.returncode == 0
    assert out.stdout.strip() == str(nos.parse(nos.baselines()["adam"].text))
    assert "state m = lerp(m, d, 1 - beta1)" in out.stdout


def test_bad_rule_exits_2_with_caret_message():
    out = nos_cli("parse", "exp(sign(g) * sing(m)) * g")
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert "line 1, column 15: unknown function 'sing'; did you mean 'sign'?" in lines[0]
    assert lines[2].index("^") == 2 + 14
    assert "Traceback" not in out.stderr


def test_help_explains_itself():
    out = nos_cli("--help")
    assert out.returncode == 0 and "parse" in out.stdout
    assert "baseline" in nos_cli("parse", "--help").stdout


def test_parse_param_prints_the_variant_a_keyword_picks(tmp_path):
    out = nos_cli("parse", "adam", "--param", "amsgrad=true", "--param", "betas=0.8,0.99",
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    variant = nos.parse(out.stdout)
    assert "amsgrad" not in variant.params and "where" not in variant.functions
    assert variant.params["beta1"] == 0.8 and variant.params["beta2"] == 0.99
    assert "state vmax = max(vmax, v)" in out.stdout
    plain = nos_cli("parse", "sgd", "--param", "momentum=0.9", cwd=tmp_path)
    assert "state buf" in plain.stdout and "nesterov" not in plain.stdout
    bad = nos_cli("parse", "adam", "--param", "amsgrad=2", cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.strip() == ("nos parse: error: Invalid amsgrad: 2, must be in [0, 1] "
                                  "for rule adam")
