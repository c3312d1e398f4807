"""Rebuilding records from the registry: attach after a kernel restart, and other kernels' jobs.

When the session that owned a job is gone (its process died, or it closed), the job is *orphaned*:

- a local backend's tasks died with their session (the backend guarantees it): steps left QUEUED or
  RUNNING are recorded KILLED, with the reason;
- a persistent backend's tasks (Slurm: the class has ``adopt``) keep running: the attaching session
  adopts them and keeps polling;
- PENDING steps are taken over: they launch when their dependencies are DONE.

Only one session wins an orphan (a compare-and-set on ``jobs.session_id``).
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .handles import JobRecord
from .state import State
from .sweep import Sweep

if TYPE_CHECKING:
    from .lifecycle import SessionCore

__all__ = ["load_record", "claim", "claim_orphans", "refresh_foreign", "session_alive"]

logger = logging.getLogger(__name__)

# Rows of other sessions are re-read from a little before the last refresh: a transaction stamped
# just before our previous read may have committed just after it.
REFRESH_MARGIN_SECONDS = 5.0


def load_record(session: SessionCore, row: dict[str, Any]) -> JobRecord:
    """A JobRecord from a ``jobs`` row and its ``steps`` rows."""
    from .lifecycle import DEFAULT_SCALES

    steps_field = row["steps"]
    steps: Sequence[int] | None
    if steps_field is None:
        steps = None
    elif isinstance(steps_field, dict):
        steps = range(*steps_field["range"])
    else:
        steps = list(steps_field)
    n = int(row["n_steps"])
    rec = JobRecord(row["id"], row["name"], row["kind"], row["command"], row["backend"], n, steps,
                    State(row["initial_state"] or State.PENDING.value), row["created"] or 0.0)
    spec = row["spec"] or {}
    rec.resources = dict(spec.get("resources") or {})
    rec.env = dict(spec.get("env") or {})
    rec.cwd = spec.get("cwd")
    rec.max_attempts = int(spec.get("max_attempts") or 1)
    rec.scales = dict(spec.get("scales") or DEFAULT_SCALES)
    rec.log_dir = row["log_dir"] or ""
    rec.script_dir = row["script_dir"]
    rec.script_chunk = int(spec.get("script_chunk") or 1)
    rec.session_id = row["session_id"]
    rec.ended = row["ended"]
    if steps is not None:
        rec.sweep = Sweep(steps, row["params"])
    if row["did_base"]:
        rec.dids = [f"{row['did_base']}_{index}" for index in range(n)]
    elif row["dids"]:
        rec.dids = list(row["dids"])
    rec.after_ids = [(int(job_id), index) for job_id, index in (row["after"] or [])]
    rec.refreshed = time.time()
    rows = session.registry.step_rows(rec.id)
    rec.has_rows = bool(rows)
    for index, state in overlay(rec, rows):
        _set_quietly(rec, index, state)
    return rec


def overlay(rec: JobRecord, rows: list[tuple]) -> list[tuple[int, State]]:
    """Copy ``steps`` rows into the record's columns; return ``[(index, new state)]`` of changed states."""
    changes = []
    for row in rows:
        _, index, _, state, did, attempt, exit_code, message, runtime, rss, _, started, _, limits = row
        if index >= rec.n:
            continue
        if limits:
            rec.step_resources[index] = json.loads(limits)  # scaled by retries: the next one scales on
        rec.dids[index] = did
        rec.attempts[index] = attempt or 1
        rec.exit_codes[index] = exit_code
        rec.messages[index] = message
        rec.runtimes[index] = runtime
        rec.rss[index] = rss
        rec.started[index] = started
        new = State(state)
        if new is not rec.states[index]:
            changes.append((index, new))
    return changes


def _set_quietly(rec: JobRecord, index: int, state: State) -> None:
    """Change a state while loading (no events: nothing waits on a record being built)."""
    rec.move(index, state)


