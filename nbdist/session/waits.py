"""A blocking wait in a notebook: what it shows while it blocks, and what an interrupt of it says.

The session draws nothing: a view (``%load_ext nbdist``) registers a display hook, and a handle's
``wait()``/``result()`` that still blocks after :data:`LIVE_AFTER_SECONDS` calls it once with the
handle — the live dashboard, as ``tqdm.notebook`` shows its bar; work done in a blink shows nothing
(ipyparallel's ``progress_after``). An interrupt (Ctrl-C, ■) stops the wait, never the work, and says
so in one line instead of a traceback through ``concurrent.futures`` and ``threading``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["LIVE_AFTER_SECONDS", "interrupted", "quiet_waits", "set_wait_display", "show_if_slow"]

# A wait shows its live dashboard once it has lasted this long: work done in a blink gets none, which
# is also what a saved notebook then holds.
LIVE_AFTER_SECONDS = 1.0

_display: Callable[[Any], None] | None = None
_quiet = threading.local()


def set_wait_display(hook: Callable[[Any], None] | None) -> None:
    """Register what a slow wait shows (called with the handle once); None: nothing."""
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


def show_if_slow(handle: Any, timeout: float | None) -> float | None:
    """Wait up to :data:`LIVE_AFTER_SECONDS`; if the work still runs, show it; the timeout left then."""
    hook = _display
    if hook is None or getattr(_quiet, "on", False) or handle.done() or (
            timeout is not None and timeout <= LIVE_AFTER_SECONDS):
        return timeout
    concurrent.futures.wait([handle], timeout=LIVE_AFTER_SECONDS)
    if not handle.done():
        hook(handle)
    return None if timeout is None else max(0.0, timeout - LIVE_AFTER_SECONDS)


@contextlib.contextmanager
def interrupted(handle: Any) -> Iterator[None]:
    """An interrupt of the wait in this block becomes one line: the wait stopped, the work goes on."""
    try:
        yield
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"stopped waiting for {handle.name!r}; it goes on running "
                                f"(.cancel() it, or %nbdist kill {handle.name})") from None
