"""How an array of any length becomes sbatch calls, and which Slurm task runs each step. No I/O.

Slurm caps an array's indices at ``MaxArraySize - 1`` (1001 by default and on many sites), counts every
array task against ``MaxJobCount``, and sites cap what one user may have queued (``MaxSubmitJobs``). So an
array is an :class:`ArrayPlan`: its tasks (each ``per_task`` consecutive steps) go out in as many
``sbatch --array`` calls as needed, and a call the site refuses for a submit limit is held back and
made again as the array's jobs finish. Step ids stay ``{base}_{step}`` (``base``: the first call's job id)
whichever call runs the step, so the session sees one array.

``max_concurrent`` holds across calls: Slurm's ``%K`` is per call, so the plan hands each call a share of
the budget in order — a call is made only while the array has fewer than ``max_concurrent`` unfinished
tasks, with ``%`` what is left, and each call's ``%`` is raised (``scontrol update ArrayTaskThrottle``) as
earlier calls drain. The sum of the throttles never exceeds ``max_concurrent``, and no call waits for
an earlier one to end completely (which splitting K evenly, or chaining calls by dependency, would do).
"""

from __future__ import annotations

import math
from typing import Iterable

from .sbatch import ArrayCall

__all__ = ["ArrayPlan", "Call", "default_steps_per_task", "submit_limited", "SUBMIT_LIMIT_TEXTS"]

# sbatch's words for "you (or the controller) have too many jobs right now": wait, don't fail.
SUBMIT_LIMIT_TEXTS = ("AssocMaxSubmitJobLimit", "QOSMaxSubmitJobPerUserLimit", "QOSMaxSubmitJobPerAccountLimit",
                      "AssocGrpSubmitJobsLimit", "QOSGrpSubmitJobsLimit", "MaxSubmitJobs", "MaxJobCount",
                      "Job violates accounting/QOS policy", "job queue full", "temporarily unable to accept job")
# Below MaxArraySize, "Invalid job array specification" means the array's tasks would pass MaxJobCount.
ARRAY_COUNT_TEXT = "Invalid job array specification"
# Pack an array only when one task per step would take more than this share of the controller's job
# records (MaxJobCount): the rest is for other users and for finished jobs Slurm keeps for MinJobAge.
JOB_RECORD_SHARE = 0.25


def default_steps_per_task(length: int, max_job_count: int) -> int:
    """1 for an array that fits the share (parallelism untouched); else the fewest steps a task that fit it.

    Packing serializes steps inside a task, which costs parallelism when steps are long, and nbdist
    cannot know their length up front; but an array bigger than the share is already throttled by the
    controller, so packing it costs nothing there and spares the controller ``length`` job records.
    """
    share = max(1, int(max_job_count * JOB_RECORD_SHARE))
    return max(1, math.ceil(length / share))


def submit_limited(message: str, tasks: int, max_array_size: int) -> bool:
    """True when sbatch refused a call for a submit limit (try fewer tasks, or later), not for its content."""
    if any(text.lower() in message.lower() for text in SUBMIT_LIMIT_TEXTS):
        return True
    return ARRAY_COUNT_TEXT in message and tasks < max_array_size


class Call:
    """One sbatch call made: its Slurm job id, the array's tasks it runs, its current ``%`` throttle."""

    __slots__ = ("job_id", "offset", "tasks", "throttle")

    def __init__(self, job_id: str, offset: int, tasks: int, throttle: int | None) -> None:
        self.job_id, self.offset, self.tasks, self.throttle = job_id, offset, tasks, throttle

    def as_list(self) -> list[object]:
        return [self.job_id, self.offset, self.tasks, self.throttle]


