"""The search on a real local Ray: each controller, the store, resume after SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
import ray  # noqa: E402

from nos.search import config as cfg  # noqa: E402
from nos.search.driver import Search  # noqa: E402
from nos.search.store import Store  # noqa: E402
from tests.helpers import check_run  # noqa: E402

TINY = {
    "search": {"budget": 6, "batch": 3, "seed": 0},
    "task": {"name": "digits"},
    "evaluation": {"epochs": 0.5, "lr": 0.05, "time_limit": 60},
    "workers": {"count": 2, "threads": 1},
}


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    os.environ["NOS_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             _node_ip_address="127.0.0.1", log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def tiny_config(**tables) -> dict:
    data = {t: dict(v) for t, v in TINY.items()}
    for table, values in tables.items():
        data.setdefault(table, {}).update(values)
    return cfg.validate(data, "test")


@pytest.mark.parametrize("controller", ["random", "evolution", "rnn"])
def test_each_controller_runs_a_search(ray_cluster, tmp_path, controller):
    config = tiny_config(search={"controller": controller})
    summary = Search(config, tmp_path / "run").run()
    rows = check_run(tmp_path / "run", 6)
    assert summary.finished == 6
    assert all(r.rule and r.tokens for r in rows)
    assert any(r.status == "ok" and r.reward > 0 for r in rows)
    with Store.open(tmp_path / "run") as store:
        checkpoint = store.latest_checkpoint()
        assert checkpoint is not None and checkpoint[0] == 1 and checkpoint[1] == 6
        assert summary.top and summary.top[0]["reward"] == max(r.reward for r in rows)


def test_a_finished_run_reruns_as_a_no_op_and_refuses_another_config(ray_cluster, tmp_path):
    out = tmp_path / "run"
    Search(tiny_config(search={"controller": "random"}), out).run()
    before = check_run(out, 6)
    Search(tiny_config(search={"controller": "random"}), out).run()
    assert check_run(out, 6) == before
    with pytest.raises(ValueError, match="budget"):
        Search(tiny_config(search={"controller": "random", "budget": 9}), out).run()


def test_the_python_api_searches_from_a_dict_and_from_a_toml_file(ray_cluster, tmp_path):
    import nos

    data = {t: dict(v) for t, v in TINY.items()}
    data["search"]["controller"] = "random"
    summary = nos.search(data, tmp_path / "from-dict")
    assert summary.out == tmp_path / "from-dict" and summary.finished == 6
    check_run(summary.out, 6)
    _write_toml(tmp_path / "tiny.toml", data)
    assert nos.search(tmp_path / "tiny.toml", tmp_path / "from-toml").finished == 6
    with pytest.raises(ValueError, match="unknown table"):
        nos.search({"serach": {}}, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def _write_toml(path, config: dict) -> None:
    lines = []
    for table, values in config.items():
        lines.append(f"[{table}]")
        for key, value in values.items():
            if value is None:
                continue
            if isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            elif isinstance(value, str):
                lines.append(f'{key} = "{value}"')
            else:
                lines.append(f"{key} = {value!r}".replace("'", '"'))
    path.write_text("\n".join(lines) + "\n")


def test_resume_after_the_driver_is_killed(ray_cluster, tmp_path):
    budget = 24
    config = tiny_config(search={"controller": "rnn", "budget": budget, "batch": 4},
                         task={"name": "mnist1d"}, evaluation={"epochs": 3.0})
    toml = tmp_path / "run.toml"
    _write_toml(toml, {k: v for k, v in config.items() if v})
    out = tmp_path / "run"
    command = [sys.executable, "-m", "nos.cli", "search", "--config", str(toml), "--out", str(out),
               "--address", ray_cluster, "--quiet"]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    recorded = 0
    while time.time() < deadline and recorded < 3:
        time.sleep(0.2)
        if (out / "nos.db").exists():
            try:
                with Store.open(out) as store:
                    recorded = store.count() - len(store.pending())
            except Exception:  # noqa: BLE001 - the file may be mid-creation
                continue
    assert driver.poll() is None, driver.communicate()
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert 0 < recorded < budget
    finish = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finish.returncode == 0, finish.stderr
    rows = check_run(out, budget)
    assert len({r.id for r in rows}) == budget
    with Store.open(out) as store:
        assert store.latest_checkpoint()[1] == budget
