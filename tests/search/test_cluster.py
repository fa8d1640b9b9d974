"""A real Ray cluster: ``ray start --head`` on loopback with token authentication, and
``nos search --address HOST:PORT`` on the worked example (experiments/custom_task) from a
folder outside the repository, its task file shipped to the workers by Ray.

Only this test's cluster is stopped: ``ray stop`` would stop every Ray of this machine's
user, so the processes whose command line names the cluster's own temporary folder are
ended instead, with everything they started.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from nos.train.tasks.registry import file_hash
from tests.search.test_custom_tasks import check_example_run, copy_example, run_nos, user_env

BUDGET = 4
RAY = Path(sys.executable).parent / "ray"
pytestmark = pytest.mark.skipif(not (Path("/proc/self").is_dir() and RAY.is_file()),
                                reason="needs Linux's /proc and the ray command")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_of(folder: Path) -> list[int]:
    """This cluster's processes: those naming ``folder`` and all their descendants."""
    parents: dict[int, int] = {}
    named = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        pid = int(entry.name)
        parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
        if str(folder) in cmdline:
            named.add(pid)
    found, grew = set(named), True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in found} - found
        grew = bool(children)
        found |= children
    found.discard(os.getpid())
    return sorted(found)


def stop_cluster(folder: Path) -> None:
    for sig, wait in ((signal.SIGTERM, 1.5), (signal.SIGKILL, 5.0)):
        pids = processes_of(folder)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            time.sleep(0.2)
            pids = processes_of(folder)
        if not pids:
            return


@pytest.fixture
def cluster():
    """A one-node cluster with 2 CPUs on 127.0.0.1 and token authentication on (its own
    token, in a file named by RAY_AUTH_TOKEN_PATH); yields (address, temp dir, token)."""
    temp = Path(tempfile.mkdtemp(prefix="nosray-", dir="/tmp"))  # Ray's socket paths: short
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**user_env(), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0"}
    port = free_port()
    try:
        start = subprocess.run(
            [str(RAY), "start", "--head",
             "--node-ip-address", "127.0.0.1", "--port", str(port), "--temp-dir", str(temp),
             "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"],
            env=env, capture_output=True, text=True, timeout=180)
        assert start.returncode == 0, start.stderr[-3000:]
        yield f"127.0.0.1:{port}", temp, token
    finally:
        stop_cluster(temp)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow  # half a minute: a real `ray start` cluster, started and stopped
def test_search_joins_a_cluster_with_token_authentication(cluster, tmp_path):
    address, temp, token = cluster
    folder = copy_example(tmp_path / "project")
    # the token in a file named by RAY_AUTH_TOKEN_PATH, RAY_AUTH_MODE unset: nos turns
    # token mode on for an explicit address, as Ray does for 'auto'
    # (without the token Ray refuses the driver: "Authentication token is missing or
    # incorrect", after half a minute of retries)
    home = tmp_path / "home"  # no ~/.ray/auth_token there
    home.mkdir()
    env = {**user_env(), "HOME": str(home), "RAY_AUTH_TOKEN_PATH": str(token)}
    out = run_nos(["search", "--config", "search.toml", "--out", "run", "--address", address,
                   "--budget", str(BUDGET), "--quiet"], cwd=folder, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = check_example_run(folder / "run", folder / "task.py", BUDGET)
    assert {r.worker.split(":")[0] for r in rows if r.worker} == {socket.gethostname()}
    # the file reached the workers through Ray: the job's working_dir, without the run
    shipped = list((temp / "session_latest" / "runtime_resources" / "working_dir_files")
                   .glob("*/task.py"))
    assert shipped and all(file_hash(f) == file_hash(folder / "task.py") for f in shipped)
    assert not any((f.parent / "run").exists() for f in shipped)
