"""The run database on real SQLite files: round trips, refusals, the lock, and a writer
killed with SIGKILL at random moments."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nos.search.store import (
    ConfigMismatchError,
    NotARunError,
    RunLockedError,
    Store,
    StoreError,
)

CONFIG = {"search": {"budget": 6, "batch": 3, "controller": "rnn"},
          "task": {"name": "digits"}, "evaluation": {"epochs": 0.5, "lr": 0.05}}


def files_under(path: Path) -> dict[str, tuple[int, int]]:
    """Every file below path with its size and mtime."""
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*"))}


def integrity(db: Path) -> str:
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def test_results_survive_a_reopen_and_are_recorded_once(tmp_path):
    out = tmp_path / "run"
    with Store.create_or_open(out, CONFIG) as store:
        assert store.add_proposals(0, [([1, 2], "a"), ((3,), "b")]) == [1, 2]
        assert store.add_proposals(1, [([4], "c")]) == [3]
        store.mark_started(1, "worker-1", "node-a")
        assert store.record(1, status="ok", reward=0.75, lr=0.01, test_metric=0.7, seconds=2.5,
                            details={"loss_curve": [1.0, 0.5]})
        assert not store.record(1, status="failed", reward=-1.0, error="late duplicate")
        with pytest.raises(ValueError, match="unknown status 'great'.*ok.*degenerate"):
            store.record(2, status="great", reward=1.0)
        with pytest.raises(ValueError, match="unknown status 'pending'"):
            store.record(2, status="pending", reward=1.0)
        with pytest.raises(StoreError, match="no evaluation 9"):
            store.record(9, status="ok", reward=1.0)
        before = store.evaluations()
    assert (out / "nos.db").is_file() and (out / "nos.lock").is_file()
    assert integrity(out / "nos.db") == "ok"
    with Store.create_or_open(out, CONFIG) as store:
        assert store.evaluations() == before
        first = store.get(1)
        assert (first.status, first.reward, first.lr, first.test_metric, first.seconds) == (
            "ok", 0.75, 0.01, 0.7, 2.5)
        assert (first.worker, first.node, first.attempts) == ("worker-1", "node-a", 1)
        assert first.tokens == (1, 2) and first.details == {"loss_curve": [1.0, 0.5]}
        assert first.error is None and first.finished_at >= first.started_at >= first.asked_at
        assert [e.id for e in store.pending()] == [2, 3]
        assert [e.rule for e in store.batch(0)] == ["a", "b"]
        assert store.add_proposals(2, [([5], "d")]) == [4]
    with Store.open(out / "nos.db") as reader:
        assert reader.path == out and reader.config == CONFIG
        assert reader.count() == 4 and reader.count("pending") == 3
        assert reader.evaluations("ok") == [first]


def test_a_readonly_store_refuses_writes(tmp_path):
    with Store.create_or_open(tmp_path, CONFIG) as store:
        store.add_proposals(0, [([1], "a")])
    with Store.open(tmp_path) as reader, pytest.raises(StoreError, match="read-only"):
        reader.record(1, status="ok", reward=1.0)
    with Store.open(tmp_path, readonly=False) as writer:
        assert writer.record(1, status="ok", reward=1.0)


def test_a_different_config_is_refused_by_name_and_changes_nothing(tmp_path):
    out = tmp_path / "run"
    with Store.create_or_open(out, CONFIG) as store:
        store.add_proposals(0, [([1], "a")])
    before = files_under(tmp_path)
    db_bytes = (out / "nos.db").read_bytes()
    other = json.loads(json.dumps(CONFIG))
    other["search"]["budget"] = 9
    other["task"]["size"] = 100
    with pytest.raises(ConfigMismatchError) as err:
        Store.create_or_open(out, other)
    message = str(err.value)
    assert "search.budget: 6 -> 9" in message and "task.size: (absent) -> 100" in message
    assert "controller" not in message and "\n" not in message
    assert files_under(tmp_path) == before and (out / "nos.db").read_bytes() == db_bytes
    with Store.create_or_open(out, CONFIG) as store:  # the refusal released the lock
        assert store.count() == 1


def test_a_second_writer_is_refused_while_the_first_is_open(tmp_path):
    first = Store.create_or_open(tmp_path, CONFIG)
    try:
        with pytest.raises(RunLockedError, match=f"{tmp_path}.*in use by process {os.getpid()}"):
            Store.create_or_open(tmp_path, CONFIG)
        first.add_proposals(0, [([1], "a")])
        with Store.open(tmp_path) as reader:  # readers need no lock and see what is committed
            assert reader.count() == 1
    finally:
        first.close()
    with Store.create_or_open(tmp_path, CONFIG) as second:
        assert second.count() == 1


def _plain_sqlite(path: Path, wal: bool) -> None:
    conn = sqlite3.connect(path)
    if wal:
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE things (x)")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("case", ["missing", "missing_dir", "empty_dir", "text", "empty_file",
                                  "sqlite", "sqlite_wal", "dir_with_sqlite"])
def test_open_refuses_what_is_not_a_run_and_creates_nothing(tmp_path, case):
    target = {"missing": tmp_path / "nope.db", "missing_dir": tmp_path / "nope" / "run",
              "empty_dir": tmp_path / "empty", "text": tmp_path / "notes.txt",
              "empty_file": tmp_path / "nos.db", "sqlite": tmp_path / "other.db",
              "sqlite_wal": tmp_path / "other.db", "dir_with_sqlite": tmp_path / "d"}[case]
    if case == "empty_dir":
        target.mkdir()
    elif case == "text":
        target.write_text("not a database\n")
    elif case == "empty_file":
        target.touch()
    elif case in ("sqlite", "sqlite_wal"):
        _plain_sqlite(target, wal=case == "sqlite_wal")
    elif case == "dir_with_sqlite":
        target.mkdir()
        _plain_sqlite(target / "nos.db", wal=True)
    before = files_under(tmp_path)
    for readonly in (True, False):
        with pytest.raises(NotARunError, match=str(target.name)):
            Store.open(target, readonly=readonly)
    assert files_under(tmp_path) == before


def test_create_or_open_refuses_an_unusable_directory_and_creates_nothing(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    before = files_under(tmp_path)
    with pytest.raises(StoreError, match="not a directory"):
        Store.create_or_open(a_file, CONFIG)
    with pytest.raises(StoreError, match=f"cannot create run directory {a_file / 'run'}"):
        Store.create_or_open(a_file / "run", CONFIG)
    assert files_under(tmp_path) == before


@pytest.fixture
def unwritable_dir(tmp_path):
    """An existing directory this process may not write to: one with mode 0o500, or,
    when the mode does not bind (root), /proc/self, where not even root may create a file."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        yield locked if not os.access(locked, os.W_OK) else Path("/proc/self")
    finally:
        locked.chmod(0o700)


