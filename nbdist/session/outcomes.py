"""What a Python job returned: its outcome file, found from the record and read only when asked for.

A job is a Python call when its record carries a :class:`~nbdist.cluster_protocol.pycall.PythonCall`
(the registry keeps it in the job's spec, so this survives a kernel restart). The
outcome of the current attempt of a step is ``{stem}.r{distributor id}`` beside the call file. A step
of a chunked map ran several items: its outcome holds each item's value or exception, and a map's
values are one per item (:func:`map_results`), not one per step.

Security: a pickle runs code when it is loaded. An outcome is loaded only if its real path (links
resolved) is inside the session's own log folder, ``{root}/logs``: a registry row or a link cannot
make the kernel unpickle a file from anywhere else.
"""

from __future__ import annotations

import os
import reprlib
from collections.abc import Iterator, Sequence
from typing import Any

from ..cluster_protocol.pycall import PythonCall, chunk_range, item_count, outcome_kind, read_chunk, \
    read_item, read_outcome, read_outcomes
from .records import JobRecord
from .state import State

__all__ = ["UnsafeOutcome", "call_of", "function_error", "inside_logs", "map_results", "outcome_path",
           "read_step_outcome", "step_items", "step_outcome_kind", "step_outcomes"]


class UnsafeOutcome(PermissionError):
    """An outcome file outside the session's log folder: it is never unpickled."""


def call_of(rec: JobRecord) -> PythonCall | None:
    """The call a record runs, or None for shell work."""
    return rec.call


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
    return inside_logs(call.result_path(did), root)


def inside_logs(path: str, root: str) -> str:
    """``path``, checked to lead inside ``{root}/logs`` (links resolved) before anything in it is unpickled.

    Raises
    ------
    UnsafeOutcome
        When it leads outside the session's log folder.
    """
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
    outcome = read_outcome(path)
    if outcome[0]:
        return outcome
    # Which item raised (of a chunk: the first that did) is known only by reading them in order.
    return next(((ok, value) for ok, value in step_outcomes(rec, index, root) if not ok), outcome)


def function_error(rec: JobRecord, index: int, root: str) -> BaseException | None:
    """The exception a Python call raised in a FAILED step (None: not a call, or it did not raise)."""
    if rec.states[index] is not State.FAILED:
        return None
    outcome = read_step_outcome(rec, index, root)
    return None if outcome is None or outcome[0] else outcome[1]


def step_items(rec: JobRecord, index: int) -> range:
    """The items of a map that step ``index`` runs (``range(index, index + 1)`` unless the map is chunked;
    read from the call and items files' headers, no function unpickled)."""
    call = call_of(rec)
    if call is None or call.items is None:
        return range(index, index + 1)
    chunk = read_chunk(call.call)
    if chunk == 1:
        return range(index, index + 1)
    return chunk_range(index, chunk, item_count(call.items))


def step_outcomes(rec: JobRecord, index: int, root: str) -> Iterator[tuple[bool, Any]]:
    """Each item's ``(True, value)`` or ``(False, exception)`` of a step, read one at a time (none: no outcome)."""
    path = outcome_path(rec, index, root)
    if path is None or outcome_kind(path) is None:
        return
    for item, (ok, value) in zip(step_items(rec, index), read_outcomes(path)):
        yield (True, value) if ok else (False, _noted(value, rec, index, item, root))


def _noted(exc: BaseException, rec: JobRecord, index: int, item: int, root: str) -> BaseException:
    """``exc`` with a note naming the step and item that raised it (PEP 678): the remote traceback alone
    does not say which of many it was."""
    if rec.kind == "array":
        where = f"step {rec.step_id(index)} of array {rec.id} {rec.name!r}"
    else:
        where = f"job {rec.id} {rec.name!r}"
    call = call_of(rec)
    if call is not None and call.items is not None:
        where += f", item {item}"
        try:
            where += f": {reprlib.repr(read_item(inside_logs(call.items, root), item))}"
        except Exception:  # the items file is gone or unsafe: the index alone still says which
            pass
    exc.add_note(f"nbdist: raised in {where}")
    return exc


def map_results(array: Sequence[Any], rec: JobRecord, root: str, return_exceptions: bool) -> list[Any]:
    """A map's values, one per item in item order, every step ended (``Array.results``).

    An item that raised gives its exception; the items of a step that wrote no outcome (killed,
    over a limit, ``sys.exit``) what the step's Job raises. Raised at the first, or in the item's
    place with ``return_exceptions``.
    """
    values: list[Any] = []
    for index in range(rec.n):
        if _extend_with_outcomes(values, rec, index, root, return_exceptions):
            continue
        try:  # no outcome: the step's Job says why (a DONE one wrote no result: sys.exit(0))
            array[index].result()
        except Exception as error:
            if not return_exceptions:
                raise
            values.extend([error] * len(step_items(rec, index)))
        else:  # retried meanwhile, and its new attempt wrote an outcome
            _extend_with_outcomes(values, rec, index, root, return_exceptions)
    return values


def _extend_with_outcomes(values: list[Any], rec: JobRecord, index: int, root: str, return_exceptions: bool) -> bool:
    """Append each item's value of a step's outcome (raise its first exception); False when it has none."""
    if rec.states[index] not in (State.DONE, State.FAILED):
        return False
    found = False
    for ok, value in step_outcomes(rec, index, root):
        found = True
        if not ok and not return_exceptions:
            raise value from value.__cause__
        values.append(value)
    return found
