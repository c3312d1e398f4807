"""The persistent registry: one SQLite file under the session root, shared by kernels and the CLI.

Tables::

    sessions (id, pid, host, started, create_time, backend, closed, heartbeat)
    jobs     (id, name, kind, command, backend, session_id, created, n_steps, steps, initial_state,
              did_base, dids, spec, params, log_dir, script_dir, after, ended)
    steps    (job_id, idx, step, state, distributor_id, attempt, exit_code, message, runtime_s,
              max_rss_mb, usage, started, ended, updated, limits)  -- once a step leaves its initial state
    attempts (job_id, idx, attempt, distributor_id, state, exit_code, message, usage, stdout, stderr,
              resources, started, ended)                    -- one row per finished attempt
    requests (id, session_id, job_id, action, arg, created) -- kill/retry asked by another process

A fresh array costs one ``jobs`` row whatever its length: its steps are described by the job row
until they change, so ``array(steps=100_000)`` does not write 100,000 rows. Writes from the poller
are batched: one transaction per poll (:class:`PendingWrites`).

Rows go in and come out as :class:`StepRecord` / :class:`AttemptRecord` named tuples, their JSON
columns (usage, limits, resources) encoded and decoded here and nowhere else.

A registry that cannot be written (a read-only file system, a snapshot, a full disk) is opened
read-only (SQLite's ``mode=ro``, else ``immutable=1``): jobs can be listed, shown and their logs
read; a write raises :class:`~nbdist.session.storage.RegistryUnwritable` saying why. A write that
fails for lack of space raises :class:`~nbdist.session.storage.DiskFull`, never SQLite's own error.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from .connection import Transaction, open_read_only
from .storage import RegistryUnwritable, unwritable, unwritable_reason

__all__ = ["AttemptRecord", "Registry", "StepRecord"]

logger = logging.getLogger(__name__)

# How long a writer waits for another process's transaction before giving up: long enough for a
# poll of a big array in another kernel, short enough that a stuck lock is reported.
BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, pid INTEGER, host TEXT, started REAL, create_time REAL, backend TEXT, closed REAL,
    heartbeat REAL
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, kind TEXT NOT NULL, command TEXT NOT NULL,
    backend TEXT NOT NULL, session_id TEXT, created REAL, n_steps INTEGER, steps TEXT, initial_state TEXT,
    did_base TEXT, dids TEXT, spec TEXT, params TEXT, log_dir TEXT, script_dir TEXT, after TEXT, ended REAL
);
CREATE INDEX IF NOT EXISTS jobs_name ON jobs(name);
CREATE TABLE IF NOT EXISTS steps (
    job_id INTEGER, idx INTEGER, step INTEGER, state TEXT, distributor_id TEXT, attempt INTEGER,
    exit_code INTEGER, message TEXT, runtime_s REAL, max_rss_mb REAL, usage TEXT, started REAL, ended REAL,
    updated REAL, limits TEXT, PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS steps_updated ON steps(job_id, updated);
CREATE TABLE IF NOT EXISTS attempts (
    job_id INTEGER, idx INTEGER, attempt INTEGER, distributor_id TEXT, state TEXT, exit_code INTEGER,
    message TEXT, usage TEXT, stdout TEXT, stderr TEXT, resources TEXT, started REAL, ended REAL,
    PRIMARY KEY (job_id, idx, attempt)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT, job_id INTEGER, action TEXT, arg TEXT, created REAL
);
"""

# A step's usage is that of its last finished attempt: a row written while a retry runs keeps it.
_UPSERT_STEP = """
INSERT INTO steps VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (job_id, idx) DO UPDATE SET
    step = excluded.step, state = excluded.state, distributor_id = excluded.distributor_id,
    attempt = excluded.attempt, exit_code = excluded.exit_code, message = excluded.message,
    runtime_s = excluded.runtime_s, max_rss_mb = excluded.max_rss_mb, usage = COALESCE(excluded.usage, steps.usage),
    started = excluded.started, ended = excluded.ended, updated = excluded.updated, limits = excluded.limits
"""

class StepRecord(NamedTuple):
    """One ``steps`` row (without ``updated``, which the registry stamps): a step's current attempt."""

    job_id: int
    idx: int
    step: int | None
    state: str
    distributor_id: str | None
    attempt: int
    exit_code: int | None
    message: str | None
    runtime_s: float | None
    max_rss_mb: float | None
    usage: dict[str, Any] | None
    started: float | None
    ended: float | None
    limits: dict[str, Any] | None


