"""The multiprocess backend: ``parallelism`` consumer processes on this machine.

Names are imported on first use, so that a consumer (``nbdist.backends.multiprocess.consumer``)
starts without paying for the distributor's threads and queues.
"""

from __future__ import annotations

import importlib as _importlib
from typing import Any as _Any

_LAZY = {
    "Consumer": ".consumer",
    "PickableTask": ".messages",
    "MultiprocessDistributor": ".distributor",
    "MultiprocessWorkerNode": ".node",
    "new_job_id_prefix": ".ids",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> _Any:
    if name in _LAZY:
        value = getattr(_importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
