"""Consumers: the processes that run the multiprocess distributor's tasks, one at a time.

A consumer reads :class:`~.messages.Run`, :class:`~.messages.Kill`, :class:`~.messages.Unqueue` and
:class:`~.messages.Stop` from its own pipe and writes lists of :class:`~.messages.Started`,
:class:`~.messages.Done`, :class:`~.messages.Error` and :class:`~.messages.Returned` events to
another (the protocol: :mod:`.messages`). It runs each task with :class:`RunningTask`: a shell
command as ``/bin/sh -c``, a Python call (a task spec with a ``call``) in one of its warm workers
(:mod:`.workers`), while it watches its pipe, the task's limits and its kill as for any task.
"""

from __future__ import annotations

import os
import select
import signal
import sys
from collections import deque
from typing import TYPE_CHECKING, Any

from ...cluster_protocol import TaskInstanceStatus as Status
from .._task.reaping import become_subreaper
from .._task.runner import Outcome, RunningTask, TaskSpec
from .._task.system import SYSTEM, ExitWatch
from .messages import (Channel, Command, Done, Error, Event, Kill, PickableTask, PipeEnd, Returned, Run, Started,
                       Stop, Unqueue, Usage, receive_message, send_message)
from .workers import WorkerOptions, WorkerPool

if TYPE_CHECKING:
    import subprocess

__all__ = ["Consumer"]

# The folder that holds the nbdist package (this file is nbdist/backends/multiprocess/consumer.py).
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
# Tasks shorter than this report in batches (one message for several tasks): it cuts per-task
# messaging for tiny tasks and delays a state change by at most this long.
EVENT_BATCH_SECONDS = 0.005
# Grace before SIGKILL when the distributor disappears without a word.
ORPHAN_GRACE_SECONDS = 0.2


