"""The worker node of the Slurm backend: a task knows itself by Slurm's environment."""

from __future__ import annotations

import os

from .._task.node import WorkerNode, current_distributor_id

__all__ = ["SlurmWorkerNode"]


class SlurmWorkerNode(WorkerNode):
    """What a task running as a Slurm job knows about itself (from Slurm's environment)."""

    @property
    def distributor_id(self) -> str | None:
        """``JOBID`` for a job, ``ARRAYJOBID_TASKID`` for an array step, None outside a job."""
        return current_distributor_id()

    @property
    def array_step_id(self) -> int | None:
        """``SLURM_ARRAY_TASK_ID`` as an int, None for a plain job."""
        step = os.environ.get("SLURM_ARRAY_TASK_ID") or os.environ.get("ARRAY_STEP_ID")
        return int(step) if step not in (None, "") else None
