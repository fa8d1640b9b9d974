"""Every result of a run, in SQLite: ``DIR/nos.db``.

One process (the search driver) writes, holding ``DIR/nos.lock``; readers
(``nos inspect``) may read at any time.  The database is in WAL mode with
``synchronous=FULL``: every write is one transaction, and a committed
transaction survives the writer being killed at any instant (the threat here
is a killed process, and FULL also covers a lost machine).  SQL is only ever
written with bound parameters.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DB_NAME = "nos.db"
LOCK_NAME = "nos.lock"
FORMAT = "nos-run"
VERSION = "1"
STATUSES = ("pending", "ok", "diverged", "timeout", "invalid", "failed", "cached", "degenerate")
FINISHED = tuple(s for s in STATUSES if s != "pending")
KEEP_CHECKPOINTS = 3

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY,
    batch INTEGER NOT NULL,
    tokens TEXT NOT NULL,
    rule TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    reward REAL, lr REAL, test_metric REAL, seconds REAL,
    worker TEXT, node TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT, fingerprint TEXT, details TEXT,
    asked_at REAL, started_at REAL, finished_at REAL
);
CREATE INDEX IF NOT EXISTS evaluations_status ON evaluations (status);
CREATE INDEX IF NOT EXISTS evaluations_fingerprint ON evaluations (fingerprint);
CREATE INDEX IF NOT EXISTS evaluations_batch ON evaluations (batch);
CREATE TABLE IF NOT EXISTS checkpoints (
    id INTEGER PRIMARY KEY, batch INTEGER NOT NULL, told INTEGER NOT NULL,
    state BLOB NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS retrains (
    id INTEGER PRIMARY KEY, rule TEXT NOT NULL, source TEXT NOT NULL, task TEXT NOT NULL,
    seed INTEGER, epochs REAL, status TEXT, reward REAL, lr REAL, test_metric REAL,
    seconds REAL, details TEXT, created REAL NOT NULL
);
"""


class StoreError(ValueError):
    """A run directory or database that cannot be used (one-line message)."""


class NotARunError(StoreError):
    pass


class ConfigMismatchError(StoreError):
    pass


class RunLockedError(StoreError):
    pass


@dataclass(frozen=True)
class Evaluation:
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
    details: dict | None
    asked_at: float | None
    started_at: float | None
    finished_at: float | None


_COLUMNS = ", ".join(Evaluation.__dataclass_fields__)


def _evaluation(row: tuple) -> Evaluation:
    values = list(row)
    values[2] = tuple(json.loads(values[2]))
    values[14] = json.loads(values[14]) if values[14] else None
    return Evaluation(*values)


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix[:-1]} (was {old!r}, now {new!r})"]


def _db_path(path: Path) -> Path:
    return path / DB_NAME if path.is_dir() else path


