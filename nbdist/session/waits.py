"""A blocking wait in a notebook: what it shows while it blocks, and what an interrupt of it says.

The session draws nothing: a view (``%load_ext nbdist``) registers a display hook, and a handle's
``wait()``/``result()`` that still blocks after :data:`LIVE_AFTER_SECONDS` calls it once with the
handle — the live dashboard, as ``tqdm.notebook`` shows its bar; work done in a blink shows nothing
(ipyparallel's ``progress_after``). The hook may return a callable, called once the wait is over, so
that the dashboard shows the end (100 %) when the cell finishes, not its last refresh. A wait made of
several waits (``Executor.map`` read item by item) shows one dashboard, of the whole array, through a
:class:`LiveWait`. An interrupt (Ctrl-C, ■) stops the wait, never the work, and says so in one line
instead of a traceback through ``concurrent.futures`` and ``threading``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["LIVE_AFTER_SECONDS", "LiveWait", "interrupted", "quiet_waits", "set_wait_display", "show_if_slow",
           "show_live_after"]

# A wait shows its live dashboard once it has lasted this long: work done in a blink gets none, which
# is also what a saved notebook then holds.
LIVE_AFTER_SECONDS = 1.0

_display: Callable[[Any], Any] | None = None
_quiet = threading.local()


def set_wait_display(hook: Callable[[Any], Any] | None) -> None:
    """Register what a slow wait shows (called with the handle once); None: nothing.

    When ``hook`` returns a callable, it is called (from the waiting thread) once the wait is over.
    """
    global _display
    _display = hook


@contextlib.contextmanager
def quiet_waits() -> Iterator[None]:
    """Waits of this thread in this block show nothing (a view that draws its own dashboards)."""
    _quiet.on = True
    try:
        yield
    finally:
        _quiet.on = False


class LiveWait:
    """One live dashboard of ``handle`` for a wait made of waits on its parts (the steps a map reads in turn)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.shown = False
        self._end: Any = None

    def wait(self, part: Any, timeout: float | None) -> float | None:
        """Wait for ``part`` up to :data:`LIVE_AFTER_SECONDS`; if it still runs, show ``handle`` (once);
        the timeout left then."""
        hook = _display
        if self.shown or hook is None or getattr(_quiet, "on", False) or part.done() or (
                timeout is not None and timeout <= LIVE_AFTER_SECONDS):
            return timeout
        concurrent.futures.wait([part], timeout=LIVE_AFTER_SECONDS)
        if not part.done() and not self.handle.done():
            self.shown = True
            self._end = hook(self.handle)
        return None if timeout is None else max(0.0, timeout - LIVE_AFTER_SECONDS)

    def end(self) -> None:
        """The wait is over: let the dashboard draw where the work is now (its end, when it ended)."""
        end, self._end = self._end, None
        if callable(end):
            end()


def show_if_slow(handle: Any, timeout: float | None) -> float | None:
    """Wait up to :data:`LIVE_AFTER_SECONDS`; if the work still runs, show it, wait for it (up to the
    timeout) and draw its end; the timeout left then."""
    live = LiveWait(handle)
    left = live.wait(handle, timeout)
    if not live.shown:
        return left
    start = time.monotonic()
    try:
        concurrent.futures.wait([handle], timeout=left)
    finally:
        live.end()
    return None if left is None else max(0.0, left - (time.monotonic() - start))


def show_live_after(handle: Any, seconds: float = LIVE_AFTER_SECONDS) -> Callable[[], None]:
    """For a wait nbdist does not own (joblib's ``Parallel`` waits for its batches itself): show
    ``handle``'s live view through the registered hook if the wait still goes on after ``seconds``
    (from a timer thread; the kernel sends its output to the cell that started it), as a slow wait's.
    Returns what to call when the wait is over: it cancels the view if not shown yet, else draws its end."""
    hook = _display
    if hook is None or getattr(_quiet, "on", False):
        return lambda: None
    lock = threading.Lock()
    shown: dict[str, Any] = {"over": False, "end": None}

    def show() -> None:
        with lock:
            if shown["over"]:
                return
            try:
                end = hook(handle)
            except Exception:  # a drawing error must not reach the work
                logging.getLogger(__name__).warning("nbdist: could not draw %r", handle, exc_info=True)
                return
            shown["end"] = end if callable(end) else None

    timer = threading.Timer(seconds, show)
    timer.daemon = True
    timer.start()

    def over() -> None:
        timer.cancel()
        with lock:
            shown["over"] = True
            end = shown["end"]
        if end is not None:
            end()

    return over


@contextlib.contextmanager
def interrupted(handle: Any) -> Iterator[None]:
    """An interrupt of the wait in this block becomes one line: the wait stopped, the work goes on."""
    try:
        yield
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"stopped waiting for {handle.name!r}; it goes on running "
                                f"(.cancel() it, or %nbdist kill {handle.name})") from None
