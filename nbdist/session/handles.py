"""Job and Array handles, and the record behind them.

A :class:`JobRecord` holds the state of one submitted job or array in columns (one list per field,
one entry per step), so a 100,000-step array costs a few lists, not 100,000 objects; per-state index
sets keep the counts current without scanning. Handles are light views on a record:

- :class:`Job` is a ``concurrent.futures.Future`` (it *is* one, so ``concurrent.futures.wait`` and
  ``as_completed`` accept it) and awaitable; step jobs of an array are made on first access.
- :class:`Array` is a sequence of step Jobs, and a Future of the whole array.

The session owns every record and changes them under its lock; handles only read them, or ask the
session to act (``cancel``, ``retry``).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, overload

from ..cluster_protocol.naming import log_stem
from .state import TERMINAL_STATES, State

if TYPE_CHECKING:
    from .session import Session
    from .sweep import Sweep

__all__ = ["Job", "Array", "JobFailed", "Attempt", "LogPaths", "JobRecord", "read_tail"]

logger = logging.getLogger(__name__)


class LogPaths(NamedTuple):
    """The stdout and stderr files of one attempt."""

    stdout: str
    stderr: str


@dataclass(frozen=True)
class Attempt:
    """One attempt of a job or step (a retry is a new attempt with its own logs and exit info)."""

    number: int
    distributor_id: str | None
    state: State
    exit_code: int | None
    message: str | None
    usage: dict[str, Any]
    log_paths: LogPaths | None
    resources: dict[str, Any]


class JobFailed(RuntimeError):
    """Raised by ``Job.result()`` (and ``await job``) when a job did not end ``DONE``.

    Attributes
    ----------
    job
        The Job or Array that failed.
    state
        Its final State.
    """

    def __init__(self, job: Any, state: State, message: str) -> None:
        super().__init__(message)
        self.job = job
        self.state = state


class JobRecord:
    """The columns of one job (one step, index 0) or array (``n`` steps); changed by the session only."""

    def __init__(self, job_id: int, name: str, kind: str, command: str, backend: str, n: int,
                 steps: Sequence[int] | None, initial: State, created: float) -> None:
        self.id = job_id
        self.name = name
        self.kind = kind
        self.command = command
        self.backend = backend
        self.n = n
        self.steps = steps  # user step ids; None for a plain job
        self.created = created
        self.ended: float | None = None
        self.sweep: Sweep | None = None
        self.resources: dict[str, Any] = {}  # cores, memory, runtime, max_concurrent (as given)
        self._base_limits: dict[str, Any] | None = None
        self._log_prefix: str | None = None  # {log_dir}/{log_stem(name)}
        self.env: dict[str, str] = {}
        self.cwd: str | None = None
        self.max_attempts = 1
        self.scales: dict[str, float] = {}
        self.log_dir = ""
        self.script_dir: str | None = None
        self.script_chunk = 1  # steps per script file (see sweep.write_scripts)
        self.after: list[tuple[JobRecord, int | None]] = []
        self.dependents: list[JobRecord] = []
        self.after_ids: list[tuple[int, int | None]] = []  # as stored, until attach links the records
        self.queue_cursor = 0  # no step below this index is QUEUED (see SessionCore._window)
        self.has_rows = False  # some step has (or is about to have) a row in the registry's steps table
        self.refreshed: float | None = None  # last read from the registry (another session's job)
        self.tail_cache: tuple[tuple[int, str | None, int], tuple[str, str]] | None = None  # see snapshot
        self.owned = True
        self.session_id: str | None = None
        self.states: list[State] = [initial] * n
        self.dids: list[str | None] = [None] * n
        self.attempts: list[int] = [1] * n
        self.exit_codes: list[int | None] = [None] * n
        self.messages: list[str | None] = [None] * n
        self.runtimes: list[float | None] = [None] * n
        self.rss: list[float | None] = [None] * n
        self.started: list[float | None] = [None] * n
        self.usage: dict[int, dict[str, Any]] = {}  # of finished attempts not yet written to the registry
        self.step_resources: dict[int, dict[str, Any]] = {}  # scaled by retries
        self.by_state: dict[State, set[int]] = {state: set() for state in State}
        self.by_state[initial] = set(range(n))
        self.n_terminal = n if initial in TERMINAL_STATES else 0
        # Failed steps grouped by "STATE: message", kept current by move(): snapshots never scan.
        self.failure_groups: dict[str, set[int]] = {}
        self._failure_key: dict[int, str] = {}
        # Retried steps of an array with max_concurrent that wait (QUEUED) until fewer than that many
        # of its steps are at the backend: index → message of the attempt, in arrival order.
        self.held: dict[int, str] = {}
        self.handles: dict[int, Job] = {}
        self.array_handle: Array | None = None
        self.cancelled = False

    # ----------------------------------------------------------------- changing (the session's lock held)
    def move(self, index: int, state: State) -> State:
        """Put a step in ``state`` keeping counts and failure groups current; return its old state."""
        old = self.states[index]
        if old is not state:
            self.by_state[old].discard(index)
            self.by_state[state].add(index)
            self.states[index] = state
            if state in TERMINAL_STATES and old not in TERMINAL_STATES:
                self.n_terminal += 1
            elif old in TERMINAL_STATES and state not in TERMINAL_STATES:
                self.n_terminal -= 1
        key = self._failure_key.pop(index, None)
        if key is not None:
            members = self.failure_groups[key]
            members.discard(index)
            if not members:
                del self.failure_groups[key]
        if state in TERMINAL_STATES and state is not State.DONE:
            key = f"{state.value}: {self.messages[index] or 'no message'}"
            self._failure_key[index] = key
            self.failure_groups.setdefault(key, set()).add(index)
        return old

    # ----------------------------------------------------------------- reading
    def step_id(self, index: int) -> int | None:
        """The user's step id of a position (None for a plain job)."""
        return None if self.steps is None else self.steps[index]

    def index_of(self, step: int) -> int:
        """The position of a user step id."""
        if self.steps is None:
            raise KeyError(f"{self.name} is a job, not an array")
        if isinstance(self.steps, range):
            if step in self.steps:
                return self.steps.index(step)
        else:
            try:
                return list(self.steps).index(step)
            except ValueError:
                pass
        raise KeyError(f"{self.name} has no step {step}")

    def counts(self) -> dict[str, int]:
        """Steps per state (every State present)."""
        return {state.value: len(self.by_state[state]) for state in State}

    @property
    def base_limits(self) -> dict[str, Any]:
        """cores, memory and runtime as requested (one shared dict: do not change it)."""
        limits = self._base_limits
        if limits is None:
            limits = self._base_limits = {key: self.resources[key] for key in ("cores", "memory", "runtime")
                                          if self.resources.get(key) is not None}
        return limits

    @property
    def max_concurrent(self) -> int | None:
        """At most this many steps of the array run at once (None: no limit)."""
        return self.resources.get("max_concurrent") if self.kind == "array" else None

    @property
    def at_backend(self) -> int:
        """Steps QUEUED or RUNNING at the backend (retries held back by max_concurrent are not)."""
        return len(self.by_state[State.QUEUED]) + len(self.by_state[State.RUNNING]) - len(self.held)

    @property
    def all_terminal(self) -> bool:
        """True when every step is in a terminal state."""
        return self.n_terminal == self.n

    @property
    def all_done(self) -> bool:
        """True when every step is DONE."""
        return len(self.by_state[State.DONE]) == self.n

    def overall_state(self) -> State:
        """One State for the whole record (for an array: a summary of its steps)."""
        if self.n == 1:
            return self.states[0]
        if not self.all_terminal:
            if self.by_state[State.RUNNING] or self.n_terminal:
                return State.RUNNING
            if self.by_state[State.QUEUED]:
                return State.QUEUED
            return State.PENDING
        for state in (State.DONE, State.SKIPPED, State.KILLED):
            if len(self.by_state[state]) == self.n:
                return state
        for state in (State.FAILED, State.TIMEOUT, State.OUT_OF_MEMORY, State.LOST, State.KILLED, State.SKIPPED):
            if self.by_state[state]:
                return state
        return State.FAILED

    def log_paths(self, index: int) -> LogPaths | None:
        """The log files of the current attempt of a step (None before it was submitted)."""
        did = self.dids[index]
        if did is None:
            return None
        prefix = self._log_prefix
        if prefix is None:
            prefix = self._log_prefix = os.path.join(self.log_dir, log_stem(self.name))
        return LogPaths(f"{prefix}.o{did}", f"{prefix}.e{did}")

    def runtime_of(self, index: int, now: float | None = None) -> float | None:
        """Wall seconds of a finished step, or so far for a running one."""
        runtime = self.runtimes[index]
        if runtime is None and self.states[index] is State.RUNNING and self.started[index]:
            return (now or time.time()) - self.started[index]  # type: ignore[operator]
        return runtime

    def failure_text(self, index: int) -> str:
        """What went wrong with a step, and where to look."""
        label = self.name if self.steps is None else f"{self.name}:{self.step_id(index)}"
        state = self.states[index]
        text = f"{label} ended {state.value}: {self.messages[index] or 'no message'}"
        paths = self.log_paths(index)
        if paths is not None and state is not State.SKIPPED:
            text += f" (stderr: {paths.stderr})"
        return text


