"""The one state enum of nbdist jobs and steps, and its mapping from backend status letters."""

from __future__ import annotations

import enum

from ..cluster_protocol import TaskInstanceStatus as Status

__all__ = ["State", "TERMINAL_STATES", "FAILURE_STATES", "RETRYABLE_STATES"]


class State(str, enum.Enum):
    """State of a job or of one array step.

    ``PENDING`` waits for its dependencies, ``QUEUED`` waits in the backend, ``RUNNING`` runs; the
    rest are terminal: ``DONE`` (exit 0), ``FAILED`` (non-zero exit, or it could not start),
    ``TIMEOUT`` / ``OUT_OF_MEMORY`` (killed over its runtime / memory limit), ``KILLED`` (cancelled,
    or its session ended), ``LOST`` (nobody knows how it ended) and ``SKIPPED`` (a dependency did
    not finish ``DONE``).
    """

    PENDING = "PENDING"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    KILLED = "KILLED"
    LOST = "LOST"
    SKIPPED = "SKIPPED"

    def __str__(self) -> str:
        return self.value

    @property
    def is_terminal(self) -> bool:
        """True when this state never changes again (unless the step is retried)."""
        return self in TERMINAL_STATES

    @property
    def is_failure(self) -> bool:
        """True for a terminal state other than ``DONE``."""
        return self in FAILURE_STATES

    @classmethod
    def from_backend(cls, status: str, message: str = "", limit: str | None = None) -> State:
        """Map a backend status letter (Jobmon's ``TaskInstanceStatus``) to a State.

        ``Z`` (resource error) becomes ``TIMEOUT`` or ``OUT_OF_MEMORY`` by the report's ``limit``
        (``"runtime"``/``"memory"``); for a backend that does not send one (a plain Jobmon backend),
        by whether the message speaks of "memory" or "runtime". An unknown letter is ``LOST``.
        """
        if status == Status.RESOURCE_ERROR:
            if limit is not None:
                return _FROM_LIMIT.get(limit, cls.FAILED)
            text = message.lower()
            if "memory" in text:
                return cls.OUT_OF_MEMORY
            if "runtime" in text or "time limit" in text:
                return cls.TIMEOUT
            return cls.FAILED
        return _FROM_LETTER.get(status, cls.LOST)


TERMINAL_STATES = frozenset(
    {State.DONE, State.FAILED, State.TIMEOUT, State.OUT_OF_MEMORY, State.KILLED, State.LOST, State.SKIPPED}
)
FAILURE_STATES = TERMINAL_STATES - {State.DONE}
# States worth an automatic retry: a user's kill or a skipped dependency is not.
RETRYABLE_STATES = frozenset({State.FAILED, State.TIMEOUT, State.OUT_OF_MEMORY, State.LOST})

_FROM_LETTER = {
    Status.QUEUED: State.QUEUED,
    Status.INSTANTIATED: State.QUEUED,
    Status.LAUNCHED: State.QUEUED,
    Status.RUNNING: State.RUNNING,
    Status.TRIAGING: State.RUNNING,
    Status.DONE: State.DONE,
    Status.ERROR: State.FAILED,
    Status.ERROR_FATAL: State.FAILED,
    Status.NO_DISTRIBUTOR_ID: State.FAILED,
    Status.KILL_SELF: State.KILLED,
    Status.UNKNOWN_ERROR: State.LOST,
}
_FROM_LIMIT = {"runtime": State.TIMEOUT, "memory": State.OUT_OF_MEMORY}
