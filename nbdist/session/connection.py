"""The registry's SQLite connection: read-only opening and transactions that say why a write failed.

SQLite's own errors hide the cause in two places this module handles: a COMMIT that fails for lack
of space can leave the transaction open (every later ``BEGIN`` then fails, for ever), and a
statement that fails for lack of space can roll the transaction back itself (a second ``ROLLBACK``
then raises "cannot rollback - no transaction is active", hiding the full disk).
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from collections.abc import Callable
from typing import Any

__all__ = ["Transaction", "open_read_only"]


def open_read_only(path: str, timeout: float) -> sqlite3.Connection:
    """A connection to ``path`` that writes nothing, not even SQLite's shared-memory file.

    ``mode=ro`` reads a live WAL database (its ``-wal``/``-shm`` files exist, so the newest commits
    are seen); when they do not exist and cannot be created (a read-only or full file system),
    ``immutable=1`` reads the file as it is — then no process holds it open, so nobody writes it.
    """
    quoted = urllib.parse.quote(path)
    error: sqlite3.Error | None = None
    for options in ("mode=ro", "immutable=1"):
        db = sqlite3.connect(f"file:{quoted}?{options}", uri=True, timeout=timeout, check_same_thread=False,
                             isolation_level=None)
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchall()
            return db
        except sqlite3.Error as exc:
            db.close()
            error = exc
    assert error is not None
    raise error


class Transaction:
    """``BEGIN IMMEDIATE … COMMIT`` on ``db`` under ``lock``, rolled back on error.

    ``cannot_write(exc)`` turns an error into the one to raise instead (None: raise it as it is).
    """

    def __init__(self, db: sqlite3.Connection, lock: Any,
                 cannot_write: Callable[[BaseException], Exception | None]) -> None:
        self.db = db
        self.lock = lock
        self.cannot_write = cannot_write

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            self.lock.release()
            self._raise_translated(exc)
            raise
        return self.db

    def __exit__(self, kind: Any, exc: BaseException | None, traceback: Any) -> None:
        try:
            if kind is None:
                try:
                    self.db.execute("COMMIT")
                except sqlite3.Error as error:
                    self._rollback()  # a failed COMMIT may leave the transaction open
                    self._raise_translated(error)
                    raise
                return
            self._rollback()
            if exc is not None:
                self._raise_translated(exc)
        finally:
            self.lock.release()

    def _rollback(self) -> None:
        """Roll back what is still open (a statement that failed for lack of space may have done it)."""
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:  # the error being raised says more than this one
                pass

    def _raise_translated(self, exc: BaseException) -> None:
        translated = self.cannot_write(exc)
        if translated is not None:
            raise translated from exc
