"""Contract path of the multiprocess backend; the code lives in :mod:`nbdist.backends.multiprocess`."""

from __future__ import annotations

from .backends.multiprocess.consumer import Consumer
from .backends.multiprocess.messages import PickableTask
from .backends.multiprocess.distributor import MultiprocessDistributor
from .backends.multiprocess.ids import new_job_id_prefix
from .backends.multiprocess.node import MultiprocessWorkerNode
from .cluster_protocol import RemoteExitInfoNotAvailable

__all__ = ["Consumer", "MultiprocessDistributor", "MultiprocessWorkerNode", "PickableTask",
           "RemoteExitInfoNotAvailable", "new_job_id_prefix"]
