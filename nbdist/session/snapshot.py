"""Snapshots: everything a view draws about one job or array, computed by the core in one go.

The widget, the text/HTML repr and the CLI only draw a :class:`Snapshot`; none of them reads the
registry or the backend. A snapshot of a 10,000-step array costs well under 10 ms: counts are kept
incrementally by the session, only one page of rows is built, and log tails read at most 64 KiB.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .handles import read_tail
from .state import State

if TYPE_CHECKING:
    from .handles import JobRecord

__all__ = ["Snapshot", "StepRow", "build_snapshot", "MAX_FAILURE_GROUPS"]

# The failure summary lists this many distinct messages (largest groups first): enough to see the
# causes, few enough to draw.
MAX_FAILURE_GROUPS = 10


@dataclass(frozen=True)
class StepRow:
    """One row of a snapshot: a step (or the job itself, ``step=None``)."""

    step: int | None
    distributor_id: str | None
    state: State
    exit_code: int | None
    runtime_s: float | None
    max_rss_mb: float | None
    attempt: int
    message: str | None


@dataclass(frozen=True)
class Snapshot:
    """The state of one job or array at one moment.

    Attributes
    ----------
    counts
        Steps per state, every ``State`` value present (a job counts as one step).
    done_fraction
        Terminal steps / total (0.0 … 1.0).
    rows
        One page of steps (filtered by ``filter_state`` when set).
    log_step
        The step whose log tails are included (None for a plain job, or when no step is chosen).
    failure_groups
        ``[(message, [step ids]), ...]`` of failed steps grouped by message, largest first.
    state
        The State of the job, or the summary State of the array.
    """

    id: str
    name: str
    backend: str
    kind: str
    counts: dict[str, int]
    total: int
    done_fraction: float
    elapsed_s: float
    all_terminal: bool
    rows: list[StepRow]
    page: int
    pages: int
    filter_state: State | None
    log_step: int | None
    stdout_tail: str
    stderr_tail: str
    failure_groups: list[tuple[str, list[int]]] = field(default_factory=list)
    state: State = State.PENDING  # the job's (or the array's summary) State, as ``handle.state``


def _row(rec: JobRecord, index: int, now: float) -> StepRow:
    runtime = rec.runtime_of(index, now)
    return StepRow(
        step=rec.step_id(index),
        distributor_id=rec.dids[index],
        state=rec.states[index],
        exit_code=rec.exit_codes[index],
        runtime_s=None if runtime is None else round(runtime, 3),
        max_rss_mb=rec.rss[index],
        attempt=rec.attempts[index],
        message=rec.messages[index],
    )


def _default_log_index(rec: JobRecord) -> int | None:
    """The step worth a glance: the first failed one, else the first running one."""
    for state in (State.FAILED, State.TIMEOUT, State.OUT_OF_MEMORY, State.LOST, State.RUNNING):
        indices = rec.by_state[state]
        if indices:
            return min(indices)
    return None


def build_snapshot(rec: JobRecord, *, state: State | str | None = None, page: int = 0, page_size: int = 50,
                   log_step: int | None = None, tail_lines: int = 20) -> Snapshot:
    """Compute the Snapshot of a record (the session calls this under its lock)."""
    if page_size < 1:
        raise ValueError(f"page_size must be positive, not {page_size}")
    filter_state = State(state) if state is not None else None
    now = time.time()
    counts = rec.counts()
    if filter_state is None:
        total_rows = rec.n
        pages = max(1, -(-total_rows // page_size))
        page = min(max(page, 0), pages - 1)
        indices: list[int] | range = range(page * page_size, min(rec.n, (page + 1) * page_size))
    else:
        chosen = sorted(rec.by_state[filter_state])
        pages = max(1, -(-len(chosen) // page_size))
        page = min(max(page, 0), pages - 1)
        indices = chosen[page * page_size:(page + 1) * page_size]
    rows = [_row(rec, index, now) for index in indices]

    if rec.steps is None:
        log_index: int | None = 0
        shown_step = None
    elif log_step is not None:
        log_index = rec.index_of(log_step)
        shown_step = log_step
    else:
        log_index = _default_log_index(rec)
        shown_step = None if log_index is None else rec.step_id(log_index)
    stdout_tail = stderr_tail = ""
    if log_index is not None:
        paths = rec.log_paths(log_index)
        if paths is not None:
            # A finished step's logs do not change: keep its tails, so redrawing reads no file (each
            # read gives up the GIL, and getting it back can take milliseconds while the poller works).
            key = (log_index, rec.dids[log_index], tail_lines)
            cached = rec.tail_cache
            if cached is not None and cached[0] == key:
                stdout_tail, stderr_tail = cached[1]
            else:
                stdout_tail = read_tail(paths.stdout, tail_lines)
                stderr_tail = read_tail(paths.stderr, tail_lines)
                if rec.states[log_index].is_terminal:
                    rec.tail_cache = (key, (stdout_tail, stderr_tail))

    largest = sorted(rec.failure_groups.items(), key=lambda item: -len(item[1]))[:MAX_FAILURE_GROUPS]
    if rec.steps is None:
        failure_groups = [(message, [0]) for message, _ in largest]
    else:
        step_ids = rec.steps
        failure_groups = [(message, [step_ids[i] for i in sorted(members)]) for message, members in largest]
    end = rec.ended if rec.all_terminal and rec.ended else now
    return Snapshot(
        id=str(rec.id),
        name=rec.name,
        backend=rec.backend,
        kind=rec.kind,
        state=rec.overall_state(),
        counts=counts,
        total=rec.n,
        done_fraction=rec.n_terminal / rec.n if rec.n else 1.0,
        elapsed_s=round(max(0.0, end - rec.created), 3),
        all_terminal=rec.all_terminal,
        rows=rows,
        page=page,
        pages=pages,
        filter_state=filter_state,
        log_step=shown_step,
        stdout_tail=stdout_tail,
        stderr_tail=stderr_tail,
        failure_groups=failure_groups,
    )
