"""Rebuilding records from the registry: attach after a kernel restart, and other kernels' jobs.

When the session that owned a job is gone (its process died, or it closed), the job is *orphaned*:

- a local backend's tasks died with their session (the backend guarantees it): steps left QUEUED or
  RUNNING are recorded KILLED, with the reason;
- a persistent backend's tasks (Slurm: an :class:`~nbdist.cluster_protocol.AdoptingDistributor`)
  keep running: the attaching session adopts them and keeps polling;
- PENDING steps are taken over: they launch when their dependencies are DONE.

Only one session wins an orphan (a compare-and-set on ``jobs.session_id``). A session's liveness is
its process (same host) or its heartbeat (another host, every :data:`HEARTBEAT_SECONDS`).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Sequence
from typing import Any

from ..cluster_protocol.naming import array_id
from ..cluster_protocol.pycall import PythonCall
from .launcher import Launcher
from .lifecycle import Lifecycle
from .records import DEFAULT_SCALES, JobRecord
from .registry import Registry, StepRecord
from .state import State
from .storage import RegistryUnwritable
from .sweep import Sweep

__all__ = ["HEARTBEAT_SECONDS", "Ownership", "load_record", "overlay", "session_alive"]

logger = logging.getLogger(__name__)

# Rows of other sessions are re-read from a little before the last refresh: a transaction stamped
# just before our previous read may have committed just after it.
REFRESH_MARGIN_SECONDS = 5.0
# A session on another host (shared folder) is taken for dead when its heartbeat is this much older
# (three times: a busy machine may miss a beat).
HEARTBEAT_SECONDS = 30.0
# Other sessions' finished jobs are looked at this often for a retry that reopened one (another
# kernel's, or the CLI's): one indexed query for all of them, so a retry shows within about a second.
FINISHED_CHECK_SECONDS = 1.0
# Job ids per query (SQLite allows 999 parameters in older builds).
IDS_PER_QUERY = 500


def load_record(row: dict[str, Any], step_rows: list[StepRecord]) -> JobRecord:
    """A JobRecord from a ``jobs`` row and its ``steps`` rows."""
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
    rec.call = PythonCall.from_json(spec.get("call"))
    rec.session_id = row["session_id"]
    rec.ended = row["ended"]
    if steps is not None:
        rec.sweep = Sweep(steps, row["params"])
    if row["did_base"]:
        rec.dids = [array_id(row["did_base"], index) for index in range(n)]
    elif row["dids"]:
        rec.dids = list(row["dids"])
    rec.after_ids = [(int(job_id), index) for job_id, index in (row["after"] or [])]
    rec.refreshed = time.time()
    rec.has_rows = bool(step_rows)
    for index, state in overlay(rec, step_rows):
        _set_quietly(rec, index, state)
    return rec


def overlay(rec: JobRecord, rows: list[StepRecord]) -> list[tuple[int, State]]:
    """Copy ``steps`` rows into the record's columns; return ``[(index, new state)]`` of changed states."""
    changes = []
    for row in rows:
        index = row.idx
        if index >= rec.n:
            continue
        if row.limits:
            rec.step_resources[index] = row.limits  # scaled by retries: the next one scales on
        rec.dids[index] = row.distributor_id
        rec.attempts[index] = row.attempt or 1
        rec.exit_codes[index] = row.exit_code
        rec.messages[index] = row.message
        rec.runtimes[index] = row.runtime_s
        rec.rss[index] = row.max_rss_mb
        rec.started[index] = row.started
        new = State(row.state)
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
    import psutil  # here, not at the top: importing the session must stay cheap

    if info is None or info.get("closed"):
        return False
    if info.get("host") != socket.gethostname():
        return time.time() - float(info.get("heartbeat") or 0) < 3 * HEARTBEAT_SECONDS
    try:
        process = psutil.Process(int(info["pid"]))
        return abs(process.create_time() - float(info["create_time"] or 0)) < 1.0
    except (psutil.Error, TypeError, ValueError):
        return False


