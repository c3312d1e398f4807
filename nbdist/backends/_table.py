"""What every backend keeps about its tasks, and the queries it answers from it: one copy for all.

- :class:`TaskRecord`: one task (a backend subclasses it for its scheduling fields);
- :class:`TaskTable`: the records by id, the live ones, the lock that guards them, adding and ending;
- :class:`TableDistributor`: the base of nbdist's distributors. It answers the protocol's queries
  (``get_submitted_or_running``, ``get_remote_exit_info``, ``get_usage_stats``) and the
  :class:`~nbdist.cluster_protocol.ReportingDistributor` ones (``get_task_reports``, ``log_paths``)
  from its table the same way for every backend, and gives ``cluster_name``,
  ``worker_node_entry_point`` and the ``with`` block.

What differs between backends is how they schedule tasks and learn that one ended; that ends in
:meth:`TaskTable.end`. The table is an attribute (``distributor.tasks``), not inherited private state,
so no module touches another's private names.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

from ..cluster_protocol import Limit, RemoteExitInfoNotAvailable, TaskReport
from ..cluster_protocol import TaskInstanceStatus as Status
from ..cluster_protocol.naming import log_file, log_stem, split_id
from ..cluster_protocol.resources import Resources
from ._task.node import worker_entry_point

__all__ = ["TableDistributor", "TaskRecord", "TaskTable"]


class TaskRecord:
    """A distributor's view of one task: what was asked, where its logs go, and how it is doing.

    ``stem`` is ``log_stem(name)``, and ``job_id``/``array_step_id`` are ``split_id(distributor_id)``: an
    array passes them in, so 100,000 steps do not compute them again each (submission is a hot path).
    """

    __slots__ = ("distributor_id", "name", "stem", "resources", "job_id", "array_step_id", "stdout_dir",
                 "stderr_dir", "state", "message", "exit_code", "signal", "limit", "usage", "pid", "submitted",
                 "started", "ended", "cancel_requested")

    def __init__(self, distributor_id: str, name: str, resources: Resources, stdout_dir: str, stderr_dir: str,
                 stem: str | None = None, job_id: str | None = None, array_step_id: int | None = None) -> None:
        self.distributor_id = distributor_id
        self.name = name
        self.stem = stem or log_stem(name)
        self.resources = resources
        if job_id is None:
            job_id, array_step_id = split_id(distributor_id)
        self.job_id = job_id
        self.array_step_id = array_step_id
        self.stdout_dir = stdout_dir
        self.stderr_dir = stderr_dir
        self.state = Status.QUEUED
        self.message = "queued"
        self.exit_code: int | None = None
        self.signal: int | None = None
        self.limit: Limit | None = None
        self.usage: dict[str, Any] = {}
        self.pid: int | None = None
        self.submitted = time.time()
        self.started: float | None = None
        self.ended: float | None = None
        self.cancel_requested = False

    def log_path(self, kind: str) -> str:
        """``o`` stdout, ``e`` stderr; ``x`` (exit info) and ``s`` (a wrapper's own log) sit beside stdout."""
        folder = self.stderr_dir if kind == "e" else self.stdout_dir
        return log_file(folder, self.name, kind, self.distributor_id, self.stem)

    def report(self) -> TaskReport:
        """Everything known about the task (a copy: the caller may keep it)."""
        return {"status": self.state, "message": self.message, "exit_code": self.exit_code, "signal": self.signal,
                "limit": self.limit, "usage": dict(self.usage), "pid": self.pid, "submitted": self.submitted,
                "started": self.started, "ended": self.ended}


R = TypeVar("R", bound=TaskRecord)


class TaskTable(Generic[R]):
    """A distributor's tasks by distributor id, the live ones (queued or running), and their lock.

    Callers hold :attr:`lock` around :meth:`add` and :meth:`end` and around reading the records.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.records: dict[str, R] = {}
        self.live: dict[str, R] = {}

    def add(self, records: Iterable[R]) -> None:
        """Track new tasks; they count as live until they end."""
        all_records, live = self.records, self.live
        for record in records:
            all_records[record.distributor_id] = record
            live[record.distributor_id] = record

    def end(self, record: R, status: str, message: str, exit_code: int | None = None, signum: int | None = None,
            usage: dict[str, Any] | None = None, limit: Limit | None = None) -> None:
        """Record how a task ended and stop counting it live."""
        record.state = status
        record.message = message
        record.exit_code = exit_code
        record.signal = signum
        record.limit = limit
        record.usage = dict(usage) if usage else {}
        record.ended = time.time()
        self.live.pop(record.distributor_id, None)

    def known(self, distributor_id: str) -> R:
        """The record of ``distributor_id``; :class:`RemoteExitInfoNotAvailable` for an id never seen."""
        record = self.records.get(distributor_id)
        if record is None:
            raise RemoteExitInfoNotAvailable(
                f"unknown distributor id {distributor_id!r}: this distributor did not submit (or adopt) it")
        return record


class TableDistributor(Generic[R]):
    """The base of nbdist's distributors: the queries of the protocol, answered from :attr:`tasks`.

    A subclass fills the table as it submits and ends tasks, and may override :meth:`_refresh`
    (Slurm polls there when no thread does).
    """

    def __init__(self, cluster_name: str) -> None:
        self._cluster_name = cluster_name
        self.tasks: TaskTable[R] = TaskTable()

    @property
    def worker_node_entry_point(self) -> str:
        """``nbdist-worker`` of this Python environment (next to ``sys.executable``, so a venv works)."""
        return worker_entry_point()

    @property
    def cluster_name(self) -> str:
        return self._cluster_name

    def start(self) -> None:
        """Start the distributor (each backend defines it)."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the distributor (each backend defines it)."""
        raise NotImplementedError

    def __enter__(self) -> Any:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def get_submitted_or_running(self, distributor_ids: Iterable[str] | None = None) -> set[str]:
        """Ids (among ``distributor_ids``, or all) that are queued or running."""
        self._refresh()
        with self.tasks.lock:
            live = self.tasks.live
            if distributor_ids is None:
                return set(live)
            return {i for i in distributor_ids if i in live}

    def get_remote_exit_info(self, distributor_id: str) -> tuple[str, str]:
        """``(status, message)``: ``D`` exit 0, ``E`` exit code, ``K`` killed, ``Z`` over a limit, ``U`` lost."""
        self._refresh()
        with self.tasks.lock:
            record = self.tasks.known(distributor_id)
            return record.state, record.message

    def get_usage_stats(self, distributor_id: str) -> dict[str, Any]:
        """Wall seconds, CPU seconds and max RSS (MB) of a finished task, as measured where it ran."""
        self._refresh()
        with self.tasks.lock:
            return dict(self.tasks.known(distributor_id).usage)

    def get_task_reports(self, distributor_ids: Iterable[str]) -> dict[str, TaskReport]:
        """A :class:`~nbdist.cluster_protocol.TaskReport` per known id, in one call (unknown ids are left out)."""
        self._refresh()
        with self.tasks.lock:
            records = self.tasks.records
            return {i: records[i].report() for i in distributor_ids if i in records}

    def log_paths(self, distributor_id: str) -> tuple[str, str]:
        """``(stdout, stderr)`` file paths of a task."""
        with self.tasks.lock:
            record = self.tasks.known(distributor_id)
        return record.log_path("o"), record.log_path("e")

    def _refresh(self) -> None:
        """Called before a query answers: a backend that learns states on demand does it here."""
