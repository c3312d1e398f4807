"""Snapshots: everything a view draws about one job or array, computed by the core in one go.

The widget, the text/HTML repr and the CLI only draw a :class:`Snapshot`; none of them reads the
registry, the backend or a log file. The snapshot is the one place that decides what they show:
which step's logs (:func:`default_log_step`: the first failed, else the first running one) and how
failures are grouped (by their last stderr line). A snapshot of a 10,000-step array costs well under 10 ms: counts are kept
incrementally by the session, only one page of rows is built, and log tails read at most 64 KiB.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .logs import MAX_GROUPED_FAILURES, LogCache
from .progress import Progress, progress_of
from .state import State

if TYPE_CHECKING:
    from .records import JobRecord

__all__ = ["MAX_FAILURE_GROUPS", "Snapshot", "StepRow", "build_snapshot", "default_log_step", "param_names"]

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
    params: Mapping[str, Any] | None = None  # the step's parameters (an ``over=`` sweep), else None
    cpu_percent: float | None = None  # of a running step, as its backend last sampled it
    # Of a step that holds or held a GPU: gpu_percent, and gpu_mem_mb (running) or gpu_mem_peak_mb (ended).
    gpu: Mapping[str, float] | None = None


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
        ``[(last stderr line, [step ids]), ...]`` of failed steps, largest group first (a step with
        an empty stderr is grouped by the core's message, ``"STATE: message"``).
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
    param_names: tuple[str, ...] = ()  # the sweep's parameters: one column each
    where: Mapping[str, str] = field(default_factory=dict)  # the parameter filter of ``rows``
    reason: str | None = None  # why waiting steps wait (:func:`nbdist.session.reasons.waiting_reason`)
    version: int = 0  # the record's change counter when taken (see ``Session.version``)
    submitted: float = 0.0  # when it was submitted (seconds since the epoch)
    progress: Progress | None = None  # throughput, ETA, efficiency and timeline (:mod:`.progress`)


def _row(rec: JobRecord, index: int, now: float) -> StepRow:
    runtime = rec.runtime_of(index, now)
    params = rec.sweep.params if rec.sweep is not None else None
    live = rec.live_usage.get(index)
    return StepRow(
        step=rec.step_id(index),
        distributor_id=rec.dids[index],
        state=rec.states[index],
        exit_code=rec.exit_codes[index],
        runtime_s=None if runtime is None else round(runtime, 3),
        max_rss_mb=rec.rss[index] if live is None else live.get("rss_mb"),
        attempt=rec.attempts[index],
        message=rec.messages[index],
        params=params[index] if params else None,
        cpu_percent=None if live is None else live.get("cpu_percent"),
        gpu={key: value for key, value in (live or {}).items() if key.startswith("gpu")} or rec.gpu.get(index) or None,
    )


def default_log_step(rec: JobRecord) -> int | None:
    """The index of the step worth a glance: the first failed one, else the first running one, else
    the first step once every step is terminal (what ``nbdist logs ARRAY`` shows too); None while
    the rest only wait."""
    for state in (State.FAILED, State.TIMEOUT, State.OUT_OF_MEMORY, State.LOST, State.RUNNING):
        indices = rec.by_state[state]
        if indices:
            return min(indices)
    return 0 if rec.all_terminal else None


def build_snapshot(rec: JobRecord, logs: LogCache, *, state: State | str | None = None, page: int = 0,
                   page_size: int = 50, log_step: int | None = None, tail_lines: int = 20,
                   where: Mapping[str, Any] | None = None, reason: str | None = None) -> Snapshot:
    """Compute the Snapshot of a record (the session calls this under its lock).

    ``where`` keeps the rows whose parameters equal the given values (compared as text, so
    ``{"lr": "0.1"}`` matches 0.1); a name the sweep does not have is a ValueError.
    """
    if page_size < 1:
        raise ValueError(f"page_size must be positive, not {page_size}")
    filter_state = State(state) if state is not None else None
    names = param_names(rec)
    wanted = {str(key): str(value) for key, value in (where or {}).items()}
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        known = ", ".join(names) if names else "none (not an over= sweep)"
        raise ValueError(f"no parameter {unknown[0]!r}; parameters: {known}")
    now = time.time()
    rows, page, pages = _rows(rec, filter_state, page, page_size, now, wanted)
    if rec.steps is None:
        log_index: int | None = 0
    elif log_step is not None:
        log_index = rec.index_of(log_step)
    else:
        log_index = default_log_step(rec)
    stdout_tail, stderr_tail = _log_tails(rec, logs, log_index, tail_lines)
    end = _end_of(rec, now)
    return Snapshot(
        id=str(rec.id),
        name=rec.name,
        backend=rec.backend,
        kind=rec.kind,
        state=rec.overall_state(),
        counts=rec.counts(),
        total=rec.n,
        done_fraction=rec.n_terminal / rec.n if rec.n else 1.0,
        elapsed_s=round(max(0.0, end - rec.created), 3),
        all_terminal=rec.all_terminal,
        rows=rows,
        page=page,
        pages=pages,
        filter_state=filter_state,
        log_step=None if rec.steps is None or log_index is None else rec.step_id(log_index),
        stdout_tail=stdout_tail,
        stderr_tail=stderr_tail,
        failure_groups=_failure_groups(rec, logs),
        param_names=names,
        where=wanted,
        reason=reason,
        version=rec.version,
        submitted=rec.created,
        progress=progress_of(rec, end),  # a finished job's timeline ends where it did, and stops changing
    )


def _end_of(rec: JobRecord, now: float) -> float:
    """When the job ended (its record's end, else its last step's end), or ``now`` while it runs."""
    if not rec.all_terminal:
        return now
    if rec.ended:
        return rec.ended
    ends = [start + wall for start, wall in zip(rec.started, rec.runtimes) if start and wall is not None]
    return max(ends, default=now)


def param_names(rec: JobRecord) -> tuple[str, ...]:
    """The parameter names of a sweep, in first-seen order (``()`` for steps without parameters)."""
    params = rec.sweep.params if rec.sweep is not None else None
    if not params:
        return ()
    names: dict[str, None] = {}
    for step_params in params[:1000]:  # a sweep's steps share their names; a mixed list shows the first ones
        names.update(dict.fromkeys(map(str, step_params)))
    names.pop("step", None)  # reserved: a Python cell's rows carry their step id, which has its own column
    return tuple(names)


def _rows(rec: JobRecord, filter_state: State | None, page: int, page_size: int,
          now: float, where: Mapping[str, str]) -> tuple[list[StepRow], int, int]:
    """One page of rows (of the steps in ``filter_state`` whose parameters match ``where``, when
    given); ``(rows, page, pages)``."""
    if where:
        params = rec.sweep.params if rec.sweep is not None else None
        candidates = sorted(rec.by_state[filter_state]) if filter_state is not None else range(rec.n)
        chosen = [i for i in candidates if params and all(str(params[i].get(k)) == v for k, v in where.items())]
        pages = max(1, -(-len(chosen) // page_size))
        page = min(max(page, 0), pages - 1)
        return [_row(rec, i, now) for i in chosen[page * page_size:(page + 1) * page_size]], page, pages
    if filter_state is None:
        pages = max(1, -(-rec.n // page_size))
        page = min(max(page, 0), pages - 1)
        indices: list[int] | range = range(page * page_size, min(rec.n, (page + 1) * page_size))
    else:
        chosen = sorted(rec.by_state[filter_state])
        pages = max(1, -(-len(chosen) // page_size))
        page = min(max(page, 0), pages - 1)
        indices = chosen[page * page_size:(page + 1) * page_size]
    return [_row(rec, index, now) for index in indices], page, pages


def _log_tails(rec: JobRecord, logs: LogCache, index: int | None, tail_lines: int) -> tuple[str, str]:
    """The stdout and stderr tails of one step (``("", "")`` when none is chosen or it has no logs)."""
    if index is None:
        return "", ""
    paths = rec.log_paths(index)
    if paths is None:
        return "", ""
    key = (index, rec.dids[index], tail_lines)
    return logs.tails(rec.id, key, paths, tail_lines, finished=rec.states[index].is_terminal)


def _failure_groups(rec: JobRecord, logs: LogCache) -> list[tuple[str, list[int]]]:
    """Failed steps grouped by their last stderr line; the record keeps them grouped by message, so
    only the steps of the largest message groups are looked at."""
    largest = sorted(rec.failure_groups.items(), key=lambda item: -len(item[1]))[:MAX_FAILURE_GROUPS]
    if sum(len(members) for _, members in largest) > MAX_GROUPED_FAILURES:  # too many files to read
        step_ids = rec.steps if rec.steps is not None else [0]
        return [(message, [step_ids[i] for i in sorted(members)]) for message, members in largest]
    failed: list[tuple[str, int, str | None]] = []
    for message, members in largest:
        for index in sorted(members):
            paths = rec.log_paths(index)
            step = 0 if rec.steps is None else rec.steps[index]
            failed.append((message, step, None if paths is None else paths.stderr))
    return logs.group_by_last_line(failed)[:MAX_FAILURE_GROUPS]
