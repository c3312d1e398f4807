"""What the Slurm backend keeps about one task: its record, and what the poller learnt of it."""

from __future__ import annotations

import os
from typing import Any

from ...cluster_protocol.naming import log_file
from ...cluster_protocol.resources import Resources
from .._table import TaskRecord
from .._task.exit_info import read_exit_info
from .arrays import ArrayPlan
from .sbatch import log_folders

__all__ = ["SlurmTask"]


class SlurmTask(TaskRecord):
    """A Slurm job or array step: its record plus what the poller learnt of it.

    ``slurm_id`` is the Slurm job or array task that runs it (several steps share one when packed;
    None while its sbatch call is held back), ``plan`` the array's :class:`~.arrays.ArrayPlan`, and
    ``raw_job_id`` Slurm's own id of that job or array task (squeue's ``JobID``, what sstat knows).
    """

    __slots__ = ("slurm_state", "queue_error", "missing_polls", "ended_seen_at", "slurm_id", "plan", "requeues",
                 "raw_job_id")

    def __init__(self, distributor_id: str, name: str, resources: Resources, log_dir: str,
                 slurm_id: str | None = None, plan: ArrayPlan | None = None) -> None:
        super().__init__(distributor_id, name, resources, *log_folders(resources, log_dir))
        self.slurm_state: str | None = None
        self.queue_error: str | None = None
        self.missing_polls = 0
        self.ended_seen_at: float | None = None
        self.slurm_id = slurm_id
        self.plan = plan
        self.requeues = 0
        self.raw_job_id: str | None = None

    @property
    def packed(self) -> bool:
        return self.plan is not None and self.plan.per_task > 1

    def log_path(self, kind: str) -> str:
        """As a task's, except that sbatch's own log (``s``) is named by the Slurm task that wrote it."""
        if kind == "s" and self.slurm_id and self.slurm_id != self.distributor_id:
            return log_file(self.stdout_dir, self.name, "s", self.slurm_id, self.stem)
        return super().log_path(kind)

    def exit_info(self) -> dict[str, Any] | None:
        """What ``nbdist-worker`` wrote when the task ended; None while there is nothing (yet)."""
        return read_exit_info(self.log_path("x"))

    def wrapper_log_tail(self, size: int = 4096) -> str:
        """The end of sbatch's own log (where slurmstepd writes why it killed the job); "" if none."""
        try:
            with open(self.log_path("s"), "rb") as log:
                log.seek(max(0, os.fstat(log.fileno()).st_size - size))
                return log.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def drop_empty_wrapper_log(self) -> None:
        """Drop the empty wrapper log of a task that succeeded (one fewer file per step); keep any message."""
        path = self.log_path("s")
        try:
            if os.path.getsize(path) == 0:
                os.unlink(path)
        except OSError:
            pass