class _Handle(concurrent.futures.Future):
    """What Job and Array share: a Future resolved by the session when the work ends."""

    _session: Session
    _rec: JobRecord

    def _resolve(self) -> None:
        """Finish the Future from the record if its work has ended; a no-op otherwise.

        Called by the session after it released its lock. The state is read and the Future finished
        in one hold of the session's lock, so a retry in between cannot finish it with a live state,
        and two threads resolving it finish it once. Callbacks run after the lock is released.
        """
        with self._session._lock, self._condition:
            if self._state == "FINISHED" or not self._ended():  # type: ignore[attr-defined]
                return
            state = self.state
            if state is State.DONE:
                self._result = self
                for waiter in self._waiters:  # type: ignore[attr-defined]
                    waiter.add_result(self)
            else:
                self._exception = JobFailed(self, state, self._failure_message())
                for waiter in self._waiters:  # type: ignore[attr-defined]
                    waiter.add_exception(self)
            self._state = "FINISHED"  # type: ignore[attr-defined]
            self._condition.notify_all()
            callbacks = list(self._done_callbacks)  # type: ignore[attr-defined]
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                logger.exception("exception calling callback for %r", self)

    def _ended(self) -> bool:
        raise NotImplementedError

    def _rearm(self) -> None:
        """Make a finished Future pending again (a retry starts a new outcome); callbacks already
        called are not called again, those of a still-pending Future are kept."""
        with self._condition:
            if self._state != "FINISHED":  # type: ignore[attr-defined]
                return
            self._state = "PENDING"  # type: ignore[attr-defined]
            self._result = None
            self._exception = None
            self._done_callbacks.clear()  # type: ignore[attr-defined]

    def _failure_message(self) -> str:
        raise NotImplementedError

    @property
    def state(self) -> State:  # pragma: no cover - overridden
        raise NotImplementedError

    def __await__(self) -> Generator[Any, None, Any]:
        """``await job``: the job when DONE, else raises JobFailed.

        Cancelling the awaiting task does not kill the job (the wait is shielded): call ``cancel()``.
        """
        import asyncio

        return asyncio.shield(asyncio.wrap_future(self)).__await__()

    @property
    def session(self) -> Any:
        """The :class:`~nbdist.Session` that owns this job or array."""
        return self._session

    def wait(self, timeout: float | None = None) -> State:
        """Block until the work ends (or ``timeout`` seconds pass); return its State then.

        Never raises for a failed job: look at the returned State, or use ``result()``.
        """
        self._session._wake()
        concurrent.futures.wait([self], timeout=timeout)
        return self.state


