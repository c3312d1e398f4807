"""The multiprocess backend: runs tasks in parallel on this machine.

Data flow::

    caller threads ──submit/terminate──►  MultiprocessDistributor  (one lock, one dispatcher thread)
                                             │  ▲
                       ("run", [tasks])      │  │  [("started", id, pid), ("done", id, outcome),
                       ("kill", id)          │  │   ("returned", id), ...]
                       ("unqueue", ids)      ▼  │
                                   Consumer 1 … Consumer N   (processes, one task at a time)
                                             │
                                   /bin/sh -c COMMAND  (own process group, logs redirected)

The distributor alone decides which task starts where, so a task that is cancelled before it was
handed to a consumer can never start. A consumer may hold queued tasks behind its running one
(none for tasks of unknown length, one for steps under a second, up to ``PREFETCH_SHORT`` for
tiny ones), so it never waits on a round-trip to the distributor between tasks; steps queued behind
a step that turned out slow are taken back when another consumer is idle. A task that asks for
``cores=k`` runs on one consumer while ``k - 1`` others stay idle.

Consumers are fresh interpreters started with ``subprocess`` (see :class:`Consumer`). A consumer
that dies is noticed through its pidfd: its running task is reported lost (``U``) and killed, the
tasks it never started go back to the queue, and a new consumer takes its place.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import multiprocessing.connection
import os
import secrets
import select
import tempfile
import threading
import time
from collections import deque
from typing import Any, Iterable

from ...cluster_protocol import RemoteExitInfoNotAvailable
from ...cluster_protocol import TaskInstanceStatus as S
from ...cluster_protocol.naming import log_stem
from ...cluster_protocol.resources import Resources, check_array_length, check_command
from .._task.node import worker_entry_point
from .._task.runner import Outcome, TaskSpec, exit_message, kill_tasks_by_id
from .consumer import Consumer, PickableTask, receive_message, send_message
from .node import MultiprocessWorkerNode

__all__ = [
    "PickableTask",
    "Consumer",
    "MultiprocessDistributor",
    "MultiprocessWorkerNode",
    "RemoteExitInfoNotAvailable",
    "new_job_id_prefix",
]

logger = logging.getLogger(__name__)


# Seconds between SIGTERM and SIGKILL when a task is terminated on request: long enough for a
# task to flush and clean up, short enough that "kill" feels immediate.
KILL_GRACE_SECONDS = 2.0
# stop() must return within a second, so its grace is short.
STOP_GRACE_SECONDS = 0.2
STOP_DEADLINE_SECONDS = 0.8
# Prefetch: a consumer may hold queued tasks behind its running one, so it never waits on a
# round-trip to the distributor between tasks. How deep depends on the job's pace (how long its
# last step ran): short steps get a deep queue (fewer, bigger messages), steps up to a second get
# one, and steps of unknown or long duration get none: they wait for a free consumer.
PREFETCH_SHORT = 8
SHORT_TASK_SECONDS = 0.05
MEDIUM_TASK_SECONDS = 1.0
# A queued step waits behind a running one that has taken this long, and at least twice its job's
# pace, while another consumer is idle: the distributor takes it back (work stealing).
STEAL_AFTER_SECONDS = 0.1


def new_job_id_prefix() -> str:
    """A prefix unique across distributor instances and kernel restarts (time in ms + randomness)."""
    millis = int(time.time() * 1000)
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while millis:
        millis, rest = divmod(millis, 36)
        text = digits[rest] + text
    return text + secrets.choice(digits) + secrets.choice(digits)


class _Record:
    """The distributor's view of one task."""

    __slots__ = (
        "distributor_id", "name", "stem", "command", "resources", "job_id", "array_step_id", "state", "message",
        "exit_code", "signal", "usage", "pid", "consumer", "submitted", "started", "ended", "recalled",
        "cancel_requested",
    )

    def __init__(self, distributor_id: str, name: str, stem: str, command: str, resources: Resources, job_id: str,
                 array_step_id: int | None) -> None:
        self.distributor_id = distributor_id
        self.name = name
        self.stem = stem
        self.command = command
        self.resources = resources
        self.job_id = job_id
        self.array_step_id = array_step_id
        self.state = S.QUEUED
        self.message = "queued"
        self.exit_code: int | None = None
        self.signal: int | None = None
        self.usage: dict[str, Any] = {}
        self.pid: int | None = None
        self.consumer: _ConsumerSlot | None = None
        self.submitted = time.time()
        self.started: float | None = None
        self.ended: float | None = None
        self.recalled = False  # asked back from a consumer's queue
        self.cancel_requested = False

    def log_path(self, kind: str, log_dir: str) -> str:
        # resources.log_file's naming, with the stem computed once per submission (a hot path).
        folder = (self.resources.stdout_dir if kind == "o" else self.resources.stderr_dir) or log_dir
        return f"{folder}/{self.stem}.{kind}{self.distributor_id}"

    def finish(self, status: str, message: str, exit_code: int | None = None, signum: int | None = None,
               usage: dict[str, Any] | None = None) -> None:
        self.state = status
        self.message = message
        self.exit_code = exit_code
        self.signal = signum
        self.usage = usage or {}
        self.ended = time.time()
        self.consumer = None


