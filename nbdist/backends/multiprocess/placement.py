"""Where a queued task goes: cores, GPUs, prefetch depth and work stealing, pure functions (they read, never
change, state).

A consumer may hold queued tasks behind its running one, so it never waits on a round-trip to the
distributor between tasks. How deep depends on the job's *pace* (how long its last finished step
ran): short steps get a deep queue (fewer, bigger messages), steps up to a second get one, and steps
of unknown or long duration get none: they wait for a free consumer. Steps queued behind a running
one that turned out slow are taken back while another consumer is idle (work stealing).

GPUs are slots like cores (:mod:`.gpu_slots`): a task that asks for ``gpus=k`` starts only when ``k``
of the machine's devices are free, and holds them until it ends. It is never queued behind a running
task, so a device is never held by a task that does not run yet; one waiting for a device lets the
tasks behind it that need none start first.
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .slots import ConsumerSlot, QueuedTask

__all__ = ["ANY_JOB", "MEDIUM_TASK_SECONDS", "PREFETCH_SHORT", "SHORT_TASK_SECONDS", "STEAL_AFTER_SECONDS",
           "pace_of", "pick_slot", "prefetch_depth", "seconds_until_slow", "tasks_to_take_back"]

# Prefetch depth of a job whose steps last under SHORT_TASK_SECONDS; one under MEDIUM_TASK_SECONDS.
# Deeper cuts messages per task for tiny steps, but more tasks are lost if a consumer dies.
PREFETCH_SHORT = 8
SHORT_TASK_SECONDS = 0.05
MEDIUM_TASK_SECONDS = 1.0
# A queued step waits behind a running one that has taken this long, and at least twice its job's
# pace, while another consumer is idle: the distributor takes it back. Shorter steals sooner but
# may move steps that were about to run anyway.
STEAL_AFTER_SECONDS = 0.1


# The pace key of the last task that finished, whatever its job: the pace of a job none of whose steps
# has finished yet. Single submits (Jobmon's way) are each a job of one task: without it none would be
# prefetched, and each would wait on a round-trip to the distributor. A guess that turns out wrong
# costs one steal (a queued step behind a slow one is taken back while another consumer is idle).
ANY_JOB = ""


def pace_of(job_id: str, pace: Mapping[str, float]) -> float | None:
    """A job's pace: its last finished step's duration, else the last finished task's (None: no task yet)."""
    return pace.get(job_id, pace.get(ANY_JOB))


def prefetch_depth(pace: float | None) -> int:
    """How many of a job's tasks a consumer may hold behind its running one, given the job's pace."""
    if pace is None or pace >= MEDIUM_TASK_SECONDS:
        return 0
    return PREFETCH_SHORT if pace < SHORT_TASK_SECONDS else 1


def seconds_until_slow(pace: float | None, started: float | None, now: float) -> float | None:
    """Seconds until a task running since ``started`` counts as slow (its queue is taken back); None if it does.

    A task not started yet (``started`` None) counts as just started.
    """
    limit = max(STEAL_AFTER_SECONDS, 2 * (pace or 0.0))
    elapsed = now - started if started is not None else 0.0
    return limit - elapsed if elapsed < limit else None


def pick_slot(task: QueuedTask, slots: Sequence[ConsumerSlot], parallelism: int, pace: Mapping[str, float],
              refilling: Container[ConsumerSlot], now: float) -> ConsumerSlot | None:
    """Where ``task`` goes now: an idle consumer if its cores are free; else, for a 1-core task without
    GPUs, the least loaded consumer it may be queued on (None: it waits). Its GPUs are free (the caller
    checked: :meth:`.gpu_slots.GpuSlots.waits`).

    ``pace`` is each job's last step duration (and :data:`ANY_JOB`'s); ``refilling`` the consumers already getting tasks in
    this round (they are topped up to the full depth in one message, others only below half depth).
    """
    cores = task.resources.cores
    in_use = sum(slot.cores_in_use() for slot in slots)
    usable = [slot for slot in slots if slot.usable]
    for slot in usable:
        if not slot.assigned:
            return slot if in_use + cores <= parallelism else None
    if cores != 1 or task.resources.gpus:  # its devices would be held while it waits
        return None
    depth = prefetch_depth(pace_of(task.job_id, pace))
    best = None
    for slot in usable:
        queued = len(slot.assigned) - 1
        running = slot.assigned[0]
        if running.resources.cores != 1 or queued >= min(depth, prefetch_depth(pace_of(running.job_id, pace))):
            continue
        if seconds_until_slow(pace.get(running.job_id), running.started, now) is None:
            continue  # this one turned out slow: don't queue behind it
        if queued > depth // 2 and slot not in refilling:
            continue
        if best is None or len(slot.assigned) < len(best.assigned):
            best = slot
    return best


def tasks_to_take_back(slots: Sequence[ConsumerSlot], pace: Mapping[str, float],
                       now: float) -> tuple[list[tuple[ConsumerSlot, list[QueuedTask]]], float | None]:
    """Work stealing, for when a consumer is idle: the queued tasks to take back from each consumer
    whose running task turned out slow, and the seconds until the next running task turns slow."""
    taken: list[tuple[ConsumerSlot, list[QueuedTask]]] = []
    next_look = None
    for slot in slots:
        queued = [task for task in list(slot.assigned)[1:] if not task.recalled]
        if not queued:
            continue
        running = slot.assigned[0]
        wait = seconds_until_slow(pace.get(running.job_id), running.started, now)
        if wait is None:
            taken.append((slot, queued))
        else:
            next_look = wait if next_look is None else min(next_look, wait)
    return taken, next_look
