"""Jobs that belong together and are shown as one: the batches of a joblib ``Parallel`` call.

A ``Parallel`` call hands its batches over one at a time, as earlier ones end, so it cannot be one
array submitted up front; each batch stays a job of its own (its logs, limits, retry), and the
call is a group of them with one name and one dashboard that lists them as they come.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["JobGroup"]


class JobGroup:
    """The jobs of one call, in the order they were submitted; ``kind`` says what made them."""

    def __init__(self, session: Any, name: str, kind: str) -> None:
        self.session = session
        self.name = name
        self.kind = kind
        self._jobs: list[Any] = []
        self._lock = threading.Lock()  # batches are added from joblib's callback thread too

    def add(self, job: Any) -> None:
        with self._lock:
            self._jobs.append(job)

    def jobs(self) -> list[Any]:
        with self._lock:
            return list(self._jobs)

    def done(self) -> bool:
        """Every job so far has ended (more may still come while the call runs)."""
        return all(job.done() for job in self.jobs())

    def counts(self) -> dict[str, int]:
        """Jobs by state (a batch counts once, however many calls it holds)."""
        counts: dict[str, int] = {}
        for job in self.jobs():
            counts[job.state.value] = counts.get(job.state.value, 0) + 1
        return counts

    def __repr__(self) -> str:
        shown = " ".join(f"{state}={n}" for state, n in sorted(self.counts().items()))
        return f"<{self.kind} {self.name!r} [{shown}]>"
