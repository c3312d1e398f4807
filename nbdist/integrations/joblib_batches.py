"""joblib batches as nbdist jobs run them: a job's batches (:class:`JoinedBatches`), what joblib holds
for each (:class:`BatchHandle`), their shared reading of the job's value (:func:`share_job`,
:class:`SharedValue`), and a job's name from a batch's function (:func:`call_name`).

Nothing here imports joblib: a batch is any callable, with ``items`` (its calls) when joblib made it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

__all__ = ["BatchHandle", "JoinedBatches", "SharedValue", "call_name", "share_job"]


def call_name(batch: Any) -> str:
    """A job name for a joblib batch: its first call's function (``functools.partial``, scikit-learn's
    and joblib's wrappers unwrapped), as nbdist names allow it; ``"joblib"`` when it has none."""
    items = getattr(batch, "items", None)
    function: Any = items[0][0] if items else batch
    for _ in range(5):
        inner = getattr(function, "func", None) or getattr(function, "function", None)
        if inner is None or not callable(inner):
            break
        function = inner
    name = getattr(function, "__name__", None) or type(function).__name__
    return re.sub(r"[^A-Za-z0-9._+=-]", "", str(name)).lstrip("._+=-")[:60] or "joblib"


class JoinedBatches:
    """joblib batches run one after another as one job (often just one): its value is, for each batch,
    its values and the seconds its calls took (the batch's run time, with none of the job's own costs).

    An exception in one ends the job: joblib then aborts the call, as it does for one batch."""

    def __init__(self, batches: list[Any]) -> None:
        self.batches = batches

    def __call__(self) -> list[tuple[Any, float]]:
        ran = []
        for batch in self.batches:
            start = time.perf_counter()
            values = batch()
            ran.append((values, time.perf_counter() - start))
        return ran


class SharedValue:
    """A job's value, read once for the batches it ran and dropped once each has taken its part."""

    __slots__ = ("job", "unread", "value")

    def __init__(self, job: Any, batches: int) -> None:
        self.job, self.unread, self.value = job, batches, None

    def take(self, timeout: float | None) -> Any:
        value = self.value if self.value is not None else self.job.result(timeout)
        self.unread -= 1
        self.value = value if self.unread > 0 else None
        return value


class BatchHandle:
    """One joblib batch, as ``submit`` returns it and joblib's callback is given it: its job once
    submitted (a held batch waits for a slot), its place in that job's value, its run time once read."""

    __slots__ = ("batch", "callback", "error", "job", "position", "seconds", "_value")

    def __init__(self, batch: Any, callback: Callable[[Any], None] | None) -> None:
        self.batch: Any = batch
        self.callback = callback
        self.job: Any = None
        self.error: BaseException | None = None  # why it could not be submitted (its result raises it)
        self.position = 0  # its index in its job's value
        self.seconds: float | None = None  # its run time, known once its values are read
        self._value: SharedValue | None = None

    def joined(self, job: Any, position: int, value: SharedValue) -> None:
        """It was submitted: the ``position``-th batch of ``job``, whose value the job's batches share."""
        self.job, self.position, self._value, self.batch = job, position, value, None

    def result(self, timeout: float | None = None) -> Any:
        """The batch's values (its part of its job's value); raises what its job raises."""
        if self.error is not None:
            raise self.error
        if self._value is None:
            raise RuntimeError("this joblib batch is held: it has no job yet")
        values, self.seconds = self._value.take(timeout)[self.position]
        return values

    def __repr__(self) -> str:
        return f"<joblib batch of {self.job!r}>" if self.job is not None else "<joblib batch, held>"


def share_job(job: Any, handles: list[BatchHandle]) -> None:
    """``job`` runs these batches, in this order (a :class:`JoinedBatches`): each reads its part of its value."""
    value = SharedValue(job, len(handles))
    for position, handle in enumerate(handles):
        handle.joined(job, position, value)
