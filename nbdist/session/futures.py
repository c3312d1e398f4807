"""The ``concurrent.futures.Future`` side of a Job or Array: settled by the session, through the public API.

::

    record ends (lifecycle, lock held) ──► settle: set_result / set_exception ──► waiters woken
    cancel() ──► asked (lock) ──► kill ──► settle: cancel + set_running_or_notify_cancel
    retry ──► reopen (the one reach into Future's internals)
    done-callbacks: kept here, run after the session's lock is released

A :class:`SessionFuture` is settled only under the session's lock, so "the work ended" (or "a
cancel was asked") and "the Future holds its outcome" are decided together: ``done()`` True means
``result(timeout=0)`` answers. Settling uses ``set_result``, ``set_exception``, ``cancel`` and
``set_running_or_notify_cancel``; none of them runs user code here, because done-callbacks are kept
by this class rather than by the Future and run once the lock is released (a callback may call back
into the session, or take a lock that a thread waiting for the session's lock holds).

A cancelled Future is ``CANCELLED_AND_NOTIFIED`` at once, so ``wait``/``as_completed`` return it.
Unlike ``ProcessPoolExecutor``, whose ``cancel()`` of a running call returns False and lets it run, a
running task is killed and its Future cancelled: nbdist's ``cancel()`` is also its kill (the
dashboard's button, ``%nbdist kill``). :meth:`wait_for_work` still waits until the killed process is
gone.

The one thing the public API cannot do is make a settled Future pending again, which a retry needs
(a finished Job runs again as a new attempt): :meth:`SessionFuture.reopen` does it, under the
Future's own condition, and is the only code of nbdist that touches a Future's private fields.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

__all__ = ["SessionFuture"]

logger = logging.getLogger(__name__)

_Future = concurrent.futures.Future


class SessionFuture(concurrent.futures.Future):
    """A Future that the session settles from a record; a subclass says when and how it ended.

    Parameters
    ----------
    lock
        The session's lock (reentrant), under which records change and this Future is settled.
    """

    def __init__(self, lock: AbstractContextManager[Any]) -> None:
        super().__init__()
        self._settle_lock = lock
        self._cancel_asked = False
        self._callbacks: list[Callable[[Any], object]] = []
        self._callbacks_run = False  # settled and its callbacks taken: a new one runs at once
        self._callbacks_lock = threading.Lock()
        self._work_over = threading.Event()  # the record ended (a cancelled task may still be dying)

    # ------------------------------------------------------------------ what a subclass supplies
    def _ended(self) -> bool:
        """True when the work reached a terminal State (read with the session's lock held)."""
        raise NotImplementedError

    def _failure(self) -> BaseException | None:
        """How the ended work failed (None: it succeeded and the result is the handle itself)."""
        raise NotImplementedError

    def _kill(self) -> bool:
        """Kill or drop the unfinished work; True if some of it was not finished."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the session's hooks
    def finish_from_record(self) -> None:
        """Settle the Future if its work ended (or a cancel was asked); a no-op otherwise.

        For the session only (and unit tests), like ``Future.set_result`` for an executor. Called
        with the lock released, so the done-callbacks it runs may call back into the session.
        """
        with self._settle_lock:
            due = self._settle()
        self._run_callbacks(due)

    def reopen(self) -> None:
        """Make a settled Future pending again (a retry starts a new outcome).

        For the session only (and unit tests), with its lock held. Callbacks already called are not
        called again; those of a still-pending Future are kept.
        """
        self._cancel_asked = False
        self._work_over.clear()
        with self._condition:
            if not _Future.done(self):
                return
            # No public Future method goes back to PENDING; these are the fields its __init__ sets.
            self._state = "PENDING"
            self._result = None
            self._exception = None
        with self._callbacks_lock:
            self._callbacks_run = False

    # ------------------------------------------------------------------ the Future's public side
    def cancel(self) -> bool:
        """Kill the work (drop what has not started) and cancel the Future; True if it was not finished.

        After True, ``cancelled()`` and ``done()`` are True and ``result()``/``exception()`` raise
        ``concurrent.futures.CancelledError`` at once, even while a running task is still being
        killed (:meth:`wait_for_work` waits for it to be gone). False when the work had ended.
        """
        with self._settle_lock:
            if _Future.done(self):
                return _Future.cancelled(self)
            self._cancel_asked = True
        live = False
        try:
            live = self._kill()
        finally:
            with self._settle_lock:
                if not live and not _Future.done(self):
                    self._cancel_asked = False  # it ended before the kill: its record settles it
                due = self._settle()
            self._run_callbacks(due)
        return _Future.cancelled(self)

    def done(self) -> bool:
        """True when the Future is settled — ended or cancelled — so ``result(timeout=0)`` answers.

        The State may turn terminal a moment before (the session settles the Future right after).
        """
        return _Future.done(self)

    def add_done_callback(self, fn: Callable[[Any], object]) -> None:
        """As ``Future.add_done_callback``: ``fn(future)`` once it is settled, at once if it is; called once."""
        with self._callbacks_lock:
            if not self._callbacks_run:
                self._callbacks.append(fn)
                return
        self._run_callbacks([fn])

    def wait_for_work(self, timeout: float | None) -> bool:
        """Block until the work's record is terminal (a killed task is gone); False on timeout."""
        return self._work_over.wait(timeout)

    # ------------------------------------------------------------------ settling (lock held)
    def _settle(self) -> list[Callable[[Any], object]]:
        """Settle from the record or a cancel that was asked; the callbacks now due (lock held)."""
        ended = self._ended()
        if ended:
            self._work_over.set()
        if _Future.done(self):
            return []
        if self._cancel_asked:
            _Future.cancel(self)
            self.set_running_or_notify_cancel()  # CANCELLED_AND_NOTIFIED: wait/as_completed see it
        elif not ended:
            return []
        else:
            failure = self._failure()
            if failure is None:
                self.set_result(self)
            else:
                self.set_exception(failure)
        with self._callbacks_lock:
            due, self._callbacks = self._callbacks, []
            self._callbacks_run = True
        return due

    def _run_callbacks(self, callbacks: list[Callable[[Any], object]]) -> None:
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                logger.exception("exception calling callback for %r", self)