class Store:
    """The results of one run.  Open with :meth:`create_or_open` to write, :meth:`open` to read."""

    def __init__(self, path: Path, conn: sqlite3.Connection, lock: int | None) -> None:
        self.path = path
        self._conn = conn
        self._lock = lock
        self.config: dict = json.loads(self._meta("config"))

    # --- opening ---------------------------------------------------------------------

    @classmethod
    def create_or_open(cls, out_dir: str | Path, config: dict) -> Store:
        """Create DIR and its database, or reopen a run with the same config (to resume)."""
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise StoreError(f"cannot use {out}: it is a file, not a directory")
        if out.exists() and not os.access(out, os.W_OK | os.X_OK):
            raise StoreError(f"cannot write to {out}: permission denied")
        if (out / DB_NAME).exists():
            _check_run(out / DB_NAME)
            old = json.loads(_read_meta(out / DB_NAME, "config"))
            wanted = json.loads(json.dumps(config, sort_keys=True))
            diff = _differences(old, wanted)
            if diff:
                raise ConfigMismatchError(
                    f"{out} holds a run with another config: {'; '.join(diff[:3])}"
                    f"{' ...' if len(diff) > 3 else ''}; use another --out to start a new run")
        try:
            out.mkdir(parents=True, exist_ok=True)
            lock = os.open(out / LOCK_NAME, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as err:
            raise StoreError(f"cannot create {out}: {err.strerror}") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock)
            raise RunLockedError(f"{out} is in use by another nos search") from None
        try:
            conn = _connect(out / DB_NAME)
            with _transaction(conn):
                _create_schema(conn)
                for key, value in (("format", FORMAT), ("version", VERSION),
                                   ("config", json.dumps(config, sort_keys=True)),
                                   ("created", repr(time.time()))):
                    conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                                 (key, value))
        except (sqlite3.Error, OSError) as err:
            os.close(lock)
            raise StoreError(f"cannot create the database in {out}: {err}") from None
        return cls(out, conn, lock)

    @classmethod
    def open(cls, path: str | Path, readonly: bool = True) -> Store:
        """An existing run (its directory or its nos.db), without the writer's lock."""
        path = Path(path)
        db = _db_path(path)
        _check_run(db)
        mode = "ro" if readonly else "rw"
        try:
            conn = sqlite3.connect(f"file:{db}?mode={mode}", uri=True, isolation_level=None,
                                   timeout=30)
            conn.execute("PRAGMA busy_timeout = 30000")
        except sqlite3.Error as err:
            raise NotARunError(f"{path} is not a nos run: {err}") from None
        return cls(db.parent, conn, None)

    def close(self) -> None:
        self._conn.close()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _meta(self, key: str) -> str:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise NotARunError(f"{self.path} is not a nos run: no {key}")
        return row[0]

    # --- evaluations -------------------------------------------------------------------

    def add_proposals(self, batch: int, proposals: Sequence[tuple[Sequence[int], str]]
                      ) -> list[int]:
        now = time.time()
        with _transaction(self._conn):
            ids = []
            for tokens, rule in proposals:
                cursor = self._conn.execute(
                    "INSERT INTO evaluations (batch, tokens, rule, asked_at) VALUES (?, ?, ?, ?)",
                    (batch, json.dumps([int(t) for t in tokens]), rule, now))
                ids.append(cursor.lastrowid)
        return ids

    def _select(self, where: str = "", params: tuple = ()) -> list[Evaluation]:
        query = {"": "SELECT {} FROM evaluations ORDER BY id",
                 "status": "SELECT {} FROM evaluations WHERE status = ? ORDER BY id",
                 "batch": "SELECT {} FROM evaluations WHERE batch = ? ORDER BY id",
                 "id": "SELECT {} FROM evaluations WHERE id = ?",
                 "fingerprint": "SELECT {} FROM evaluations WHERE fingerprint = ? AND status IN "
                                "('ok', 'diverged', 'timeout') ORDER BY id LIMIT 1"}[where]
        return [_evaluation(r) for r in self._conn.execute(query.format(_COLUMNS), params)]

    def pending(self) -> list[Evaluation]:
        return self._select("status", ("pending",))

    def batch(self, batch: int) -> list[Evaluation]:
        return self._select("batch", (batch,))

    def get(self, eval_id: int) -> Evaluation | None:
        rows = self._select("id", (eval_id,))
        return rows[0] if rows else None

    def evaluations(self, status: str | None = None) -> list[Evaluation]:
        return self._select("status", (status,)) if status else self._select()

    def mark_started(self, eval_id: int, worker: str, node: str) -> None:
        with _transaction(self._conn):
            self._conn.execute(
                "UPDATE evaluations SET started_at = ?, attempts = attempts + 1, worker = ?, "
                "node = ? WHERE id = ? AND status = 'pending'",
                (time.time(), worker, node, eval_id))

    def record(self, eval_id: int, *, status: str, reward: float, lr: float | None = None,
               test_metric: float | None = None, seconds: float | None = None,
               worker: str | None = None, node: str | None = None, error: str | None = None,
               fingerprint: str | None = None, details: dict | None = None) -> bool:
        """Record a pending evaluation's result; an already recorded one is left as it is."""
        if status not in FINISHED:
            raise ValueError(f"unknown status {status!r}; allowed: {', '.join(FINISHED)}")
        with _transaction(self._conn):
            cursor = self._conn.execute(
                "UPDATE evaluations SET status = ?, reward = ?, lr = ?, test_metric = ?, "
                "seconds = ?, worker = COALESCE(?, worker), node = COALESCE(?, node), "
                "error = ?, fingerprint = COALESCE(?, fingerprint), details = ?, "
                "finished_at = ? WHERE id = ? AND status = 'pending'",
                (status, reward, lr, test_metric, seconds, worker, node, error, fingerprint,
                 json.dumps(details) if details is not None else None, time.time(), eval_id))
        return cursor.rowcount == 1

    def set_fingerprint(self, eval_id: int, fingerprint: str) -> None:
        with _transaction(self._conn):
            self._conn.execute("UPDATE evaluations SET fingerprint = ? WHERE id = ?",
                               (fingerprint, eval_id))

    def cached_result(self, fingerprint: str) -> Evaluation | None:
        rows = self._select("fingerprint", (fingerprint,))
        return rows[0] if rows else None

    def count(self, status: str | None = None) -> int:
        if status is None:
            return self._conn.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]
        return self._conn.execute("SELECT COUNT(*) FROM evaluations WHERE status = ?",
                                  (status,)).fetchone()[0]

    def counts_by_status(self) -> dict[str, int]:
        return dict(self._conn.execute(
            "SELECT status, COUNT(*) FROM evaluations GROUP BY status ORDER BY status"))

    def top(self, k: int) -> list[dict]:
        """The k best distinct rules: best reward, its lr and id, and how often sampled."""
        rows = self._conn.execute(
            "SELECT rule, MAX(reward), COUNT(*) FROM evaluations "
            "WHERE status NOT IN ('pending', 'invalid', 'degenerate', 'failed') "
            "AND reward IS NOT NULL GROUP BY rule ORDER BY MAX(reward) DESC, MIN(id) LIMIT ?",
            (k,)).fetchall()
        out = []
        for rule, reward, _count in rows:
            best_id, lr = self._conn.execute(
                "SELECT id, lr FROM evaluations WHERE rule = ? AND reward = ? ORDER BY id "
                "LIMIT 1", (rule, reward)).fetchone()
            sampled = self._conn.execute("SELECT COUNT(*) FROM evaluations WHERE rule = ?",
                                         (rule,)).fetchone()[0]
            out.append({"rule": rule, "reward": reward, "lr": lr, "count": sampled,
                        "id": best_id})
        return out

    def speed(self) -> dict:
        first, last, finished, trained, seconds = self._conn.execute(
            "SELECT MIN(asked_at), MAX(finished_at), COUNT(finished_at), "
            "SUM(status IN ('ok', 'diverged', 'timeout')), "
            "SUM(CASE WHEN status IN ('ok', 'diverged', 'timeout') THEN seconds END) "
            "FROM evaluations").fetchone()
        wall = (last - first) if first is not None and last is not None else 0.0
        return {"evaluations": finished, "wall_seconds": wall,
                "per_second": finished / wall if wall > 0 else 0.0,
                "mean_seconds": (seconds or 0.0) / trained if trained else 0.0}

    # --- checkpoints and retrains ------------------------------------------------------

    def save_checkpoint(self, batch: int, told: int, state: bytes) -> None:
        with _transaction(self._conn):
            self._conn.execute(
                "INSERT INTO checkpoints (batch, told, state, created) VALUES (?, ?, ?, ?)",
                (batch, told, sqlite3.Binary(state), time.time()))
            self._conn.execute(
                "DELETE FROM checkpoints WHERE id NOT IN "
                "(SELECT id FROM checkpoints ORDER BY id DESC LIMIT ?)", (KEEP_CHECKPOINTS,))

    def latest_checkpoint(self) -> tuple[int, int, bytes] | None:
        row = self._conn.execute(
            "SELECT batch, told, state FROM checkpoints ORDER BY id DESC LIMIT 1").fetchone()
        return (row[0], row[1], bytes(row[2])) if row else None

    def add_retrain(self, *, rule: str, source: str, task: str, seed: int, epochs: float,
                    status: str, reward: float, lr: float | None, test_metric: float | None,
                    seconds: float, details: dict | None = None) -> int:
        with _transaction(self._conn):
            cursor = self._conn.execute(
                "INSERT INTO retrains (rule, source, task, seed, epochs, status, reward, lr, "
                "test_metric, seconds, details, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                "?, ?)", (rule, source, task, seed, epochs, status, reward, lr, test_metric,
                          seconds, json.dumps(details) if details else None, time.time()))
        return cursor.lastrowid

    def retrains(self) -> list[dict]:
        cursor = self._conn.execute(
            "SELECT id, rule, source, task, seed, epochs, status, reward, lr, test_metric, "
            "seconds, details, created FROM retrains ORDER BY id")
        names = [d[0] for d in cursor.description]
        out = []
        for row in cursor:
            item = dict(zip(names, row))
            item["details"] = json.loads(item["details"]) if item["details"] else None
            out.append(item)
        return out


def _connect(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


def _create_schema(conn: sqlite3.Connection) -> None:
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _check_run(db: Path) -> None:
    """NotARunError unless db is a SQLite file with the nos marker; creates nothing."""
    if not db.is_file():
        raise NotARunError(f"{db.parent if db.name == DB_NAME else db} is not a nos run "
                           f"(no {DB_NAME})")
    with open(db, "rb") as f:
        if f.read(16) != b"SQLite format 3\x00":
            raise NotARunError(f"{db} is not a nos run (not an SQLite database)")
    if _read_meta(db, "format") != FORMAT:
        raise NotARunError(f"{db} is not a nos run (another SQLite database)")


def _read_meta(db: Path, key: str) -> str | None:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return row[0] if row else None