class Job(_Handle):
    """A submitted job, or one step of an array.

    A Job is a ``concurrent.futures.Future``: ``result(timeout)`` returns the Job when it ended
    ``DONE`` and raises :class:`JobFailed` otherwise (a killed job too: its Future is never in the
    Future's own "cancelled" state, so ``cancelled()`` stays False and ``await job`` raises
    JobFailed, not CancelledError); ``concurrent.futures.wait``/``as_completed``,
    ``add_done_callback`` and ``await job`` work as for any Future.
    """

    def __init__(self, session: Session, rec: JobRecord, index: int = 0) -> None:
        super().__init__()
        self._session = session
        self._rec = rec
        self._index = index

    @property
    def id(self) -> str:
        """``"12"`` for a job, ``"12:3"`` for step 3 of array 12."""
        rec = self._rec
        return str(rec.id) if rec.steps is None else f"{rec.id}:{rec.step_id(self._index)}"

    @property
    def name(self) -> str:
        """The job's name; ``"{array}:{step}"`` for a step."""
        rec = self._rec
        return rec.name if rec.steps is None else f"{rec.name}:{rec.step_id(self._index)}"

    @property
    def step(self) -> int | None:
        """The step id within its array (None for a plain job)."""
        return self._rec.step_id(self._index)

    @property
    def array(self) -> Array | None:
        """The array this step belongs to (None for a plain job)."""
        return None if self._rec.steps is None else self._session._array_handle(self._rec)

    @property
    def state(self) -> State:
        """The current State."""
        return self._rec.states[self._index]

    @property
    def distributor_id(self) -> str | None:
        """The backend's id of the current attempt."""
        return self._rec.dids[self._index]

    @property
    def exit_code(self) -> int | None:
        """The exit code of the last attempt (None while running, or when killed by a signal)."""
        return self._rec.exit_codes[self._index]

    @property
    def message(self) -> str | None:
        """The backend's message about the last attempt (e.g. ``"exit code 3"``)."""
        return self._rec.messages[self._index]

    @property
    def usage(self) -> dict[str, Any]:
        """Wall and CPU seconds and max RSS (MB) of the last finished attempt (``{}`` before)."""
        return dict(self._session._usage(self._rec, self._index))

    @property
    def log_paths(self) -> LogPaths | None:
        """``(stdout, stderr)`` file paths of the current attempt (None while PENDING)."""
        return self._rec.log_paths(self._index)

    @property
    def attempts(self) -> list[Attempt]:
        """Every attempt so far, oldest first (each with its own logs and exit info)."""
        return self._session._attempts(self._rec, self._index)

    def stdout(self, tail: int | None = None) -> str:
        """The current attempt's stdout (its last ``tail`` lines if given; ``""`` before it starts)."""
        paths = self.log_paths
        return read_tail(paths.stdout, tail) if paths else ""

    def stderr(self, tail: int | None = None) -> str:
        """The current attempt's stderr (its last ``tail`` lines if given)."""
        paths = self.log_paths
        return read_tail(paths.stderr, tail) if paths else ""

    def done(self) -> bool:
        """True when the job reached a terminal State."""
        return self.state.is_terminal

    def cancel(self) -> bool:
        """Kill the job (or drop it if it has not started); True if it was not finished yet."""
        return self._session._cancel(self._rec, [self._index])

    def running(self) -> bool:
        """True while the job runs."""
        return self.state is State.RUNNING

    def retry(self, scale: float | dict[str, float] | None = None) -> Job:
        """Run a finished job again as a new attempt (resources scaled as for automatic retries)."""
        self._session._retry(self._rec, [self._index], scale)
        return self

    def _ended(self) -> bool:
        return self.state.is_terminal

    def _failure_message(self) -> str:
        return self._rec.failure_text(self._index)

    def __repr__(self) -> str:
        code = "" if self.exit_code is None else f" exit_code={self.exit_code}"
        return f"<Job {self.id} {self.name!r} {self.state.value}{code}>"


