"""The run store: one SQLite database per run directory."""

from nos.search.store.store import (
    ConfigMismatchError,
    Evaluation,
    NotARunError,
    RunLockedError,
    Store,
    StoreError,
)

__all__ = ["ConfigMismatchError", "Evaluation", "NotARunError", "RunLockedError", "Store",
           "StoreError"]
