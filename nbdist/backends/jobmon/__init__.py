"""nbdist as a Jobmon cluster: the classes behind the ``jobmon.plugins.nbdist`` plugin.

::

    Jobmon (client, distributor service, worker)        nbdist
    jobmon.plugins.nbdist.get_cluster_queue_class()  ─► queue.JobmonQueue        (bounds of a queue row)
    …get_cluster_distributor_class()                 ─► distributor.JobmonDistributor
                                                           └ subclass of nbdist's MultiprocessDistributor
                                                             and of Jobmon's ClusterDistributor
    …get_cluster_worker_node_class()                 ─► node.JobmonWorkerNode (MultiprocessWorkerNode's)
    register.register(db) / python -m nbdist.backends.jobmon.register --db URL
                                                     ─► cluster_type, cluster and queue rows

What Jobmon expects differently from nbdist's own users lives in these classes only, so nbdist's
distributor keeps its contract (``D``/``E``/``K``/``Z``/``U``/``W``, commands run directly, unknown
resource keys an error) and Jobmon gets its own. ``distributor`` imports Jobmon; the other modules
do not, and nothing here is imported by nbdist itself.
"""

from __future__ import annotations

import importlib as _importlib
from typing import Any as _Any

_LAZY = {
    "JobmonDistributor": ".distributor",
    "JobmonQueue": ".queue",
    "JobmonWorkerNode": ".node",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> _Any:
    if name in _LAZY:
        module = _importlib.import_module(_LAZY[name], __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