class Array(_Handle, Sequence):  # type: ignore[misc]
    """A submitted array: a sequence of step Jobs, and a Future of the whole array.

    ``array[i]`` is the i-th step (for ``steps=n`` that is step ``i``); ``array.step(s)`` finds a
    step by its id. The Future resolves when every step is terminal: with the Array when all are
    ``DONE``, else with :class:`JobFailed`.
    """

    def __init__(self, session: Session, rec: JobRecord) -> None:
        super().__init__()
        self._session = session
        self._rec = rec

    @property
    def id(self) -> str:
        """The array's id (``"12"``)."""
        return str(self._rec.id)

    @property
    def name(self) -> str:
        """The array's name."""
        return self._rec.name

    @property
    def state(self) -> State:
        """A summary State: RUNNING while steps remain, DONE when all are, else the failure."""
        return self._rec.overall_state()

    @property
    def steps(self) -> Sequence[int]:
        """The step ids."""
        assert self._rec.steps is not None
        return self._rec.steps

    @property
    def params(self) -> list[dict[str, Any]] | None:
        """The parameters of each step (``over=``), or None."""
        sweep = self._rec.sweep
        return None if sweep is None or sweep.params is None else sweep.params

    def __len__(self) -> int:
        return self._rec.n

    @overload
    def __getitem__(self, index: int) -> Job: ...

    @overload
    def __getitem__(self, index: slice) -> list[Job]: ...

    def __getitem__(self, index: int | slice) -> Job | list[Job]:
        if isinstance(index, slice):
            return [self._session._step_handle(self._rec, i) for i in range(*index.indices(self._rec.n))]
        if index < 0:
            index += self._rec.n
        if not 0 <= index < self._rec.n:
            raise IndexError(f"{self.name} has {self._rec.n} steps")
        return self._session._step_handle(self._rec, index)

    def step(self, step_id: int) -> Job:
        """The step Job with this step id."""
        return self._session._step_handle(self._rec, self._rec.index_of(step_id))

    def counts(self) -> dict[str, int]:
        """Steps per state: ``{"PENDING": 0, "QUEUED": 3, ..., "DONE": 7, ...}`` (every State)."""
        return self._rec.counts()

    def failed(self) -> list[Job]:
        """Steps that ended in a failure state (FAILED, TIMEOUT, OUT_OF_MEMORY, KILLED, LOST, SKIPPED)."""
        rec = self._rec
        indices = sorted(i for state in State if state.is_failure for i in rec.by_state[state])
        return [self._session._step_handle(rec, i) for i in indices]

    def retry_failed(self, scale: float | dict[str, float] | None = None) -> list[Job]:
        """Run every failed step again; return those steps.

        Parameters
        ----------
        scale
            None: scale runtime (after TIMEOUT) or memory (after OUT_OF_MEMORY) by the session's
            factors (default 1.5). A float: that factor instead. A dict like
            ``{"runtime": 2, "memory": 1.5}``: per resource.
        """
        steps = self.failed()
        self._session._retry(self._rec, [step._index for step in steps], scale)
        return steps

    def done(self) -> bool:
        """True when every step is terminal."""
        return self._rec.all_terminal

    def cancel(self) -> bool:
        """Kill running steps and drop the others; True if any step was not finished."""
        return self._session._cancel(self._rec, range(self._rec.n))

    def running(self) -> bool:
        """True while some step runs."""
        return bool(self._rec.by_state[State.RUNNING])

    def _ended(self) -> bool:
        return self._rec.all_terminal

    def _failure_message(self) -> str:
        rec = self._rec
        failed = [i for state in State if state.is_failure for i in sorted(rec.by_state[state])]
        if not failed:
            return f"{rec.name} did not finish"
        return f"{len(failed)} of {rec.n} steps of {rec.name} failed; first: {rec.failure_text(failed[0])}"

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in self.counts().items() if v)
        return f"<Array {self.id} {self.name!r} {self.state.value} [{counts}]>"


# How much of a log file is read to find its last lines: tails are for a glance, not for paging.
TAIL_BLOCK_BYTES = 64 * 1024


def read_tail(path: str, lines: int | None = None) -> str:
    """The whole file, or its last ``lines`` lines (reading at most 64 KiB from its end); ``""`` if absent."""
    try:
        with open(path, "rb") as handle:
            if lines is None:
                return handle.read().decode(errors="replace")
            if lines <= 0:
                return ""
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - TAIL_BLOCK_BYTES))
            data = handle.read()
    except OSError:
        return ""
    text = data.decode(errors="replace")
    parts = text.splitlines(keepends=True)
    return "".join(parts[-lines:])
