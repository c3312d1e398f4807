"""The pipe protocol between the multiprocess distributor and its consumers, documented once.

Each consumer has two one-way pipes::

    distributor ──  Run | Kill | Unqueue | Stop  ──► consumer        (one message per send)
    distributor ◄── [Started | Done | Error | Returned, ...] ── consumer   (a list of events per send)

- :class:`Run`: tasks (:class:`PickableTask`) to run one after the other (the first now, the rest queued behind it);
- :class:`Kill`: kill a running task (SIGTERM, then SIGKILL after ``grace``) or drop a queued one;
- :class:`Unqueue`: hand back queued tasks that have not started (work stealing);
- :class:`Stop`: kill the running task, drop the queue, exit.

Events are batched (see ``EVENT_BATCH_SECONDS`` in :mod:`.consumer`): :class:`Started` (with the
task's pid), :class:`Done` (with its :class:`~nbdist.backends._task.runner.Outcome`), :class:`Error`
(it could not start), :class:`Returned` (an answer to ``Unqueue``) and :class:`Usage` (a running
task's CPU % and RSS, once a second).

Messages are pickled with plain :mod:`pickle` (several times cheaper per message than
``Connection.send``'s ForkingPickler); both ends are the same nbdist install. A message is framed as
``multiprocessing.connection`` frames it; the distributor holds ``multiprocessing.Pipe`` ends, a consumer
:class:`PipeEnd` (the same frames, without importing multiprocessing: ~15 ms of every consumer's start).
"""

from __future__ import annotations

import os
import pickle
import struct
from typing import Any, NamedTuple, Protocol, Union

from .._task.runner import Outcome, TaskSpec

__all__ = ["Channel", "Command", "Done", "Error", "Event", "Kill", "PickableTask", "PipeEnd", "Returned", "Run",
           "Started", "Stop", "Unqueue", "Usage", "receive_message", "send_message"]


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
        self.spec = spec or TaskSpec(distributor_id, command, os.devnull, os.devnull, {})

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.distributor_id, self.command, self.task_type, self.array_step_id, self.spec)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.distributor_id, self.command, self.task_type, self.array_step_id, self.spec = state

    def __repr__(self) -> str:
        return f"PickableTask({self.distributor_id!r}, {self.command!r}, {self.task_type!r})"


class Run(NamedTuple):
    """Run these tasks, in order, after whatever the consumer holds."""

    tasks: list[PickableTask]


class Kill(NamedTuple):
    """Kill the task if it runs (``grace`` seconds between SIGTERM and SIGKILL), drop it if it is queued."""

    distributor_id: str
    grace: float


class Unqueue(NamedTuple):
    """Hand back the tasks among these that are queued and not started."""

    distributor_ids: list[str]


class Stop(NamedTuple):
    """Kill the running task (with ``grace``), drop the queue, and exit."""

    grace: float


class Started(NamedTuple):
    """A task started as process ``pid``."""

    distributor_id: str
    pid: int


class Done(NamedTuple):
    """A task ended (or was dropped from the queue by a ``Kill``)."""

    distributor_id: str
    outcome: Outcome


class Error(NamedTuple):
    """A task could not start (say its log folder is not writable)."""

    distributor_id: str
    message: str


class Usage(NamedTuple):
    """A running task's CPU % and RSS, sampled every ``USAGE_SAMPLE_SECONDS`` (:mod:`.._task.runner`)."""

    distributor_id: str
    usage: dict[str, float]


class Returned(NamedTuple):
    """A queued task handed back after an ``Unqueue``; it never started."""

    distributor_id: str


Command = Union[Run, Kill, Unqueue, Stop]
Event = Union[Started, Done, Error, Returned, Usage]


class Channel(Protocol):
    """One end of a pipe that moves whole messages: a ``multiprocessing`` Connection or a :class:`PipeEnd`."""

    def send_bytes(self, data: bytes) -> None: ...

    def recv_bytes(self) -> bytes: ...

    def fileno(self) -> int: ...


_SIZE = struct.Struct("!i")  # multiprocessing.connection's frame header
_LONG_SIZE = struct.Struct("!Q")  # after a header of -1: a message of 2 GiB or more


class PipeEnd:
    """A pipe's fd that sends and receives messages framed as ``multiprocessing.connection`` frames them."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def send_bytes(self, data: bytes) -> None:
        if len(data) > 0x7FFFFFFF:
            header = _SIZE.pack(-1) + _LONG_SIZE.pack(len(data))
        else:
            header = _SIZE.pack(len(data))
        view = memoryview(header + data)
        while view:
            view = view[os.write(self.fd, view):]

    def recv_bytes(self) -> bytes:
        """One message; ``EOFError`` when the other end closed between messages."""
        (size,) = _SIZE.unpack(self._read(_SIZE.size, at_start=True))
        if size == -1:
            (size,) = _LONG_SIZE.unpack(self._read(_LONG_SIZE.size))
        return self._read(size)

    def _read(self, size: int, at_start: bool = False) -> bytes:
        chunks, remaining = [], size
        while remaining:
            chunk = os.read(self.fd, remaining)
            if not chunk:
                if at_start and remaining == size:
                    raise EOFError
                raise OSError("end of file in the middle of a message")
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        os.close(self.fd)


def send_message(connection: Channel, message: Command | list[Event]) -> None:
    """Send one command, or one list of events."""
    connection.send_bytes(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))


def receive_message(connection: Channel) -> Command | list[Event]:
    """Receive what :func:`send_message` sent (``EOFError`` when the other end is gone)."""
    return pickle.loads(connection.recv_bytes())
