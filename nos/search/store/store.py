"""A run's results in ``DIR/nos.db``: every proposal, its evaluation, the controller's
checkpoints and later re-trainings, kept so that a search killed at any instant resumes.

Durability: the database is in WAL mode with ``synchronous=NORMAL``. A commit writes its
WAL frames with ``write()`` before it returns, so once a write method here returns, the
row is in the operating system and survives the process being killed (SIGKILL included);
only a power loss or kernel crash could take back the last commits, and even then the
database stays consistent (SQLite's WAL recovery drops uncommitted frames). Each write
method is one ``BEGIN IMMEDIATE ... COMMIT`` transaction, so a kill leaves it all or
nothing. One process writes (``create_or_open`` takes ``DIR/nos.lock``); readers such as
``nos inspect`` use ``Store.open`` and read concurrently through the WAL.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from nos.search.store import database as db_files
from nos.search.store import values as check
from nos.search.store.database import StoreError
from nos.search.store.schema import (
    DB_NAME,
    EVAL_QUERIES,
    FINISHED,
    INDEXES,
    KEEP_CHECKPOINTS,
    RANKED,
    RETRAIN_FIELDS,
    TRAINED,
    TRIAL_COLUMNS,
)


@dataclass(frozen=True)
class Evaluation:
    """One proposal and, once recorded, its result. NaN rewards read back as None."""

    id: int
    batch: int
    tokens: tuple[int, ...]
    rule: str
    status: str
    reward: float | None
    lr: float | None
    test_metric: float | None
    seconds: float | None
    worker: str | None
    node: str | None
    attempts: int
    error: str | None
    fingerprint: str | None
    details: dict = field(hash=False)
    asked_at: float
    started_at: float | None
    finished_at: float | None

    @classmethod
    def from_row(cls, row: tuple) -> Evaluation:
        values = list(row)
        values[2] = tuple(json.loads(values[2]))
        values[14] = json.loads(values[14]) if values[14] else {}
        return cls(*values)


class Store:
    """An open run database; use as a context manager or call :meth:`close`."""

    def __init__(self, conn: sqlite3.Connection, run_dir: Path, config: dict,
                 readonly: bool, lock_fd: int | None = None) -> None:
        self._conn = conn
        self._readonly = readonly
        self._lock_fd = lock_fd
        self.path = run_dir
        self.config = config

    # --- opening ---------------------------------------------------------------------

    @classmethod
    def create_or_open(cls, out_dir: str | Path, config: dict) -> Store:
        """Open the run in ``out_dir`` for writing, creating it if missing; the run must
        have been created with the same ``config``. Holds ``out_dir/nos.lock`` until close."""
        run_dir = Path(out_dir)
        db = run_dir / DB_NAME
        config_json = db_files.canonical_json(config)
        db_files.make_writable_dir(run_dir)
        if db.is_file() and db.stat().st_size > 0:  # refused before the lock: nothing written
            db_files.check_config(run_dir, db_files.probe_meta(db)["config"], config_json)
        lock_fd = db_files.lock(run_dir)
        conn = None
        try:
            if db.exists() and db.stat().st_size > 0:
                db_files.check_header(db)
                if not os.access(db, os.R_OK | os.W_OK):
                    raise StoreError(f"cannot write to {db} (permission denied)")
            conn = db_files.connect(db, "rwc")
            # A creation killed before its commit leaves a database with no tables.
            if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
                db_files.initialize(conn, db, config_json)
            else:
                db_files.check_config(run_dir, db_files.read_meta(conn, db)["config"], config_json)
                db_files.enable_wal(conn, db)
                with db_files.transaction(conn):
                    for statement in INDEXES:
                        conn.execute(statement)
            conn.execute("PRAGMA synchronous = NORMAL")
            return cls(conn, run_dir, json.loads(config_json), readonly=False, lock_fd=lock_fd)
        except BaseException:
            if conn is not None:
                conn.close()
            db_files.unlock(lock_fd)
            raise

    @classmethod
    def open(cls, path: str | Path, readonly: bool = True) -> Store:
        """Open an existing run (its directory or its ``nos.db``) without the lock.
        Creates no file when ``path`` is not a run."""
        db, run_dir = db_files.locate(path)
        db_files.probe_meta(db)
        conn = db_files.connect(db, "ro" if readonly else "rw")
        try:
            config = json.loads(db_files.read_meta(conn, db)["config"])
            if not readonly:
                conn.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            conn.close()
            raise
        return cls(conn, run_dir, config, readonly=readonly)

    def close(self) -> None:
        """Close the database and release the lock; closing twice is harmless."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._lock_fd is not None:
            db_files.unlock(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- evaluations -----------------------------------------------------------------

    def add_proposals(self, batch: int, proposals: Sequence[tuple[Sequence[int], str]],
                      checkpoint: tuple[int, int, bytes] | None = None) -> list[int]:
        """Insert the proposals of one controller batch as pending rows; returns their ids.

        ``checkpoint`` (``batch, told, state`` as in :meth:`save_checkpoint`), the
        controller's state right after it proposed them, is written in the same
        transaction: a run killed at any instant has either both or neither, so the
        controller it resumes from has made exactly the proposals the store holds."""
        batch = check.index("batch", batch)
        rows = [(json.dumps(check.tokens(tokens)), check.text("rule", rule))
                for tokens, rule in proposals]
        values = _checkpoint_values(*checkpoint) if checkpoint is not None else None
        now = time.time()
        with self._write() as conn:
            ids = [conn.execute("INSERT INTO evaluations (batch, tokens, rule, asked_at) "
                                "VALUES (?, ?, ?, ?)", (batch, tokens, rule, now)).lastrowid
                   for tokens, rule in rows]
            if values is not None:
                _insert_checkpoint(conn, values)
            return ids

    def mark_started(self, eval_id: int, worker: str, node: str) -> None:
        """Note that a pending evaluation was handed to a worker (attempts += 1)."""
        eval_id = check.index("eval_id", eval_id)
        with self._write() as conn:
            cur = conn.execute("UPDATE evaluations SET started_at = ?, attempts = attempts + 1, "
                               "worker = ?, node = ? WHERE id = ? AND status = 'pending'",
                               (time.time(), worker, node, eval_id))
            if cur.rowcount == 0:
                self._require_id(eval_id)

    def record(self, eval_id: int, *, status: str, reward: float, lr: float | None = None,
               test_metric: float | None = None, seconds: float | None = None,
               worker: str | None = None, node: str | None = None, error: str | None = None,
               fingerprint: str | None = None, details: dict | None = None) -> bool:
        """Record the result of a pending evaluation; returns False, changing nothing, when
        the evaluation was already recorded."""
        eval_id = check.index("eval_id", eval_id)
        values = (check.status(status, FINISHED), check.real("reward", reward),
                  check.real("lr", lr), check.real("test_metric", test_metric),
                  check.real("seconds", seconds), worker, node, error, fingerprint,
                  check.details_json(details), time.time(), eval_id)
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE evaluations SET status = ?, reward = ?, lr = ?, test_metric = ?, "
                "seconds = ?, worker = COALESCE(?, worker), node = COALESCE(?, node), "
                "error = ?, fingerprint = COALESCE(?, fingerprint), details = ?, finished_at = ? "
                "WHERE id = ? AND status = 'pending'", values)
            if cur.rowcount == 0:
                self._require_id(eval_id)
            return cur.rowcount == 1

    def set_fingerprint(self, eval_id: int, fingerprint: str) -> bool:
        """Note a pending evaluation's functional fingerprint; False if already recorded."""
        eval_id = check.index("eval_id", eval_id)
        with self._write() as conn:
            cur = conn.execute("UPDATE evaluations SET fingerprint = ? "
                               "WHERE id = ? AND status = 'pending'",
                               (check.text("fingerprint", fingerprint), eval_id))
            if cur.rowcount == 0:
                self._require_id(eval_id)
            return cur.rowcount == 1

    def get(self, eval_id: int) -> Evaluation | None:
        rows = self._evaluations("id", (check.index("eval_id", eval_id),))
        return rows[0] if rows else None

    def pending(self) -> list[Evaluation]:
        return self.evaluations("pending")

    def batch(self, batch: int) -> list[Evaluation]:
        return self._evaluations("batch", (check.index("batch", batch),))

    def evaluations(self, status: str | None = None) -> list[Evaluation]:
        if status is None:
            return self._evaluations("all", ())
        return self._evaluations("status", (check.status(status),))

    def count(self, status: str | None = None) -> int:
        if status is None:
            return self._conn.execute("SELECT count(*) FROM evaluations").fetchone()[0]
        return self._conn.execute("SELECT count(*) FROM evaluations WHERE status = ?",
                                  (check.status(status),)).fetchone()[0]

    def counts_by_status(self) -> dict[str, int]:
        """Number of evaluations per status, for the statuses present."""
        return dict(self._conn.execute(
            "SELECT status, count(*) FROM evaluations GROUP BY status ORDER BY status"))

    def cached_result(self, fingerprint: str) -> Evaluation | None:
        """The first trained result (ok, diverged, timeout) with this fingerprint."""
        rows = self._evaluations("fingerprint", (fingerprint, *TRAINED))
        return rows[0] if rows else None

    def trained(self) -> list[dict]:
        """The rows whose reward comes from their own training (ok, diverged, timeout,
        stopped), in id order: ``id, rule, status, reward, lr, fingerprint``."""
        cur = self._conn.execute(
            "SELECT id, rule, status, reward, lr, fingerprint FROM evaluations WHERE status IN "
            f"({', '.join('?' * len(TRAINED))}) ORDER BY id", TRAINED)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur]

    def top(self, k: int) -> list[dict]:
        """The best ``k`` distinct rules, best first: ``rule``, ``reward`` (its best),
        ``lr`` and ``id`` of that best row, and ``count``, the number of times the rule was
        proposed. Rules with the same functional fingerprint are one rule (shown by the
        text first trained); without a fingerprint the text decides. Ranked are rows whose
        reward comes from a training (ok, diverged, timeout, cached); pruned and failed
        rows only carry the floor reward."""
        k = check.index("k", k)
        best: dict[str, dict] = {}
        # Walks the reward index from the top, so the cost grows with k, not with the run.
        cur = self._conn.execute("SELECT rule, reward, lr, id, status, fingerprint FROM "
                                 "evaluations WHERE reward IS NOT NULL ORDER BY reward DESC, id")
        try:
            for rule, reward, lr, eval_id, status, fingerprint in cur:
                if len(best) >= k:
                    break
                key = fingerprint or rule
                if status in RANKED and key not in best:
                    best[key] = {"rule": rule, "reward": reward, "lr": lr, "id": eval_id,
                                 "fingerprint": fingerprint}
        finally:
            cur.close()
        for row in best.values():
            if row["fingerprint"]:
                query = "SELECT count(*) FROM evaluations WHERE fingerprint = ?"
                key = row["fingerprint"]
            else:
                query, key = "SELECT count(*) FROM evaluations WHERE rule = ?", row["rule"]
            row["count"] = self._conn.execute(query, (key,)).fetchone()[0]
        return list(best.values())

    def speed(self) -> dict:
        """Finished evaluations, wall seconds from the first proposal to the last result,
        evaluations per second over that span, and the mean seconds of a training (rows
        trained: ok, diverged, timeout; cached and pruned rows cost next to nothing)."""
        finished, last = self._conn.execute(
            "SELECT count(*), max(finished_at) FROM evaluations "
            "WHERE status != 'pending'").fetchone()
        first = self._conn.execute("SELECT min(asked_at) FROM evaluations").fetchone()[0]
        mean = self._conn.execute("SELECT avg(seconds) FROM evaluations WHERE status IN "
                                  f"({', '.join('?' * len(TRAINED))})", TRAINED).fetchone()[0]
        wall = max(last - first, 0.0) if finished else 0.0
        return {"evaluations": finished, "wall_seconds": wall,
                "per_second": finished / wall if wall > 0 else 0.0,
                "mean_seconds": mean if mean is not None else 0.0}

    # --- the funnel's trainings ------------------------------------------------------

    def add_trials(self, trials: Sequence[dict]) -> list[int]:
        """Insert pending trainings of the funnel in one transaction; returns the ids of the
        new ones.  A trial is ``stage, candidate, fingerprint, source, name, origin, task,
        seed, settings`` (the evaluation's keyword arguments); one already stored (same
        stage, candidate, task and seed) is left as it is."""
        rows = []
        for t in trials:
            if t["source"] not in ("search", "baseline"):
                raise ValueError("trial source must be 'search' or 'baseline', "
                                 f"got {t['source']!r}")
            rows.append((check.index("stage", t["stage"]), check.text("candidate", t["candidate"]),
                         t.get("fingerprint"), t["source"], t.get("name"), t.get("origin"),
                         check.text("task", t["task"]), int(t["seed"]),
                         check.details_json(t["settings"]), time.time()))
        with self._write() as conn:
            ids = []
            for row in rows:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO trials (stage, candidate, fingerprint, source, name, "
                    "origin, task, seed, settings, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    row)
                if cur.rowcount == 1:
                    ids.append(cur.lastrowid)
            return ids

    def trials(self, stage: int | None = None, status: str | None = None) -> list[dict]:
        """The funnel's trainings in id order (``settings`` and ``details`` as dicts)."""
        where, params = [], []
        if stage is not None:
            where.append("stage = ?")
            params.append(check.index("stage", stage))
        if status is not None:
            where.append("status = ?")
            params.append(check.status(status))
        sql = (f"SELECT {', '.join(TRIAL_COLUMNS)} FROM trials"
               + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id")
        out = []
        for row in self._conn.execute(sql, params):
            trial = dict(zip(TRIAL_COLUMNS, row))
            trial["settings"] = json.loads(trial["settings"])
            trial["details"] = json.loads(trial["details"]) if trial["details"] else {}
            out.append(trial)
        return out

    def mark_trial_started(self, trial_id: int, worker: str) -> None:
        """Note that a pending trial was handed to a worker (attempts += 1)."""
        with self._write() as conn:
            conn.execute("UPDATE trials SET started_at = ?, attempts = attempts + 1, worker = ? "
                         "WHERE id = ? AND status = 'pending'",
                         (time.time(), worker, check.index("trial_id", trial_id)))

    def record_trial(self, trial_id: int, *, status: str, reward: float,
                     lr: float | None = None, test_metric: float | None = None,
                     seconds: float | None = None, worker: str | None = None,
                     error: str | None = None, details: dict | None = None) -> bool:
        """Record a pending trial's result; False, changing nothing, if already recorded."""
        values = (check.status(status, FINISHED), check.real("reward", reward),
                  check.real("lr", lr), check.real("test_metric", test_metric),
                  check.real("seconds", seconds), worker, error, check.details_json(details),
                  time.time(), check.index("trial_id", trial_id))
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE trials SET status = ?, reward = ?, lr = ?, test_metric = ?, seconds = ?, "
                "worker = COALESCE(?, worker), error = ?, details = ?, finished_at = ? "
                "WHERE id = ? AND status = 'pending'", values)
            return cur.rowcount == 1

    # --- checkpoints and re-trainings -------------------------------------------------

    def save_checkpoint(self, batch: int, told: int, state: bytes) -> None:
        """Keep the controller's state once it has been told every batch up to ``batch``
        (-1: none yet) and ``told`` proposals in all; the last few are kept."""
        values = _checkpoint_values(batch, told, state)
        with self._write() as conn:
            _insert_checkpoint(conn, values)

    def latest_checkpoint(self) -> tuple[int, int, bytes] | None:
        """(batch, told, state) of the last checkpoint, or None; batch is the last batch
        told (-1 when the controller had proposed but not yet been told anything)."""
        row = self._conn.execute("SELECT batch, told, state FROM checkpoints "
                                 "ORDER BY id DESC LIMIT 1").fetchone()
        return (row[0], row[1], bytes(row[2])) if row else None

    def add_retrain(self, **fields: object) -> int:
        """Record one re-training of a rule; fields as in ``RETRAIN_FIELDS``."""
        unknown = sorted(set(fields) - set(RETRAIN_FIELDS))
        if unknown:
            raise ValueError(f"unknown retrain field(s) {', '.join(unknown)}; "
                             f"expected some of {', '.join(RETRAIN_FIELDS)}")
        for name in ("rule", "source"):
            check.text(name, fields.get(name))
        if fields.get("status") is not None:
            check.status(fields["status"], FINISHED)
        for name in ("reward", "lr", "test_metric", "seconds", "epochs"):
            fields[name] = check.real(name, fields.get(name))
        fields["details"] = check.details_json(fields.get("details"))
        values = [fields.get(name) for name in RETRAIN_FIELDS]
        with self._write() as conn:
            return conn.execute(
                "INSERT INTO retrains (rule, source, task, seed, epochs, status, reward, lr, "
                "test_metric, seconds, details, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (*values, time.time())).lastrowid

    def retrains(self) -> list[dict]:
        cur = self._conn.execute("SELECT id, rule, source, task, seed, epochs, status, reward, "
                                 "lr, test_metric, seconds, details, created "
                                 "FROM retrains ORDER BY id")
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, row)) for row in cur]
        for row in rows:
            row["details"] = json.loads(row["details"]) if row["details"] else {}
        return rows

    # --- notes in the meta table -----------------------------------------------------

    def set_note(self, key: str, value: object) -> None:
        """Keep ``value`` (JSON) under ``key`` in the run's meta table, replacing the last
        one; the run's own entries (format, version, config, created) are not notes."""
        if key in ("format", "version", "config", "created"):
            raise ValueError(f"{key!r} is the run's own meta entry, not a note")
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                         (key, json.dumps(value, sort_keys=True)))

    def note(self, key: str) -> object | None:
        """The note kept under ``key``, or None."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    # --- internals -------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed whole or rolled back whole."""
        if self._readonly:
            raise StoreError(f"run {self.path} is open read-only")
        with db_files.transaction(self._conn):
            yield self._conn

    def _evaluations(self, query: str, params: tuple) -> list[Evaluation]:
        cur = self._conn.execute(EVAL_QUERIES[query], params)
        return [Evaluation.from_row(row) for row in cur]

    def _require_id(self, eval_id: int) -> None:
        if self._conn.execute("SELECT 1 FROM evaluations WHERE id = ?",
                              (eval_id,)).fetchone() is None:
            raise StoreError(f"no evaluation {eval_id} in run {self.path} "
                             f"(it has {self.count()})")


def _checkpoint_values(batch: int, told: int, state: bytes) -> tuple[int, int, bytes, float]:
    if not isinstance(state, (bytes, bytearray, memoryview)):
        raise TypeError(f"checkpoint state must be bytes, got {type(state).__name__}")
    batch = -1 if batch == -1 else check.index("batch", batch)  # -1: nothing told yet
    return batch, check.index("told", told), bytes(state), time.time()


def _insert_checkpoint(conn: sqlite3.Connection, values: tuple[int, int, bytes, float]) -> None:
    conn.execute("INSERT INTO checkpoints (batch, told, state, created) VALUES (?, ?, ?, ?)",
                 values)
    conn.execute("DELETE FROM checkpoints WHERE id NOT IN "
                 "(SELECT id FROM checkpoints ORDER BY id DESC LIMIT ?)", (KEEP_CHECKPOINTS,))