class _ConsumerSlot:
    """A consumer process with the two pipe ends the distributor keeps and the tasks it was given."""

    def __init__(self, index: int) -> None:
        task_reader, self.task_writer = multiprocessing.Pipe(duplex=False)
        self.event_reader, event_writer = multiprocessing.Pipe(duplex=False)
        self.index = index
        self.process = Consumer(task_reader, event_writer)
        self.process.start()
        # The child has its copies now; closing ours lets EOF reach each side when the other dies.
        task_reader.close()
        event_writer.close()
        self.assigned: deque[_Record] = deque()
        self.reader_open = True
        self.broken = False  # a send failed: it is dying, give it nothing more

    @property
    def usable(self) -> bool:
        return self.reader_open and not self.broken

    def slots_in_use(self) -> int:
        return self.assigned[0].resources.cores if self.assigned else 0


class MultiprocessDistributor:
    """Executes tasks locally in parallel, ``parallelism`` cores at a time.

    Parameters
    ----------
    cluster_name
        The name of the cluster.
    parallelism
        How many cores (consumer processes) to use at a time.
    log_dir
        Default folder for ``{name}.o{id}`` / ``{name}.e{id}`` when a task names none
        (default: a new folder under the system's temporary directory).
    kill_grace
        Seconds between SIGTERM and SIGKILL for ``terminate_task_instances``.
    """

    def __init__(self, cluster_name: str = "multiprocess", parallelism: int = 3, *args: Any,
                 log_dir: str | None = None, kill_grace: float = KILL_GRACE_SECONDS, **kwargs: Any) -> None:
        if isinstance(parallelism, bool) or not isinstance(parallelism, int) or parallelism < 1:
            raise ValueError(f"parallelism must be a positive integer, not {parallelism!r}")
        self._cluster_name = cluster_name
        self.parallelism = parallelism
        self.log_dir = log_dir or tempfile.mkdtemp(prefix=f"nbdist-{log_stem(cluster_name)}-")
        self.kill_grace = kill_grace
        self.started = False
        self._prefix = new_job_id_prefix()
        self._job_counter = itertools.count(1)
        self._lock = threading.RLock()
        self._records: dict[str, _Record] = {}
        self._live: dict[str, _Record] = {}
        self._pending: deque[_Record] = deque()
        # Arrays with max_concurrent: steps in flight per job id, and steps held back until one ends.
        self._in_flight: dict[str, int] = {}
        self._held: dict[str, deque[_Record]] = {}
        # How long the last finished step of each job ran: sets how deep its steps are prefetched.
        self._job_pace: dict[str, float] = {}
        self._consumers: list[_ConsumerSlot] = []
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- protocol properties
    @property
    def worker_node_entry_point(self) -> str:
        """The installed ``nbdist-worker``, which runs one task the way a consumer does."""
        return worker_entry_point()

    @property
    def cluster_name(self) -> str:
        """Return the name of the cluster type."""
        return self._cluster_name

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start ``parallelism`` consumer processes and the dispatcher thread."""
        with self._lock:
            if self.started:
                return
            self._wake_reader, self._wake_writer = multiprocessing.Pipe(duplex=False)
            self._consumers = [_ConsumerSlot(index) for index in range(self.parallelism)]
            self._stopping = False
            self.started = True
            self._thread = threading.Thread(target=self._dispatch_loop, name="nbdist-dispatcher", daemon=True)
            self._thread.start()
            self._dispatch()

    def stop(self) -> None:
        """Kill running tasks (reported ``K``), drop queued ones, and end every process; < 1 s."""
        deadline = time.monotonic() + STOP_DEADLINE_SECONDS
        with self._lock:
            if not self.started:
                return
            self._stopping = True
            waiting = [*self._pending, *itertools.chain.from_iterable(self._held.values())]
            for record in waiting:
                if record.state == S.QUEUED:
                    self._finish(record, S.KILL_SELF, "cancelled: the distributor stopped")
            self._pending.clear()
            self._held.clear()
            for slot in self._consumers:
                self._send(slot, ("stop", STOP_GRACE_SECONDS))
        for slot in list(self._consumers):
            slot.process.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            for slot in self._consumers:
                if slot.process.is_alive():
                    self._kill_consumer_tree(slot)
        for slot in list(self._consumers):
            slot.process.join(1.0)
        self._wake()
        if self._thread is not None:
            self._thread.join(2.0)
        dispatcher_gone = self._thread is None or not self._thread.is_alive()
        with self._lock:
            for record in list(self._live.values()):
                self._finish(record, S.KILL_SELF, "killed: the distributor stopped")
            for slot in self._consumers:
                slot.task_writer.close()
                slot.event_reader.close()
                slot.process.close()
            self._consumers = []
            if dispatcher_gone:  # never close a pipe under a thread still polling it
                self._wake_reader.close()
                self._wake_writer.close()
            else:
                logger.warning("the dispatcher thread did not stop in time")
            self.started = False

    def __enter__(self) -> "MultiprocessDistributor":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ----------------------------------------------------------------- submission
    def submit_to_batch_distributor(self, command: str, name: str, requested_resources: dict[str, Any]) -> str:
        """Queue one task and return its distributor id."""
        resources = self._check(command, requested_resources)
        job_id = self._new_job_id()
        record = _Record(job_id, name, log_stem(name), command, resources, job_id, None)
        self._enqueue([record])
        return job_id

    def submit_array_to_batch_distributor(self, command: str, name: str, requested_resources: dict[str, Any],
                                          array_length: int) -> dict[int, str]:
        """Queue ``array_length`` steps (0 … n-1); return ``{step: "{job_id}_{step}"}``."""
        check_array_length(array_length)
        resources = self._check(command, requested_resources)
        job_id = self._new_job_id()
        stem = log_stem(name)
        records = [_Record(f"{job_id}_{step}", name, stem, command, resources, job_id, step) for step in range(array_length)]
        self._enqueue(records)
        return {record.array_step_id: record.distributor_id for record in records}  # type: ignore[misc]

    def _check(self, command: str, requested_resources: dict[str, Any] | None) -> Resources:
        check_command(command)
        resources = Resources.parse(requested_resources, max_cores=self.parallelism)
        if resources.after:
            raise ValueError("the multiprocess backend does not take 'after': submit dependents when their dependencies are done")
        for folder in {resources.stdout_dir or self.log_dir, resources.stderr_dir or self.log_dir}:
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as exc:  # reported per task as a queueing error when it cannot start
                logger.warning("cannot create log folder %s: %s", folder, exc)
        return resources

    def _new_job_id(self) -> str:
        return f"{self._prefix}.{next(self._job_counter)}"

    def _enqueue(self, records: list[_Record]) -> None:
        with self._lock:
            if self._stopping:
                raise RuntimeError("the distributor is stopping")
            for record in records:
                self._records[record.distributor_id] = record
                self._live[record.distributor_id] = record
            self._pending.extend(records)
            if self.started:
                self._dispatch()

    # ----------------------------------------------------------------- queries
    def get_submitted_or_running(self, distributor_ids: list[str] | None = None) -> set[str]:
        """Ids that are queued or running (among ``distributor_ids``, or all)."""
        with self._lock:
            if distributor_ids is None:
                return set(self._live)
            return {i for i in distributor_ids if i in self._live}

    def get_queueing_errors(self, distributor_ids: list[str]) -> dict[str, str]:
        """Tasks that could not start (e.g. their log folder is not writable), with the reason."""
        with self._lock:
            return {
                i: self._records[i].message
                for i in distributor_ids
                if i in self._records and self._records[i].state == S.NO_DISTRIBUTOR_ID
            }

    def get_remote_exit_info(self, distributor_id: str) -> tuple[str, str]:
        """``(status, message)``: ``D`` exit 0, ``E`` exit code, ``K`` killed, ``Z`` over a limit, ``U`` lost."""
        with self._lock:
            record = self._known(distributor_id)
            return record.state, record.message

    def get_usage_stats(self, distributor_id: str) -> dict[str, Any]:
        """Wall seconds, CPU seconds (user + system) and max RSS (MB) of a finished task."""
        with self._lock:
            return dict(self._known(distributor_id).usage)

    def _known(self, distributor_id: str) -> _Record:
        record = self._records.get(distributor_id)
        if record is None:
            raise RemoteExitInfoNotAvailable(f"unknown distributor id {distributor_id!r}")
        return record

    def get_task_reports(self, distributor_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Everything known about each task, in one call (the session's poller uses this)."""
        with self._lock:
            return {i: self._report(self._records[i]) for i in distributor_ids if i in self._records}

    def log_paths(self, distributor_id: str) -> tuple[str, str]:
        """``(stdout, stderr)`` file paths of a task."""
        record = self._records[distributor_id]
        return record.log_path("o", self.log_dir), record.log_path("e", self.log_dir)

    def _report(self, record: _Record) -> dict[str, Any]:
        return {
            "status": record.state,
            "message": record.message,
            "exit_code": record.exit_code,
            "signal": record.signal,
            "usage": dict(record.usage),
            "pid": record.pid,
            "submitted": record.submitted,
            "started": record.started,
            "ended": record.ended,
        }

    # ----------------------------------------------------------------- termination
    def terminate_task_instances(self, distributor_ids: list[str]) -> None:
        """Kill running tasks with their whole process tree; drop queued ones so they never start."""
        with self._lock:
            for distributor_id in distributor_ids:
                record = self._live.get(distributor_id)
                if record is None:
                    continue
                if record.consumer is None:  # still in our queue: it will be skipped
                    self._finish(record, S.KILL_SELF, "cancelled before it started")
                else:
                    record.cancel_requested = True  # if the consumer hands it back, it is not requeued
                    self._send(record.consumer, ("kill", distributor_id, self.kill_grace))

    # ----------------------------------------------------------------- dispatcher
    def _dispatch(self) -> None:
        """Hand queued tasks to consumers while slots allow (FIFO; called with the lock held)."""
        pending = self._pending
        batches: dict[_ConsumerSlot, list[PickableTask]] = {}
        while pending and not self._stopping:
            record = pending[0]
            if record.state != S.QUEUED:
                pending.popleft()
                continue
            limit = record.resources.max_concurrent
            if limit is not None and self._in_flight.get(record.job_id, 0) >= limit:
                self._held.setdefault(record.job_id, deque()).append(pending.popleft())
                continue
            slot = self._pick_consumer(record, batches)
            if slot is None:
                break
            pending.popleft()
            batches.setdefault(slot, []).append(self._assign(slot, record))
        for slot, tasks in batches.items():
            self._send(slot, ("run", tasks))

    def _send(self, slot: _ConsumerSlot, message: tuple[Any, ...]) -> None:
        """Send to a consumer; one that died takes no more work (its exit handler requeues what it held)."""
        try:
            send_message(slot.task_writer, message)
        except OSError:
            slot.broken = True

    def _pick_consumer(self, record: _Record, batches: dict[_ConsumerSlot, list[PickableTask]]) -> _ConsumerSlot | None:
        """An idle consumer if the task's cores are free; else, for 1-core tasks, one to prefetch onto."""
        cores = record.resources.cores
        in_use = sum(slot.slots_in_use() for slot in self._consumers)
        usable = [slot for slot in self._consumers if slot.usable]
        for slot in usable:
            if not slot.assigned:
                return slot if in_use + cores <= self.parallelism else None
        if cores != 1:
            return None
        depth = self._prefetch_depth(record.job_id)
        best = None
        now = time.time()
        for slot in usable:
            queued = len(slot.assigned) - 1
            running = slot.assigned[0]
            if running.resources.cores != 1 or queued >= min(depth, self._prefetch_depth(running.job_id)):
                continue
            if self._running_late(running, now) is None:
                continue  # this one turned out slow: don't queue behind it
            if queued > depth // 2 and slot not in batches:  # refill at half depth, in one message
                continue
            if best is None or len(slot.assigned) < len(best.assigned):
                best = slot
        return best

    def _prefetch_depth(self, job_id: str) -> int:
        pace = self._job_pace.get(job_id)
        if pace is None or pace >= MEDIUM_TASK_SECONDS:
            return 0
        return PREFETCH_SHORT if pace < SHORT_TASK_SECONDS else 1

    def _running_late(self, running: _Record, now: float) -> float | None:
        """Seconds until ``running`` counts as slow (tasks queued behind it are taken back), None if it does."""
        limit = max(STEAL_AFTER_SECONDS, 2 * self._job_pace.get(running.job_id, 0.0))
        elapsed = now - running.started if running.started is not None else 0.0
        return limit - elapsed if elapsed < limit else None

    def _assign(self, slot: _ConsumerSlot, record: _Record) -> PickableTask:
        env = {"JOB_ID": record.job_id, "NBDIST_DISTRIBUTOR_ID": record.distributor_id}
        if record.array_step_id is not None:
            env["ARRAY_STEP_ID"] = str(record.array_step_id)
        resources = record.resources
        env.update(resources.env)
        spec = TaskSpec(record.distributor_id, record.command, record.log_path("o", self.log_dir),
                        record.log_path("e", self.log_dir), env, resources.cwd, resources.runtime_s,
                        resources.memory_mb)
        record.consumer = slot
        slot.assigned.append(record)
        if resources.max_concurrent is not None:
            self._in_flight[record.job_id] = self._in_flight.get(record.job_id, 0) + 1
        task_type = "array" if record.array_step_id is not None else "job"
        return PickableTask(record.distributor_id, record.command, task_type, record.array_step_id, spec)

    def _dispatch_loop(self) -> None:
        poller = select.poll()
        Watched = dict[int, tuple[str, "_ConsumerSlot | None"]]
        watched: Watched = {}
        wake_fd = self._wake_reader.fileno()
        next_look: float | None = None
        while True:
            # (Re)build the poll set only when consumers came or went: polling is per task, hot.
            with self._lock:
                wanted: Watched = {wake_fd: ("wake", None)}
                for slot in self._consumers:
                    if slot.reader_open:
                        wanted[slot.event_reader.fileno()] = ("events", slot)
                    wanted[slot.process.sentinel] = ("exit", slot)
            if wanted != watched:
                for fd in watched:
                    poller.unregister(fd)
                for fd in wanted:
                    poller.register(fd, select.POLLIN)
                watched = wanted
            ready = [watched[fd] for fd, _ in poller.poll(None if next_look is None else next_look * 1000 + 1)]
            with self._lock:
                for kind, source in ready:
                    if kind == "wake":
                        self._wake_reader.recv()
                    elif kind == "events" and source is not None and source.reader_open:
                        self._read_events(source)
                for kind, source in ready:
                    if kind == "exit" and source is not None and source in self._consumers:
                        self._consumer_died(source)
                if self._stopping and not any(s.process.is_alive() for s in self._consumers):
                    return
                self._dispatch()
                next_look = self._steal()

    def _read_events(self, slot: _ConsumerSlot) -> None:
        """Apply one message of events (the poll loop comes back if more are waiting)."""
        try:
            events = receive_message(slot.event_reader)
        except (EOFError, OSError):
            slot.reader_open = False
            return
        except Exception:  # a corrupt message must not kill the dispatcher: treat it as a dead consumer
            logger.exception("unreadable message from consumer %s; replacing it", slot.process.pid)
            slot.reader_open = False
            slot.process.kill()
            return
        returned = []
        for event in events:
            if event[0] == "returned":
                returned.append(self._records[event[1]])
            else:
                self._apply_event(slot, event)
        for record in returned:
            slot.assigned.remove(record)
        self._take_back(returned)

    def _take_back(self, records: list[_Record]) -> None:
        """Tasks a consumer held but never started: the cancelled ones end, the others go back to
        the front of the queue in their order."""
        requeued = []
        for record in records:
            record.recalled = False
            if record.cancel_requested:
                self._finish(record, S.KILL_SELF, "cancelled before it started")  # frees its throttle slot
                continue
            if record.resources.max_concurrent is not None:
                self._in_flight[record.job_id] -= 1
            record.consumer = None
            requeued.append(record)
        self._pending.extendleft(reversed(requeued))

    def _steal(self) -> float | None:
        """Take back steps queued behind a slow one when a consumer is idle; seconds to the next look."""
        usable = [slot for slot in self._consumers if slot.usable]
        if self._pending or self._stopping or all(slot.assigned for slot in usable):
            return None
        now = time.time()
        next_look = None
        for slot in usable:
            queued = [record for record in list(slot.assigned)[1:] if not record.recalled]
            if not queued:
                continue
            wait = self._running_late(slot.assigned[0], now)
            if wait is None:
                for record in queued:
                    record.recalled = True
                self._send(slot, ("unqueue", [record.distributor_id for record in queued]))
            else:
                next_look = wait if next_look is None else min(next_look, wait)
        return next_look

    def _drain_events(self, slot: _ConsumerSlot) -> None:
        """Apply every message a (dead) consumer left in its pipe."""
        while slot.reader_open and slot.event_reader.poll():
            self._read_events(slot)

    def _apply_event(self, slot: _ConsumerSlot, event: tuple[Any, ...]) -> None:
        kind, distributor_id, payload = event
        record = self._records[distributor_id]
        if kind == "started":
            record.state = S.RUNNING
            record.message = "running"
            record.pid = payload
            record.started = time.time()
            return
        if record in slot.assigned:
            slot.assigned.remove(record)
        if kind == "error":
            self._finish(record, S.NO_DISTRIBUTOR_ID, payload)
        else:
            outcome: Outcome = payload
            if record.array_step_id is not None and "wall_s" in outcome.usage:
                self._job_pace[record.job_id] = outcome.usage["wall_s"]
            self._finish(record, outcome.status, outcome.message, outcome.exit_code, outcome.signal, outcome.usage)

    def _finish(self, record: _Record, status: str, message: str, exit_code: int | None = None,
                signum: int | None = None, usage: dict[str, Any] | None = None) -> None:
        if record.consumer is not None and record.resources.max_concurrent is not None:
            self._release_throttle(record.job_id)
        record.finish(status, message, exit_code, signum, usage)
        self._live.pop(record.distributor_id, None)

    def _release_throttle(self, job_id: str) -> None:
        """One step of a throttled array ended: the next held step goes back to the queue's front."""
        self._in_flight[job_id] -= 1
        held = self._held.get(job_id)
        while held:
            record = held.popleft()
            if record.state == S.QUEUED:
                self._pending.appendleft(record)
                break
        if held is not None and not held:
            del self._held[job_id]

    def _consumer_died(self, slot: _ConsumerSlot) -> None:
        """Report the dead consumer's running task lost, requeue its prefetched one, replace it."""
        self._drain_events(slot)
        slot.process.join(0)
        code = slot.process.exitcode
        how = exit_message(code, -code) if code is not None and code < 0 else f"exit code {code}"
        self._consumers.remove(slot)
        # Events are batched, so the last ones may never have arrived: a task whose log file exists
        # had started (it is lost, and killed if still running); one without never started.
        lost = [r for r in slot.assigned if r.state == S.RUNNING or os.path.exists(r.log_path("o", self.log_dir))]
        kill_tasks_by_id([record.distributor_id for record in lost])
        for record in lost:
            self._finish(record, S.UNKNOWN_ERROR, f"lost: its consumer process died ({how})")
        self._take_back([record for record in slot.assigned if record not in lost])  # never started
        slot.assigned.clear()
        slot.task_writer.close()
        slot.event_reader.close()
        slot.process.close()
        if not self._stopping:
            logger.warning("consumer %s died (%s); starting a new one", slot.process.pid, how)
            self._consumers.append(_ConsumerSlot(slot.index))

    def _kill_consumer_tree(self, slot: _ConsumerSlot) -> None:
        """SIGKILL a consumer that did not stop in time, and every process under it."""
        import psutil

        try:
            tree = psutil.Process(slot.process.pid).children(recursive=True)
        except psutil.Error:
            tree = []
        kill_tasks_by_id([record.distributor_id for record in slot.assigned])
        for proc in tree:
            try:
                proc.kill()
            except psutil.Error:
                pass
        slot.process.kill()

    def _wake(self) -> None:
        try:
            self._wake_writer.send(None)
        except OSError:
            pass

    def __del__(self) -> None:
        if getattr(self, "started", False):
            try:
                self.stop()
            except Exception:  # interpreter shutdown: best effort
                pass
