"""Why a job waits: the one line a view shows next to QUEUED or PENDING steps.

A step waits for one of four things, checked in this order:

- a dependency (``after=``) that has not ended DONE yet — PENDING;
- the array's own ``max_concurrent`` limit, its steps at the limit — QUEUED;
- the scheduler's own reason (Slurm's ``squeue %r``, carried in the step's message as
  ``pending (Resources)``) — QUEUED;
- the backend's GPUs, when the step asks for some and fewer are free than it asks (the multiprocess
  backend gives each GPU to one step at a time) — QUEUED, naming the jobs that hold them;
- the backend's slots, busy with other work of this session (the multiprocess backend runs at most
  ``parallelism`` cores at once) — QUEUED, naming the jobs that hold the slots.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .state import State

if TYPE_CHECKING:
    from .records import JobRecord

__all__ = ["MAX_NAMED_HOLDERS", "waiting_reason"]

# The slots line names at most this many jobs holding slots (the busiest first).
MAX_NAMED_HOLDERS = 3


def waiting_reason(rec: JobRecord, others: Iterable[JobRecord], slots: int | None,
                   gpus: Callable[[], int | None] | None = None) -> str | None:
    """Why ``rec``'s waiting steps do not run yet; None when none waits (lock held).

    Parameters
    ----------
    rec
        The job or array drawn.
    others
        Every record of the session (``rec`` among them): who holds the backend's slots.
    slots
        Cores the backend runs at once (None: unknown, e.g. Slurm's).
    gpus
        How many GPUs the backend places itself (asked only when ``rec`` wants some; None: it places
        none, or its scheduler does).
    """
    if rec.by_state[State.PENDING]:
        return _dependency(rec)
    queued = rec.by_state[State.QUEUED]
    if not queued:
        return None
    running = len(rec.by_state[State.RUNNING])
    limit = rec.max_concurrent
    if limit is not None and (running >= limit or rec.held):
        return f"max_concurrent={limit}: {running} of its steps running"
    scheduler = next((rec.messages[i] for i in sorted(queued)[:1]
                      if (rec.messages[i] or "").startswith("pending (")), None)
    if scheduler is not None:
        return f"Slurm: {scheduler[len('pending ('):].rstrip(')')}"
    others = list(others)
    asked = _gpus(rec)
    total = gpus() if gpus is not None and asked else None
    if total is not None:
        reason = _gpu_slots(rec, others, total, asked)
        if reason is not None:
            return reason
    return _slots(rec, others, slots)


def _gpus(rec: JobRecord) -> int:
    """GPUs each step of ``rec`` asks for (0 for a Slurm GRES type such as 'a100:1': Slurm's business)."""
    value = str(rec.resources.get("gpus") or 0)
    return int(value) if value.isdigit() else 0


def _gpu_slots(rec: JobRecord, others: list[JobRecord], gpus: int, asked: int) -> str | None:
    """"GPUs busy: …" when the running steps of the backend leave fewer than ``asked`` free; else None."""
    holders = sorted(((len(other.by_state[State.RUNNING]) * _gpus(other), other) for other in others
                      if other.backend == rec.backend and other.by_state[State.RUNNING] and _gpus(other)),
                     key=lambda item: (-item[0], item[1].id))
    busy = sum(n for n, _ in holders)
    if gpus - busy >= asked:
        return None
    named = ", ".join(f"{other.name} (id {other.id}): {n}" for n, other in holders[:MAX_NAMED_HOLDERS])
    more = f", +{len(holders) - MAX_NAMED_HOLDERS} more" if len(holders) > MAX_NAMED_HOLDERS else ""
    each = f"{asked} GPU{'s' if asked != 1 else ''} per step"
    return f"GPUs busy: {busy} of {gpus} in use ({each}) — {named or 'none of this session'}{more}"


def _dependency(rec: JobRecord) -> str:
    for dep, index in rec.after:
        state = dep.overall_state() if index is None else dep.states[index]
        if state is not State.DONE:
            label = dep.name if index is None else f"{dep.name}:{dep.step_id(index)}"
            return f"waiting for {label} (id {dep.id}, {state.value})"
    return "waiting for its dependencies"


def _slots(rec: JobRecord, others: Iterable[JobRecord], slots: int | None) -> str:
    holders = sorted(((len(other.by_state[State.RUNNING]), other) for other in others
                      if other.backend == rec.backend and other.by_state[State.RUNNING]),
                     key=lambda item: (-item[0], item[1].id))
    busy = sum(n * int(other.resources.get("cores") or 1) for n, other in holders)
    if not holders:
        return "waiting for the backend to start it"
    named = ", ".join(f"{other.name} (id {other.id}): {n}" for n, other in holders[:MAX_NAMED_HOLDERS])
    more = f", +{len(holders) - MAX_NAMED_HOLDERS} more" if len(holders) > MAX_NAMED_HOLDERS else ""
    total = f"{busy} of {slots}" if slots else str(busy)
    return f"slots busy: {total} cores running — {named}{more}"
