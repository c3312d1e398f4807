"""Arrays with sbatch calls still to make: held back by ``max_concurrent`` or a site's submit limit.

An array's :class:`~.arrays.ArrayPlan` says which calls were made; the rest wait here, and the
distributor's poller calls :meth:`HeldCalls.advance` after each ``squeue``: it raises the ``%``
throttles of the calls made as their tasks drain and makes the next calls as far as the plan allows.

A plan outlives its session: its file (``{name}.a{JOBID}`` beside the logs, rewritten after every
call) says the calls made and the command, so a distributor that adopts the array's steps after the
session died (``attach``) takes the held calls over (:meth:`HeldCalls.resume`) and makes them as the
dead session would have: every step keeps its id, none is submitted twice, none is lost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...cluster_protocol import TaskInstanceStatus as Status
from ...cluster_protocol.naming import array_id
from ...cluster_protocol.resources import Resources
from .._table import TaskTable
from .arrays import ArrayPlan
from .submitter import Submitter, slurm_ids_of
from .task import SlurmTask

__all__ = ["HeldCalls"]


class HeldCalls:
    """The arrays of one distributor that have calls still to make, and making them.

    Parameters
    ----------
    submitter, tasks
        The distributor's sbatch calls and task table (whose lock guards the records).
    finish
        Ends a record: ``finish(record, status, message)`` (the table's lock held).
    """

    def __init__(self, submitter: Submitter, tasks: TaskTable[SlurmTask],
                 finish: Callable[[SlurmTask, str, str], Any]) -> None:
        self.submitter = submitter
        self.tasks = tasks
        self.finish = finish
        self.plans: list[tuple[ArrayPlan, str, str, Resources]] = []  # (plan, command, name, resources)

    def add(self, plan: ArrayPlan, command: str, name: str, resources: Resources) -> None:
        """An array whose plan has calls to make (once per plan)."""
        if all(entry[0] is not plan for entry in self.plans):
            self.plans.append((plan, command, name, resources))

    def resume(self, record: SlurmTask, name: str, resources: Resources) -> None:
        """An adopted step that its dead session never submitted: its array's held calls are made here,
        or, from a plan file that does not say its command (an older nbdist's), it is lost (lock held)."""
        plan = record.plan
        assert plan is not None
        if plan.command is None:
            self.finish(record, Status.UNKNOWN_ERROR, "lost: never submitted by the session that held it back, "
                        "and its plan file (from an older nbdist) does not say its command")
            return
        record.message = "adopted: held back (max_concurrent or a submit limit), submitted as jobs finish"
        self.add(plan, plan.command, name, resources)

    def cancel(self, records: list[SlurmTask]) -> None:
        """End steps whose call is still held back; an array with none left makes no more calls (lock held)."""
        for record in records:
            self.finish(record, Status.KILL_SELF, "cancelled before it was submitted")
        for plan in {id(record.plan): record.plan for record in records if record.plan is not None}.values():
            if not any(r.plan is plan and r.slurm_id is None for r in self.tasks.live.values()):
                plan.cancelled = True

    def advance(self) -> bool:
        """Raise throttles and make held-back calls of the arrays that have some; True if any was made."""
        changed = False
        lock = self.tasks.lock
        for entry in list(self.plans):
            plan, command, name, resources = entry
            with lock:
                unfinished: dict[str, int] = {}
                for slurm_id in {r.slurm_id for r in self.tasks.live.values() if r.plan is plan and r.slurm_id}:
                    job_id = slurm_id.partition("_")[0]
                    unfinished[job_id] = unfinished.get(job_id, 0) + 1
            self.submitter.raise_throttles(plan, unfinished)
            made = self.submitter.make_calls(plan, command, name, resources, sum(unfinished.values())) \
                if not plan.complete else []
            with lock:
                for step, slurm_id in slurm_ids_of(plan, made).items():
                    record = self.tasks.records.get(array_id(str(plan.base), step))
                    if record is not None and record.slurm_id is None:
                        record.slurm_id, record.message = slurm_id, "submitted"
                held = [r for r in self.tasks.live.values() if r.plan is plan and r.slurm_id is None]
                for record in held:
                    if plan.cancelled:
                        self.finish(record, Status.UNKNOWN_ERROR, plan.held or "lost: never submitted")
                    elif plan.held:
                        record.message = f"held back by a submit limit, submitted as jobs finish: {plan.held}"
            changed = changed or bool(made)
            if plan.complete:
                self.plans.remove(entry)
        return changed