def test_create_or_open_refuses_a_directory_without_write_permission(unwritable_dir):
    assert unwritable_dir.is_dir() and not os.access(unwritable_dir, os.W_OK)
    before = sorted(p.name for p in unwritable_dir.iterdir())
    with pytest.raises(StoreError, match=f"cannot write to run directory {unwritable_dir} "
                                         r"\(permission denied\)"):
        Store.create_or_open(unwritable_dir, CONFIG)
    assert sorted(p.name for p in unwritable_dir.iterdir()) == before
    assert not (unwritable_dir / "nos.lock").exists() and not (unwritable_dir / "nos.db").exists()


def test_create_or_open_refuses_a_foreign_database_in_the_directory(tmp_path):
    _plain_sqlite(tmp_path / "nos.db", wal=False)
    before = files_under(tmp_path / "nos.db")
    with pytest.raises(NotARunError, match="nos.db"):
        Store.create_or_open(tmp_path, CONFIG)
    assert files_under(tmp_path / "nos.db") == before
    assert sqlite3.connect(tmp_path / "nos.db").execute("PRAGMA journal_mode").fetchone() == (
        "delete",)


def test_an_empty_database_left_by_a_killed_creation_is_initialized(tmp_path):
    (tmp_path / "nos.db").touch()
    with Store.create_or_open(tmp_path, CONFIG) as store:
        assert store.count() == 0 and store.config == CONFIG


def test_top_ranks_distinct_rules_by_their_best_trained_reward(tmp_path):
    with Store.create_or_open(tmp_path, CONFIG) as store:
        ids = store.add_proposals(0, [([1], "a"), ([1], "a"), ([2], "b"), ([3], "c"),
                                      ([4], "d"), ([5], "e"), ([1], "a"), ([6], "f")])
        store.record(ids[0], status="ok", reward=0.5, lr=0.1)
        store.record(ids[1], status="ok", reward=0.9, lr=0.2)
        store.record(ids[2], status="cached", reward=0.9, lr=0.3)
        store.record(ids[3], status="diverged", reward=0.1)
        store.record(ids[4], status="invalid", reward=2.0)  # pruned: not a trained result
        store.record(ids[5], status="ok", reward=float("nan"))  # NaN reads back as None
        # ids[6] ("a") stays pending; ids[7] failed
        store.record(ids[7], status="failed", reward=3.0)
        top = store.top(10)
        assert [(t["rule"], t["reward"], t["lr"], t["count"], t["id"]) for t in top] == [
            ("a", 0.9, 0.2, 3, ids[1]), ("b", 0.9, 0.3, 1, ids[2]), ("c", 0.1, None, 1, ids[3])]
        assert store.top(1) == top[:1] and store.top(0) == []
        assert store.get(ids[5]).reward is None


