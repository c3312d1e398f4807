"""What a Python job returned: its outcome file, found from the record and read only when asked for.

A job is a Python call when its command is exactly a :func:`~nbdist.cluster_protocol.pycall.call_command`
(the registry keeps the command, so this survives a kernel restart with no extra column). The
outcome of the current attempt of a step is ``{stem}.r{distributor id}`` beside the call file.

Security: a pickle runs code when it is loaded. An outcome is loaded only if its real path (links
resolved) is inside the session's own log folder, ``{root}/logs``: a registry row or a link cannot
make the kernel unpickle a file from anywhere else.
"""

from __future__ import annotations

import os
from typing import Any

from ..cluster_protocol.pycall import CallCommand, outcome_kind, parse_call_command, read_outcome, result_path_for
from .records import JobRecord
from .state import State

__all__ = ["UnsafeOutcome", "call_of", "function_error", "outcome_path", "read_step_outcome", "step_outcome_kind"]


class UnsafeOutcome(PermissionError):
    """An outcome file outside the session's log folder: it is never unpickled."""


def call_of(rec: JobRecord) -> CallCommand | None:
    """The call a record runs, or None for shell work."""
    return parse_call_command(rec.command)


def outcome_path(rec: JobRecord, index: int, root: str) -> str | None:
    """The outcome file of a step's current attempt, checked to be inside ``{root}/logs`` (None: not a call,
    or not submitted yet).

    Raises
    ------
    UnsafeOutcome
        When the file (or a link on its way) leads outside the session's log folder.
    """
    call = call_of(rec)
    did = rec.dids[index]
    if call is None or did is None:
        return None
    path = result_path_for(call.call, did)
    logs = os.path.realpath(os.path.join(root, "logs"))
    real = os.path.realpath(path)
    if os.path.commonpath([logs, real]) != logs:
        raise UnsafeOutcome(f"{path} resolves to {real}, outside the session's log folder {logs}: not loaded")
    return path


def step_outcome_kind(rec: JobRecord, index: int, root: str) -> str | None:
    """``"value"``, ``"error"`` or None (no outcome), without unpickling anything."""
    path = outcome_path(rec, index, root)
    return None if path is None else outcome_kind(path)


def read_step_outcome(rec: JobRecord, index: int, root: str) -> tuple[bool, Any] | None:
    """``(True, value)``, ``(False, exception)``, or None when the step wrote no outcome."""
    path = outcome_path(rec, index, root)
    if path is None or outcome_kind(path) is None:
        return None
    return read_outcome(path)


def function_error(rec: JobRecord, index: int, root: str) -> BaseException | None:
    """The exception a Python call raised in a FAILED step (None: not a call, or it did not raise)."""
    if rec.states[index] is not State.FAILED:
        return None
    outcome = read_step_outcome(rec, index, root)
    return None if outcome is None or outcome[0] else outcome[1]