class ArrayPlan:
    """An array's steps, its tasks, and the calls made so far (the distributor makes the calls)."""

    def __init__(self, length: int, per_task: int, max_array_size: int, max_concurrent: int | None) -> None:
        self.length = length
        self.per_task = per_task
        self.tasks = math.ceil(length / per_task)
        self.max_array_size = max_array_size
        self.max_concurrent = max_concurrent
        self.base: str | None = None
        self.calls: list[Call] = []
        self.next_task = 0
        self.size_cap: int | None = None  # after a submit-limit refusal: calls no bigger than this
        self.held: str | None = None      # why the rest waits (sbatch's message), None while it need not
        self.cancelled = False
        self.command: str | None = None   # what its calls run, when read back from a plan file that says

    @property
    def complete(self) -> bool:
        """Every task has been submitted (or the array was cancelled)."""
        return self.cancelled or self.next_task >= self.tasks

    def next_call(self, unfinished_tasks: int) -> ArrayCall | None:
        """The next sbatch call, or None when everything is submitted or ``max_concurrent`` is reached."""
        if self.complete:
            return None
        size = min(self.tasks - self.next_task, self.max_array_size, self.size_cap or self.max_array_size)
        throttle = None
        if self.max_concurrent:
            budget = self.max_concurrent - unfinished_tasks
            if budget <= 0:
                return None
            throttle = min(budget, size)
        return ArrayCall(size, self.per_task, self.length, self.next_task, self.base, throttle)

    def submitted(self, call: ArrayCall, job_id: str) -> Call:
        """Record a call sbatch accepted."""
        self.base = self.base or job_id
        made = Call(job_id, call.offset, call.tasks, call.throttle)
        self.calls.append(made)
        self.next_task += call.tasks
        self.held = None
        if self.size_cap:  # after a refusal, grow back by doubling: few refused calls either way
            self.size_cap *= 2
        return made

    def refused(self, call: ArrayCall, message: str) -> bool:
        """A submit-limit refusal: try half as many tasks next; True when there is nothing smaller to try."""
        self.size_cap = call.tasks // 2 or None
        if self.size_cap is None:
            self.size_cap = 1
            self.held = message
            return True
        return False

    def steps(self, task: int) -> range:
        """The steps the array's task ``task`` runs."""
        first = task * self.per_task
        return range(first, min(first + self.per_task, self.length))

    def slurm_id(self, step: int) -> str | None:
        """``JOBID_TASK`` of the Slurm array task that runs ``step`` (None: not submitted yet)."""
        task = step // self.per_task
        for call in self.calls:
            if call.offset <= task < call.offset + call.tasks:
                return f"{call.job_id}_{task - call.offset}"
        return None

    def throttles(self, unfinished: dict[str, int]) -> Iterable[tuple[Call, int]]:
        """``(call, new throttle)`` for each call whose ``%`` may rise now (``unfinished``: tasks by job id)."""
        if not self.max_concurrent:
            return []
        budget, raises = self.max_concurrent, []
        for call in self.calls:
            share = min(unfinished.get(call.job_id, 0), budget)
            budget -= share
            if call.throttle is not None and share > call.throttle:
                raises.append((call, share))
        return raises

    def to_json(self, command: str) -> dict[str, object]:
        """What :meth:`from_json` needs to map a step to its Slurm task again and to make the calls still
        held back (adoption after a restart)."""
        return {"per_task": self.per_task, "length": self.length, "max_array_size": self.max_array_size,
                "max_concurrent": self.max_concurrent, "command": command,
                "calls": [call.as_list() for call in self.calls]}

    @classmethod
    def from_json(cls, data: dict) -> ArrayPlan:
        """The plan as written; its held-back calls are to be made by whoever adopts it (see ``command``)."""
        plan = cls(int(data["length"]), int(data["per_task"]), int(data.get("max_array_size") or 1),
                   data.get("max_concurrent"))
        for job_id, offset, tasks, *throttle in data["calls"]:
            plan.calls.append(Call(str(job_id), int(offset), int(tasks), (throttle or [None])[0]))
        plan.base = plan.calls[0].job_id if plan.calls else None
        plan.next_task = max((call.offset + call.tasks for call in plan.calls), default=0)
        plan.command = data.get("command")
        if plan.command is None:  # written before plans said their command: the rest cannot be made
            plan.next_task = plan.tasks
        return plan
