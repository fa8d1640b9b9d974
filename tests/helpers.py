"""Shared checks of the search tests."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from nos.search.store import Evaluation, Store


def check_run(out: Path, budget: int) -> list[Evaluation]:
    """The run's database is intact, holds ids 1..budget once each, none pending."""
    db = sqlite3.connect(out / "nos.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        ids = [r[0] for r in db.execute("SELECT id FROM evaluations ORDER BY id")]
    finally:
        db.close()
    assert ids == list(range(1, budget + 1)), ids
    with Store.open(out) as store:
        rows = store.evaluations()
    assert all(r.status != "pending" for r in rows)
    return rows
