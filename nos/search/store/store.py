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

import fcntl
import json
import math
import operator
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

DB_NAME = "nos.db"
LOCK_NAME = "nos.lock"
FORMAT = "nos-run"
VERSION = 1
FINISHED = ("ok", "diverged", "timeout", "invalid", "failed", "cached", "degenerate")
STATUSES = ("pending", *FINISHED)
TRAINED = ("ok", "diverged", "timeout")  # results worth reusing for an identical rule
KEEP_CHECKPOINTS = 3
BUSY_TIMEOUT_S = 30.0
SQLITE_HEADER = b"SQLite format 3\x00"

SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE evaluations (
        id INTEGER PRIMARY KEY,
        batch INTEGER NOT NULL,
        tokens TEXT NOT NULL,
        rule TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'ok', 'diverged',
            'timeout', 'invalid', 'failed', 'cached', 'degenerate')),
        reward REAL, lr REAL, test_metric REAL, seconds REAL,
        worker TEXT, node TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT, fingerprint TEXT, details TEXT,
        asked_at REAL NOT NULL, started_at REAL, finished_at REAL)""",
    """CREATE TABLE checkpoints (
        id INTEGER PRIMARY KEY, batch INTEGER NOT NULL, told INTEGER NOT NULL,
        state BLOB NOT NULL, created REAL NOT NULL)""",
    """CREATE TABLE retrains (
        id INTEGER PRIMARY KEY, rule TEXT NOT NULL, source TEXT NOT NULL, task TEXT,
        seed INTEGER, epochs REAL, status TEXT, reward REAL, lr REAL, test_metric REAL,
        seconds REAL, details TEXT, created REAL NOT NULL)""",
)
INDEXES = (  # also added, if missing, to runs written by an earlier store
    "CREATE INDEX IF NOT EXISTS evaluations_status ON evaluations (status)",
    "CREATE INDEX IF NOT EXISTS evaluations_fingerprint ON evaluations (fingerprint)",
    "CREATE INDEX IF NOT EXISTS evaluations_batch ON evaluations (batch)",
    "CREATE INDEX IF NOT EXISTS evaluations_rule ON evaluations (rule)",
    "CREATE INDEX IF NOT EXISTS evaluations_reward ON evaluations (reward DESC, id)",
)
EVAL_COLUMNS = ("id, batch, tokens, rule, status, reward, lr, test_metric, seconds, worker, "
                "node, attempts, error, fingerprint, details, asked_at, started_at, finished_at")
_SELECT = "SELECT " + EVAL_COLUMNS + " FROM evaluations "
EVAL_QUERIES = {  # constant SQL only; every value is a bound parameter
    "all": _SELECT + "ORDER BY id",
    "id": _SELECT + "WHERE id = ?",
    "status": _SELECT + "WHERE status = ? ORDER BY id",
    "batch": _SELECT + "WHERE batch = ? ORDER BY id",
    "fingerprint": _SELECT + "WHERE fingerprint = ? AND status IN (?, ?, ?) ORDER BY id LIMIT 1",
}
RANKED = ("ok", "diverged", "timeout", "cached")  # rows whose reward comes from a training
RETRAIN_FIELDS = ("rule", "source", "task", "seed", "epochs", "status", "reward", "lr",
                  "test_metric", "seconds", "details")


class StoreError(ValueError):
    """A run database that cannot be used as asked; the message is one line."""


class NotARunError(StoreError):
    """The path is not a nos run (missing, not SQLite, or SQLite without the marker)."""


class ConfigMismatchError(StoreError):
    """The run exists with another config."""


class RunLockedError(StoreError):
    """Another live process holds the run."""


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
        config_json = _canonical_json(config)
        _make_writable_dir(run_dir)
        if db.is_file() and db.stat().st_size > 0:  # refused before the lock: nothing written
            _check_config(run_dir, _probe_meta(db)["config"], config_json)
        lock_fd = _lock(run_dir)
        conn = None
        try:
            if db.exists() and db.stat().st_size > 0:
                _check_header(db)
                if not os.access(db, os.R_OK | os.W_OK):
                    raise StoreError(f"cannot write to {db} (permission denied)")
            conn = _connect(db, "rwc")
            # A creation killed before its commit leaves a database with no tables.
            if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
                _initialize(conn, db, config_json)
            else:
                _check_config(run_dir, _read_meta(conn, db)["config"], config_json)
                _enable_wal(conn, db)
                with _transaction(conn):
                    for statement in INDEXES:
                        conn.execute(statement)
            conn.execute("PRAGMA synchronous = NORMAL")
            return cls(conn, run_dir, json.loads(config_json), readonly=False, lock_fd=lock_fd)
        except BaseException:
            if conn is not None:
                conn.close()
            _unlock(lock_fd)
            raise

    @classmethod
    def open(cls, path: str | Path, readonly: bool = True) -> Store:
        """Open an existing run (its directory or its ``nos.db``) without the lock.
        Creates no file when ``path`` is not a run."""
        db, run_dir = _locate(path)
        _probe_meta(db)
        conn = _connect(db, "ro" if readonly else "rw")
        try:
            config = json.loads(_read_meta(conn, db)["config"])
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
            _unlock(self._lock_fd)
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
        batch = _index("batch", batch)
        rows = [(json.dumps(_tokens(tokens)), _text("rule", rule)) for tokens, rule in proposals]
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
        eval_id = _index("eval_id", eval_id)
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
        eval_id = _index("eval_id", eval_id)
        values = (_status(status, FINISHED), _real("reward", reward), _real("lr", lr),
                  _real("test_metric", test_metric), _real("seconds", seconds), worker, node,
                  error, fingerprint, _details_json(details), time.time(), eval_id)
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
        eval_id = _index("eval_id", eval_id)
        with self._write() as conn:
            cur = conn.execute("UPDATE evaluations SET fingerprint = ? "
                               "WHERE id = ? AND status = 'pending'",
                               (_text("fingerprint", fingerprint), eval_id))
            if cur.rowcount == 0:
                self._require_id(eval_id)
            return cur.rowcount == 1

    def get(self, eval_id: int) -> Evaluation | None:
        rows = self._evaluations("id", (_index("eval_id", eval_id),))
        return rows[0] if rows else None

    def pending(self) -> list[Evaluation]:
        return self.evaluations("pending")

    def batch(self, batch: int) -> list[Evaluation]:
        return self._evaluations("batch", (_index("batch", batch),))

    def evaluations(self, status: str | None = None) -> list[Evaluation]:
        if status is None:
            return self._evaluations("all", ())
        return self._evaluations("status", (_status(status),))

    def count(self, status: str | None = None) -> int:
        if status is None:
            return self._conn.execute("SELECT count(*) FROM evaluations").fetchone()[0]
        return self._conn.execute("SELECT count(*) FROM evaluations WHERE status = ?",
                                  (_status(status),)).fetchone()[0]

    def counts_by_status(self) -> dict[str, int]:
        """Number of evaluations per status, for the statuses present."""
        return dict(self._conn.execute(
            "SELECT status, count(*) FROM evaluations GROUP BY status ORDER BY status"))

    def cached_result(self, fingerprint: str) -> Evaluation | None:
        """The first trained result (ok, diverged, timeout) with this fingerprint."""
        rows = self._evaluations("fingerprint", (fingerprint, *TRAINED))
        return rows[0] if rows else None

    def top(self, k: int) -> list[dict]:
        """The best ``k`` distinct rules, best first: ``rule``, ``reward`` (its best),
        ``lr`` and ``id`` of that best row, and ``count``, the number of times the rule was
        proposed. Rules with the same functional fingerprint are one rule (shown by the
        text first trained); without a fingerprint the text decides. Ranked are rows whose
        reward comes from a training (ok, diverged, timeout, cached); pruned and failed
        rows only carry the floor reward."""
        k = _index("k", k)
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
                                  "(?, ?, ?)", TRAINED).fetchone()[0]
        wall = max(last - first, 0.0) if finished else 0.0
        return {"evaluations": finished, "wall_seconds": wall,
                "per_second": finished / wall if wall > 0 else 0.0,
                "mean_seconds": mean if mean is not None else 0.0}

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
            _text(name, fields.get(name))
        if fields.get("status") is not None:
            _status(fields["status"], FINISHED)
        for name in ("reward", "lr", "test_metric", "seconds", "epochs"):
            fields[name] = _real(name, fields.get(name))
        fields["details"] = _details_json(fields.get("details"))
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

    # --- internals -------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed whole or rolled back whole."""
        if self._readonly:
            raise StoreError(f"run {self.path} is open read-only")
        with _transaction(self._conn):
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
    batch = -1 if batch == -1 else _index("batch", batch)  # -1: nothing told yet
    return batch, _index("told", told), bytes(state), time.time()


