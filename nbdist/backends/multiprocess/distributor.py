"""The multiprocess backend: runs tasks in parallel on this machine.

Data flow::

    caller threads ──submit/terminate──►  MultiprocessDistributor  (one lock, one dispatcher thread)
                                             │  ▲
                       Run([tasks])          │  │  [Started(id, pid), Done(id, outcome),
                       Kill(id, grace)       │  │   Error(id, message), Returned(id), ...]
                       Unqueue(ids)          ▼  │                       (the pipe protocol: .messages)
                                   Consumer 1 … Consumer N   (processes, one task at a time)
                                             │
                                   /bin/sh -c COMMAND  (own process group, logs redirected)

The distributor alone decides which task starts where, so a task that is cancelled before it was
handed to a consumer can never start. A consumer may hold queued tasks behind its running one, so
it never waits on a round-trip to the distributor between tasks, and steps queued behind a step that
turned out slow are taken back when another consumer is idle (the rules: :mod:`.placement`). A task
that asks for ``cores=k`` runs on one consumer while ``k - 1`` others stay idle (its numeric libraries
get ``k`` threads); one that asks for ``gpus=k`` holds ``k`` GPUs (:mod:`.gpu_slots`), alone in its ``CUDA_VISIBLE_DEVICES``.

Consumers are fresh interpreters started with ``subprocess`` (see :class:`Consumer`). A consumer
that dies is noticed through its exit watch (a pidfd on Linux, :mod:`.._task.system`): its running task is reported lost (``U``) and killed, the
tasks it never started go back to the queue, and a new consumer takes its place.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import select
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ...cluster_protocol import Limit
from ...cluster_protocol import TaskInstanceStatus as Status
from ...cluster_protocol.naming import array_id, log_stem
from ...cluster_protocol.pycall import PythonCall
from ...cluster_protocol.resources import check_array_length, positive_int, thread_variables
from .._table import TableDistributor
from .._task.reaping import kill_tasks_by_id
from .._task.runner import Outcome, TaskSpec, exit_message
from .gpu_slots import GpuSlots
from .ids import new_job_id_prefix
from .messages import (Command, Done, Error, Event, Kill, PickableTask, Returned, Run, Started, Stop, Unqueue,
                       Usage, receive_message, send_message)
from .placement import ANY_JOB, pick_slot, tasks_to_take_back
from .submissions import Submissions
from .slots import ConsumerSlot, QueuedTask
from .workers import WorkerOptions

__all__ = ["DEFAULT_PARALLELISM", "KILL_GRACE_SECONDS", "MultiprocessDistributor"]

logger = logging.getLogger(__name__)


# Seconds between SIGTERM and SIGKILL when a task is terminated on request: long enough for a
# task to flush and clean up, short enough that "kill" feels immediate.
KILL_GRACE_SECONDS = 2.0
# stop() must return within a second, so its grace is short.
STOP_GRACE_SECONDS = 0.2
STOP_DEADLINE_SECONDS = 0.8
# The constructor's default, and so the most cores one task may ask for when none is given.
DEFAULT_PARALLELISM = 3


class MultiprocessDistributor(TableDistributor[QueuedTask]):
    """Executes tasks locally in parallel, ``parallelism`` cores at a time.

    Parameters
    ----------
    cluster_name
        The name of the cluster.
    parallelism
        How many cores (consumer processes) to use at a time.
    log_dir
        Default folder for ``{name}.o{id}`` / ``{name}.e{id}`` when a task names none (default: a
        new folder under the system's temporary directory, made when a task first needs it and
        removed at :meth:`stop` if no task wrote to it).
    kill_grace
        Seconds between SIGTERM and SIGKILL for ``terminate_task_instances``.
    max_calls_per_worker, pre_import
        Of the warm workers that run Python calls: see :class:`.workers.WorkerOptions`.
    gpus
        The GPUs tasks may hold, e.g. ``[0, 1, 2, 3]`` (default: ``$NBDIST_GPUS``, else the driver's,
        narrowed by our ``CUDA_VISIBLE_DEVICES``; see :mod:`.._task.gpus`), found when a task first asks.
    """

    def __init__(self, cluster_name: str = "multiprocess", parallelism: int = DEFAULT_PARALLELISM, *args: Any,
                 log_dir: str | None = None, kill_grace: float = KILL_GRACE_SECONDS,
                 gpus: Sequence[int | str] | str | None = None, max_calls_per_worker: int | None = None,
                 pre_import: Sequence[str] = (), **kwargs: Any) -> None:
        positive_int(parallelism, "parallelism")
        self._worker_options = WorkerOptions.checked(max_calls_per_worker, pre_import)
        self.gpus = GpuSlots(gpus)
        self._submissions = Submissions(parallelism, self.gpus.count, lambda: self.log_dir)
        super().__init__(cluster_name)
        self._lock = self.tasks.lock  # one lock guards the table and the scheduling state
        self.parallelism = parallelism
        self._log_dir = log_dir
        self._made_log_dir = False
        self.kill_grace = kill_grace
        self.started = False
        # Called from the dispatcher thread, holding this distributor's lock, when tasks ended (it must be
        # quick: a session's poller sets an event, then looks at once instead of at its next scheduled poll).
        self.on_task_ended: Callable[[], None] | None = None
        self._prefix = new_job_id_prefix()
        self._job_counter = itertools.count(1)
        self._pending: deque[QueuedTask] = deque()
        # Arrays with max_concurrent: steps in flight per job id, and steps held back until one ends.
        self._in_flight: dict[str, int] = {}
        self._held: dict[str, deque[QueuedTask]] = {}
        # How long the last finished step of each job ran: sets how deep its steps are prefetched.
        self._job_pace: dict[str, float] = {}
        self._consumers: list[ConsumerSlot] = []
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- capabilities
    @classmethod
    def session_defaults(cls, root: str, parallelism: int | None) -> dict[str, Any]:
        """A session's consumers: ``parallelism`` (default: one per CPU) and logs in ``{root}/logs``."""
        return {"parallelism": parallelism or os.cpu_count() or 1, "log_dir": os.path.join(root, "logs")}

    @classmethod
    def max_cores(cls, options: Mapping[str, Any]) -> int | None:
        """A task may take every consumer: at most ``parallelism`` cores."""
        return options.get("parallelism") or DEFAULT_PARALLELISM

    @classmethod
    def max_gpus(cls, options: Mapping[str, Any]) -> int:
        """A task may take every GPU: those of the ``gpus`` option, else those found (see the class)."""
        return GpuSlots.count_for(options)

    @property
    def log_dir(self) -> str:
        """The default log folder (a temporary one is made on first use when none was given)."""
        with self._lock:
            if self._log_dir is None:
                self._log_dir = tempfile.mkdtemp(prefix=f"nbdist-{log_stem(self.cluster_name)}-")
                self._made_log_dir = True
            return self._log_dir

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start ``parallelism`` consumer processes and the dispatcher thread."""
        with self._lock:
            if self.started:
                return
            self._wake_reader, self._wake_writer = multiprocessing.Pipe(duplex=False)
            self._consumers = [ConsumerSlot(index, self._worker_options) for index in range(self.parallelism)]
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
                if record.state == Status.QUEUED:
                    self._finish(record, Status.KILL_SELF, "cancelled: the distributor stopped")
            self._pending.clear()
            self._held.clear()
            for slot in self._consumers:
                self._send(slot, Stop(STOP_GRACE_SECONDS))
        for slot in list(self._consumers):
            slot.process.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            for slot in self._consumers:
                if slot.process.is_alive():
                    slot.kill_tree()
        for slot in list(self._consumers):
            slot.process.join(1.0)
        self._wake()
        if self._thread is not None:
            self._thread.join(2.0)
        dispatcher_gone = self._thread is None or not self._thread.is_alive()
        with self._lock:
            for record in list(self.tasks.live.values()):
                self._finish(record, Status.KILL_SELF, "killed: the distributor stopped")
            for slot in self._consumers:
                slot.close()
            self._consumers = []
            if dispatcher_gone:  # never close a pipe under a thread still polling it
                self._wake_reader.close()
                self._wake_writer.close()
            else:
                logger.warning("the dispatcher thread did not stop in time")
            self.started = False
            self._remove_log_dir_if_unused()

    def _remove_log_dir_if_unused(self) -> None:
        """Remove the temporary log folder this distributor made, if no task wrote to it."""
        if self._made_log_dir and self._log_dir is not None:
            try:
                os.rmdir(self._log_dir)
            except OSError:  # not empty (logs to read later) or already gone
                return
            self._made_log_dir = False  # a later task makes it again (and keeps it)

    # ----------------------------------------------------------------- submission
    TAKES_PYTHON_CALLS = True  # submit(..., call=PythonCall): run in a warm worker (command: its command form)

    def submit_to_batch_distributor(self, command: str, name: str, requested_resources: dict[str, Any],
                                    call: PythonCall | None = None) -> str:
        """Queue one task and return its distributor id."""
        resources = self._submissions.resources(command, requested_resources)
        job_id = self._new_job_id()
        stdout_dir, stderr_dir = self._submissions.log_folders(resources)
        self._enqueue([QueuedTask(job_id, name, command, resources, stdout_dir, stderr_dir, log_stem(name), job_id,
                                  None, call)])
        return job_id

    def submit_array_to_batch_distributor(self, command: str, name: str, requested_resources: dict[str, Any],
                                          array_length: int, call: PythonCall | None = None) -> dict[int, str]:
        """Queue ``array_length`` steps (0 … n-1); return ``{step: "{job_id}_{step}"}``."""
        check_array_length(array_length)
        resources = self._submissions.resources(command, requested_resources)
        job_id = self._new_job_id()
        stdout_dir, stderr_dir = self._submissions.log_folders(resources)
        stem = log_stem(name)
        records = [QueuedTask(array_id(job_id, step), name, command, resources, stdout_dir, stderr_dir, stem, job_id,
                              step, call) for step in range(array_length)]
        self._enqueue(records)
        return {record.array_step_id: record.distributor_id for record in records}  # type: ignore[misc]

    def _new_job_id(self) -> str:
        return f"{self._prefix}.{next(self._job_counter)}"

    def _enqueue(self, records: list[QueuedTask]) -> None:
        with self._lock:
            if self._stopping:
                raise RuntimeError("the distributor is stopping")
            self.tasks.add(records)
            self._pending.extend(records)
            if self.started:
                self._dispatch()

    # ----------------------------------------------------------------- queries
    def get_queueing_errors(self, distributor_ids: list[str]) -> dict[str, str]:
        """Tasks that could not start (e.g. their log folder is not writable), with the reason."""
        with self._lock:
            return {
                i: self.tasks.records[i].message
                for i in distributor_ids
                if i in self.tasks.records and self.tasks.records[i].state == Status.NO_DISTRIBUTOR_ID
            }

    # ----------------------------------------------------------------- termination
    def terminate_task_instances(self, distributor_ids: list[str]) -> None:
        """Kill running tasks with their whole process tree; drop queued ones so they never start."""
        with self._lock:
            for distributor_id in distributor_ids:
                record = self.tasks.live.get(distributor_id)
                if record is None:
                    continue
                if record.consumer is None:  # still in our queue: it will be skipped
                    self._finish(record, Status.KILL_SELF, "cancelled before it started")
                else:
                    record.cancel_requested = True  # if the consumer hands it back, it is not requeued
                    self._send(record.consumer, Kill(distributor_id, self.kill_grace))

    # ----------------------------------------------------------------- dispatcher
    def _dispatch(self) -> None:
        """Hand queued tasks to consumers while slots allow (FIFO; called with the lock held)."""
        pending = self._pending
        batches: dict[ConsumerSlot, list[PickableTask]] = {}
        now = time.time()
        gpu_waiting: list[QueuedTask] = []
        while pending and not self._stopping:
            record = pending[0]
            if record.state != Status.QUEUED:
                pending.popleft()
                continue
            limit = record.resources.max_concurrent
            if limit is not None and self._in_flight.get(record.job_id, 0) >= limit:
                self._held.setdefault(record.job_id, deque()).append(pending.popleft())
                continue
            if self.gpus.waits(record, self._consumers):  # for a GPU: tasks behind it that need none go first
                gpu_waiting.append(pending.popleft())
                continue
            slot = pick_slot(record, self._consumers, self.parallelism, self._job_pace, batches, now)
            if slot is None:
                break
            pending.popleft()
            batches.setdefault(slot, []).append(self._assign(slot, record))
        pending.extendleft(reversed(gpu_waiting))
        for slot, tasks in batches.items():
            self._send(slot, Run(tasks))

    def _send(self, slot: ConsumerSlot, message: Command) -> None:
        """Send to a consumer; one that died takes no more work (its exit handler requeues what it held)."""
        try:
            send_message(slot.task_writer, message)
        except OSError:
            slot.broken = True

    def _assign(self, slot: ConsumerSlot, record: QueuedTask) -> PickableTask:
        resources = record.resources
        env = thread_variables(resources.cores, os.environ)
        env.update(JOB_ID=record.job_id, NBDIST_DISTRIBUTOR_ID=record.distributor_id)
        if record.array_step_id is not None:
            env["ARRAY_STEP_ID"] = str(record.array_step_id)
        env.update(resources.env)
        record.devices = self.gpus.take(record, self._consumers)
        if record.devices:  # they are the task's alone, whatever its env says
            env["CUDA_VISIBLE_DEVICES"] = ",".join(record.devices)
        spec = TaskSpec(record.distributor_id, record.command, record.log_path("o"), record.log_path("e"), env,
                        resources.cwd, resources.runtime_s, resources.memory_mb, record.devices, record.call)
        record.consumer = slot
        slot.assigned.append(record)
        if resources.max_concurrent is not None:
            self._in_flight[record.job_id] = self._in_flight.get(record.job_id, 0) + 1
        task_type = "array" if record.array_step_id is not None else "job"
        return PickableTask(record.distributor_id, record.command, task_type, record.array_step_id, spec)

    def _dispatch_loop(self) -> None:
        poller = select.poll()
        Watched = dict[int, tuple[str, "ConsumerSlot | None"]]
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

    def _read_events(self, slot: ConsumerSlot) -> None:
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
        ended = False
        for event in events:
            if type(event) is Returned:
                returned.append(self.tasks.records[event.distributor_id])
            else:
                self._apply_event(slot, event)
                ended = ended or type(event) is Done or type(event) is Error
        for record in returned:
            slot.assigned.remove(record)
        self._take_back(returned)
        if ended and self.on_task_ended is not None:
            self.on_task_ended()

    def _take_back(self, records: list[QueuedTask]) -> None:
        """Tasks a consumer held but never started: the cancelled ones end, the others go back to
        the front of the queue in their order."""
        requeued = []
        for record in records:
            record.recalled = False
            if record.cancel_requested:
                self._finish(record, Status.KILL_SELF, "cancelled before it started")  # frees its throttle slot
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
        taken, next_look = tasks_to_take_back(usable, self._job_pace, time.time())
        for slot, queued in taken:
            for record in queued:
                record.recalled = True
            self._send(slot, Unqueue([record.distributor_id for record in queued]))
        return next_look

    def _drain_events(self, slot: ConsumerSlot) -> None:
        """Apply every message a (dead) consumer left in its pipe."""
        while slot.reader_open and slot.event_reader.poll():
            self._read_events(slot)

    def _apply_event(self, slot: ConsumerSlot, event: Event) -> None:
        """A task started, ended or could not start (``Returned`` is handled by the caller)."""
        record = self.tasks.records[event.distributor_id]
        if type(event) is Started:
            record.state = Status.RUNNING
            record.message = "running"
            record.pid = event.pid
            record.started = time.time()
            return
        if type(event) is Usage:  # while it runs: the report's usage is the last sample
            record.usage = event.usage
            return
        if record in slot.assigned:
            slot.assigned.remove(record)
        if type(event) is Error:
            self._finish(record, Status.NO_DISTRIBUTOR_ID, event.message)
        elif type(event) is Done:
            outcome: Outcome = event.outcome
            if "wall_s" in outcome.usage:
                self._job_pace[ANY_JOB] = outcome.usage["wall_s"]
                if record.array_step_id is not None:  # a single task's job has no next step to pace
                    self._job_pace[record.job_id] = outcome.usage["wall_s"]
            self._finish(record, outcome.status, outcome.message, outcome.exit_code, outcome.signal, outcome.usage,
                         outcome.limit)

    def _finish(self, record: QueuedTask, status: str, message: str, exit_code: int | None = None,
                signum: int | None = None, usage: dict[str, Any] | None = None, limit: Limit | None = None) -> None:
        if record.consumer is not None and record.resources.max_concurrent is not None:
            self._release_throttle(record.job_id)
        record.consumer = None
        self.tasks.end(record, status, message, exit_code, signum, usage, limit)

    def _release_throttle(self, job_id: str) -> None:
        """One step of a throttled array ended: the next held step goes back to the queue's front."""
        self._in_flight[job_id] -= 1
        held = self._held.get(job_id)
        while held:
            record = held.popleft()
            if record.state == Status.QUEUED:
                self._pending.appendleft(record)
                break
        if held is not None and not held:
            del self._held[job_id]

    def _consumer_died(self, slot: ConsumerSlot) -> None:
        """Report the dead consumer's running task lost, requeue its prefetched one, replace it."""
        self._drain_events(slot)
        slot.process.join(0)
        code = slot.process.exitcode
        how = exit_message(code, -code) if code is not None and code < 0 else f"exit code {code}"
        self._consumers.remove(slot)
        # Events are batched, so the last ones may never have arrived: a task whose log file exists
        # had started (it is lost, and killed if still running); one without never started.
        lost = [r for r in slot.assigned if r.state == Status.RUNNING or os.path.exists(r.log_path("o"))]
        kill_tasks_by_id([record.distributor_id for record in lost])
        for record in lost:
            self._finish(record, Status.UNKNOWN_ERROR, f"lost: its consumer process died ({how})")
        self._take_back([record for record in slot.assigned if record not in lost])  # never started
        slot.assigned.clear()
        slot.close()
        if not self._stopping:
            logger.warning("consumer %s died (%s); starting a new one", slot.process.pid, how)
            self._consumers.append(ConsumerSlot(slot.index, self._worker_options))

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
