"""Cancelling steps of a packed Slurm task without ending the task's other steps.

A packed task (``steps_per_task`` > 1, :mod:`.arrays`) is one Slurm array task whose ``nbdist-worker``
runs several steps one after another. ``scancel`` can only end the whole task, so::

    terminate(ids) ──► split(), per Slurm task ─┬─► every unfinished step targeted ──► scancel (one call)
                                                └─► some steps go on ──► a marker {stem}.k{id} beside
                                                                          each targeted step's logs
    worker: before each step, and every CANCEL_POLL_SECONDS while one runs: its marker? ──► skip / kill it

The marker, not a signal, carries the request: a signal cannot say *which* step to end, it can reach
a step that has just ended and miss the one that has not started yet, and ``SIGUSR1``/``SIGUSR2`` are the
task's own (the worker forwards them). A file needs no call to the controller, is seen by a step
whose turn comes later, and survives a Slurm requeue of the task (so a cancelled step stays skipped).
The verdict still comes from the worker: it writes the step's exit info (``K``) as it skips or kills it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterable

from ...cluster_protocol.naming import array_id, cancel_marker_path, exit_info_path, write_json_atomic
from .._table import TaskTable
from .task import SlurmTask

__all__ = ["split", "write_markers"]

logger = logging.getLogger(__name__)


def split(targets: Iterable[SlurmTask], tasks: TaskTable[SlurmTask]) -> tuple[set[str], list[SlurmTask]]:
    """``(Slurm ids to scancel, packed steps to cancel by marker)`` for the submitted ``targets``.

    A Slurm task is scancelled when it runs one step, or when no step of it would run on (each has
    finished, is a target, or was cancelled before); otherwise its targets are marked and its other
    steps run on. A step has finished when its record has ended or its exit info is there (the poller
    may not have seen it yet); one this distributor does not track (an adopted array may be partial)
    is judged by its exit info alone.
    """
    scancel: set[str] = set()
    packs: dict[str, list[SlurmTask]] = {}
    for record in targets:
        if record.slurm_id is None:
            continue
        if record.packed:
            packs.setdefault(record.slurm_id, []).append(record)
        else:
            scancel.add(record.slurm_id)
    marked: list[SlurmTask] = []
    for slurm_id, chosen in packs.items():
        if any(_runs_on(step, chosen[0], tasks) for step in _others(chosen)):
            marked.extend(chosen)
        else:
            scancel.add(slurm_id)
    return scancel, marked


def _others(chosen: list[SlurmTask]) -> list[int]:
    """The steps of the chosen steps' packed task that are not chosen."""
    plan, first = chosen[0].plan, chosen[0].array_step_id or 0
    assert plan is not None
    picked = {record.array_step_id for record in chosen}
    return [step for step in plan.steps(first // plan.per_task) if step not in picked]


def _runs_on(step: int, mate: SlurmTask, tasks: TaskTable[SlurmTask]) -> bool:
    """Whether ``step`` of ``mate``'s array would still run (pack-mates share their name and folders)."""
    distributor_id = array_id(mate.job_id, step)
    record = tasks.records.get(distributor_id)
    if record is not None and (distributor_id not in tasks.live or record.cancel_requested):
        return False
    return not os.path.exists(exit_info_path(mate.stdout_dir, mate.name, distributor_id))


def write_markers(records: Iterable[SlurmTask]) -> set[str]:
    """Write each step's cancel marker (atomically); the Slurm ids of steps whose marker could not be written.

    Those must be scancelled instead (their pack-mates end with them): a kill must never be lost.
    """
    failed: set[str] = set()
    request = {"requested": time.time(), "host": socket.gethostname(), "pid": os.getpid()}
    for record in records:
        path = cancel_marker_path(record.stdout_dir, record.name, record.distributor_id, record.stem)
        try:
            os.makedirs(record.stdout_dir, exist_ok=True)
            write_json_atomic(path, request)
        except OSError as exc:
            logger.warning("could not write the cancel marker %s (%s): cancelling its whole packed task %s",
                           path, exc, record.slurm_id)
            failed.add(str(record.slurm_id))
    return failed