class Ownership:
    """Which records this session owns: loading them, claiming orphans, following other kernels' jobs.

    Parameters
    ----------
    session_id
        This session's id in the registry.
    registry, launcher, lifecycle
        Its collaborators: rows are read from the registry, orphans are adopted through the launcher
        and their states changed through the lifecycle (whose lock the caller holds).
    """

    def __init__(self, session_id: str, registry: Registry, launcher: Launcher, lifecycle: Lifecycle) -> None:
        self.session_id = session_id
        self.registry = registry
        self.launcher = launcher
        self.lifecycle = lifecycle
        self._finished_checked = 0.0  # time.monotonic() of the last look at other sessions' finished jobs

    def load_all(self, take_over: bool) -> None:
        """Load every job of the registry not loaded yet, link dependencies, claim orphans (lock held)."""
        records = self.lifecycle.records
        for row in self.registry.jobs():
            if row["id"] not in records:
                records[row["id"]] = load_record(row, self.registry.step_rows(row["id"]))
        for rec in records.values():
            rec.after = [(records[job_id], index) for job_id, index in rec.after_ids
                         if job_id in records] or rec.after
            for dep, _ in rec.after:
                if rec not in dep.dependents:
                    dep.dependents.append(rec)
        self._claim_orphans(self.registry.sessions(), take_over)

    def _claim_orphans(self, sessions: dict[str, dict[str, Any]], take_over: bool) -> None:
        """Mark each loaded record owned or foreign; take over orphans."""
        for rec in self.lifecycle.records.values():
            if rec.session_id == self.session_id:
                continue
            rec.owned = False
            if rec.all_terminal:
                continue
            owner = sessions.get(rec.session_id or "")
            if session_alive(owner):
                continue
            if not take_over and (rec.by_state[State.PENDING] or self.launcher.persistent(rec.backend)):
                continue  # left for a session that will run or adopt them
            self.claim(rec, owner)

    def owns_or_claims(self, rec: JobRecord) -> bool:
        """True if this session owns ``rec`` — taking it over first when its session is gone (lock held)."""
        if rec.owned:
            return True
        owner = self.registry.sessions().get(rec.session_id or "")
        return not session_alive(owner) and self.claim(rec, owner)

    def ask_owner(self, rec: JobRecord, action: str, indices: list[int]) -> bool:
        """Another live session owns this job: leave it a request in the registry."""
        assert rec.session_id is not None
        self.registry.add_request(rec.session_id, rec.id, action, indices)
        return any(not rec.states[i].is_terminal for i in indices) if action == "kill" else True

    def claim(self, rec: JobRecord, owner: dict[str, Any] | None) -> bool:
        """Take over an orphaned job (its session ``owner`` is gone): True if this session won it.

        Only one session wins (a compare-and-set in the registry); the winner records how the dead
        session's local steps ended, adopts its persistent ones and launches its PENDING ones.
        """
        if self.registry.read_only is not None:
            return False  # this process cannot write: it only reads (the job is left for a session that can)
        try:
            won = self.registry.claim_job(rec.id, rec.session_id, self.session_id)
        except RegistryUnwritable:
            return False  # a full disk: the poller's next registry check tries again
        if not won:  # another session took it over first: follow that one from now on
            rows = self.registry.jobs([rec.id])
            rec.session_id = rows[0]["session_id"] if rows else rec.session_id
            return False
        rec.session_id = self.session_id
        rec.owned = True
        self._take_over(rec, owner)
        return True

    def _take_over(self, rec: JobRecord, owner: dict[str, Any] | None) -> None:
        who = f"pid {owner['pid']} on {owner['host']}" if owner else "an unknown session"
        lifecycle, launcher = self.lifecycle, self.launcher
        live = [i for i in range(rec.n) if rec.states[i] in (State.QUEUED, State.RUNNING)]
        usable = launcher.usable(rec.backend)
        if live and usable and launcher.persistent(rec.backend):
            backend = launcher.attach_logs(rec)
            table = lifecycle.live.setdefault(rec.backend, {})
            held = self._held_retries(rec, live)
            for index in live:
                if index in held:
                    continue
                did = rec.dids[index]
                try:
                    backend.adopt(did, rec.name, launcher.requested(rec, index if rec.kind == "array" else None))
                    table[did] = (rec, index)  # type: ignore[index]
                except Exception as exc:
                    lifecycle.set(rec, index, State.LOST, f"lost: could not re-adopt {did} after {who} ended ({exc})")
            # Retries the dead session held back (max_concurrent) are this session's to submit, as it would have.
            rec.held.update((index, f"attempt {rec.attempts[index]} (taken over after {who} ended)") for index in held)
            lifecycle.release(rec)
        elif live and not usable:
            for index in live:
                lifecycle.set(rec, index, State.LOST,
                              f"lost: its session ({who}) ended and backend {rec.backend!r} is not usable here")
        else:
            for index in live:
                if rec.states[index] is State.RUNNING:
                    lifecycle.set(rec, index, State.KILLED, f"killed: the session that ran it ({who}) ended")
                else:
                    lifecycle.set(rec, index, State.KILLED,
                                  f"cancelled: its session ({who}) ended before it started")
        if rec.by_state[State.PENDING]:
            lifecycle.deps_to_check.append(rec)

    def _held_retries(self, rec: JobRecord, live: list[int]) -> list[int]:
        """Steps whose current attempt the dead session held back (max_concurrent) and never submitted:
        their row still names the distributor id of an earlier, finished attempt."""
        return [index for index in live if rec.attempts[index] > 1 and any(
            row.distributor_id == rec.dids[index] and row.attempt < rec.attempts[index]
            for row in self.registry.attempt_rows(rec.id, index))]

    def refresh_foreign(self) -> bool:
        """Read other sessions' jobs from the registry: the progress of unfinished ones, and a retry
        that reopened a finished one; take over those whose session died (lock held)."""
        foreign = [rec for rec in self.lifecycle.records.values() if not rec.owned]
        records = [rec for rec in foreign if not rec.all_terminal]
        records += self._reopened([rec for rec in foreign if rec.all_terminal])
        if not records:
            return False
        sessions = self.registry.sessions()
        changed = False
        for rec in records:
            since = rec.refreshed
            rec.refreshed = time.time()
            rows = self.registry.step_rows(rec.id, None if since is None else since - REFRESH_MARGIN_SECONDS)
            for index, state in overlay(rec, rows):
                reopened = rec.states[index].is_terminal and not state.is_terminal
                self.lifecycle.set(rec, index, state)
                self.lifecycle.pending.dirty.discard((rec, index))  # their owner writes them, not us
                if reopened:
                    self._reopen_handles(rec, index)
                changed = True
            owner = sessions.get(rec.session_id or "")
            if not rec.all_terminal and not session_alive(owner) and self.claim(rec, owner):
                changed = True
        self.lifecycle.run_dep_checks()
        return changed

    def _reopened(self, finished: list[JobRecord]) -> list[JobRecord]:
        """Those of other sessions' finished jobs whose steps were written since they were last read (a
        retry, by their owner or by a session that took them over: then the record follows that one)."""
        now = time.monotonic()
        if not finished or now - self._finished_checked < FINISHED_CHECK_SECONDS:
            return []
        self._finished_checked = now
        by_id = {rec.id: rec for rec in finished}
        since = min(rec.refreshed or 0.0 for rec in finished) - REFRESH_MARGIN_SECONDS
        ids, found = list(by_id), []
        for start in range(0, len(ids), IDS_PER_QUERY):
            chunk = ids[start:start + IDS_PER_QUERY]
            # One look-up per job in the (job_id, updated) index, whatever the jobs' sizes.
            rows = self.registry.query(f"SELECT job_id, MAX(updated) FROM steps WHERE job_id IN "
                                       f"({', '.join('?' * len(chunk))}) AND updated >= ? GROUP BY job_id",
                                       (*chunk, since))
            found += [by_id[job_id] for job_id, updated in rows
                      if updated >= (by_id[job_id].refreshed or 0.0) - REFRESH_MARGIN_SECONDS]
        for row in self.registry.jobs([rec.id for rec in found]) if found else []:
            by_id[row["id"]].session_id = row["session_id"]
        return found

    def _reopen_handles(self, rec: JobRecord, index: int) -> None:
        """A finished step of another session's job runs again: its Job (and its Array) is no longer done."""
        handles = self.lifecycle.handles
        for handle in (handles.existing_step(rec, index), handles.existing_array(rec)):
            if handle is not None:
                handle.reopen()  # a no-op for one still pending
