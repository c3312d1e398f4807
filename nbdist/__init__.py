"""nbdist: run batch jobs and arrays from Jupyter, locally or on Slurm.

>>> import nbdist                                                    # doctest: +SKIP
>>> job = nbdist.submit("python train.py", name="train", memory="2G")
>>> sweep = nbdist.array("python eval.py --lr {{lr}}", over={"lr": [0.1, 0.01]}, after=[job])
>>> sweep.wait(); sweep.counts()
"""

from __future__ import annotations

import threading
from typing import Any

from .jobs import Array, Attempt, Job, JobFailed, LogPaths
from .session import Session, UnknownJob
from .snapshot import Snapshot, StepRow
from .state import State

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "Session",
    "State",
    "Job",
    "Array",
    "Attempt",
    "JobFailed",
    "LogPaths",
    "Snapshot",
    "StepRow",
    "UnknownJob",
    "submit",
    "array",
    "attach",
    "default_session",
    "set_default_session",
    "show",
    "load_ipython_extension",
]

_default: Session | None = None
_default_lock = threading.Lock()


def default_session() -> Session:
    """The session behind ``nbdist.submit``/``array`` and the magics (made on first use)."""
    global _default
    with _default_lock:
        if _default is None or _default._closed:
            _default = Session()
        return _default


def set_default_session(session: Session | None) -> None:
    """Make ``session`` the default one (None: a new one is made on next use)."""
    global _default
    with _default_lock:
        _default = session


def submit(command: str, **options: Any) -> Job:
    """``default_session().submit(command, **options)`` — see :meth:`Session.submit`."""
    return default_session().submit(command, **options)


def array(command: str, **options: Any) -> Array:
    """``default_session().array(command, **options)`` — see :meth:`Session.array`."""
    return default_session().array(command, **options)


def attach(root: str = ".nbdist", **session_options: Any) -> Session:
    """The session of ``root`` with every job of its registry, e.g. after a kernel restart.

    Jobs whose kernel died are taken over: local steps that were queued or running are reported
    KILLED (they died with their kernel), Slurm jobs are adopted and tracked again, and PENDING jobs
    start when their dependencies are DONE. The returned session becomes the default one.
    """
    global _default
    import os

    with _default_lock:
        if _default is not None and not _default._closed and _default.root == os.path.abspath(root) \
                and not session_options:
            session = _default
        else:
            session = Session(root=root, **session_options)
            _default = session
    session._attach()
    return session


def show(handle: Any, **options: Any) -> Any:
    """The live dashboard of a job or array (``nbdist.widget``)."""
    from .widget import show as _show

    return _show(handle, **options)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbdist``: register the magics."""
    from .magics import load_ipython_extension as _load

    _load(ipython)
