"""A Job or Array shown as a cell's value (or passed to ``display``) is its dashboard.

dask's futures and clients, Ray's objects draw themselves in a notebook; nbdist's handles live in the
session, which draws nothing, so the view registers the drawing with IPython instead: a function for
the handle types in the shell's ``ipython_display_formatter`` (by module and class name, so nothing of
the session is imported until a handle is shown), and the hook a slow ``wait()``/``results()`` or a
blocking ``Executor.map`` calls (:func:`nbdist.session.set_wait_display`). Outside IPython a handle's
``repr`` stays what it was (``<Array 1 'sim' QUEUED [QUEUED=12]>``), and it stays the fallback here
when no dashboard can be drawn.

``%load_ext nbdist`` registers both; ``import nbdist`` inside IPython registers the drawing of handles
only: a blocking wait that shows a dashboard after a second in some runs and not in others would make
notebooks that never asked for the magics differ from run to run (and fail nbval).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable

__all__ = ["HANDLE_TYPES", "register", "register_if_ipython", "show_handle"]

log = logging.getLogger(__name__)

# The handle classes drawn as dashboards, by where they are defined (tests check that it is still there).
HANDLE_TYPES = (("nbdist.session.handles", "Job"), ("nbdist.session.handles", "Array"))


def show_handle(handle: Any) -> None:
    """Display ``handle``'s dashboard (its ``repr`` as plain text if no dashboard can be drawn)."""
    from IPython.display import display

    try:
        view = live_view(handle)
    except Exception:  # a drawing error must not turn a cell's value into a formatter traceback
        log.warning("nbdist: could not draw the dashboard of %r", handle, exc_info=True)
        display({"text/plain": repr(handle)}, raw=True)
        return
    display(view)


def live_view(handle: Any) -> Any:
    """The dashboard of ``handle`` in its own session (a static drawing without ipywidgets); of a
    group of jobs (a joblib ``Parallel`` call), the live list of its jobs."""
    from ..session import JobGroup

    if isinstance(handle, JobGroup):
        from .overview import GroupView

        return GroupView(handle)
    from .widget import show

    return show(handle, session=handle.session)


def _wait_display(handle: Any) -> Callable[[], Any] | None:
    """What a slow wait shows: the live dashboard; returns what draws its end once the wait is over."""
    from IPython.display import display

    view = live_view(handle)
    display(view)
    return getattr(view, "tick", None)


def register(shell: Any, *, waits: bool = True) -> None:
    """Draw handles as dashboards in ``shell``; with ``waits``, show the live dashboard of a slow wait."""
    formatter = shell.display_formatter.ipython_display_formatter
    for module, name in HANDLE_TYPES:
        formatter.for_type_by_name(module, name, show_handle)
    if waits:
        from ..session import set_wait_display

        set_wait_display(_wait_display)


def register_if_ipython() -> None:
    """:func:`register` the drawing of handles in the running IPython shell, if there is one (``import
    nbdist`` calls this).

    Costs a dictionary look-up outside IPython: task processes import nbdist and must start fast.
    """
    if "IPython" not in sys.modules:
        return
    shell = sys.modules["IPython"].get_ipython()
    if shell is not None and hasattr(shell, "display_formatter"):
        register(shell, waits=False)
