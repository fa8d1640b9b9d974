"""Opening a run database safely: the directory, the lock, the SQLite file's checks,
WAL mode, transactions, the run's meta and the config it was started with.

A run is one directory holding ``nos.db`` and ``nos.lock``.  One process writes,
holding ``nos.lock`` (flock, released by the kernel if the process dies); the
database is in WAL mode so readers read concurrently.  Every error is a
:class:`StoreError` whose message is one line.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nos.search.store.schema import (
    BUSY_TIMEOUT_S,
    DB_NAME,
    FORMAT,
    INDEXES,
    LOCK_NAME,
    SCHEMA,
    SQLITE_HEADER,
    VERSION,
)


class StoreError(ValueError):
    """A run database that cannot be used as asked; the message is one line."""


class NotARunError(StoreError):
    """The path is not a nos run (missing, not SQLite, or SQLite without the marker)."""


class ConfigMismatchError(StoreError):
    """The run exists with another config."""


class RunLockedError(StoreError):
    """Another live process holds the run."""




def make_writable_dir(run_dir: Path) -> None:
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


def lock(run_dir: Path) -> int:
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


def unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def locate(path: str | Path) -> tuple[Path, Path]:
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


def check_header(db: Path) -> None:
    try:
        with db.open("rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except OSError as err:
        raise NotARunError(f"{db} is not a nos run database: {err.strerror}") from None
    if header != SQLITE_HEADER:
        raise NotARunError(f"{db} is not a nos run database: not an SQLite file")


def probe_meta(db: Path) -> dict[str, str]:
    """The run's meta, read without creating or changing any file (NotARunError if none)."""
    check_header(db)
    # Without a -wal file the main file holds every commit, and an immutable connection
    # reads it without creating -wal/-shm files (next to a file that may not be ours).
    probe = connect(db, "ro" if Path(f"{db}-wal").exists() else "ro&immutable=1")
    try:
        return read_meta(probe, db)
    finally:
        probe.close()


def connect(db: Path, mode: str) -> sqlite3.Connection:
    # mode is one of this module's constants, never user text.
    uri = f"{db.resolve().as_uri()}?mode={mode}"
    try:
        return sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as err:
        raise StoreError(f"cannot open {db}: {err}") from None


def enable_wal(conn: sqlite3.Connection, db: Path) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode != "wal":
        raise StoreError(f"cannot use WAL journal for {db} (got {mode!r}); "
                         "is it on a network file system?")


def initialize(conn: sqlite3.Connection, db: Path, config_json: str) -> None:
    enable_wal(conn, db)
    meta = {"format": FORMAT, "version": str(VERSION), "config": config_json,
            "created": repr(time.time())}
    with transaction(conn):
        for statement in SCHEMA + INDEXES:
            conn.execute(statement)
        conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE (take the write lock now, not halfway) ... COMMIT, or ROLLBACK."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def read_meta(conn: sqlite3.Connection, db: Path) -> dict[str, str]:
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


# --- the config a run was started with ----------------------------------------------


def canonical_json(config: dict) -> str:
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    try:
        return json.dumps(config, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as err:
        raise StoreError(f"config is not JSON data: {err}") from None


def check_config(run_dir: Path, old_json: str, new_json: str) -> None:
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
