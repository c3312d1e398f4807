"""The cluster protocol every nbdist backend implements.

The names and signatures follow Jobmon's ``ClusterDistributor`` protocol (the seed's
``multiproc_distributor`` documents them), so a Jobmon-style caller can drive any nbdist backend::

    distributor.start()
    ids = distributor.submit_array_to_batch_distributor(command, name, resources, array_length=10)
    while distributor.get_submitted_or_running(list(ids.values())):
        ...
    status, message = distributor.get_remote_exit_info(ids[0])
    distributor.stop()

``requested_resources`` keys (all optional):

``cores``
    int, slots the task takes (default 1).
``memory``
    ``"512M"``, ``"2G"``, ``"1.5GB"`` or an int of megabytes.
``runtime``
    ``"90s"``, ``"10m"``, ``"2h"``, ``"1:30:00"`` or an int of seconds.
``queue``
    partition / queue name (Slurm).
``stdout`` / ``stderr``
    folders for ``{name}.o{distributor_id}`` / ``{name}.e{distributor_id}``.
``env`` / ``cwd``
    extra environment variables (a dict of str) and the working directory of the task.
``max_concurrent``
    arrays: at most this many steps run at once.
``after``
    distributor ids that must finish with exit 0 first (backends that schedule dependencies
    themselves, like Slurm's ``--dependency=afterok``); the multiprocess backend rejects it.

Beyond Jobmon's protocol, a backend may offer capabilities, each a runtime-checkable Protocol the
session tests with ``isinstance`` (never by backend name or ``hasattr``):

- :class:`ReportingDistributor`: ``get_task_reports(ids)`` (a :class:`TaskReport` per task, many
  tasks in one call) and ``log_paths(id)`` (where the task's stdout/stderr really are);
- :class:`AdoptingDistributor`: ``adopt(id, name, requested_resources)``, for tasks that outlive
  the process that submitted them (Slurm jobs): a new session tracks them again;
- :class:`SessionDefaults`: ``session_defaults(root, parallelism)`` (constructor keywords a session
  passes, e.g. a log folder under its root) and ``max_cores(options)`` (the most cores one task may
  ask for, or None when the cluster decides).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal, Protocol, TypedDict, runtime_checkable

__all__ = [
    "AdoptingDistributor",
    "ClusterDistributor",
    "ClusterQueue",
    "ClusterWorkerNode",
    "Limit",
    "RemoteExitInfoNotAvailable",
    "ReportingDistributor",
    "SessionDefaults",
    "TaskInstanceStatus",
    "TaskReport",
]


class RemoteExitInfoNotAvailable(KeyError):
    """Raised by ``get_remote_exit_info`` for an id this distributor never ran."""


class TaskInstanceStatus:
    """Status letters of Jobmon's ``TaskInstanceStatus`` (one letter per state)."""

    QUEUED = "Q"
    INSTANTIATED = "I"
    NO_DISTRIBUTOR_ID = "W"
    LAUNCHED = "O"
    RUNNING = "R"
    TRIAGING = "T"
    RESOURCE_ERROR = "Z"
    UNKNOWN_ERROR = "U"
    ERROR = "E"
    DONE = "D"
    KILL_SELF = "K"
    ERROR_FATAL = "F"

    DESCRIPTIONS = {
        "Q": "queued",
        "I": "instantiated",
        "W": "could not be queued",
        "O": "launched",
        "R": "running",
        "T": "triaging",
        "Z": "resource error (over runtime or memory)",
        "U": "unknown error (lost)",
        "E": "error (non-zero exit)",
        "D": "done",
        "K": "killed",
        "F": "fatal error",
    }


@runtime_checkable
class ClusterQueue(Protocol):
    """A queue (partition) of a cluster and its resource limits."""

    def __init__(self, queue_id: int, queue_name: str, parameters: dict[str, Any]) -> None: ...

    def validate_resources(self, strict: bool = False, **kwargs: Any) -> tuple[bool, str]:
        """Check requested resources against this queue's limits: ``(ok, message)``."""
        ...

    @property
    def parameters(self) -> dict[str, Any]: ...

    @property
    def queue_name(self) -> str: ...

    @property
    def queue_id(self) -> int: ...

    @property
    def required_resources(self) -> list[str]: ...


