"""The queue class of cluster type ``nbdist``: resource bounds read from the queue's parameters.

A queue row's ``parameters`` (written by :mod:`nbdist.backends.jobmon.register`) hold
``(minimum, maximum)`` pairs, in Jobmon's units::

    {"cores": [1, 4], "memory": [0, 16], "runtime": [1, 86400]}     # cores, GiB, seconds

Jobmon's client calls :meth:`JobmonQueue.validate_resources` when a workflow is bound (``strict``
only when its resources are scaled after a resource error) and :meth:`JobmonQueue.coerce_resources`
before each launch. Coercion lowers ``memory`` and ``runtime`` to the queue's maximum, so a retry
scaled past the top still runs; nothing else is changed: a value nbdist cannot honour (more cores
than its parallelism, a runtime of 0) reaches nbdist's distributor and ends as ``W`` with its message.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BOUNDED", "JobmonQueue"]

# Resource → unit, for messages; the keys a queue may bound.
BOUNDED = {"cores": "cores", "memory": "GiB", "runtime": "s"}


class JobmonQueue:
    """A queue of the ``nbdist`` cluster (Jobmon's ``ClusterQueue``)."""

    def __init__(self, queue_id: int, queue_name: str, parameters: dict[str, Any] | None) -> None:
        self._queue_id = queue_id
        self._queue_name = queue_name
        self._parameters = dict(parameters or {})

    def bounds(self, resource: str) -> tuple[float, float] | None:
        """``(minimum, maximum)`` of a resource on this queue, None when the queue sets none."""
        pair = self._parameters.get(resource)
        if pair is None:
            return None
        low, high = pair
        return low, high

    def validate_resources(self, strict: bool = False, **kwargs: Any) -> tuple[bool, str]:
        """``(ok, message)``: every bounded resource requested lies within the queue's bounds.

        Outside them, the message says so; ``ok`` is False only when ``strict``.
        """
        problems = []
        for resource, unit in BOUNDED.items():
            bounds, value = self.bounds(resource), kwargs.get(resource)
            if bounds is None or value is None:
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                problems.append(f"ResourceError: {resource} {value!r} is not a number")
                continue
            low, high = bounds
            if number > high:
                problems.append(f"ResourceError: provided {resource} {value} {unit} exceeds the limit of "
                                f"{high} {unit} of queue {self.queue_name}")
            elif number < low:
                problems.append(f"ResourceError: provided {resource} {value} {unit} is below the minimum of "
                                f"{low} {unit} of queue {self.queue_name}")
        message = "; ".join(problems)
        return not (strict and problems), message

    def coerce_resources(self, **kwargs: Any) -> dict[str, Any]:
        """The resources with ``memory`` and ``runtime`` lowered to the queue's maximum where above it."""
        coerced = dict(kwargs)
        for resource in ("memory", "runtime"):
            bounds, value = self.bounds(resource), coerced.get(resource)
            if bounds is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            coerced[resource] = type(value)(min(value, bounds[1]))
        return coerced

    @property
    def queue_id(self) -> int:
        """The queue's id in Jobmon's database."""
        return self._queue_id

    @property
    def queue_name(self) -> str:
        """The queue's name."""
        return self._queue_name

    @property
    def parameters(self) -> dict[str, Any]:
        """The queue's parameters (its bounds)."""
        return self._parameters

    @property
    def required_resources(self) -> list[str]:
        """None: every resource has a default (1 core, no memory or runtime limit)."""
        return []
