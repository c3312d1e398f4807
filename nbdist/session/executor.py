"""``nbdist.Executor``: the standard ``concurrent.futures.Executor`` on any nbdist backend.

::

    submit(fn, *args) ──► one Job (a Future) ──► result() = fn's return value
    map(fn, *iterables) ──► one Array (chunksize items per step) ──► values in order, lazily
              │
              └─ call/items files beside the logs ──► backend (multiprocess, Slurm, …) ──► outcome files

Code written for ``ProcessPoolExecutor`` runs unchanged; nbdist's options (cores, memory,
runtime, …) are the executor's, never mixed with the function's own keyword arguments. Futures
keep ``concurrent.futures``' meaning: a True ``cancel()`` leaves a cancelled future (``cancelled()``,
``CancelledError``), ``done()`` True means ``result(timeout=0)`` answers, each callback is called once.
One difference, on purpose: ``cancel()`` of a *running* call kills it and returns True (nbdist's cancel
is also its kill), where ``ProcessPoolExecutor`` returns False and lets it run.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from .functions import Options, grid_rows, map_call, resolve_session, submit_call
from .handles import Array, Handle, Job
from .outcomes import step_outcomes
from .session import Session
from .state import State
from .waits import LiveWait, quiet_waits

__all__ = ["Executor", "auto_chunksize"]

# ``map(chunksize=None)``: about this many steps per task slot (enough to even out items of unequal
# length and to show progress), and at most MAX_AUTO_CHUNK items per step (what a retry re-runs).
STEPS_PER_SLOT = 4
MAX_AUTO_CHUNK = 100


def auto_chunksize(count: int, slots: int) -> int:
    """Items per step of ``Executor.map(chunksize=None)`` over ``count`` items with ``slots`` tasks at once."""
    return max(1, min(MAX_AUTO_CHUNK, count // (STEPS_PER_SLOT * max(1, slots))))


class Executor(concurrent.futures.Executor):
    """Run Python functions as nbdist jobs: ``submit``, ``map``, ``shutdown``, ``with``.

    Parameters
    ----------
    session
        The session to run on (default: the default session, or for ``backend=`` another backend
        than its own, a session of that backend on the same root, closed by :meth:`shutdown`).
    backend
        ``"multiprocess"``, ``"slurm"``, … (see :class:`nbdist.Session`).
    name, cores, memory, runtime, after, max_attempts, env, cwd, max_concurrent, resource_scales, gpus
        The options of every job and array of this executor (as for :meth:`nbdist.Session.submit`);
        ``name`` defaults to the function's name; ``gpus=1`` gives each call a GPU of its own.
    max_calls_per_worker
        On the multiprocess backend, calls run in warm worker interpreters that are reused; a worker
        that has made this many calls is retired (1: a fresh interpreter per call, as
        ``ProcessPoolExecutor(max_tasks_per_child=1)``; default: the session's, unlimited).

    Notes
    -----
    ``future.cancel()`` of a call that has not started returns True and it never runs; of a running
    call, it kills it and returns True (``ProcessPoolExecutor`` would return False and let it run):
    either way ``cancelled()`` is then True and ``result()`` raises ``concurrent.futures.CancelledError``.
    ``shutdown(cancel_futures=True)`` cancels the calls and map items that have not started.

    Examples
    --------
    >>> with nbdist.Executor(cores=2, memory="4G") as pool:            # doctest: +SKIP
    ...     job = pool.submit(fit, data, lr=0.1)       # lr goes to fit, not to nbdist
    ...     scores = list(pool.map(score, range(100)))
    """

    def __init__(self, *, session: Session | None = None, backend: str | None = None, name: str | None = None,
                 cores: int = 1, memory: str | int | None = None, runtime: str | int | None = None,
                 after: Any = (), max_attempts: int = 1, env: Mapping[str, str] | None = None,
                 cwd: str | None = None, max_concurrent: int | None = None,
                 resource_scales: Mapping[str, float] | None = None, gpus: int | None = None,
                 max_calls_per_worker: int | None = None) -> None:
        self.options = Options(name, cores, memory, runtime, after, max_attempts, env, cwd, max_concurrent,
                               resource_scales, gpus=gpus, max_calls_per_worker=max_calls_per_worker)
        self.session, self._owns_session = resolve_session(session, backend)
        # Reentrant: a submit may settle this executor's ended futures, whose callback (_forget) takes it.
        self._lock = threading.RLock()
        self._live: set[Handle] = set()
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Job:
        """Run ``fn(*args, **kwargs)`` as a job; the Job is a Future whose ``result()`` is the value."""
        return self._track(lambda: submit_call(self.session, self.options, fn, args, kwargs))

    def array(self, fn: Callable[..., Any], items: Iterable[Any] | None = None, *, over: Any = None,
              args: tuple[Any, ...] = (), kwargs: Mapping[str, Any] | None = None, chunksize: int = 1) -> Array:
        """A map as an Array handle: ``fn(item, *args, **kwargs)`` per item, or with ``over=`` a grid
        (as for commands) ``fn(*args, **params, **kwargs)`` per step; ``results()`` in item order.

        One step per item, unless ``chunksize``: then each step runs that many consecutive items.
        """
        if (items is None) == (over is None):
            raise ValueError("give items or over=, not both (nor neither)")
        if over is not None:
            return self._track(lambda: map_call(self.session, self.options, fn, grid_rows(over), args=args,
                                                kwargs=kwargs, spread="kwargs", chunksize=chunksize))
        return self._track(lambda: map_call(self.session, self.options, fn, items, args=args, kwargs=kwargs,
                                            chunksize=chunksize))

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int | None = None) -> Iterator[Any]:
        """``fn(*values)`` for each tuple of the iterables' values, as one array; the values in order.

        Submitted at once, read lazily: the iterator yields each value as its step ends and raises
        an item's exception when it reaches that item (the values before it yielded first), or
        ``TimeoutError`` when ``timeout`` seconds (from this call) pass first.

        Each step runs ``chunksize`` consecutive items in one task. ``None`` (the default, unlike
        ``ProcessPoolExecutor``'s 1: a task costs more than a pickle through a pipe) chooses about 4
        steps per task slot of the session (its parallelism, or this machine's cores, over the
        executor's ``cores`` and ``max_concurrent``), at most 100 items each; ``chunksize=1`` gives
        one step per item.
        """
        end = None if timeout is None else time.monotonic() + timeout
        items = list(zip(*iterables))
        if not items:
            return iter(())
        chunk = auto_chunksize(len(items), self._slots()) if chunksize is None else chunksize
        array = self._track(lambda: map_call(self.session, self.options, fn, items, spread="args", chunksize=chunk))
        del items
        return _values_in_order(array, end)

    def _slots(self) -> int:
        """How many of this executor's tasks can run at once, as far as the kernel knows."""
        slots = (self.session.parallelism or os.cpu_count() or 1) // max(1, self.options.cores)
        return min(slots, self.options.max_concurrent or slots)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Accept no more work; ``cancel_futures`` cancels what has not started, ``wait`` waits for the rest.

        With ``cancel_futures``, a call (or a map's step) still waiting is cancelled: its Future is
        ``cancelled()``, and it never runs.

        A session the executor made for ``backend=`` is closed after the wait (Slurm jobs go on
        running and are found again by ``nbdist.attach()``).
        """
        with self._lock:
            self._shutdown = True
            live = list(self._live)
        if cancel_futures:
            for handle in live:
                if isinstance(handle, Array):
                    _cancel_waiting_steps(handle)
                elif handle.state in _WAITING:
                    handle.cancel()
        if wait:
            concurrent.futures.wait(live)
            for handle in live:
                handle.wait_for_work(None)  # a cancelled running call: until its process is gone
            if self._owns_session:
                self.session.close()

    def _track(self, make: Callable[[], Any]) -> Any:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            handle = make()
            self._live.add(handle)
        handle.add_done_callback(self._forget)
        return handle

    def _forget(self, handle: Handle) -> None:
        with self._lock:
            self._live.discard(handle)

    def __repr__(self) -> str:
        return f"<nbdist.Executor {self.session.backend_name} {self.options}>".replace(" >", ">")


_WAITING = (State.PENDING, State.QUEUED)


def _cancel_waiting_steps(array: Array) -> None:
    """Cancel the steps of an array that have not started (their Jobs' Futures end cancelled)."""
    rec = array.record
    for index in range(len(array)):
        if rec.states[index] in _WAITING:
            array[index].cancel()


def _values_in_order(array: Array, end: float | None) -> Iterator[Any]:
    """Each item's value as its step ends; a step ended DONE is read without making its Job.

    An item that raised raises here when reached (its step's earlier items yielded first); a step
    that wrote no outcome raises what its Job raises. When the iterator is left early (a timeout,
    an exception, ``break``), steps that have not started are cancelled, as
    ``ProcessPoolExecutor.map`` cancels its pending futures. A read that blocks shows one live dashboard,
    of the whole array, as ``results()`` does (not one per slow step), drawn at its end when the read ends.
    """
    rec, root = array.record, array.session.root
    live = LiveWait(array)
    try:
        for index in range(len(array)):
            if rec.states[index] is not State.DONE:
                live.wait(array[index], None if end is None else max(0.0, end - time.monotonic()))
                with quiet_waits():  # the steps' own waits show nothing: the array's dashboard is shown
                    array[index].exception(None if end is None else max(0.0, end - time.monotonic()))
            found = False
            for ok, value in step_outcomes(rec, index, root) if rec.states[index].is_terminal else ():
                if not ok:
                    raise value from value.__cause__
                found = True
                yield value
            if not found:
                array[index].result()  # raises why the step ended with no outcome
    finally:
        live.end()
        _cancel_waiting_steps(array)