def test_counts_speed_and_the_fingerprint_cache(tmp_path):
    with Store.create_or_open(tmp_path, CONFIG) as store:
        assert store.speed() == {"evaluations": 0, "wall_seconds": 0.0, "per_second": 0.0,
                                 "mean_seconds": 0.0}
        ids = store.add_proposals(0, [([i], f"r{i}") for i in range(6)])
        for i in ids[:5]:
            assert store.set_fingerprint(i, "same" if i < 5 else "other")
        assert store.cached_result("same") is None  # nothing trained yet
        store.record(ids[0], status="invalid", reward=0.0)
        store.record(ids[1], status="ok", reward=0.4, seconds=2.0)
        store.record(ids[2], status="timeout", reward=0.0, seconds=4.0)
        store.record(ids[3], status="cached", reward=0.4, seconds=0.0)
        cached = store.cached_result("same")
        assert cached is not None and cached.id == ids[1] and cached.fingerprint == "same"
        assert store.cached_result("missing") is None
        assert not store.set_fingerprint(ids[1], "changed")  # recorded rows never change
        assert store.get(ids[1]).fingerprint == "same"
        assert store.counts_by_status() == {"cached": 1, "invalid": 1, "ok": 1, "pending": 2,
                                            "timeout": 1}
        assert store.count() == 6 and store.count("ok") == 1
        with pytest.raises(ValueError, match="unknown status 'done'"):
            store.count("done")
        speed = store.speed()
        assert speed["evaluations"] == 4 and speed["mean_seconds"] == 3.0
        assert speed["wall_seconds"] > 0
        assert speed["per_second"] == pytest.approx(4 / speed["wall_seconds"])


def test_checkpoints_keep_the_latest_three(tmp_path):
    with Store.create_or_open(tmp_path, CONFIG) as store:
        assert store.latest_checkpoint() is None
        for batch in range(5):
            store.save_checkpoint(batch, 3 * (batch + 1), bytes([batch, 0, 255]) * 1000)
        assert store.latest_checkpoint() == (4, 15, bytes([4, 0, 255]) * 1000)
        with pytest.raises(TypeError, match="bytes, got str"):
            store.save_checkpoint(5, 18, "state")
    conn = sqlite3.connect(tmp_path / "nos.db")
    assert [r[0] for r in conn.execute("SELECT batch FROM checkpoints ORDER BY id")] == [2, 3, 4]
    conn.close()


def test_proposals_and_the_state_that_asked_for_them_go_in_together(tmp_path):
    with Store.create_or_open(tmp_path, CONFIG) as store:
        ids = store.add_proposals(0, [([1], "a"), ([2], "b")], checkpoint=(-1, 0, b"asked 0"))
        assert store.latest_checkpoint() == (-1, 0, b"asked 0")  # nothing told yet
        with pytest.raises(TypeError, match="bytes, got str"):
            store.add_proposals(1, [([3], "c")], checkpoint=(0, 2, "asked 1"))
        with pytest.raises(ValueError, match="batch must be >= 0, got -2"):
            store.add_proposals(1, [([3], "c")], checkpoint=(-2, 2, b"asked 1"))
        assert store.count() == 2 and store.latest_checkpoint() == (-1, 0, b"asked 0")
        store.save_checkpoint(0, 2, b"told 0")
        more = store.add_proposals(1, [([3], "c")], checkpoint=(0, 2, b"asked 1"))
        assert store.latest_checkpoint() == (0, 2, b"asked 1")
    assert ids == [1, 2] and more == [3]


