"""Consumers: the processes that run the multiprocess distributor's tasks, one at a time.

A consumer reads ``("run", [PickableTask, ...])``, ``("kill", id, grace)`` and ``("stop", grace)``
messages from its own pipe and writes lists of ``("started", id, pid)``, ``("done", id, Outcome)``,
``("error", id, message)`` and ``("returned", id, None)`` events to another. ``("unqueue", ids)``
asks it to hand back tasks it holds but has not started. It runs each task with :class:`RunningTask`.
"""

from __future__ import annotations

import multiprocessing.connection
import os
import pickle
import select
import signal
import subprocess
import sys
from collections import deque
from typing import Any

from ...cluster_protocol import TaskInstanceStatus as S
from .._task.runner import Outcome, RunningTask, TaskSpec, become_subreaper

__all__ = ["PickableTask", "Consumer", "send_message", "receive_message"]

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tasks shorter than this report in batches (one message for several tasks): it cuts per-task
# messaging for tiny tasks and delays a state change by at most this long.
EVENT_BATCH_SECONDS = 0.005
# Grace before SIGKILL when the distributor disappears without a word.
ORPHAN_GRACE_SECONDS = 0.2


class PickableTask:
    """Object passed from the distributor to a consumer: one task to run.

    ``array_step_id`` is an int for array steps and None otherwise.
    """

    __slots__ = ("distributor_id", "command", "task_type", "array_step_id", "spec")

    def __init__(
        self,
        distributor_id: str,
        command: str,
        task_type: str = "array",
        array_step_id: int | None = None,
        spec: TaskSpec | None = None,
    ) -> None:
        self.distributor_id = distributor_id
        self.command = command
        self.task_type = task_type
        self.array_step_id = array_step_id
        self.spec = spec or TaskSpec(distributor_id, command, os.devnull, os.devnull)

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.distributor_id, self.command, self.task_type, self.array_step_id, self.spec)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.distributor_id, self.command, self.task_type, self.array_step_id, self.spec = state

    def __repr__(self) -> str:
        return f"PickableTask({self.distributor_id!r}, {self.command!r}, {self.task_type!r})"


class Consumer:
    """A process that runs the tasks the distributor hands it, one at a time.

    Jobmon's consumer is a ``multiprocessing.Process``. Ours is a fresh interpreter started with
    ``subprocess``: forking a kernel (threads, an event loop, sockets) is unsafe, and
    multiprocessing's ``spawn`` re-imports ``__main__`` and leaves a resource-tracker process behind.
    The object keeps the ``Process`` methods the distributor needs (``start``, ``join``, ``kill``…).

    Parameters
    ----------
    task_queue
        Receiving end of this consumer's own pipe: ``("run", PickableTask)``, ``("kill", id, grace)``
        and ``("stop", grace)`` messages.
    response_queue
        Sending end of a pipe to the distributor: lists of ``("started", id, pid)``,
        ``("done", id, Outcome)`` and ``("error", id, message)`` events.
    """

    def __init__(
        self,
        task_queue: multiprocessing.connection.Connection,
        response_queue: multiprocessing.connection.Connection,
    ) -> None:
        self.task_queue = task_queue
        self.response_queue = response_queue
        self._popen: subprocess.Popen[bytes] | None = None
        self.sentinel = -1

    def start(self) -> None:
        """Start the consumer's interpreter; it reads tasks from ``task_queue``."""
        fds = (self.task_queue.fileno(), self.response_queue.fileno())
        code = f"from nbdist.backends.multiprocess.consumer import Consumer; Consumer.serve({fds[0]}, {fds[1]})"
        env = dict(os.environ)
        # The child must import this very nbdist, installed or not.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_PARENT, env.get("PYTHONPATH")]))
        self._popen = subprocess.Popen(
            [sys.executable, "-c", code], pass_fds=fds, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
        )
        self.sentinel = os.pidfd_open(self._popen.pid)

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
        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def kill(self) -> None:
        if self.is_alive():
            assert self._popen is not None
            self._popen.kill()

    def close(self) -> None:
        if self.sentinel >= 0:
            os.close(self.sentinel)
            self.sentinel = -1

    @classmethod
    def serve(cls, task_fd: int, response_fd: int) -> None:
        """The consumer process's main: run tasks until told to stop or the distributor goes away."""
        # pass_fds made the pipes inheritable: tasks must not inherit (and could write into) them.
        os.set_inheritable(task_fd, False)
        os.set_inheritable(response_fd, False)
        consumer = cls(
            multiprocessing.connection.Connection(task_fd, writable=False),
            multiprocessing.connection.Connection(response_fd, readable=False),
        )
        consumer.run()

    def run(self) -> None:
        """Wait for work, then execute it."""
        # Ctrl-C in a terminal reaches the whole foreground group: the distributor decides, not us.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        become_subreaper()
        _ConsumerLoop(self.task_queue, self.response_queue).run()


