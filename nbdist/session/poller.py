"""The poller: one thread asking every backend about all its live tasks, then writing what changed.

Each poll makes one ``get_task_reports(all live ids)`` call per backend (a
:class:`~nbdist.cluster_protocol.ReportingDistributor`; a plain Jobmon backend is asked with the
protocol's calls). With more than ``full_report_limit`` live tasks it asks for those that ended (one
cheap ``get_submitted_or_running`` over all) and a window of those that may have started, and for all
of them every ``full_poll_seconds``. Every ``registry_check_seconds`` it reads the requests other
processes left (CLI kill/retry) and the progress of other kernels' jobs. The tunables are
constructor parameters, with their trade-offs below.

:meth:`Poller.waiting` (someone waits: ``result()``, ``exception()``, ``wait()``) polls at
once and then often while work is live: the interval is ``WAIT_LATENCY_FRACTION`` of the time since
the wait began, from ``POLL_WAITED_SECONDS`` up to the usual schedule. Work that ends ``T`` seconds
after its waiter began is noticed within about ``max(2 ms, T / 20)``, not a fixed poll period; the
burst costs about 50 polls per tenfold of the wait's length, and nothing is polled more while no
one waits or nothing is live. A backend that tells of ended tasks wakes the poller at once; polls
then follow each other no sooner than ``POLL_COST_FACTOR`` times their cost (a tenth of a core), or
``POLL_WAITED_COST_FACTOR`` times while someone waits and at most ``FEW_LIVE_TASKS`` of the session's
tasks are live: then each end may be what unblocks the waiter (a joblib call waits for its batches
one after another), which is idle meanwhile, and a poll's cost (~0.2 ms: the backend's reports and
the registry's transaction) would otherwise delay each end by ~2 ms. With more live tasks the backend
has work queued, and ends are gathered as before (an array's 1,000 steps: ~9% slower with the
shorter spacing). A failed poll is retried after ``POLL_MAX_SECONDS``, however often it is woken.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from ..cluster_protocol import ReportingDistributor
from .lifecycle import Lifecycle
from .ownership import HEARTBEAT_SECONDS, Ownership
from .registry import Registry
from .state import State
from .storage import RegistryUnwritable

__all__ = ["Poller"]

logger = logging.getLogger(__name__)

# Poll interval bounds: a short interval notices ends quickly (wait() latency); when nothing changes
# the poller backs off towards the long one. Polling never takes more than 1/POLL_COST_FACTOR of a core.
POLL_MIN_SECONDS = 0.02
POLL_MAX_SECONDS = 0.5
POLL_COST_FACTOR = 10
POLL_WAITED_COST_FACTOR = 3
FEW_LIVE_TASKS = 32
# While someone waits: the shortest interval, and the interval as a fraction of the time since the wait began.
POLL_WAITED_SECONDS = 0.002
WAIT_LATENCY_FRACTION = 0.05
# Reports applied per hold of the session lock: small enough that a snapshot waits at most ~1 ms.
APPLY_CHUNK = 256


class Poller:
    """The session's poll thread (started on first need) and one poll's work.

    Parameters
    ----------
    full_report_limit
        Up to this many live tasks of a backend, a poll asks for all their reports; beyond, for those
        that ended and a window of ``window_per_record`` queued steps per job. A report costs the
        backend far more than a set lookup, and it holds its lock meanwhile (no task starts).
    window_per_record
        Queued steps per job asked about in a windowed poll (backends start a job's steps in order).
    full_poll_seconds
        A windowed poll asks about every live task at least this often anyway.
    registry_check_seconds
        How often requests from other processes and other kernels' jobs are read: the latency of a
        CLI kill against the cost of a registry query.
    """

    def __init__(self, session_id: str, registry: Registry, lifecycle: Lifecycle, ownership: Ownership, *,
                 full_report_limit: int = 256, window_per_record: int = 256, full_poll_seconds: float = 10.0,
                 registry_check_seconds: float = 0.5) -> None:
        self.session_id = session_id
        self.registry = registry
        self.lifecycle = lifecycle
        self.ownership = ownership
        self.full_report_limit = full_report_limit
        self.window_per_record = window_per_record
        self.full_poll_seconds = full_poll_seconds
        self.registry_check_seconds = registry_check_seconds
        self._wake_event = threading.Event()
        lifecycle.launcher.on_task_ended = self.wake  # a backend that tells of ended tasks: looked at once
        self._waiters = 0
        self._waited_at = float("-inf")
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_registry_check = 0.0
        self._full_polls: dict[str, float] = {}
        self._last_beat = time.time()

    # ------------------------------------------------------------------ the thread
    def ensure_started(self) -> None:
        """Start the poll thread unless it runs (or the session is closing)."""
        with self.lifecycle.lock:
            if self._thread is None and not self._stop_event.is_set():
                self._thread = threading.Thread(target=self._poll_loop, name=f"nbdist-poller-{self.session_id[:6]}",
                                                daemon=True)
                self._thread.start()

    def wake(self) -> None:
        """Poll now rather than after the current back-off."""
        self._wake_event.set()

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Someone waits for work to end in this block: poll now, then often until no one waits (see the module)."""
        with self.lifecycle.lock:
            self._waiters += 1
            self._waited_at = time.monotonic()  # the newest wait: the one whose work may be shortest
        self._wake_event.set()
        try:
            yield
        finally:
            with self.lifecycle.lock:
                self._waiters -= 1

    def stop(self) -> None:
        """Stop the thread (waits up to 5 s for a poll in progress)."""
        self._stop_event.set()
        self._wake_event.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    def _poll_loop(self) -> None:
        interval, cost, last_poll = POLL_MIN_SECONDS, 0.0, 0.0
        retry_after = 0.0  # after a failed poll: POLL_MAX_SECONDS, however soon a wake comes
        while not self._stop_event.is_set():
            self._wake_event.wait(min(interval, self._burst_interval(cost)))
            self._wake_event.clear()
            # A wake (tasks ended, someone waits) polls at once, but never sooner after the last poll
            # than its cost allows: a backend telling of every end must not make polling a busy loop.
            factor = POLL_WAITED_COST_FACTOR if self._waited_on_few() else POLL_COST_FACTOR
            spacing = max(cost * factor, retry_after) - (time.monotonic() - last_poll)
            if spacing > 0:
                self._stop_event.wait(spacing)
            if self._stop_event.is_set():
                return
            # The poller's own CPU time, not wall time: waiting for the GIL or the backend's lock
            # while tasks are busy is not a cost of polling, and must not slow the polls down.
            started = time.thread_time()
            try:
                changed = self.poll()
            except Exception:
                logger.exception("nbdist poll failed; retrying in %.1f s", POLL_MAX_SECONDS)
                # A failing backend is not hammered, waited on or not.
                interval = retry_after = POLL_MAX_SECONDS
                last_poll = time.monotonic()
                continue
            cost, retry_after = time.thread_time() - started, 0.0
            last_poll = time.monotonic()
            interval = POLL_MIN_SECONDS if changed else min(POLL_MAX_SECONDS, interval * 1.5)
            interval = max(interval, cost * POLL_COST_FACTOR)

    def _waited_on_few(self) -> bool:
        """Someone waits and at most FEW_LIVE_TASKS of the session's tasks are live: each end may be what
        they wait for (see the module)."""
        with self.lifecycle.lock:
            return bool(self._waiters) and sum(map(len, self.lifecycle.live.values())) <= FEW_LIVE_TASKS

    def _burst_interval(self, cost: float) -> float:
        """The interval while someone waits (see the module); no burst once nothing is live (nothing can end)."""
        with self.lifecycle.lock:
            if not self._waiters or not any(self.lifecycle.live.values()):
                return POLL_MAX_SECONDS
        since_wait = time.monotonic() - self._waited_at
        return max(POLL_WAITED_SECONDS, since_wait * WAIT_LATENCY_FRACTION, cost * POLL_COST_FACTOR)

    # ------------------------------------------------------------------ one poll
    def poll(self) -> bool:
        """Ask every backend about all live tasks (one call each) and apply the answers; True if anything changed."""
        lifecycle = self.lifecycle
        with lifecycle.lock:
            started = lifecycle.launcher.started()
            backends = [(name, started[name]) for name in lifecycle.live if lifecycle.live[name] and name in started]
        changed = False
        for name, backend in backends:
            changed = self.poll_backend(name, backend) or changed
        now = time.monotonic()
        if now - self._last_registry_check >= self.registry_check_seconds:
            self._last_registry_check = now
            changed = self._check_registry() or changed
        lifecycle.flush()
        return changed

    def poll_backend(self, name: str, backend: Any, full: bool = False) -> bool:
        """One poll of one backend: reports of every live task, or, when there are many, of those
        that ended (one cheap ``get_submitted_or_running`` over all) plus a window of those that
        may have started; every ``full_poll_seconds`` all of them again."""
        lifecycle = self.lifecycle
        now = time.monotonic()
        with lifecycle.lock:
            live = lifecycle.live.get(name, {})
            ids = list(live)
            if (len(ids) > self.full_report_limit and not full
                    and now - self._full_polls.get(name, 0.0) < self.full_poll_seconds):
                window: list[str] | None = self.window(name)
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
            with lifecycle.lock:
                live = lifecycle.live.get(name, {})
                for did, report in items[start:start + APPLY_CHUNK]:
                    entry = live.get(did)
                    if entry is not None and entry[0].dids[entry[1]] == did:
                        changed = lifecycle.apply(entry[0], entry[1], did, report) or changed
        with lifecycle.lock:
            lifecycle.run_dep_checks()
        return changed

    def window(self, name: str) -> list[str]:
        """Live ids that may go from QUEUED to RUNNING soon: the running ones and each record's
        oldest queued ones (backends start a record's steps in order). Lock held; amortised O(1)
        per step over a record's life thanks to its queue cursor."""
        window: list[str] = []
        for rec in self.lifecycle.records.values():
            if rec.backend != name or not rec.owned or rec.all_terminal:
                continue
            dids, states, n = rec.dids, rec.states, rec.n
            window.extend(dids[index] for index in rec.by_state[State.RUNNING])  # type: ignore[misc]
            index = rec.queue_cursor
            while index < n and states[index] is not State.QUEUED:
                index += 1
            rec.queue_cursor = index
            taken = 0
            while index < n and taken < self.window_per_record:
                if states[index] is State.QUEUED:
                    window.append(dids[index])  # type: ignore[arg-type]
                    taken += 1
                index += 1
        return window

    def _check_registry(self) -> bool:
        """Requests other processes left for this session, and progress of other kernels' jobs."""
        lifecycle = self.lifecycle
        changed = False
        now = time.time()
        try:
            if now - self._last_beat >= HEARTBEAT_SECONDS:
                self._last_beat = now
                self.registry.beat(self.session_id)
            requests = self.registry.take_requests(self.session_id)
        except RegistryUnwritable:
            # A full disk: the pending writes say so once, and keep what changed; requests wait in the registry.
            requests = []
        for job_id, action, indices in requests:
            # Requests are addressed to this session: the record is its own, the lifecycle acts at once.
            with lifecycle.lock:
                rec = lifecycle.records.get(job_id)
                if rec is None:
                    continue
                chosen = list(indices) if indices else list(range(rec.n))
                try:
                    if action == "kill":
                        lifecycle.cancel(rec, chosen)
                    elif action == "retry":
                        lifecycle.retry(rec, [i for i in chosen if rec.states[i].is_failure], None)
                except Exception as exc:
                    logger.warning("request %s of %s failed: %s", action, rec.name, exc)
            lifecycle.settle()
            changed = True
        with lifecycle.lock:
            changed = self.ownership.refresh_foreign() or changed
        return changed


def _reports(backend: Any, ids: list[str]) -> Mapping[str, Mapping[str, Any]]:
    """All reports in one call; for a backend that is no ReportingDistributor, the protocol's calls."""
    if isinstance(backend, ReportingDistributor):
        return backend.get_task_reports(ids)
    live = backend.get_submitted_or_running(ids)
    reports: dict[str, Mapping[str, Any]] = {}
    for did in ids:
        if did not in live:
            status, message = backend.get_remote_exit_info(did)
            reports[did] = {"status": status, "message": message}
    return reports