def _insert_checkpoint(conn: sqlite3.Connection, values: tuple[int, int, bytes, float]) -> None:
    conn.execute("INSERT INTO checkpoints (batch, told, state, created) VALUES (?, ?, ?, ?)",
                 values)
    conn.execute("DELETE FROM checkpoints WHERE id NOT IN "
                 "(SELECT id FROM checkpoints ORDER BY id DESC LIMIT ?)", (KEEP_CHECKPOINTS,))


# --- files, locks and connections ------------------------------------------------------


def _make_writable_dir(run_dir: Path) -> None:
    if run_dir.exists():
        if not run_dir.is_dir():
            raise StoreError(f"run directory {run_dir} exists and is not a directory")
        if not os.access(run_dir, os.W_OK | os.X_OK):
            raise StoreError(f"cannot write to run directory {run_dir} (permission denied)")
        return
    try:
        run_dir.mkdir(parents=True)
    except OSError as err:
        raise StoreError(f"cannot create run directory {run_dir}: {err.strerror}") from None


def _lock(run_dir: Path) -> int:
    """Take ``run_dir/nos.lock`` (flock, released by the kernel if the process dies)."""
    lock_path = run_dir / LOCK_NAME
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise StoreError(f"cannot open lock file {lock_path}: {err.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        who = f"process {holder}" if holder.isdigit() else "another process"
        raise RunLockedError(f"run {run_dir} is in use by {who} (lock {lock_path}); "
                             "wait for it to end or use another directory") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _locate(path: str | Path) -> tuple[Path, Path]:
    """(database file, run directory) for a run directory or a database path."""
    path = Path(path)
    if not path.exists():
        raise NotARunError(f"{path} is not a nos run: no such file or directory")
    if path.is_dir():
        db = path / DB_NAME
        if not db.is_file():
            raise NotARunError(f"{path} is not a nos run: it has no {DB_NAME}")
        return db, path
    return path, path.parent


def _check_header(db: Path) -> None:
    try:
        with db.open("rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except OSError as err:
        raise NotARunError(f"{db} is not a nos run database: {err.strerror}") from None
    if header != SQLITE_HEADER:
        raise NotARunError(f"{db} is not a nos run database: not an SQLite file")


def _probe_meta(db: Path) -> dict[str, str]:
    """The run's meta, read without creating or changing any file (NotARunError if none)."""
    _check_header(db)
    # Without a -wal file the main file holds every commit, and an immutable connection
    # reads it without creating -wal/-shm files (next to a file that may not be ours).
    probe = _connect(db, "ro" if Path(f"{db}-wal").exists() else "ro&immutable=1")
    try:
        return _read_meta(probe, db)
    finally:
        probe.close()


def _connect(db: Path, mode: str) -> sqlite3.Connection:
    # mode is one of this module's constants, never user text.
    uri = f"{db.resolve().as_uri()}?mode={mode}"
    try:
        return sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as err:
        raise StoreError(f"cannot open {db}: {err}") from None


def _enable_wal(conn: sqlite3.Connection, db: Path) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode != "wal":
        raise StoreError(f"cannot use WAL journal for {db} (got {mode!r}); "
                         "is it on a network file system?")


def _initialize(conn: sqlite3.Connection, db: Path, config_json: str) -> None:
    _enable_wal(conn, db)
    meta = {"format": FORMAT, "version": str(VERSION), "config": config_json,
            "created": repr(time.time())}
    with _transaction(conn):
        for statement in SCHEMA + INDEXES:
            conn.execute(statement)
        conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE (take the write lock now, not halfway) ... COMMIT, or ROLLBACK."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _read_meta(conn: sqlite3.Connection, db: Path) -> dict[str, str]:
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta"))
    except sqlite3.DatabaseError as err:
        raise NotARunError(f"{db} is not a nos run database: {err}") from None
    if meta.get("format") != FORMAT or "config" not in meta:
        raise NotARunError(f"{db} is not a nos run database: no '{FORMAT}' marker")
    if meta.get("version") != str(VERSION):
        raise StoreError(f"{db} has run format version {meta.get('version')!r}; "
                         f"this nos reads version {VERSION}")
    return meta


# --- values ---------------------------------------------------------------------------


def _canonical_json(config: dict) -> str:
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    try:
        return json.dumps(config, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as err:
        raise StoreError(f"config is not JSON data: {err}") from None


def _check_config(run_dir: Path, old_json: str, new_json: str) -> None:
    """Compared as data, so that a run written with other JSON spacing still matches."""
    diffs = _diff(json.loads(old_json), json.loads(new_json), "")
    if diffs:
        shown = "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
        raise ConfigMismatchError(f"run {run_dir} was started with another config (in the run "
                                  f"-> now): {shown}; resume with the same config or use "
                                  "another directory")


def _diff(old: object, new: object, path: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            sub = f"{path}.{key}" if path else key
            if key not in old or key not in new:
                out.append(f"{sub}: {_show(old, key)} -> {_show(new, key)}")
            else:
                out.extend(_diff(old[key], new[key], sub))
        return out
    same = json.dumps(old, sort_keys=True) == json.dumps(new, sort_keys=True)
    return [] if same else [f"{path or '(config)'}: {json.dumps(old)} -> {json.dumps(new)}"]


def _show(mapping: dict, key: str) -> str:
    return json.dumps(mapping[key]) if key in mapping else "(absent)"


def _index(name: str, value: object) -> int:
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if number < 0:
        raise ValueError(f"{name} must be >= 0, got {number}")
    return number


def _tokens(tokens: Sequence[int]) -> list[int]:
    try:
        return [operator.index(t) for t in tokens]
    except TypeError:
        raise TypeError(f"tokens must be a sequence of integers, got {tokens!r}") from None


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {value!r}")
    return value


def _real(name: str, value: object) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    return None if math.isnan(number) else number


def _status(status: str, allowed: tuple[str, ...] = STATUSES) -> str:
    if status not in allowed:
        raise ValueError(f"unknown status {status!r}; expected one of {', '.join(allowed)}")
    return status


def _details_json(details: dict | None) -> str | None:
    if details is None:
        return None
    if not isinstance(details, dict):
        raise TypeError(f"details must be a dict, got {type(details).__name__}")
    try:
        return json.dumps(details, sort_keys=True, default=_plain)
    except (TypeError, ValueError) as err:
        raise TypeError(f"details are not JSON data: {err}") from None


def _plain(value: object) -> object:
    """numpy and torch scalars and arrays as plain Python values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} value {value!r} is not JSON data")
