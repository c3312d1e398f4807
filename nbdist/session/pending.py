"""Changes waiting to be written to the registry: one transaction per poll, kept while it cannot be written.

A disk may fill up while work runs. Steps still end, and their ends must reach the registry: what
a flush could not write stays here, in memory, and goes with the next flush that can write. The
outage is said once when it begins (what happened, how much is kept) and once when it is over,
never once per poll.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from .registry import AttemptRecord, Registry, StepRecord
from .storage import unwritable_reason

__all__ = ["PendingWrites", "StepSource"]

logger = logging.getLogger(__name__)


class StepSource(Protocol):
    """What :class:`PendingWrites` needs of a record (a ``JobRecord``) to write its steps."""

    owned: bool
    usage: dict[int, dict[str, Any]]

    def step_record(self, index: int) -> StepRecord:
        """The step's row; takes its pending usage (it is read back from the registry)."""
        ...


class PendingWrites:
    """One poll's unit of work: changed steps, finished attempts, job-row updates and deletions, written at once.

    Everything is added with the session's lock held; :meth:`flush` writes it in one transaction and,
    when the registry cannot be written, keeps it for the next flush (the registry catches up,
    nothing is lost while this process lives).
    """

    def __init__(self) -> None:
        self.dirty: set[tuple[StepSource, int]] = set()
        self.attempts: list[AttemptRecord] = []
        self.job_updates: dict[int, dict[str, Any]] = {}
        self.deleted_jobs: set[int] = set()
        self._flush_lock = threading.Lock()
        self._failing: str | None = None  # what the current outage was reported as (None: writes work)

    def update_job(self, job_id: int, **fields: Any) -> None:
        """Columns of a ``jobs`` row to change at the next flush."""
        self.job_updates.setdefault(job_id, {}).update(fields)

    def delete_job(self, job_id: int) -> None:
        """Remove a job's rows at the next flush (one whose submission failed when it could not be removed)."""
        self.job_updates.pop(job_id, None)
        self.deleted_jobs.add(job_id)

    def __len__(self) -> int:
        return len(self.dirty) + len(self.attempts) + len(self.job_updates) + len(self.deleted_jobs)

    def flush(self, registry: Registry, lock: Any) -> bool:
        """Write everything pending in one transaction; ``lock`` guards the records (held briefly).

        Returns False when it could not be written (everything is kept for the next flush).
        """
        with self._flush_lock:
            with lock:
                if not self:
                    return True
                dirty, self.dirty = self.dirty, set()
                attempts, self.attempts = self.attempts, []
                updates, self.job_updates = self.job_updates, {}
                deleted, self.deleted_jobs = self.deleted_jobs, set()
                rows = [(source, source.step_record(index)) for source, index in dirty if source.owned]
            try:
                for job_id in deleted:  # rare (a failed submit's row): idempotent, so a retry may repeat it
                    registry.delete_job(job_id)
                registry.write([row for _, row in rows], attempts, updates.items())
            except Exception as exc:
                with lock:
                    self.dirty |= dirty
                    for source, row in rows:
                        if row.usage is not None:
                            source.usage.setdefault(row.idx, row.usage)
                    self.attempts[:0] = attempts
                    for job_id, fields in updates.items():
                        self.job_updates[job_id] = {**fields, **self.job_updates.get(job_id, {})}
                    self.deleted_jobs |= deleted
                    kept = len(self)
                self._report_failure(registry, exc, kept)
                return False
            if self._failing is not None:
                self._failing = None
                logger.warning("the registry %s can be written again: the changes kept in memory are written",
                               registry.path)
            return True

    def _report_failure(self, registry: Registry, exc: Exception, kept: int) -> None:
        """Say once per outage what happened (a new kind of failure is said again)."""
        reason = unwritable_reason(registry.root, exc) or f"{type(exc).__name__}: {exc}"
        if reason == self._failing:
            return
        self._failing = reason
        logger.warning("%s: cannot write the registry %s; %d changes are kept in memory and written once it can be "
                       "written again (not if this process ends first)", reason, registry.path, kept)

    def report_lost(self, registry: Registry) -> None:
        """At close: say what could not be written and is lost with this process."""
        if self:
            logger.warning("%s: %d changes of this session's jobs could not be written to the registry %s and are "
                           "lost: another session's attach will not know how those steps ended",
                           self._failing or "cannot write", len(self), registry.path)
