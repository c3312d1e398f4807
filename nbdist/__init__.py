"""nbdist: run batch jobs and arrays from Jupyter, locally or on Slurm.

The Python API (the magics, the dashboard and the ``nbdist`` CLI are thin shells over it)::

    import nbdist

    job = nbdist.submit("python prepare.py", name="prepare", memory="4G", runtime="10m")
    sweep = nbdist.array("python fit.py --lr {{lr}} --depth {{depth}}",
                         over={"lr": [0.1, 0.01], "depth": [3, 5]},     # a grid: 4 steps
                         after=[job], max_attempts=3)                   # PENDING until prepare is DONE
    sweep.wait()                      # -> State.DONE, or the failure
    sweep.counts()                    # {"PENDING": 0, "QUEUED": 0, "RUNNING": 0, "DONE": 4, ...}
    sweep[0].stdout(tail=5), sweep[0].exit_code, sweep[0].usage, sweep[0].log_paths
    sweep.retry_failed()              # failed steps again (runtime/memory × 1.5 after TIMEOUT/OOM)
    nbdist.show(sweep)                # the live dashboard

Python functions (their return values come back; nbdist's options are the executor's or the
decorator's, never the call's)::

    with nbdist.Executor(cores=2, memory="4G") as pool:      # a concurrent.futures.Executor
        model = pool.submit(fit, data, lr=0.1).result()       # fit's return value (lr goes to fit)
        scores = list(pool.map(evaluate, range(100)))          # one array, values in order
    grid = nbdist.function(memory="1G")(score).over({"lr": [0.1, 0.01], "depth": [2, 4]})
    grid.results()                    # values in step order; a failure re-raises the function's exception

- ``Session(backend="multiprocess", parallelism=None, root=".nbdist", **backend_options)`` owns a
  backend, a SQLite registry under ``root`` and one poller thread; ``nbdist.submit``/``array`` use
  ``default_session()``. ``session.jobs()``, ``session.get(name_or_id)`` (``"name:step"`` for a
  step), ``session.snapshot(handle, ...)`` (what views draw), ``session.close()``.
- ``Job`` is a ``concurrent.futures.Future`` (``result``/``exception``/``add_done_callback``,
  ``concurrent.futures.wait``/``as_completed``) and awaitable; ``Array`` is a sequence of step Jobs
  and a Future of the whole array. ``State`` is the one state enum (``State.is_terminal``).
- Sweeps: ``steps=10`` / any iterable of ints, or ``over=`` a dict of lists (grid), a list of dicts
  or a pandas DataFrame. ``{{name}}`` is replaced by the ``shlex.quote``-d value (data, never code);
  parameters and ``NBDIST_STEP`` are also environment variables; a manifest is written next to the
  logs (``{root}/logs/{name}/manifest-{id}.json``).
- After a kernel restart ``nbdist.attach(root)`` gives every job back; local steps that were running
  are reported KILLED (they died with their kernel), Slurm jobs are adopted and tracked again.
"""

from __future__ import annotations

import importlib as _importlib
import sys as _sys
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

if _TYPE_CHECKING:
    from .cluster_protocol.pycall import RemoteError
    from .session import Array, Attempt, Job, JobFailed, LogPaths, Session, Snapshot, State, StepRow, UnknownJob
    from .session.executor import Executor
    from .session.functions import call, function, map

# The public classes are imported on first use: consumers and ``nbdist-worker`` import only the
# backend modules of this package, and must start in milliseconds, not pay for sqlite and the session.
_LAZY = {name: ".session" for name in (
    "Array", "Attempt", "Job", "JobFailed", "LogPaths", "Session", "Snapshot", "State", "StepRow", "UnknownJob")}
_LAZY.update({"Executor": ".session.executor", "function": ".session.functions", "call": ".session.functions",
              "map": ".session.functions", "RemoteError": ".cluster_protocol.pycall"})

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
    "Executor",
    "RemoteError",
    "function",
    "call",
    "map",
    "submit",
    "array",
    "attach",
    "default_session",
    "set_default_session",
    "show",
    "load_ipython_extension",
]


def __getattr__(name: str) -> _Any:
    if name in _LAZY:
        value = getattr(_importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nbdist' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def default_session() -> Session:
    """The session behind ``nbdist.submit``/``array`` and the magics (made on first use)."""
    from .session import defaults

    return defaults.default_session()


def set_default_session(session: Session | None) -> None:
    """Make ``session`` the default one (None: a new one is made on next use)."""
    from .session import defaults

    defaults.set_default_session(session)


def submit(command: str, **options: _Any) -> Job:
    """``default_session().submit(command, **options)`` — see :meth:`Session.submit`."""
    return default_session().submit(command, **options)


def array(command: str, **options: _Any) -> Array:
    """``default_session().array(command, **options)`` — see :meth:`Session.array`."""
    return default_session().array(command, **options)


def attach(root: str = ".nbdist", **session_options: _Any) -> Session:
    """The session of ``root`` with every job of its registry, e.g. after a kernel restart.

    Jobs whose kernel died are taken over: local steps that were queued or running are reported
    KILLED (they died with their kernel), Slurm jobs are adopted and tracked again, and PENDING jobs
    start when their dependencies are DONE. The returned session becomes the default one.
    """
    from .session import defaults

    return defaults.attach(root, **session_options)


def show(handle: _Any = None, *, side: bool = False, **options: _Any) -> _Any:
    """The live dashboard of a job or array (``nbdist.views.widget``); without one, every job of the
    default session's registry at a glance (``nbdist.views.overview``: click one to open it), with
    ``side=True`` in a JupyterLab side panel that stays while the notebook scrolls."""
    if side:
        from .views.sidepanel import show_side

        panel = show_side(options.get("sessions") or [default_session()])
        if handle is not None:
            getattr(panel, "overview", panel).open(str(handle.id))
        return panel
    if handle is None:
        from .views.overview import show_all

        return show_all(**options)
    from .views.widget import show as _show

    return _show(handle, **options)


def load_ipython_extension(ipython: _Any) -> None:
    """``%load_ext nbdist``: register the magics."""
    from .views.magics import load_ipython_extension as _load

    _load(ipython)


# joblib's backend "nbdist" (``parallel_config(backend="nbdist")``): registered now if joblib is
# imported, else by a one-shot hook when it is; joblib is neither needed nor imported here.
from .integrations import watch_joblib as _watch_joblib  # noqa: E402

_watch_joblib()

# Inside IPython, a Job or Array shown as a cell's value is its dashboard (``nbdist.views.display``);
# outside (a consumer, a script), one dictionary look-up and nothing imported.
if "IPython" in _sys.modules:
    from .views.display import register_if_ipython as _register_display

    _register_display()
