"""The multiprocess distributor's state per task and per consumer: :class:`QueuedTask`, :class:`ConsumerSlot`."""

from __future__ import annotations

import multiprocessing
from collections import deque

from ...cluster_protocol.pycall import PythonCall
from ...cluster_protocol.resources import Resources
from .._table import TaskRecord
from .._task.reaping import kill_tasks_by_id
from .consumer import Consumer
from .workers import WorkerOptions

__all__ = ["ConsumerSlot", "QueuedTask"]


class QueuedTask(TaskRecord):
    """A task of this backend: its record plus where it is in the scheduling (queue, consumer)."""

    __slots__ = ("command", "consumer", "recalled", "devices", "call")

    def __init__(self, distributor_id: str, name: str, command: str, resources: Resources, stdout_dir: str,
                 stderr_dir: str, stem: str, job_id: str, array_step_id: int | None,
                 call: PythonCall | None = None) -> None:
        super().__init__(distributor_id, name, resources, stdout_dir, stderr_dir, stem, job_id, array_step_id)
        self.command = command
        self.consumer: ConsumerSlot | None = None
        self.recalled = False  # asked back from a consumer's queue
        self.devices: tuple[str, ...] = ()  # the GPUs it holds while a consumer has it
        self.call = call  # a Python call, run in a consumer's warm worker


class ConsumerSlot:
    """A consumer process with the two pipe ends the distributor keeps and the tasks it was given
    (``assigned[0]`` runs or is about to; the rest are queued behind it)."""

    def __init__(self, index: int, worker_options: WorkerOptions | None = None) -> None:
        task_reader, self.task_writer = multiprocessing.Pipe(duplex=False)
        self.event_reader, event_writer = multiprocessing.Pipe(duplex=False)
        self.index = index
        self.process = Consumer(task_reader, event_writer, worker_options)
        self.process.start()
        # The child has its copies now; closing ours lets EOF reach each side when the other dies.
        task_reader.close()
        event_writer.close()
        self.assigned: deque[QueuedTask] = deque()
        self.reader_open = True
        self.broken = False  # a send failed: it is dying, give it nothing more

    @property
    def usable(self) -> bool:
        """True while it can be given work."""
        return self.reader_open and not self.broken

    def cores_in_use(self) -> int:
        """Cores its running task takes (0 when idle)."""
        return self.assigned[0].resources.cores if self.assigned else 0

    def gpus_in_use(self) -> tuple[str, ...]:
        """The GPUs its running task holds (a task with GPUs is never queued behind another)."""
        return self.assigned[0].devices if self.assigned else ()

    def kill_tree(self) -> None:
        """SIGKILL a consumer that did not stop in time, and every process under it."""
        import psutil

        try:
            tree = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.Error:
            tree = []
        kill_tasks_by_id([record.distributor_id for record in self.assigned])
        for proc in tree:
            try:
                proc.kill()
            except psutil.Error:
                pass
        self.process.kill()

    def close(self) -> None:
        """Close the distributor's pipe ends and the process's exit watch."""
        self.task_writer.close()
        self.event_reader.close()
        self.process.close()
