"""The worker node of the multiprocess backend: a task knows itself by ``JOB_ID`` and ``ARRAY_STEP_ID``."""

from __future__ import annotations

import os

from ...cluster_protocol.naming import array_id
from .._task.node import WorkerNode

__all__ = ["MultiprocessWorkerNode"]


class MultiprocessWorkerNode(WorkerNode):
    """What a task started by the multiprocess distributor knows about itself (from its environment)."""

    @property
    def distributor_id(self) -> str | None:
        """``JOB_ID`` for a job, ``JOB_ID_ARRAY_STEP_ID`` for an array step, None outside a task."""
        job_id = os.environ.get("JOB_ID")
        return None if job_id is None else array_id(job_id, self.array_step_id)

    @property
    def array_step_id(self) -> int | None:
        """``ARRAY_STEP_ID`` as an int, None for a plain job."""
        step = os.environ.get("ARRAY_STEP_ID")
        return int(step) if step not in (None, "") else None
