"""The machinery under :class:`nbdist.Session`: launching, state changes, retries and the poller.

Data flow::

    submit/array ──► JobRecord (columns) ──► backend.submit_*   (or PENDING until dependencies are DONE)
                          ▲                        │
                          │  poller thread: one get_task_reports(all live ids) per poll
                          │  (> 256 live: get_submitted_or_running(all) + reports of the few that may have changed)
                          └────────────────────────┘
                          │  one registry transaction per poll (changed steps, finished attempts)
                          ▼
                    Job/Array handles (Futures resolved here), snapshots for the views

Everything that changes a record happens under ``_lock``; Futures are resolved after the lock is
released, so a done-callback may call back into the session. Dependencies are gated here, not in the
backend: a dependent job reaches the backend only when its dependencies are DONE. A retry is a new
single-task submission of the step with its own distributor id, hence its own logs and exit info;
for an array with ``max_concurrent`` it is held (QUEUED) until fewer than that many of the array's
steps are at the backend.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..backends import backend_options, load_backend
from .handles import JobRecord, _Handle
from .registry import Registry
from ..cluster_protocol.resources import parse_memory, parse_runtime
from .ownership import claim, refresh_foreign, session_alive
from .state import RETRYABLE_STATES, State
from .sweep import STEP_ENV, script_command

__all__ = ["SessionCore", "DEFAULT_SCALES"]

logger = logging.getLogger(__name__)

# Poll interval bounds: a short interval notices ends quickly (wait() latency); when nothing changes
# the poller backs off towards the long one. Polling never takes more than 1/POLL_COST_FACTOR of a core.
POLL_MIN_SECONDS = 0.02
POLL_MAX_SECONDS = 0.5
POLL_COST_FACTOR = 10
# How often requests from other processes (CLI kill/retry) and other kernels' jobs are read.
REGISTRY_CHECK_SECONDS = 0.5
# A session on another host (shared folder) is taken for dead when its heartbeat is this much older.
HEARTBEAT_SECONDS = 30.0
# Up to this many live tasks a poll asks for all their reports; beyond, it asks for those that ended
# and a window of WINDOW_PER_RECORD queued steps per job, and for all every FULL_POLL_SECONDS.
FULL_REPORT_LIMIT = 256
WINDOW_PER_RECORD = 256
FULL_POLL_SECONDS = 10.0
# Reports applied per hold of the session lock: small enough that a snapshot waits at most ~1 ms.
APPLY_CHUNK = 256
DEFAULT_SCALES = {"runtime": 1.5, "memory": 1.5}


class SessionCore:
    """State and machinery of a session; :class:`nbdist.Session` adds the public API on top."""

    backend_name: str
    parallelism: int | None
    root: str
    id: str
    registry: Registry
    _backend_options: dict[str, Any]
    _backend_classes: dict[str, type]
    _backends: dict[str, Any]
    _lock: threading.RLock
    _flush_lock: threading.Lock
    _records: dict[int, JobRecord]
    _live: dict[str, dict[str, tuple[JobRecord, int]]]
    _dirty: set[tuple[JobRecord, int]]
    _attempt_rows: list[tuple]
    _job_updates: dict[int, dict[str, Any]]
    _to_resolve: list[_Handle]
    _deps_to_check: list[JobRecord]
    _wake_event: threading.Event
    _stop_event: threading.Event
    _poller: threading.Thread | None
    _last_registry_check: float
    _full_polls: dict[str, float]
    _last_beat: float
    _closed: bool

    # ================================================================== launching
    def _backend(self, name: str) -> Any:
        backend = self._backends.get(name)
        if backend is None:
            cls = self._backend_classes.get(name) or load_backend(name)
            self._backend_classes[name] = cls
            backend = cls(name, **self._backend_kwargs(name))
            backend.start()
            self._backends[name] = backend
        return backend

    def _backend_kwargs(self, name: str) -> dict[str, Any]:
        """The keyword arguments the backend ``name`` is constructed with."""
        kwargs: dict[str, Any] = dict(self._backend_options) if name == self.backend_name else {}
        if name == "multiprocess":
            kwargs.setdefault("parallelism", self.parallelism or os.cpu_count() or 1)
            kwargs.setdefault("log_dir", os.path.join(self.root, "logs"))
        elif (self.parallelism is not None and name == self.backend_name
              and "parallelism" in (backend_options(self._backend_classes[name]) or ())):
            kwargs.setdefault("parallelism", self.parallelism)
        return kwargs

    def _usable(self, name: str) -> bool:
        """True if the backend ``name`` can be loaded here."""
        if name not in self._backend_classes:
            try:
                self._backend_classes[name] = load_backend(name)
            except ValueError as exc:
                logger.warning("%s", exc)
                return False
        return True

    def _persistent(self, name: str) -> bool:
        """Tasks of this backend outlive the session (Slurm): they are adopted, not killed."""
        return self._usable(name) and hasattr(self._backend_classes[name], "adopt")

    def _requested(self, rec: JobRecord, index: int | None) -> dict[str, Any]:
        """The backend's ``requested_resources`` for the whole record (None) or one step's attempt."""
        resources = dict(rec.resources)
        if index is not None:
            resources.update(rec.step_resources.get(index, {}))
        requested: dict[str, Any] = {"stdout": rec.log_dir, "stderr": rec.log_dir}
        for key in ("cores", "memory", "runtime"):
            if resources.get(key) is not None:
                requested[key] = resources[key]
        if index is None and rec.kind == "array" and resources.get("max_concurrent"):
            requested["max_concurrent"] = resources["max_concurrent"]
        if rec.env:
            requested["env"] = dict(rec.env)
        if rec.cwd:
            requested["cwd"] = rec.cwd
        return requested

    def _array_command(self, rec: JobRecord) -> str:
        sweep = rec.sweep
        assert sweep is not None
        if rec.script_dir is not None:
            return script_command(rec.script_dir, rec.script_chunk)
        return sweep.array_prologue() + rec.command

    def _step_command(self, rec: JobRecord, index: int) -> str:
        """The command of one step submitted alone (a retry): a plain job for the backend."""
        if rec.kind == "job":
            return rec.command
        # $ARRAY_STEP_ID in the command expands as in the array, but it is not exported: the
        # processes it starts (a worker node) must see a plain job's identity, which it now is.
        prologue = f"unset ARRAY_STEP_ID; ARRAY_STEP_ID={index}\n"
        if rec.script_dir is not None:
            return prologue + script_command(rec.script_dir, rec.script_chunk, index)
        return f"{prologue}{STEP_ENV}={rec.step_id(index)}; export {STEP_ENV}\n{rec.command}"

    def _launch(self, rec: JobRecord) -> None:
        """Submit a PENDING record to its backend (lock held)."""
        backend = self._backend(rec.backend)
        if rec.kind == "job":
            dids = [backend.submit_to_batch_distributor(rec.command, rec.name, self._requested(rec, None))]
            update: dict[str, Any] = {"dids": dids}
        else:
            ids = backend.submit_array_to_batch_distributor(self._array_command(rec), rec.name,
                                                            self._requested(rec, None), rec.n)
            dids = [ids[index] for index in range(rec.n)]
            base = dids[0].rpartition("_")[0]
            # The protocol makes array ids "{job_id}_{step}": checking both ends is enough.
            if dids[0] == f"{base}_0" and dids[-1] == f"{base}_{rec.n - 1}":
                update = {"did_base": base}
            else:
                update = {"dids": dids}
        # Straight from PENDING to QUEUED for every step: one job-row update, not a row per step
        # (unless rows were written already, e.g. SKIPPED ones before a retry: they must follow).
        if rec.has_rows:
            self._dirty.update(zip(itertools.repeat(rec), range(rec.n)))
        rec.dids = list(dids)
        rec.states = [State.QUEUED] * rec.n
        rec.by_state[State.QUEUED] = rec.by_state[State.PENDING]
        rec.by_state[State.PENDING] = set()
        live = self._live.setdefault(rec.backend, {})
        live.update(zip(dids, zip(itertools.repeat(rec), range(rec.n))))
        update["initial_state"] = State.QUEUED.value
        self._job_updates.setdefault(rec.id, {}).update(update)

    def _check_deps(self, rec: JobRecord) -> None:
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
                    self._set(rec, step, State.SKIPPED, reason)
                return
            waiting = waiting or not done
        if not waiting:
            self._launch(rec)

    # ================================================================== state changes (lock held)
    def _set(self, rec: JobRecord, index: int, state: State, message: str | None = None) -> None:
        if message is not None:
            rec.messages[index] = message
        self._dirty.add((rec, index))
        rec.has_rows = True
        old = rec.move(index, state)
        if old is state:
            return
        if state.is_terminal and not old.is_terminal:
            if rec.held:
                self._release(rec)  # a slot of the array's max_concurrent may have freed
            handle = rec.handles.get(index)
            if handle is not None:
                self._to_resolve.append(handle)
            if rec.all_terminal:
                rec.ended = time.time()
                self._job_updates.setdefault(rec.id, {})["ended"] = rec.ended
                if rec.array_handle is not None:
                    self._to_resolve.append(rec.array_handle)
            if state.is_failure or rec.all_done or rec.steps is not None:
                self._deps_to_check.extend(rec.dependents)
        elif old.is_terminal and not state.is_terminal:
            rec.ended = None

    def _apply(self, rec: JobRecord, index: int, did: str, report: Mapping[str, Any]) -> bool:
        """Apply one backend report; True if the step changed."""
        message = report.get("message") or ""
        state = State.from_backend(report.get("status", ""), message)
        if not state.is_terminal:
            if state is rec.states[index]:
                return False
            rec.started[index] = report.get("started")
            self._set(rec, index, state, message)
            return True
        self._live.get(rec.backend, {}).pop(did, None)
        usage = dict(report.get("usage") or {})
        rec.exit_codes[index] = report.get("exit_code")
        if usage:
            rec.usage[index] = usage
        started, ended = report.get("started"), report.get("ended")
        rec.started[index] = started
        wall = usage.get("wall_s")
        rec.runtimes[index] = wall if wall is not None else (ended - started if started and ended else None)
        rec.rss[index] = usage.get("max_rss_mb")
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
        self._set(rec, index, state, message)
        return True

    def _record_attempt(self, rec: JobRecord, index: int, did: str, state: State, message: str,
                        usage: dict[str, Any], started: float | None, ended: float | None) -> None:
        paths = rec.log_paths(index)
        self._attempt_rows.append((
            rec.id, index, rec.attempts[index], did, state.value, rec.exit_codes[index], message, usage,
            paths.stdout if paths else None, paths.stderr if paths else None, self._limits(rec, index),
            started, ended,
        ))

    def _limits(self, rec: JobRecord, index: int) -> dict[str, Any]:
        """The resources an attempt ran with (cores, memory, runtime; scaled for a retry)."""
        limits = rec.step_resources.get(index)
        if limits is None:
            # One dict shared by every step without a retry: the registry encodes it once per write.
            return rec.base_limits
        return {**rec.base_limits, **limits}

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
        self._set(rec, index, State.QUEUED, message)

    def _submit_step(self, rec: JobRecord, index: int) -> None:
        """Submit one step alone to the backend, as a plain job with its own distributor id."""
        did = self._backend(rec.backend).submit_to_batch_distributor(self._step_command(rec, index), rec.name,
                                                                     self._requested(rec, index))
        rec.dids[index] = did
        rec.queue_cursor = min(rec.queue_cursor, index)  # queued again: back in the poll's window
        self._live.setdefault(rec.backend, {})[did] = (rec, index)

    def _release(self, rec: JobRecord) -> None:
        """Submit held retries while fewer than max_concurrent of the array's steps are at the backend."""
        limit = rec.max_concurrent or 0
        while rec.held and not self._closed and rec.at_backend < limit:
            index = next(iter(rec.held))
            message = rec.held.pop(index)
            try:
                self._submit_step(rec, index)
            except Exception as exc:
                logger.warning("retry of %s:%s failed: %s", rec.name, rec.step_id(index), exc)
                self._set(rec, index, State.FAILED, f"{message}; could not submit: {exc}")
                continue
            self._set(rec, index, State.QUEUED, message)

    def _cancel(self, rec: JobRecord, indices: Iterable[int]) -> bool:
        with self._lock:
            if not self._own(rec):
                return self._ask_owner(rec, "kill", list(indices))
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
                    self._set(rec, index, State.KILLED, "cancelled before it started")
                else:
                    kill.append(rec.dids[index])  # type: ignore[arg-type]
            if kill:
                self._backend(rec.backend).terminate_task_instances(kill)
            self._run_dep_checks()
            resolve = self._take_resolve()
        for handle in resolve:
            handle._resolve()
        self._wake()
        return any_live

    def _retry(self, rec: JobRecord, indices: Sequence[int], scale: float | Mapping[str, float] | None) -> None:
        with self._lock:
            if not self._own(rec):
                self._ask_owner(rec, "retry", list(indices))
                return
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
            handles: list[_Handle] = [rec.handles[i] for i in indices if i in rec.handles]
            if rec.array_handle is not None and not rec.all_terminal:
                handles.append(rec.array_handle)
            for handle in handles:
                handle._rearm()
            self._run_dep_checks()
            resolve = self._take_resolve()
        for handle in resolve:
            handle._resolve()
        self._ensure_poller()
        self._wake()

    def _revive(self, rec: JobRecord) -> None:
        """Put a never-launched record (SKIPPED/KILLED while PENDING) back to PENDING, and its dependents."""
        for index in range(rec.n):
            self._set(rec, index, State.PENDING, "waiting for dependencies")
        for handle in [*rec.handles.values(), rec.array_handle]:
            if handle is not None:
                handle._rearm()
        for dependent in rec.dependents:
            if dependent.dids[0] is None and dependent.owned:
                self._revive(dependent)
        self._deps_to_check.append(rec)

    def _own(self, rec: JobRecord) -> bool:
        """True if this session owns ``rec`` — taking it over first when its session is gone."""
        if rec.owned:
            return True
        owner = self.registry.sessions().get(rec.session_id or "")
        return not session_alive(owner) and claim(self, rec, owner)

    def _ask_owner(self, rec: JobRecord, action: str, indices: list[int]) -> bool:
        """Another live session owns this job: leave it a request in the registry."""
        assert rec.session_id is not None
        self.registry.add_request(rec.session_id, rec.id, action, indices)
        return any(not rec.states[i].is_terminal for i in indices) if action == "kill" else True

    def _run_dep_checks(self) -> None:
        while self._deps_to_check:
            rec = self._deps_to_check.pop()
            try:
                self._check_deps(rec)
            except Exception as exc:
                logger.warning("could not submit %s: %s", rec.name, exc)
                for index in range(rec.n):
                    self._set(rec, index, State.FAILED, f"could not submit: {exc}")

    def _take_resolve(self) -> list[_Handle]:
        resolve, self._to_resolve = self._to_resolve, []
        return resolve

    # ================================================================== polling
    def _ensure_poller(self) -> None:
        with self._lock:
            if self._poller is None and not self._closed:
                self._poller = threading.Thread(target=self._poll_loop, name=f"nbdist-poller-{self.id[:6]}",
                                                daemon=True)
                self._poller.start()

    def _wake(self) -> None:
        self._wake_event.set()

    def _poll_loop(self) -> None:
        interval = POLL_MIN_SECONDS
        while not self._stop_event.is_set():
            self._wake_event.wait(interval)
            self._wake_event.clear()
            if self._stop_event.is_set():
                return
            # The poller's own CPU time, not wall time: waiting for the GIL or the backend's lock
            # while tasks are busy is not a cost of polling, and must not slow the polls down.
            started = time.thread_time()
            try:
                changed = self.poll()
            except Exception:
                logger.exception("nbdist poll failed; retrying in %.1f s", POLL_MAX_SECONDS)
                interval = POLL_MAX_SECONDS  # a failing backend is not hammered
                continue
            cost = time.thread_time() - started
            interval = POLL_MIN_SECONDS if changed else min(POLL_MAX_SECONDS, interval * 1.5)
            interval = max(interval, cost * POLL_COST_FACTOR)

    def poll(self) -> bool:
        """Ask every backend about all live tasks (one call each) and apply the answers; True if anything changed."""
        with self._lock:
            backends = [(name, self._backends[name]) for name in self._live if self._live[name]
                        and name in self._backends]
        changed = False
        for name, backend in backends:
            changed = self._poll_backend(name, backend) or changed
        now = time.monotonic()
        if now - self._last_registry_check >= REGISTRY_CHECK_SECONDS:
            self._last_registry_check = now
            changed = self._check_registry() or changed
        self._finish_poll()
        return changed

    def _poll_backend(self, name: str, backend: Any, full: bool = False) -> bool:
        """One poll of one backend: reports of every live task, or, when there are many, of those
        that ended (one cheap ``get_submitted_or_running`` over all) plus a window of those that
        may have started; every ``FULL_POLL_SECONDS`` all of them again."""
        now = time.monotonic()
        with self._lock:
            live = self._live.get(name, {})
            ids = list(live)
            if len(ids) > FULL_REPORT_LIMIT and not full and now - self._full_polls.get(name, 0.0) < FULL_POLL_SECONDS:
                window: list[str] | None = self._window(name)
            else:
                window = None
                self._full_polls[name] = now
        if not ids:
            return False
        if window is None:
            asked = ids
        else:
            # Building a report costs the backend ~1000 times more than a set lookup, and it holds
            # its lock meanwhile (no task starts): ask only about what can have changed.
            still = backend.get_submitted_or_running(ids)
            asked = [did for did in ids if did not in still] + [did for did in window if did in still]
        items = list(_reports(backend, asked).items())
        changed = False
        # In chunks, releasing the lock in between: a snapshot never waits for a whole big poll.
        for start in range(0, len(items), APPLY_CHUNK):
            with self._lock:
                live = self._live.get(name, {})
                for did, report in items[start:start + APPLY_CHUNK]:
                    entry = live.get(did)
                    if entry is not None and entry[0].dids[entry[1]] == did:
                        changed = self._apply(entry[0], entry[1], did, report) or changed
        with self._lock:
            self._run_dep_checks()
        return changed

    def _window(self, name: str) -> list[str]:
        """Live ids that may go from QUEUED to RUNNING soon: the running ones and each record's
        oldest queued ones (backends start a record's steps in order). Lock held; amortised O(1)
        per step over a record's life thanks to its queue cursor."""
        window: list[str] = []
        for rec in self._records.values():
            if rec.backend != name or not rec.owned or rec.all_terminal:
                continue
            dids, states, n = rec.dids, rec.states, rec.n
            window.extend(dids[index] for index in rec.by_state[State.RUNNING])  # type: ignore[misc]
            index = rec.queue_cursor
            while index < n and states[index] is not State.QUEUED:
                index += 1
            rec.queue_cursor = index
            taken = 0
            while index < n and taken < WINDOW_PER_RECORD:
                if states[index] is State.QUEUED:
                    window.append(dids[index])  # type: ignore[arg-type]
                    taken += 1
                index += 1
        return window

    def _check_registry(self) -> bool:
        """Requests other processes left for this session, and progress of other kernels' jobs."""
        changed = False
        now = time.time()
        if now - self._last_beat >= HEARTBEAT_SECONDS:
            self._last_beat = now
            self.registry.beat(self.id)
        for job_id, action, indices in self.registry.take_requests(self.id):
            rec = self._records.get(job_id)
            if rec is None:
                continue
            chosen = list(indices) if indices else list(range(rec.n))
            try:
                if action == "kill":
                    self._cancel(rec, chosen)
                elif action == "retry":
                    failed = [i for i in chosen if rec.states[i].is_failure]
                    self._retry(rec, failed, None)
            except Exception as exc:
                logger.warning("request %s of %s failed: %s", action, rec.name, exc)
            changed = True
        with self._lock:
            foreign = [rec for rec in self._records.values() if not rec.owned and not rec.all_terminal]
            if foreign:
                changed = refresh_foreign(self, foreign) or changed
                self._run_dep_checks()
        return changed

    def _finish_poll(self) -> None:
        """Write the poll's changes in one transaction, then resolve finished Futures."""
        with self._flush_lock:
            with self._lock:
                dirty, self._dirty = self._dirty, set()
                attempts, self._attempt_rows = self._attempt_rows, []
                updates, self._job_updates = self._job_updates, {}
                rows = [_step_row(rec, index) for rec, index in dirty if rec.owned]
                resolve = self._take_resolve()
            try:
                self.registry.write(rows, attempts, updates.items())
            except Exception as exc:
                # Keep the changes for the next poll: the registry must catch up, not lose them.
                logger.warning("could not write to the registry %s (will retry): %s", self.registry.path, exc)
                with self._lock:
                    self._dirty |= dirty
                    for row in rows:
                        if row[10] is not None and row[0] in self._records:
                            self._records[row[0]].usage.setdefault(row[1], row[10])
                    self._attempt_rows[:0] = attempts
                    for job_id, fields in updates.items():
                        self._job_updates[job_id] = {**fields, **self._job_updates.get(job_id, {})}
        for handle in resolve:
            handle._resolve()


def _reports(backend: Any, ids: list[str]) -> dict[str, Mapping[str, Any]]:
    """All reports in one call; for a backend without ``get_task_reports``, the protocol's calls."""
    if hasattr(backend, "get_task_reports"):
        return backend.get_task_reports(ids)
    live = backend.get_submitted_or_running(ids)
    reports: dict[str, Mapping[str, Any]] = {}
    for did in ids:
        if did not in live:
            status, message = backend.get_remote_exit_info(did)
            reports[did] = {"status": status, "message": message}
    return reports


def _step_row(rec: JobRecord, index: int) -> tuple:
    usage = rec.usage.pop(index, None)  # pending until written: usage is read back from the registry
    return (rec.id, index, rec.step_id(index), rec.states[index].value, rec.dids[index], rec.attempts[index],
            rec.exit_codes[index], rec.messages[index], rec.runtimes[index], rec.rss[index],
            usage or None, rec.started[index], None, rec.step_resources.get(index))


def _unjson(text: str | None) -> Any:
    return None if not text else json.loads(text)
