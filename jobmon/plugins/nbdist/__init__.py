"""Jobmon cluster plugin ``nbdist``: Jobmon's tasks run on nbdist's multiprocess distributor.

Jobmon imports every module of its ``jobmon.plugins`` namespace package whenever it looks up a
cluster type, so this module imports nothing of nbdist (nor of Jobmon) until Jobmon asks for one
of the three classes: an nbdist that fails to import breaks only the ``nbdist`` cluster, never
Jobmon's other ones. There is deliberately no ``jobmon/__init__.py`` nor
``jobmon/plugins/__init__.py`` in nbdist's distribution (they would shadow Jobmon's own).

The classes live in :mod:`nbdist.backends.jobmon`; a Jobmon database learns of the cluster with
``python -m nbdist.backends.jobmon.register --db URL``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["get_cluster_distributor_class", "get_cluster_queue_class", "get_cluster_worker_node_class"]


def get_cluster_queue_class() -> Any:
    """The queue class of cluster type ``nbdist`` (cores, memory and runtime bounds)."""
    from nbdist.backends.jobmon.queue import JobmonQueue

    return JobmonQueue


def get_cluster_distributor_class() -> Any:
    """The distributor class of cluster type ``nbdist`` (nbdist's multiprocess distributor)."""
    from nbdist.backends.jobmon.distributor import JobmonDistributor

    return JobmonDistributor


def get_cluster_worker_node_class() -> Any:
    """The worker-node class of cluster type ``nbdist``."""
    from nbdist.backends.jobmon.node import JobmonWorkerNode

    return JobmonWorkerNode


def __getattr__(name: str) -> Any:
    # ``jobmon.plugins.nbdist.JobmonDistributor`` etc., for tests that patch the class by its path.
    getters = {"JobmonQueue": get_cluster_queue_class, "JobmonDistributor": get_cluster_distributor_class,
               "JobmonWorkerNode": get_cluster_worker_node_class}
    if name in getters:
        return getters[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