class Consumer:
    """A process that runs the tasks the distributor hands it, one at a time.

    Jobmon's consumer is a ``multiprocessing.Process``. Ours is a fresh interpreter started with
    ``subprocess``: forking a kernel (threads, an event loop, sockets) is unsafe, and
    multiprocessing's ``spawn`` re-imports ``__main__`` and leaves a resource-tracker process behind.
    The object keeps the ``Process`` methods the distributor needs (``start``, ``join``, ``kill``…).

    Parameters
    ----------
    task_queue
        Receiving end of this consumer's own pipe: ``Run``, ``Kill``, ``Unqueue`` and ``Stop``
        commands (:mod:`.messages`).
    response_queue
        Sending end of a pipe to the distributor: lists of ``Started``, ``Done``, ``Error`` and
        ``Returned`` events.
    worker_options
        How its warm workers for Python calls are reused (:class:`.workers.WorkerOptions`).
    """

    def __init__(
        self,
        task_queue: Channel,
        response_queue: Channel,
        worker_options: WorkerOptions | None = None,
    ) -> None:
        self.task_queue = task_queue
        self.response_queue = response_queue
        self.worker_options = worker_options or WorkerOptions()
        self._popen: subprocess.Popen[bytes] | None = None
        self._exit_watch: ExitWatch | None = None
        self.sentinel = -1  # an fd readable once the process exited (as Process.sentinel)

    def start(self) -> None:
        """Start the consumer's interpreter; it reads tasks from ``task_queue``."""
        # subprocess is imported by the methods the distributor calls, not at the top: the consumer
        # process imports this module too, and its first task waits for its imports.
        import subprocess

        fds = (self.task_queue.fileno(), self.response_queue.fileno())
        # The child must import this very nbdist, installed or not: its folder goes first on the
        # consumer's sys.path, after site has set the path up (so a .pth entry for the same folder,
        # an editable install's, stays where a task's own interpreter would have it), and not in the
        # environment its tasks inherit.
        code = (f"import sys; sys.path.insert(0, {_PACKAGE_PARENT!r}); "
                f"from nbdist.backends.multiprocess.consumer import Consumer; "
                f"Consumer.serve({fds[0]}, {fds[1]}, {self.worker_options._asdict()!r})")
        # A session of its own: Jupyter's "Restart kernel" (and a terminal's hangup, and `timeout`)
        # SIGKILLs the kernel's whole process group, and a consumer killed with it could not kill its
        # task. Outside that group, a consumer outlives its owner by the moment it takes to see the
        # pipe close and kill what it runs.
        self._popen = subprocess.Popen(
            [sys.executable, "-c", code], pass_fds=fds, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._exit_watch = SYSTEM.watch_exit(self._popen.pid)
        self.sentinel = self._exit_watch.fileno()

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    @property
    def exitcode(self) -> int | None:
        """Exit code, ``-signal`` if killed by a signal, None while running (as ``Process.exitcode``)."""
        return self._popen.poll() if self._popen else None

    def is_alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def join(self, timeout: float | None = None) -> None:
        if self._popen is None:
            return
        import subprocess

        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def kill(self) -> None:
        if self.is_alive():
            assert self._popen is not None
            self._popen.kill()

    def close(self) -> None:
        if self._exit_watch is not None:
            self._exit_watch.close()
            self._exit_watch = None
            self.sentinel = -1

    @classmethod
    def serve(cls, task_fd: int, response_fd: int, worker_options: dict[str, Any] | None = None) -> None:
        """The consumer process's main: run tasks until told to stop or the distributor goes away."""
        # pass_fds made the pipes inheritable: tasks must not inherit (and could write into) them.
        os.set_inheritable(task_fd, False)
        os.set_inheritable(response_fd, False)
        consumer = cls(
            PipeEnd(task_fd),
            PipeEnd(response_fd),
            WorkerOptions(**worker_options) if worker_options else None,
        )
        consumer.run()
        # Its events are sent and its workers gone: nothing is left to flush or finalise, and stop()
        # waits for this exit (an interpreter's teardown is ~10 ms of it).
        os._exit(0)

    def run(self) -> None:
        """Run tasks until told to stop (Ctrl-C is the distributor's to handle, not ours)."""
        # Ctrl-C in a terminal reaches the whole foreground group: the distributor decides, not us.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        become_subreaper()
        _ConsumerLoop(self.task_queue, self.response_queue, self.worker_options).run()


class _ConsumerLoop:
    """The consumer's state: its local queue, the running task, events not yet sent."""

    def __init__(self, inbox: Channel, outbox: Channel,
                 worker_options: WorkerOptions):
        self.inbox = inbox
        self.outbox = outbox
        self.base_env = dict(os.environ)
        self.local: deque[PickableTask] = deque()
        self.events: list[Event] = []
        self.current: tuple[PickableTask, RunningTask] | None = None
        self.stopping = False
        self.gone = False  # the distributor went away: nothing more is sent
        self.workers = WorkerPool(self.base_env, worker_options, _PACKAGE_PARENT)
        # Connection.poll() builds a selector per call; one poll object is much cheaper per task.
        self._poller = select.poll()
        self._poller.register(inbox.fileno(), select.POLLIN)

    def _has_message(self) -> bool:
        return bool(self._poller.poll(0))

    def run(self) -> None:
        try:
            while not self.stopping:
                if not self.local:
                    self._flush()
                    if not self.stopping:
                        self._wait_for_work()
                    continue
                while self._has_message():
                    self._handle(receive_message(self.inbox))
                if self.stopping or not self.local:
                    continue
                self._run_one(self.local.popleft())
            self._flush()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            pass  # the distributor is gone: nobody to report to
        finally:
            self.workers.close()

    def _wait_for_work(self) -> None:
        """Block until a message comes; meanwhile retire workers idle for too long."""
        timeout = self.workers.idle_timeout()
        if timeout is None or self._poller.poll(timeout * 1000 + 1):
            self._handle(receive_message(self.inbox))
        else:
            self.workers.retire_idle()

    def _run_one(self, task: PickableTask) -> None:
        try:
            running = self._start(task.spec)
        except OSError as exc:
            self.events.append(Error(task.distributor_id, f"could not start: {exc}"))
            return
        self.events.append(Started(task.distributor_id, running.pid))
        # Current before anything is sent: a send that finds the distributor gone kills the current task.
        self.current = (task, running)
        try:
            # Short tasks report in batches (one message per several tasks); a task still running after
            # EVENT_BATCH_SECONDS, or an empty local queue, sends what is pending.
            if not self.local or not running.exited_within(EVENT_BATCH_SECONDS):
                self._flush()
            outcome = running.wait(self.inbox.fileno(), self._on_message,
                                   lambda usage: self._send_usage(task.distributor_id, usage))
        finally:
            self.current = None
            self.workers.ended()
        self.events.append(Done(task.distributor_id, outcome))

    def _start(self, spec: TaskSpec) -> RunningTask:
        """A Python call in a warm worker (:mod:`.workers`); anything else, or a call for another
        interpreter, spawned as ``/bin/sh -c`` its command."""
        return self.workers.start(spec) or RunningTask(spec, self.base_env)

    def _send_usage(self, distributor_id: str, usage: dict[str, float]) -> None:
        self.events.append(Usage(distributor_id, usage))
        self._flush()

    def _on_message(self) -> None:
        while self._has_message():
            try:
                message = receive_message(self.inbox)
            except EOFError:
                self._distributor_gone()
                return
            self._handle(message)

    def _distributor_gone(self) -> None:
        """The distributor's process is gone (its end of a pipe closed): the running task is killed after a
        short grace, queued ones never start, and the consumer exits once the task has ended."""
        self.gone = self.stopping = True
        self.local.clear()
        self._kill_current("distributor went away", ORPHAN_GRACE_SECONDS)

    def _handle(self, message: Command) -> None:
        if type(message) is Run:
            self.local.extend(message.tasks)
        elif type(message) is Kill:
            self._kill(message.distributor_id, message.grace)
        elif type(message) is Unqueue:  # the distributor takes back tasks queued behind a slow one
            wanted = set(message.distributor_ids)
            kept: deque[PickableTask] = deque()
            for task in self.local:
                if task.distributor_id in wanted:
                    self.events.append(Returned(task.distributor_id))
                else:
                    kept.append(task)
            self.local = kept
            self._flush()
        elif type(message) is Stop:
            self.stopping = True
            self.local.clear()
            self._kill_current("killed: the distributor stopped", message.grace)

    def _kill(self, distributor_id: str, grace: float) -> None:
        """Kill the task if it runs; if it is queued here, it ends ``K`` without starting."""
        if self.current and self.current[0].distributor_id == distributor_id:
            self._kill_current("killed on request", grace)
            return
        for task in self.local:
            if task.distributor_id == distributor_id:
                self.local.remove(task)
                outcome = Outcome(Status.KILL_SELF, "cancelled before it started", None, None, {})
                self.events.append(Done(distributor_id, outcome))
                return

    def _kill_current(self, reason: str, grace: float) -> None:
        if self.current is not None:
            self.current[1].kill(Status.KILL_SELF, reason, grace)

    def _flush(self) -> None:
        if self.events and not self.gone:
            # The owner may die between two sends: a broken pipe is its death seen from this side, as an
            # end of file on the inbox is. (A usage sample falls due a second into a task, when a script
            # that submits and sleeps a second is often killed; the task once outlived it that way.)
            try:
                send_message(self.outbox, self.events)
            except (BrokenPipeError, ConnectionResetError):
                self._distributor_gone()
        self.events = []