class AttemptRecord(NamedTuple):
    """One ``attempts`` row: a finished attempt of a step."""

    job_id: int
    idx: int
    attempt: int
    distributor_id: str | None
    state: str
    exit_code: int | None
    message: str | None
    usage: dict[str, Any]
    stdout: str | None
    stderr: str | None
    resources: dict[str, Any]
    started: float | None
    ended: float | None


_STEP_COLUMNS = ", ".join(StepRecord._fields[:13]) + ", limits"


class Registry:
    """The SQLite registry under ``root`` (``{root}/registry.db``), safe to share between processes.

    Parameters
    ----------
    root
        The folder of the registry (created).

    Attributes
    ----------
    read_only
        Why this process cannot write it (``"read-only file system"``, ``"disk full"``), or None.
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.path = os.path.join(self.root, "registry.db")
        self._lock = threading.RLock()
        self.read_only: str | None = None
        self._warned_read_only = False
        try:
            os.makedirs(self.root, exist_ok=True)
            self._db = self._open_writable()
        except (OSError, sqlite3.Error) as exc:
            reason = unwritable_reason(self.root, exc)
            if reason is None:
                raise
            if not os.path.exists(self.path):  # nothing to read either
                raise unwritable(reason, f"cannot create the registry {self.path}") from exc
            self._db = open_read_only(self.path, BUSY_TIMEOUT_MS / 1000)
            self.read_only = reason

    def _open_writable(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False,
                             isolation_level=None)
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA journal_mode = WAL")
            # WAL + NORMAL is durable across a killed process (only a power loss may drop the last commit).
            db.execute("PRAGMA synchronous = NORMAL")
            self._db = db
            with self.transaction():
                statements = [statement for statement in _SCHEMA.split(";") if statement.strip()]
                for statement in statements:
                    if "CREATE TABLE" in statement:
                        db.execute(statement)
                self._add_missing_columns()
                for statement in statements:
                    if "CREATE INDEX" in statement:
                        db.execute(statement)
        except BaseException:
            db.close()
            raise
        return db

    def _add_missing_columns(self) -> None:
        """Bring a registry made by an earlier nbdist up to this schema (new columns come last)."""
        for table, statement in re.findall(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*?)\n\)", _SCHEMA, re.DOTALL):
            have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            for column in re.findall(r"(?:^|,)\s*(\w+ (?:TEXT|REAL|INTEGER))", statement):
                name, kind = column.split()
                if name not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

    def transaction(self) -> Transaction:
        """``with registry.transaction():`` — one ``BEGIN IMMEDIATE … COMMIT`` (rolled back on error).

        Raises :class:`~nbdist.session.storage.RegistryUnwritable` (:class:`DiskFull` for a full disk)
        when the registry cannot be written.
        """
        self.check_writable()
        return Transaction(self._db, self._lock, self.cannot_write)

    def check_writable(self) -> None:
        """Raise :class:`~nbdist.session.storage.RegistryUnwritable` if this process opened it read-only."""
        if self.read_only is not None:
            raise unwritable(self.read_only, f"the registry {self.path} was opened read-only: jobs can be listed "
                             "and shown and their logs read, not submitted, killed or retried")

    def cannot_write(self, exc: BaseException) -> RegistryUnwritable | None:
        """The error to raise instead of ``exc``, a failed write (None: ``exc`` says it already)."""
        if not isinstance(exc, sqlite3.Error):  # e.g. a job's files that could not be placed: already says so
            return None
        reason = unwritable_reason(self.root, exc)
        return None if reason is None else unwritable(reason, f"cannot write the registry {self.path} ({exc})")

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ sessions
    def add_session(self, session_id: str, backend: str) -> None:
        """Record a session owned by this process.

        When that cannot be written, the registry stays read-only for this process (a session that
        is not recorded must not own jobs): one warning says so and what can still be done.
        """
        import psutil

        create_time = psutil.Process().create_time()
        if self.read_only is None:
            try:
                with self.transaction():
                    self._db.execute(
                        "INSERT INTO sessions (id, pid, host, started, create_time, backend, closed, heartbeat) "
                        "VALUES (?,?,?,?,?,?,NULL,?)",
                        (session_id, os.getpid(), socket.gethostname(), time.time(), create_time, backend,
                         time.time()),
                    )
                return
            except RegistryUnwritable as exc:
                self.read_only = exc.reason
        if not self._warned_read_only:
            self._warned_read_only = True
            logger.warning("%s: %s opened read-only: jobs can be listed and shown and their logs read; nothing can "
                           "be submitted, killed or retried from this process", self.read_only, self.path)

    def close_session(self, session_id: str) -> None:
        """Mark a session closed (a read-only registry recorded none)."""
        if self.read_only is not None:
            return
        with self.transaction():
            self._db.execute("UPDATE sessions SET closed = ? WHERE id = ?", (time.time(), session_id))

    def beat(self, session_id: str) -> None:
        """Say that a session is alive (sessions on other hosts are judged by this; a read-only one is none)."""
        if self.read_only is not None:
            return
        with self.transaction():
            self._db.execute("UPDATE sessions SET heartbeat = ? WHERE id = ?", (time.time(), session_id))

    def sessions(self) -> dict[str, dict[str, Any]]:
        """Every session, by id."""
        rows = self.query("SELECT id, pid, host, started, create_time, backend, closed, heartbeat FROM sessions")
        keys = ("id", "pid", "host", "started", "create_time", "backend", "closed", "heartbeat")
        return {row[0]: dict(zip(keys, row)) for row in rows}

    # ------------------------------------------------------------------ jobs and steps
    def add_job(self, fields: Mapping[str, Any],
                place: Callable[[int], Mapping[str, Any]] | None = None) -> int:
        """Insert a job row; return its id.

        ``place(job_id)``, run inside the same transaction, moves files prepared for the job into
        their places (named by its id) and returns the columns that point to them: the row and its
        files are committed together, or (an error, a killed process) the row is not there at all.
        """
        names = sorted(fields)
        values = [_encode(fields[name]) for name in names]
        with self.transaction():
            cursor = self._db.execute(
                f"INSERT INTO jobs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})", values
            )
            job_id = int(cursor.lastrowid)  # type: ignore[arg-type]
            extra = place(job_id) if place is not None else {}
            if extra:
                columns = sorted(extra)
                self._db.execute(f"UPDATE jobs SET {', '.join(f'{name} = ?' for name in columns)} WHERE id = ?",
                                 [_encode(extra[name]) for name in columns] + [job_id])
            return job_id

    def delete_job(self, job_id: int) -> None:
        """Remove a job and its rows (one that could not be submitted, or one forgotten)."""
        with self.transaction():
            for table in ("steps", "attempts", "requests"):
                self._db.execute(f"DELETE FROM {table} WHERE job_id = ?", (job_id,))
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def write(self, steps: Sequence[StepRecord], attempts: Sequence[AttemptRecord],
              job_updates: Iterable[tuple[int, dict[str, Any]]] = ()) -> None:
        """Write a poll's changes in one transaction (dict and list values are stored as JSON)."""
        job_updates = list(job_updates)
        if not steps and not attempts and not job_updates:
            return
        now = time.time()
        # A step's usage dict is in its steps row and its attempt row, and many attempts share one
        # resources dict: encode each object once.
        encoded: dict[int, Any] = {}

        def once(value: Any) -> Any:
            key = id(value)
            if key not in encoded:
                encoded[key] = _encode(value)
            return encoded[key]

        step_values = [(*row[:10], once(row.usage), row.started, row.ended, now, once(row.limits)) for row in steps]
        attempt_values = [(*row[:7], once(row.usage), row.stdout, row.stderr, once(row.resources), row.started,
                           row.ended) for row in attempts]
        with self.transaction():
            if step_values:
                self._db.executemany(_UPSERT_STEP, step_values)
            if attempt_values:
                self._db.executemany("INSERT OR REPLACE INTO attempts VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                                     attempt_values)
            for job_id, fields in job_updates:
                names = sorted(fields)
                self._db.execute(
                    f"UPDATE jobs SET {', '.join(f'{name} = ?' for name in names)} WHERE id = ?",
                    [_encode(fields[name]) for name in names] + [job_id],
                )

    def jobs(self, job_ids: Iterable[int] | None = None) -> list[dict[str, Any]]:
        """Job rows (all, or those of ``job_ids``), oldest first, JSON columns decoded."""
        columns = ("id", "name", "kind", "command", "backend", "session_id", "created", "n_steps", "steps",
                   "initial_state", "did_base", "dids", "spec", "params", "log_dir", "script_dir", "after", "ended")
        sql = f"SELECT {', '.join(columns)} FROM jobs"
        args: list[Any] = []
        if job_ids is not None:
            ids = list(job_ids)
            if not ids:
                return []
            sql += f" WHERE id IN ({', '.join('?' * len(ids))})"
            args = ids
        rows = self.query(sql + " ORDER BY id", args)
        decoded = []
        for row in rows:
            item = dict(zip(columns, row))
            for key in ("steps", "dids", "spec", "params", "after"):
                item[key] = _decode(item[key])
            decoded.append(item)
        return decoded

    def step_rows(self, job_id: int, since: float | None = None) -> list[StepRecord]:
        """The ``steps`` rows of a job (written so far, or updated at or after ``since``)."""
        if since is None:
            rows = self.query(f"SELECT {_STEP_COLUMNS} FROM steps WHERE job_id = ? ORDER BY idx", (job_id,))
        else:
            rows = self.query(f"SELECT {_STEP_COLUMNS} FROM steps WHERE job_id = ? AND updated >= ? ORDER BY idx",
                              (job_id, since))
        return [StepRecord(*row[:10], _decode(row[10]), *row[11:13], _decode(row[13])) for row in rows]

    def step_usage(self, job_id: int, idx: int) -> dict[str, Any]:
        """The usage of a step's last finished attempt (``{}`` if none)."""
        rows = self.query("SELECT usage FROM steps WHERE job_id = ? AND idx = ?", (job_id, idx))
        return (_decode(rows[0][0]) or {}) if rows else {}

    def attempt_rows(self, job_id: int, idx: int) -> list[AttemptRecord]:
        """The finished attempts of one step, oldest first."""
        columns = ", ".join(AttemptRecord._fields)
        rows = self.query(f"SELECT {columns} FROM attempts WHERE job_id = ? AND idx = ? ORDER BY attempt",
                          (job_id, idx))
        return [AttemptRecord(*row[:7], _decode(row[7]) or {}, row[8], row[9], _decode(row[10]) or {}, *row[11:])
                for row in rows]

    @classmethod
    def reading(cls, root: str) -> _Reader:
        """``with Registry.reading(root) as registry:`` — a short-lived connection (e.g. after close)."""
        return _Reader(cls(root))

    # ------------------------------------------------------------------ requests from other processes
    def claim_job(self, job_id: int, old_session: str | None, new_session: str) -> bool:
        """Move a job to ``new_session`` if it still belongs to ``old_session`` (one winner among racers)."""
        with self.transaction():
            cursor = self._db.execute(
                "UPDATE jobs SET session_id = ? WHERE id = ? AND session_id IS ?", (new_session, job_id, old_session)
            )
            return cursor.rowcount == 1

    def add_request(self, session_id: str, job_id: int, action: str, arg: Any = None) -> None:
        """Ask the session that owns a job to ``kill`` or ``retry`` it."""
        with self.transaction():
            self._db.execute(
                "INSERT INTO requests (session_id, job_id, action, arg, created) VALUES (?,?,?,?,?)",
                (session_id, job_id, action, _encode(arg), time.time()),
            )

    def take_requests(self, session_id: str) -> list[tuple[int, str, Any]]:
        """Remove and return the requests addressed to a session: ``[(job_id, action, arg), ...]``."""
        if not self.query("SELECT 1 FROM requests WHERE session_id = ? LIMIT 1", (session_id,)):
            return []  # the common case, without taking the write lock
        with self.transaction():
            rows = self._db.execute(
                "SELECT id, job_id, action, arg FROM requests WHERE session_id = ? ORDER BY id", (session_id,)
            ).fetchall()
            if rows:
                self._db.execute("DELETE FROM requests WHERE session_id = ? AND id <= ?", (session_id, rows[-1][0]))
        return [(job_id, action, _decode(arg)) for _, job_id, action, arg in rows]

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        """Run a read query."""
        with self._lock:
            return self._db.execute(sql, args).fetchall()


class _Reader:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def __enter__(self) -> Registry:
        return self.registry

    def __exit__(self, *exc: Any) -> None:
        self.registry.close()


_ENCODER = json.JSONEncoder(default=str)  # one encoder: json.dumps(default=...) builds one per call


def _encode(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return _ENCODER.encode(value)
    return value


def _decode(text: str | None) -> Any:
    return None if not text else json.loads(text)