def test_retrains_round_trip(tmp_path):
    with Store.create_or_open(tmp_path, CONFIG) as store:
        first = store.add_retrain(rule="a", source="top1", task="digits", seed=0, epochs=2.5,
                                  status="ok", reward=0.8, lr=0.01, test_metric=0.79,
                                  seconds=3.0, details={"val_curve": [0.5, 0.8]})
        second = store.add_retrain(rule="adam", source="baseline:adam", task="digits", seed=1)
        with pytest.raises(ValueError, match="unknown retrain field.*colour"):
            store.add_retrain(rule="a", source="top1", colour="red")
    with Store.open(tmp_path) as reader:
        rows = reader.retrains()
    assert [r["id"] for r in rows] == [first, second]
    assert {k: v for k, v in rows[0].items() if k != "created"} == {
        "id": first, "rule": "a", "source": "top1", "task": "digits", "seed": 0, "epochs": 2.5,
        "status": "ok", "reward": 0.8, "lr": 0.01, "test_metric": 0.79, "seconds": 3.0,
        "details": {"val_curve": [0.5, 0.8]}}
    assert rows[1]["reward"] is None and rows[1]["details"] == {}


# --- a writer killed with SIGKILL ----------------------------------------------------------

CHILD = r"""
import json, sys

from nos.search import store as module

def state(batch, kind):  # kind: b"A" after asking for batch, b"T" after telling it
    return kind + bytes([batch % 256]) * 4000 + batch.to_bytes(4, "big")

def finish(store, eval_id):
    store.record(eval_id, status="ok", reward=eval_id / 1000, seconds=0.5,
                 details={"curve": [eval_id] * 20})

store = module.Store.create_or_open(sys.argv[2], json.loads(sys.argv[3]))
for row in store.pending():
    finish(store, row.id)
last = max((e.batch for e in store.evaluations()), default=-1)
checkpoint = store.latest_checkpoint()
if last >= 0 and (checkpoint is None or checkpoint[0] < last):
    store.save_checkpoint(last, store.count(), state(last, b"T"))
print("ready", store.count(), flush=True)
batch = last + 1
while True:
    ids = store.add_proposals(batch, [([batch, j], f"rule {batch}.{j}") for j in range(3)],
                              checkpoint=(batch - 1, 3 * batch, state(batch, b"A")))
    for eval_id in ids:
        store.mark_started(eval_id, "w", "n")
        finish(store, eval_id)
    store.save_checkpoint(batch, store.count(), state(batch, b"T"))
    batch += 1
"""


def check_killed_run(out: Path) -> tuple[int, set[int]]:
    """Asserts a consistent run; returns the row count and the pending ids."""
    assert integrity(out / "nos.db") == "ok"
    with Store.open(out) as store:
        rows = store.evaluations()
        checkpoint = store.latest_checkpoint()
    assert [r.id for r in rows] == list(range(1, len(rows) + 1))
    last = rows[-1].batch if rows else -1
    assert [r.batch for r in rows] == [b for b in range(last + 1) for _ in range(3)]
    pending = set()
    for r in rows:
        assert r.tokens == (r.batch, (r.id - 1) % 3) and r.rule == f"rule {r.batch}.{r.tokens[1]}"
        if r.status == "pending":
            assert r.batch == last, r
            assert (r.reward, r.finished_at, r.details) == (None, None, {})
            pending.add(r.id)
        else:
            assert (r.status, r.reward, r.seconds) == ("ok", r.id / 1000, 0.5)
            assert r.details == {"curve": [r.id] * 20} and r.finished_at is not None
    # every batch went in with the state that asked for it: the last checkpoint always
    # knows the last batch, asked (A) or told (T)
    assert (checkpoint is None) == (not rows)
    if checkpoint is not None:
        batch, told, state = checkpoint
        kind = state[:1]
        assert (batch, told) == ((last - 1, 3 * last) if kind == b"A" else (last, 3 * last + 3))
        assert state == kind + bytes([last % 256]) * 4000 + last.to_bytes(4, "big")
    return len(rows), pending


def test_a_writer_killed_at_random_moments_leaves_a_consistent_resumable_run(tmp_path):
    out = tmp_path / "run"
    rng = random.Random()
    seen, pending = 0, set()
    for kill in range(5):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, "-", str(out), json.dumps(CONFIG)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            ready = child.stdout.readline().split()
            assert ready[:1] == ["ready"], child.stderr.read()
            assert int(ready[1]) == seen  # nothing committed before the kill was lost
            time.sleep(rng.uniform(0.02, 0.3))
            assert child.poll() is None, child.stderr.read()
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            child.stdout.close()
            child.stderr.close()
        count, now_pending = check_killed_run(out)
        assert count > seen, f"kill {kill}: the child made no progress"
        assert not (pending & now_pending), "rows left pending were not finished on restart"
        seen, pending = count, now_pending
