"""The session layer: the one core that submits, tracks, retries and draws nothing.

Views (magics, widget, CLI) import these names; the session talks to a backend only through
:mod:`nbdist.cluster_protocol` and finds it through the :mod:`nbdist.backends` loader.
"""

from __future__ import annotations

from .handles import Array, Attempt, Job, JobFailed, LogPaths
from .session import Session, UnknownJob
from .snapshot import Snapshot, StepRow
from .state import State

__all__ = ["Array", "Attempt", "Job", "JobFailed", "LogPaths", "Session", "Snapshot", "State", "StepRow",
           "UnknownJob"]
