"""The run store: one SQLite database per run directory.

``schema`` holds the tables and the constant SQL, ``database`` opens a run
safely (directory, lock, checks, WAL, transactions, the run's config),
``values`` checks what goes in, and ``store`` is the :class:`Store` itself.
"""

from nos.search.store.database import (
    ConfigMismatchError,
    NotARunError,
    RunLockedError,
    StoreError,
)
from nos.search.store.schema import TRAINED
from nos.search.store.store import Evaluation, Store

__all__ = ["TRAINED", "ConfigMismatchError", "Evaluation", "NotARunError", "RunLockedError",
           "Store", "StoreError"]
