"""The state machine of records: launching, state changes, attempts, retries, dependencies, cancel.

Data flow::

    submit/array ──► JobRecord (columns) ──► Launcher ──► backend.submit_*   (or PENDING until deps are DONE)
                          ▲                                    │
                          │   Poller: reports of live tasks ───┘  ──► Lifecycle.apply
                          │   PendingWrites: one registry transaction per poll (changed steps, attempts)
                          ▼
                    Job/Array handles (Futures finished here), snapshots for the views

Everything that changes a record happens under ``lock``; Futures are finished after the lock is
released (:meth:`Lifecycle.settle`), so a done-callback may call back into the session.
Dependencies are gated here, not in the backend: a dependent job reaches the backend only when its
dependencies are DONE. A retry is a new single-task submission of the step with its own distributor
id, hence its own logs and exit info; for an array with ``max_concurrent`` it is held (QUEUED) until
fewer than that many of the array's steps are at the backend.

The lifecycle acts on records this session owns; whether it owns one (or may claim it) is asked of
:mod:`nbdist.session.ownership` first, by the session.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..cluster_protocol.resources import parse_memory, parse_runtime
from .handles import Handle, HandleCache
from .launcher import Launcher
from .records import JobRecord
from .pending import PendingWrites
from .registry import AttemptRecord, Registry
from .state import RETRYABLE_STATES, State
from .storage import RegistryUnwritable
from .sweep import placeholders

__all__ = ["Lifecycle"]

logger = logging.getLogger(__name__)


class Lifecycle:
    """Records, their live tasks, and every change of their state.

    Parameters
    ----------
    launcher
        Sends records and steps to their backends.
    handles
        The handles to finish when work ends.
    registry
        Where :meth:`flush` writes the pending changes.
    """

    def __init__(self, launcher: Launcher, handles: HandleCache, registry: Registry) -> None:
        self.launcher = launcher
        self.handles = handles
        self.registry = registry
        self.lock = threading.RLock()
        self.records: dict[int, JobRecord] = {}
        # Live tasks per backend name: distributor id → (record, index).
        self.live: dict[str, dict[str, tuple[JobRecord, int]]] = {}
        self.pending = PendingWrites()
        self.deps_to_check: list[JobRecord] = []
        self.closed = False
        self._to_finish: list[Handle] = []

    # ================================================================== launching (lock held)
    def launch(self, rec: JobRecord) -> None:
        """Submit a PENDING record to its backend (a ValueError, nothing submitted, if its files are missing)."""
        missing = missing_files(rec)
        if missing is not None:
            raise ValueError(missing)
        dids, update = self.launcher.submit_record(rec)
        # Straight from PENDING to QUEUED for every step: one job-row update, not a row per step
        # (unless rows were written already, e.g. SKIPPED ones before a retry: they must follow).
        if rec.has_rows:
            self.pending.dirty.update(zip(itertools.repeat(rec), range(rec.n)))
        rec.dids = list(dids)
        rec.states = [State.QUEUED] * rec.n
        rec.by_state[State.QUEUED] = rec.by_state[State.PENDING]
        rec.by_state[State.PENDING] = set()
        rec.version += 1
        live = self.live.setdefault(rec.backend, {})
        live.update(zip(dids, zip(itertools.repeat(rec), range(rec.n))))
        self.pending.update_job(rec.id, initial_state=State.QUEUED.value, **update)

    def check_deps(self, rec: JobRecord) -> None:
        """Launch a PENDING record whose dependencies are all DONE, or skip it if one failed."""
        if not rec.owned or len(rec.by_state[State.PENDING]) != rec.n:
            return
        waiting = False
        for dep, index in rec.after:
            if index is None:
                failed = next((state for state in State if state.is_failure and dep.by_state[state]), None)
                done = dep.all_done
                label = dep.name
            else:
                state = dep.states[index]
                failed = state if state.is_failure else None
                done = state is State.DONE
                label = f"{dep.name}:{dep.step_id(index)}"
            if failed is not None:
                reason = f"skipped: dependency {label} ended {failed.value}"
                for step in range(rec.n):
                    self.set(rec, step, State.SKIPPED, reason)
                return
            waiting = waiting or not done
        if not waiting:
            self.launch(rec)

    # ================================================================== state changes (lock held)
    def set(self, rec: JobRecord, index: int, state: State, message: str | None = None) -> None:
        if message is not None:
            rec.messages[index] = message
        self.pending.dirty.add((rec, index))
        rec.has_rows = True
        old = rec.move(index, state)
        if old is state:
            return
        if state.is_terminal and not old.is_terminal:
            if rec.held:
                self.release(rec)  # a slot of the array's max_concurrent may have freed
            handle = self.handles.existing_step(rec, index)
            if handle is not None:
                self._to_finish.append(handle)
            if rec.all_terminal:
                rec.ended = time.time()
                self.pending.update_job(rec.id, ended=rec.ended)
                array = self.handles.existing_array(rec)
                if array is not None:
                    self._to_finish.append(array)
            if state.is_failure or rec.all_done or rec.steps is not None:
                self.deps_to_check.extend(rec.dependents)
        elif old.is_terminal and not state.is_terminal:
            rec.ended = None

    def apply(self, rec: JobRecord, index: int, did: str, report: Mapping[str, Any]) -> bool:
        """Apply one backend report; True if the step changed."""
        message = report.get("message") or ""
        # The report says which limit ended a "Z" task; a plain Jobmon backend leaves it to its message.
        state = State.from_backend(report.get("status", ""), message, report.get("limit"))
        if not state.is_terminal:
            if state is State.RUNNING and report.get("usage"):  # sampled while it runs (CPU %, RSS)
                rec.live_usage[index] = report["usage"]
            if state is rec.states[index]:
                return False
            rec.started[index] = report.get("started")
            self.set(rec, index, state, message)
            return True
        self.live.get(rec.backend, {}).pop(did, None)
        usage = dict(report.get("usage") or {})
        rec.exit_codes[index] = report.get("exit_code")
        if usage:
            rec.usage[index] = usage
        started, ended = report.get("started"), report.get("ended")
        rec.started[index] = started
        wall = usage.get("wall_s")
        rec.runtimes[index] = wall if wall is not None else (ended - started if started and ended else None)
        rec.rss[index] = usage.get("max_rss_mb")
        rec.cpu[index] = usage.get("cpu_s")
        gpu = {key: usage[key] for key in ("gpu_mem_peak_mb", "gpu_percent") if key in usage}
        if gpu or index in rec.gpu:  # sparse: only steps that held a GPU are in it
            rec.gpu[index] = gpu
        if started is not None or state is not State.KILLED:  # a step dropped before it started made no attempt
            self._record_attempt(rec, index, did, state, message, usage, started, ended)
        if state in RETRYABLE_STATES and rec.attempts[index] < rec.max_attempts:
            rec.messages[index] = message
            try:
                self._resubmit(rec, index, state, None)
                return True
            except Exception as exc:  # the backend refused the retry: keep the failure, say why
                logger.warning("retry of %s failed: %s", rec.failure_text(index), exc)
                message = f"{message}; retry failed: {exc}"
        self.set(rec, index, state, message)
        return True

    def _record_attempt(self, rec: JobRecord, index: int, did: str, state: State, message: str,
                        usage: dict[str, Any], started: float | None, ended: float | None) -> None:
        paths = rec.log_paths(index)
        self.pending.attempts.append(AttemptRecord(
            job_id=rec.id, idx=index, attempt=rec.attempts[index], distributor_id=did, state=state.value,
            exit_code=rec.exit_codes[index], message=message, usage=usage,
            stdout=paths.stdout if paths else None, stderr=paths.stderr if paths else None,
            resources=rec.limits(index), started=started, ended=ended,
        ))

    def _resubmit(self, rec: JobRecord, index: int, previous: State, scale: float | Mapping[str, float] | None) -> None:
        """Start a new attempt of a finished step, its resources scaled for the way it failed."""
        resources = dict(rec.resources)
        resources.update(rec.step_resources.get(index, {}))
        factors = dict(rec.scales)
        if isinstance(scale, Mapping):
            wanted = {key: float(value) for key, value in scale.items()}
        else:
            wanted = {}
            if previous is State.TIMEOUT:
                wanted["runtime"] = float(scale) if scale is not None else factors["runtime"]
            elif previous is State.OUT_OF_MEMORY:
                wanted["memory"] = float(scale) if scale is not None else factors["memory"]
        scaled = dict(rec.step_resources.get(index, {}))
        if wanted.get("runtime") and resources.get("runtime") is not None:
            scaled["runtime"] = math.ceil(parse_runtime(resources["runtime"]) * wanted["runtime"])
        if wanted.get("memory") and resources.get("memory") is not None:
            scaled["memory"] = math.ceil(parse_memory(resources["memory"]) * wanted["memory"])
        old_scaled = rec.step_resources.get(index)
        rec.step_resources[index] = scaled
        message = f"attempt {rec.attempts[index] + 1} (after {previous.value})"
        limit = rec.max_concurrent
        # The step itself may still count as at the backend (an automatic retry of a RUNNING step).
        others = rec.at_backend - (rec.states[index] in (State.QUEUED, State.RUNNING))
        if limit is not None and others >= limit:
            rec.held[index] = message  # submitted by _release when one of the array's steps ends
            message += f"; waiting for a free slot (max_concurrent={limit})"
        else:
            try:
                self._submit_step(rec, index)
            except BaseException:
                if old_scaled is None:
                    rec.step_resources.pop(index, None)
                else:
                    rec.step_resources[index] = old_scaled
                raise
        rec.attempts[index] += 1
        rec.exit_codes[index] = rec.runtimes[index] = rec.rss[index] = rec.started[index] = None
        self.set(rec, index, State.QUEUED, message)

    def _submit_step(self, rec: JobRecord, index: int) -> None:
        """Submit one step alone to the backend, as a plain job with its own distributor id."""
        did = self.launcher.submit_step(rec, index)
        rec.dids[index] = did
        rec.queue_cursor = min(rec.queue_cursor, index)  # queued again: back in the poll's window
        self.live.setdefault(rec.backend, {})[did] = (rec, index)

    def release(self, rec: JobRecord) -> None:
        """Submit held retries while fewer than max_concurrent of the array's steps are at the backend."""
        limit = rec.max_concurrent or 0
        while rec.held and not self.closed and rec.at_backend < limit:
            index = next(iter(rec.held))
            message = rec.held.pop(index)
            try:
                self._submit_step(rec, index)
            except Exception as exc:
                logger.warning("retry of %s:%s failed: %s", rec.name, rec.step_id(index), exc)
                self.set(rec, index, State.FAILED, f"{message}; could not submit: {exc}")
                continue
            self.set(rec, index, State.QUEUED, message)

    def cancel(self, rec: JobRecord, indices: Iterable[int]) -> bool:
        """Kill a record's steps (or drop them before they start); True if any was not finished.

        Lock held; the record is this session's. Call :meth:`settle` after releasing the lock.
        """
        any_live = False
        kill: list[str] = []
        indices = list(indices)
        # Held retries first, all of them: killing one must not let another one be submitted.
        dropped = {index for index in indices if rec.held.pop(index, None) is not None}
        for index in indices:
            state = rec.states[index]
            if state.is_terminal:
                continue
            any_live = True
            if state is State.PENDING or index in dropped:
                self.set(rec, index, State.KILLED, "cancelled before it started")
            else:
                kill.append(rec.dids[index])  # type: ignore[arg-type]
        if kill:
            self.launcher.backend(rec.backend).terminate_task_instances(kill)
        self.run_dep_checks()
        return any_live

    def retry(self, rec: JobRecord, indices: Sequence[int], scale: float | Mapping[str, float] | None) -> None:
        """Run finished steps again as new attempts (lock held; the record is this session's)."""
        for index in indices:
            if not rec.states[index].is_terminal:
                raise ValueError(f"{rec.name}: step {rec.step_id(index)} is {rec.states[index].value}; "
                                 "only finished steps can be retried (cancel() it first)")
        if not indices:
            return
        if rec.dids[0] is None:  # never launched (skipped or cancelled while PENDING): wait for deps again
            self._revive(rec)
        else:
            for index in indices:
                self._resubmit(rec, index, rec.states[index], scale)
            for dependent in rec.dependents:
                if dependent.dids[0] is None and dependent.owned:
                    self._revive(dependent)
        reopened: list[Handle] = [handle for handle in (self.handles.existing_step(rec, i) for i in indices)
                                  if handle is not None]
        array = self.handles.existing_array(rec)
        if array is not None and not rec.all_terminal:
            reopened.append(array)
        for handle in reopened:
            handle.reopen()
        self.run_dep_checks()

    def _revive(self, rec: JobRecord) -> None:
        """Put a never-launched record (SKIPPED/KILLED while PENDING) back to PENDING, and its dependents."""
        for index in range(rec.n):
            self.set(rec, index, State.PENDING, "waiting for dependencies")
        for handle in self.handles.existing(rec):
            handle.reopen()
        for dependent in rec.dependents:
            if dependent.dids[0] is None and dependent.owned:
                self._revive(dependent)
        self.deps_to_check.append(rec)

    def kill_waiting(self) -> None:
        """On close: steps that never reached a backend (PENDING, held retries) are KILLED (lock held)."""
        self.closed = True
        for rec in self.records.values():
            if rec.owned and (rec.by_state[State.PENDING] or rec.held):
                waiting = sorted(rec.by_state[State.PENDING] | set(rec.held))
                rec.held.clear()
                for index in waiting:
                    self.set(rec, index, State.KILLED, "cancelled: its session closed before it started")

    def run_dep_checks(self) -> None:
        """Launch or skip every record whose dependencies changed (lock held)."""
        while self.deps_to_check:
            rec = self.deps_to_check.pop()
            try:
                self.check_deps(rec)
            except Exception as exc:
                logger.warning("could not submit %s: %s", rec.name, exc)
                for index in range(rec.n):
                    self.set(rec, index, State.FAILED, f"could not submit: {exc}")

    # ================================================================== finishing (lock released)
    def settle(self) -> None:
        """Finish the Futures of work that ended; call it with the lock released."""
        with self.lock:
            finish, self._to_finish = self._to_finish, []
        for handle in finish:
            handle.finish_from_record()

    def flush(self) -> None:
        """Write the pending changes in one transaction, then finish the Futures of ended work."""
        self.pending.flush(self.registry, self.lock)
        self.settle()

    def remove_job(self, rec: JobRecord) -> None:
        """Remove the rows of a record whose submission failed; kept for the next flush when the registry
        cannot be written now (a row left behind would run at the next attach)."""
        with self.lock:
            self.pending.dirty = {(source, index) for source, index in self.pending.dirty if source is not rec}
        try:
            self.registry.delete_job(rec.id)
        except RegistryUnwritable:
            with self.lock:
                self.pending.delete_job(rec.id)

    def close_registry(self, session_id: str) -> None:
        """Last writes, the session marked closed, the connection closed: what cannot be written is said, not raised."""
        self.flush()
        try:
            self.registry.close_session(session_id)
        except RegistryUnwritable as exc:
            logger.warning("%s (the session stays recorded as open: the next attach takes its jobs over)", exc)
        finally:
            self.pending.report_lost(self.registry)
            self.registry.close()


def missing_files(rec: JobRecord) -> str | None:
    """Why a record cannot run as its row says (its per-step scripts are not all there), or None.

    A submit writes an array's scripts before its row, so this is a folder deleted since, or a row
    written by an nbdist whose submit could be interrupted between the two: running the command as it
    is would run every step with its ``{{placeholders}}`` unfilled.
    """
    sweep = rec.sweep
    if sweep is None:
        return None
    if rec.script_dir is None:
        if rec.call is not None or (sweep.params is None and isinstance(sweep.steps, range)
                                    and not placeholders(rec.command)):
            return None  # a plain array: one command for every step (a function's map: its items file)
        return (f"{rec.name} (job {rec.id}) has no per-step scripts: its submit was interrupted before they were "
                "written; submit it again")
    try:
        have = set(os.listdir(rec.script_dir))
    except OSError:
        have = set()
    chunks = -(-rec.n // max(1, rec.script_chunk))
    absent = [f"{chunk}.sh" for chunk in range(chunks) if f"{chunk}.sh" not in have]
    if absent:
        return (f"{rec.name} (job {rec.id}): {len(absent)} of its {chunks} per-step script files are missing from "
                f"{rec.script_dir} (e.g. {absent[0]}); submit it again")
    return None
