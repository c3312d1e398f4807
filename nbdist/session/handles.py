"""Job and Array handles: light views on a record, and Futures finished by the session.

- :class:`Job` is a ``concurrent.futures.Future`` (it *is* one, so ``concurrent.futures.wait`` and
  ``as_completed`` accept it) and awaitable; step jobs of an array are made on first access.
- :class:`Array` is a sequence of step Jobs, and a Future of the whole array.

Handles never import the session. They only read their record, and ask their owner (a
:class:`HandleOwner`, implemented for the session) to act: ``cancel``, ``retry``, usage, attempts.
The session settles and reopens a handle's Future through two hooks documented "for the session
only", :meth:`Handle.finish_from_record` and :meth:`Handle.reopen`, which live with the rest of the
Future side in :mod:`nbdist.session.futures`.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, overload

from .futures import SessionFuture
from .logs import read_tail
from .outcomes import call_of, function_error, map_results, read_step_outcome
from .records import Attempt, JobRecord, LogPaths
from .retries import failed_items, retry_indices
from .state import State
from .waits import interrupted, show_if_slow

__all__ = ["Array", "Attempt", "Handle", "HandleCache", "HandleOwner", "Job", "JobFailed", "LogPaths"]


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


class HandleOwner(Protocol):
    """What a handle asks of the session that owns its record."""

    @property
    def session(self) -> Any:
        """The public :class:`~nbdist.Session`."""
        ...

    @property
    def lock(self) -> AbstractContextManager[Any]:
        """The lock under which records change."""
        ...

    def waiting(self) -> AbstractContextManager[None]:
        """A block in which someone waits for work to end: the session polls often meanwhile."""
        ...

    def step_handle(self, rec: JobRecord, index: int) -> Job: ...

    def array_handle(self, rec: JobRecord) -> Array: ...

    def usage(self, rec: JobRecord, index: int) -> dict[str, Any]: ...

    def attempts(self, rec: JobRecord, index: int) -> list[Attempt]: ...

    def cancel(self, rec: JobRecord, indices: Iterable[int]) -> bool: ...

    def retry(self, rec: JobRecord, indices: Sequence[int], scale: float | dict[str, float] | None) -> None: ...


class Handle(SessionFuture):
    """What Job and Array share: a Future settled by the session when the work ends or is cancelled."""

    _owner: HandleOwner
    _rec: JobRecord

    def _failure(self) -> BaseException | None:
        state = self.state
        return None if state is State.DONE else JobFailed(self, state, self._failure_message())

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
        return self._owner.session

    @property
    def owned(self) -> bool:
        """True when this session runs the work; False for another live kernel's job (read from
        the registry; ``cancel``/``retry`` are passed to that kernel)."""
        return self._rec.owned

    @property
    def record(self) -> JobRecord:
        """The record behind this handle — for the session only (read it, never change it)."""
        return self._rec

    def wait(self, timeout: float | None = None) -> State:
        """Block until the work ends (or ``timeout`` seconds pass); return its State then.

        Never raises for a failed job: look at the returned State, or use ``result()``. After
        ``cancel()`` it waits until the killed task is gone (its Future was cancelled at once).
        """
        with self._owner.waiting(), interrupted(self):
            self.wait_for_work(show_if_slow(self, timeout))
        return self.state

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """As ``Future.exception``; while it waits, the session polls often (no fixed poll period is paid)."""
        if self.done():
            return super().exception(timeout)
        with self._owner.waiting(), interrupted(self):
            return super().exception(show_if_slow(self, timeout))


class Job(Handle):
    """A submitted job, or one step of an array.

    A Job is a ``concurrent.futures.Future``: ``result(timeout)`` returns the Job when it ended
    ``DONE`` and raises :class:`JobFailed` otherwise (a job killed other than by its own
    :meth:`cancel` too: its session closing, another kernel's kill); after ``cancel()`` returned
    True it is a cancelled Future (``cancelled()``; ``result()``, ``exception()`` and ``await job``
    raise ``CancelledError``). ``concurrent.futures.wait``/``as_completed``, ``add_done_callback``
    (each callback called once) and ``await job`` work as for any Future.
    """

    def __init__(self, owner: HandleOwner, rec: JobRecord, index: int = 0) -> None:
        super().__init__(owner.lock)
        self._owner = owner
        self._rec = rec
        self._index = index

    @property
    def index(self) -> int:
        """The position of this step in its array (0 for a plain job)."""
        return self._index

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
        return None if self._rec.steps is None else self._owner.array_handle(self._rec)

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
        return dict(self._owner.usage(self._rec, self._index))

    @property
    def log_paths(self) -> LogPaths | None:
        """``(stdout, stderr)`` file paths of the current attempt (None while PENDING)."""
        return self._rec.log_paths(self._index)

    @property
    def attempts(self) -> list[Attempt]:
        """Every attempt so far, oldest first (each with its own logs and exit info)."""
        return self._owner.attempts(self._rec, self._index)

    def stdout(self, tail: int | None = None) -> str:
        """The current attempt's stdout (its last ``tail`` lines if given; ``""`` before it starts)."""
        paths = self.log_paths
        return read_tail(paths.stdout, tail) if paths else ""

    def stderr(self, tail: int | None = None) -> str:
        """The current attempt's stderr (its last ``tail`` lines if given)."""
        paths = self.log_paths
        return read_tail(paths.stderr, tail) if paths else ""

    def cancel(self) -> bool:
        """Kill the job (or drop it if it has not started) and cancel its Future; True if it was not finished.

        After True, ``cancelled()`` is True and ``result()`` raises ``concurrent.futures.CancelledError``
        at once. A job that had not started never runs (State KILLED); a running one is killed — unlike
        ``ProcessPoolExecutor``, whose ``cancel()`` returns False for a running call and lets it run —
        and ``wait()`` returns once its process is gone (State KILLED, or how it ended if it finished
        first). False, and nothing changes, when it had already ended.
        """
        return super().cancel()

    def _kill(self) -> bool:
        return self._owner.cancel(self._rec, [self._index])

    def running(self) -> bool:
        """True while the job runs (False once its Future is cancelled)."""
        return self.state is State.RUNNING and not self.done()

    def retry(self, scale: float | dict[str, float] | None = None) -> Job:
        """Run a finished job again as a new attempt, as submitted (resources scaled as for automatic retries)."""
        self._owner.retry(self._rec, [self._index], scale)
        return self

    def result(self, timeout: float | None = None) -> Any:
        """The Job when it ends DONE; for a Python call the function's return value (read from its
        outcome file at each call, never kept here). Raises :class:`JobFailed`, or for a call that
        raised, that exception again (the remote traceback as its ``__cause__``)."""
        error = self.exception(timeout)
        if error is not None:
            raise error from error.__cause__
        if call_of(self._rec) is None:
            return self
        outcome = read_step_outcome(self._rec, self._index, self.session.root)
        if outcome is None:
            raise JobFailed(self, State.DONE, f"{self.name} ended DONE but wrote no result (sys.exit(0)?)")
        if not outcome[0]:
            raise outcome[1] from outcome[1].__cause__
        return outcome[1]

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """What :meth:`result` raises (None when it returns)."""
        error = super().exception(timeout)
        return error and (function_error(self._rec, self._index, self.session.root) or error)

    def _ended(self) -> bool:
        return self.state.is_terminal

    def _failure_message(self) -> str:
        return self._rec.failure_text(self._index)

    def __repr__(self) -> str:
        code = "" if self.exit_code is None else f" exit_code={self.exit_code}"
        return f"<Job {self.id} {self.name!r} {self.state.value}{code}>"


class Array(Handle, Sequence):  # type: ignore[misc]
    """A submitted array: a sequence of step Jobs, and a Future of the whole array.

    ``array[i]`` is the i-th step (for ``steps=n`` that is step ``i``); ``array.step(s)`` finds a
    step by its id. The Future resolves when every step is terminal: with the Array when all are
    ``DONE``, else with :class:`JobFailed`.
    """

    def __init__(self, owner: HandleOwner, rec: JobRecord) -> None:
        super().__init__(owner.lock)
        self._owner = owner
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
            return [self._owner.step_handle(self._rec, i) for i in range(*index.indices(self._rec.n))]
        if index < 0:
            index += self._rec.n
        if not 0 <= index < self._rec.n:
            raise IndexError(f"{self.name} has {self._rec.n} steps")
        return self._owner.step_handle(self._rec, index)

    def step(self, step_id: int) -> Job:
        """The step Job with this step id."""
        return self._owner.step_handle(self._rec, self._rec.index_of(step_id))

    def counts(self) -> dict[str, int]:
        """Steps per state: ``{"PENDING": 0, "QUEUED": 3, ..., "DONE": 7, ...}`` (every State)."""
        return self._rec.counts()

    def failed(self) -> list[Job]:
        """Steps that ended in a failure state (FAILED, TIMEOUT, OUT_OF_MEMORY, KILLED, LOST, SKIPPED)."""
        indices = sorted(i for state in State if state.is_failure for i in self._rec.by_state[state])
        return [self._owner.step_handle(self._rec, i) for i in indices]

    def retry_failed(self, scale: float | dict[str, float] | None = None, *, killed: bool = False) -> list[Job]:
        """Run again, *as submitted*, the steps that failed by themselves (``killed=True``: KILLED and SKIPPED
        too; the rule of :mod:`nbdist.session.retries`); return them. New code: map it over :meth:`failed_items`.

        Parameters
        ----------
        scale
            None: runtime (after TIMEOUT) or memory (after OUT_OF_MEMORY) × the session's factors (1.5 by
            default); a float: that factor; a dict like ``{"runtime": 2, "memory": 1.5}``: per resource.
        """
        indices = retry_indices(self._rec, killed)
        self._owner.retry(self._rec, indices, scale)
        return [self._owner.step_handle(self._rec, i) for i in indices]

    def failed_items(self, *, killed: bool = False) -> list[Any]:
        """The arguments of what :meth:`retry_failed` re-runs: ``fixed.map(array.failed_items())`` runs new code."""
        return failed_items(self._rec, retry_indices(self._rec, killed), self.session.root)

    def cancel(self) -> bool:
        """Kill running steps, drop the others, and cancel the Array's Future; True if any step was not finished.

        As :meth:`Job.cancel` for the Array (``cancelled()``, ``CancelledError``; ``wait()`` until every
        step ended); its steps end KILLED, and their own Jobs raise :class:`JobFailed`.
        """
        return super().cancel()

    def _kill(self) -> bool:
        return self._owner.cancel(self._rec, range(self._rec.n))

    def running(self) -> bool:
        """True while some step runs (False once the Array's Future is cancelled)."""
        return bool(self._rec.by_state[State.RUNNING]) and not self.done()

    def result(self, timeout: float | None = None) -> Any:
        """The Array when every step ends DONE; for a map of a Python function, :meth:`results`."""
        error = self.exception(timeout)
        if error is not None:
            raise error from error.__cause__
        return self if call_of(self._rec) is None else self.results()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """What :meth:`result` raises (None when it returns)."""
        error = super().exception(timeout)
        if error is None or call_of(self._rec) is None:
            return error
        failed = sorted(i for state in State if state.is_failure for i in self._rec.by_state[state])
        return (self[failed[0]].exception() if failed else None) or error

    def results(self, timeout: float | None = None, return_exceptions: bool = False) -> list[Any]:
        """A map's return values in item order (one per step; a chunked map's, one per item), read from the
        outcome files once every step ended. The first failure raises — the function's exception, or what
        a step that wrote no outcome raises (:class:`JobFailed`) — unless ``return_exceptions``: then the
        exception is in the item's place."""
        super().exception(timeout)  # waits; TimeoutError as for any Future
        return map_results(self, self._rec, self.session.root, return_exceptions)

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


class HandleCache:
    """The session's handles, made on first access: one Job per step, one Array per array."""

    def __init__(self, owner: HandleOwner) -> None:
        self._owner = owner
        self._steps: dict[int, dict[int, Job]] = {}
        self._arrays: dict[int, Array] = {}

    def step(self, rec: JobRecord, index: int) -> Job:
        """The Job of one step (made, and finished if its step ended, on first access; lock held)."""
        handles = self._steps.setdefault(rec.id, {})
        handle = handles.get(index)
        if handle is None:
            handle = handles[index] = Job(self._owner, rec, index)
            if rec.states[index].is_terminal:
                handle.finish_from_record()
        return handle

    def array(self, rec: JobRecord) -> Array:
        """The Array of an array record (lock held)."""
        handle = self._arrays.get(rec.id)
        if handle is None:
            handle = self._arrays[rec.id] = Array(self._owner, rec)
            if rec.all_terminal:
                handle.finish_from_record()
        return handle

    def existing_step(self, rec: JobRecord, index: int) -> Job | None:
        """The Job of a step if one was made (nobody can wait on one that was not)."""
        handles = self._steps.get(rec.id)
        return None if handles is None else handles.get(index)

    def existing_array(self, rec: JobRecord) -> Array | None:
        """The Array of a record if one was made."""
        return self._arrays.get(rec.id)

    def existing(self, rec: JobRecord) -> list[Handle]:
        """Every handle made for a record: its step Jobs, then its Array."""
        found: list[Handle] = list(self._steps.get(rec.id, {}).values())
        array = self._arrays.get(rec.id)
        if array is not None:
            found.append(array)
        return found