@runtime_checkable
class ClusterDistributor(Protocol):
    """Starts, polls, kills and reports tasks on one kind of cluster."""

    @property
    def worker_node_entry_point(self) -> str:
        """Command that runs one task on a worker node (``nbdist-worker``)."""
        ...

    @property
    def cluster_name(self) -> str: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def get_queueing_errors(self, distributor_ids: list[str]) -> dict[str, str]:
        """Tasks among ``distributor_ids`` that could not start, with the reason."""
        ...

    def get_submitted_or_running(self, distributor_ids: list[str] | None = None) -> set[str]:
        """Ids (among ``distributor_ids``, or all) that are queued or running."""
        ...

    def terminate_task_instances(self, distributor_ids: list[str]) -> None:
        """Kill running tasks and drop queued ones."""
        ...

    def submit_to_batch_distributor(
        self, command: str, name: str, requested_resources: dict[str, Any]
    ) -> str:
        """Queue one task; return its distributor id."""
        ...

    def submit_array_to_batch_distributor(
        self, command: str, name: str, requested_resources: dict[str, Any], array_length: int
    ) -> dict[int, str]:
        """Queue ``array_length`` steps; return ``{array_step_id: distributor_id}``."""
        ...

    def get_remote_exit_info(self, distributor_id: str) -> tuple[str, str]:
        """``(status letter, message)`` of a finished task."""
        ...


@runtime_checkable
class ClusterWorkerNode(Protocol):
    """What a running task knows about itself on the worker node."""

    @property
    def distributor_id(self) -> str | None: ...

    @property
    def array_step_id(self) -> int | None: ...

    def get_exit_info(self, exit_code: int, error_msg: str) -> tuple[str, str]: ...

    def get_usage_stats(self) -> dict[str, Any]: ...

    def initialize_logfile(self, log_type: str, log_dir: str, name: str) -> str: ...


# Which enforced limit ended a ``Z`` task: a report's and an exit-info file's ``"limit"``.
Limit = Literal["runtime", "memory"]


class TaskReport(TypedDict, total=False):
    """Everything a backend knows about one task (``get_task_reports``).

    ``limit`` says which enforced limit ended a ``Z`` task — ``"runtime"`` or ``"memory"`` — as data,
    so the session never reads it out of the message's words.
    """

    status: str
    message: str
    exit_code: int | None
    signal: int | None
    limit: Limit | None
    usage: dict[str, Any]
    pid: int | None
    submitted: float | None
    started: float | None
    ended: float | None
    reason: str | None


@runtime_checkable
class ReportingDistributor(Protocol):
    """A distributor that reports many tasks in one call and says where their logs are."""

    def get_task_reports(self, distributor_ids: Iterable[str]) -> dict[str, TaskReport]:
        """A report per known id among ``distributor_ids`` (unknown ids are left out)."""
        ...

    def log_paths(self, distributor_id: str) -> tuple[str, str]:
        """``(stdout, stderr)`` file paths of a task."""
        ...


@runtime_checkable
class AdoptingDistributor(Protocol):
    """A distributor whose tasks outlive their submitter: another process can track them again."""

    def adopt(self, distributor_id: str, name: str, requested_resources: dict[str, Any]) -> None:
        """Track a task submitted by another process (e.g. a kernel that died)."""
        ...


@runtime_checkable
class SessionDefaults(Protocol):
    """A distributor that tells a session how to construct it and how big one task may be."""

    @classmethod
    def session_defaults(cls, root: str, parallelism: int | None) -> dict[str, Any]:
        """Constructor keywords for a session rooted at ``root`` (a log folder under it, say)."""
        ...

    @classmethod
    def max_cores(cls, options: Mapping[str, Any]) -> int | None:
        """The most cores one task may ask for with these constructor options (None: no local bound)."""
        ...
