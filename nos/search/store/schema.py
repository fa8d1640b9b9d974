"""The run database's layout: tables, indexes, statuses, and the constant SQL that reads them."""

from __future__ import annotations

DB_NAME = "nos.db"
LOCK_NAME = "nos.lock"
FORMAT = "nos-run"
VERSION = 1
FINISHED = ("ok", "diverged", "timeout", "invalid", "failed", "cached", "degenerate", "stopped")
STATUSES = ("pending", *FINISHED)
TRAINED = ("ok", "diverged", "timeout", "stopped")  # results worth reusing for an identical rule
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
            'timeout', 'invalid', 'failed', 'cached', 'degenerate', 'stopped')),
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
# The funnel's trainings: one row per (stage, candidate rule, task, seed).  A candidate is
# a distinct behaviour (its fingerprint), named by its rule text; ``source`` is "search"
# (``origin``: the evaluation it comes from) or "baseline" (``name``: the named rule).
TRIALS = """CREATE TABLE IF NOT EXISTS trials (
        id INTEGER PRIMARY KEY,
        stage INTEGER NOT NULL, candidate TEXT NOT NULL, fingerprint TEXT,
        source TEXT NOT NULL CHECK (source IN ('search', 'baseline')), name TEXT,
        origin INTEGER, task TEXT NOT NULL, seed INTEGER NOT NULL, settings TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending', reward REAL, lr REAL, test_metric REAL,
        seconds REAL, worker TEXT, attempts INTEGER NOT NULL DEFAULT 0, error TEXT,
        details TEXT, created REAL NOT NULL, started_at REAL, finished_at REAL,
        UNIQUE (stage, candidate, task, seed))"""
INDEXES = (  # also added, if missing, to runs written by an earlier store
    TRIALS,
    "CREATE INDEX IF NOT EXISTS trials_stage ON trials (stage, status)",
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
    "fingerprint": _SELECT + "WHERE fingerprint = ? AND status IN ("
                   + ", ".join("?" * len(TRAINED)) + ") ORDER BY id LIMIT 1",
}
# rows whose reward comes from a training
RANKED = ("ok", "diverged", "timeout", "stopped", "cached")
TRIAL_COLUMNS = ("id", "stage", "candidate", "fingerprint", "source", "name", "origin", "task",
                 "seed", "settings", "status", "reward", "lr", "test_metric", "seconds",
                 "worker", "attempts", "error", "details", "created", "started_at",
                 "finished_at")
RETRAIN_FIELDS = ("rule", "source", "task", "seed", "epochs", "status", "reward", "lr",
                  "test_metric", "seconds", "details")