class _ConsumerLoop:
    """The consumer's state: its local queue, the running task, events not yet sent."""

    def __init__(self, inbox: multiprocessing.connection.Connection, outbox: multiprocessing.connection.Connection):
        self.inbox = inbox
        self.outbox = outbox
        self.base_env = dict(os.environ)
        self.local: deque[PickableTask] = deque()
        self.events: list[tuple[Any, ...]] = []
        self.current: tuple[PickableTask, RunningTask] | None = None
        self.stopping = False
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
                    self._handle(receive_message(self.inbox))
                    continue
                while self._has_message():
                    self._handle(receive_message(self.inbox))
                if self.stopping or not self.local:
                    continue
                self._run_one(self.local.popleft())
            self._flush()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            pass  # the distributor is gone: nobody to report to

    def _run_one(self, task: PickableTask) -> None:
        try:
            running = RunningTask(task.spec, self.base_env)
        except OSError as exc:
            self.events.append(("error", task.distributor_id, f"could not start: {exc}"))
            return
        self.events.append(("started", task.distributor_id, running.pid))
        # Short tasks report in batches (one message per several tasks); a task still running after
        # EVENT_BATCH_SECONDS, or an empty local queue, sends what is pending.
        if not self.local or not running.exited_within(EVENT_BATCH_SECONDS):
            self._flush()
        self.current = (task, running)
        try:
            outcome = running.wait(self.inbox.fileno(), self._on_message)
        finally:
            self.current = None
        self.events.append(("done", task.distributor_id, outcome))

    def _on_message(self) -> None:
        while self._has_message():
            try:
                message = receive_message(self.inbox)
            except EOFError:
                self._kill_current("distributor went away", ORPHAN_GRACE_SECONDS)
                self.stopping = True
                return
            self._handle(message)

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "run":
            self.local.extend(message[1])
        elif kind == "kill":
            _, distributor_id, grace = message
            if self.current and self.current[0].distributor_id == distributor_id:
                self._kill_current("killed on request", grace)
                return
            for task in self.local:
                if task.distributor_id == distributor_id:
                    self.local.remove(task)
                    self.events.append(("done", distributor_id, Outcome(S.KILL_SELF, "cancelled before it started")))
                    return
        elif kind == "unqueue":  # the distributor takes back tasks queued behind a slow one
            wanted = set(message[1])
            kept: deque[PickableTask] = deque()
            for task in self.local:
                if task.distributor_id in wanted:
                    self.events.append(("returned", task.distributor_id, None))
                else:
                    kept.append(task)
            self.local = kept
            self._flush()
        elif kind == "stop":
            self.stopping = True
            self.local.clear()
            self._kill_current("killed: the distributor stopped", message[1])

    def _kill_current(self, reason: str, grace: float) -> None:
        if self.current is not None:
            self.current[1].kill(S.KILL_SELF, reason, grace)

    def _flush(self) -> None:
        if self.events:
            send_message(self.outbox, self.events)
            self.events = []


def send_message(connection: multiprocessing.connection.Connection, message: Any) -> None:
    # Plain pickle is several times cheaper per message than Connection.send's ForkingPickler.
    connection.send_bytes(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))


def receive_message(connection: multiprocessing.connection.Connection) -> Any:
    return pickle.loads(connection.recv_bytes())
