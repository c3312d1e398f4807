"""The session layer: the one core that submits, tracks, retries and draws nothing.

Views (magics, widget, CLI) import these names and nothing from the submodules; the session
talks to a backend only through :mod:`nbdist.cluster_protocol` and finds it through the
:mod:`nbdist.backends` loader. The rooms, in the order they build on each other:

- ``state``, ``registry`` (typed rows, JSON only inside), ``records`` (a job's columns), ``logs``;
- ``handles`` (Job, Array: Futures finished through hooks), ``sweep`` (steps, parameters, scripts);
- ``launcher`` (backends), ``lifecycle`` (state changes, retries, deps), ``ownership`` (attach,
  orphans, other kernels), ``poller`` (the thread), ``snapshot`` (what views draw);
- ``session`` (the public API composing them) and ``defaults`` (the default and the notebook's sessions);
- ``waits`` (what a blocking wait shows through a view's hook, and its one-line interrupt);
- ``retries`` (the one rule of what a retry re-runs, and the failed steps' arguments for new code);
- ``groups`` (jobs shown as one: a joblib ``Parallel`` call's batches).
"""

from __future__ import annotations

from .cells import cell_inputs, submit_cell
from .defaults import NotebookSessions, attach, default_session, set_default_session
from .functions import Options
from .groups import JobGroup
from .handles import Array, Attempt, Job, JobFailed, LogPaths
from .progress import BAR_GROUPS, group_counts
from .retries import SPARED_STATES, RetryChoice, choose_retry, retry_states
from .session import Session, UnknownJob
from .snapshot import Snapshot, StepRow
from .state import State
from .sweep import command_line, expand, parse_array_spec, placeholders
from .waits import LIVE_AFTER_SECONDS, quiet_waits, set_wait_display, show_live_after

__all__ = ["BAR_GROUPS", "LIVE_AFTER_SECONDS", "SPARED_STATES", "Array", "Attempt", "Job", "JobFailed", "JobGroup", "LogPaths",
           "NotebookSessions", "Options", "RetryChoice", "Session", "Snapshot", "State", "StepRow", "UnknownJob",
           "attach", "cell_inputs", "choose_retry", "command_line", "default_session", "expand", "group_counts",
           "parse_array_spec", "placeholders", "quiet_waits", "retry_states", "set_default_session",
           "set_wait_display", "show_live_after", "submit_cell"]
