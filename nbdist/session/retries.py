"""What a retry re-runs, and what it runs: the one rule the API, the magics, the CLI and the dashboard share.

A retry re-runs the steps that failed by themselves — ``FAILED``, ``TIMEOUT``, ``OUT_OF_MEMORY``,
``LOST`` (:data:`~nbdist.session.state.RETRYABLE_STATES`, what automatic retries re-run too). Steps
that ended because someone chose so — ``KILLED`` (a user's kill, or its session ended) and
``SKIPPED`` (a dependency failed) — are spared unless asked for: ``killed=True`` in Python
(``Array.retry_failed(killed=True)``), ``--killed`` in ``%nbdist retry`` and ``nbdist retry``, the
"retry killed too" box of the dashboard. :func:`choose_retry` applies the rule; every face calls it.

A retry runs the work *as submitted*: the same command, or for a Python call the function and
arguments pickled when it was submitted — redefining the function in the notebook afterwards does
not change what a retry runs. To run a new definition on what failed, map it over
:func:`failed_items` (``Array.failed_items()``): ``fixed.map(array.failed_items())``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, NamedTuple, Protocol, TypeVar

from ..cluster_protocol.pycall import read_item
from .outcomes import call_of, inside_logs, step_items, step_outcomes
from .records import JobRecord
from .state import RETRYABLE_STATES, State

__all__ = ["SPARED_STATES", "RetryChoice", "choose_retry", "failed_items", "retry_indices", "retry_states"]

# Ended on someone's decision, not by themselves: a retry re-runs them only when asked.
SPARED_STATES = frozenset({State.KILLED, State.SKIPPED})


def retry_states(killed: bool = False) -> frozenset[State]:
    """The states a retry re-runs: those of a step that failed by itself; with ``killed``, KILLED and SKIPPED too."""
    return RETRYABLE_STATES | SPARED_STATES if killed else RETRYABLE_STATES


class _Stated(Protocol):
    @property
    def state(self) -> State: ...


S = TypeVar("S", bound=_Stated)


class RetryChoice(NamedTuple):
    """What a retry of some steps does: ``chosen`` it re-runs, ``spared`` (KILLED/SKIPPED) it leaves alone."""

    chosen: list[Any]
    spared: list[Any]


def choose_retry(steps: Iterable[S], killed: bool = False) -> RetryChoice:
    """Split steps (Jobs, or anything with a ``state``) by the retry rule; DONE and live ones are in neither list."""
    wanted = retry_states(killed)
    chosen: list[S] = []
    spared: list[S] = []
    for step in steps:
        state = step.state
        if state in wanted:
            chosen.append(step)
        elif state in SPARED_STATES:
            spared.append(step)
    return RetryChoice(chosen, spared)


def retry_indices(rec: JobRecord, killed: bool = False) -> list[int]:
    """The indices of a record's steps that a retry re-runs, in order (the rule of :func:`choose_retry`)."""
    return sorted(i for state in retry_states(killed) for i in rec.by_state[state])


def failed_items(rec: JobRecord, indices: Iterable[int], root: str) -> list[Any]:
    """The arguments of the steps ``indices`` as they were given when the array was submitted.

    A map of a Python function (``f.map``, ``f.over``, ``Executor.map``/``array``): its items, one per item
    that failed — of a chunked step, the items that raised, or all of its items when it wrote no
    outcome (killed, over a limit). An ``over=`` sweep: its parameter rows (dicts). Else the step ids.
    So ``fixed.map(array.failed_items())``, ``fixed.over(...)`` or ``session.array(cmd, over=...)``
    runs new code on exactly what failed.
    """
    call = call_of(rec)
    if call is None or call.items is None:
        params = rec.sweep.params if rec.sweep is not None else None
        if params:
            return [dict(params[i]) for i in indices]
        return [rec.step_id(i) for i in indices]
    path = inside_logs(call.items, root)
    wanted: list[int] = []
    for index in indices:
        items = step_items(rec, index)
        outcomes = list(step_outcomes(rec, index, root)) if rec.states[index] is State.FAILED else []
        if len(outcomes) == len(items):  # each item's own outcome: only those that raised
            wanted.extend(item for item, (ok, _value) in zip(items, outcomes) if not ok)
        else:
            wanted.extend(items)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{rec.name}: its items file {path} is gone (forgotten or cleaned?)")
    return [read_item(path, item) for item in wanted]