def session_alive(info: dict[str, Any] | None) -> bool:
    """True if the session described by a ``sessions`` row may still run.

    On this host its process is checked (pid and start time); on another host, its heartbeat.
    """
    import psutil

    from .lifecycle import HEARTBEAT_SECONDS

    if info is None or info.get("closed"):
        return False
    if info.get("host") != socket.gethostname():
        return time.time() - float(info.get("heartbeat") or 0) < 3 * HEARTBEAT_SECONDS
    try:
        process = psutil.Process(int(info["pid"]))
        return abs(process.create_time() - float(info["create_time"] or 0)) < 1.0
    except (psutil.Error, TypeError, ValueError):
        return False


def claim_orphans(session: SessionCore, sessions: dict[str, dict[str, Any]], take_over: bool = True) -> None:
    """Mark each loaded record owned or foreign; take over orphans (the session's lock is held)."""
    for rec in session._records.values():
        if rec.session_id == session.id:
            continue
        rec.owned = False
        if rec.all_terminal:
            continue
        owner = sessions.get(rec.session_id or "")
        if session_alive(owner):
            continue
        if not take_over and (rec.by_state[State.PENDING] or session._persistent(rec.backend)):
            continue  # left for a session that will run or adopt them
        claim(session, rec, owner)


def claim(session: SessionCore, rec: JobRecord, owner: dict[str, Any] | None) -> bool:
    """Take over an orphaned job (its session ``owner`` is gone): True if this session won it.

    Only one session wins (a compare-and-set in the registry); the winner records how the dead
    session's local steps ended, adopts its persistent ones and launches its PENDING ones (the
    session's lock is held).
    """
    if not session.registry.claim_job(rec.id, rec.session_id, session.id):
        return False  # another session took it over first
    rec.session_id = session.id
    rec.owned = True
    _take_over(session, rec, owner)
    return True


def _take_over(session: SessionCore, rec: JobRecord, owner: dict[str, Any] | None) -> None:
    who = f"pid {owner['pid']} on {owner['host']}" if owner else "an unknown session"
    live = [i for i in range(rec.n) if rec.states[i] in (State.QUEUED, State.RUNNING)]
    usable = session._usable(rec.backend)
    if live and usable and session._persistent(rec.backend):
        backend = session._backend(rec.backend)
        table = session._live.setdefault(rec.backend, {})
        for index in live:
            did = rec.dids[index]
            try:
                backend.adopt(did, rec.name, session._requested(rec, index if rec.kind == "array" else None))
                table[did] = (rec, index)  # type: ignore[index]
            except Exception as exc:
                session._set(rec, index, State.LOST, f"lost: could not re-adopt {did} after {who} ended ({exc})")
    elif live and not usable:
        for index in live:
            session._set(rec, index, State.LOST,
                         f"lost: its session ({who}) ended and backend {rec.backend!r} is not usable here")
    else:
        for index in live:
            if rec.states[index] is State.RUNNING:
                session._set(rec, index, State.KILLED, f"killed: the session that ran it ({who}) ended")
            else:
                session._set(rec, index, State.KILLED, f"cancelled: its session ({who}) ended before it started")
    if rec.by_state[State.PENDING]:
        session._deps_to_check.append(rec)


def refresh_foreign(session: SessionCore, records: list[JobRecord]) -> bool:
    """Read other live sessions' jobs from the registry; take over those whose session died."""
    sessions = session.registry.sessions()
    changed = False
    for rec in records:
        since = rec.refreshed
        rec.refreshed = time.time()
        rows = session.registry.step_rows(rec.id, None if since is None else since - REFRESH_MARGIN_SECONDS)
        for index, state in overlay(rec, rows):
            session._set(rec, index, state)
            session._dirty.discard((rec, index))  # their owner writes them, not us
            changed = True
        owner = sessions.get(rec.session_id or "")
        if not rec.all_terminal and not session_alive(owner) and claim(session, rec, owner):
            changed = True
    return changed
