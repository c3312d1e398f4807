"""Distributor ids of the multiprocess backend: ``"{prefix}.{n}"`` for a job, ``"{prefix}.{n}_{step}"`` for a step.

Jobmon stores a distributor id in a ``VARCHAR(20)``, so the prefix is 8 characters (job 9999 step
99999 is 20). Its first 6 are whole seconds since 2025-01-01 in base 36 (enough until 2094), its
last 2 the pid modulo 36**2: two processes of one machine differ unless their pids are 1296 apart
and they start in the same second, and within a process each prefix takes the next free second, so
none repeats. A later kernel (say after a restart, writing to the same log folder) starts later.
"""

from __future__ import annotations

import os
import threading
import time

__all__ = ["new_job_id_prefix"]

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
_EPOCH_SECONDS = 1735689600  # 2025-01-01T00:00:00Z
_lock = threading.Lock()
_last_second = -1


def _base36(number: int, width: int) -> str:
    text = ""
    for _ in range(width):
        number, rest = divmod(number, 36)
        text = _DIGITS[rest] + text
    return text


def new_job_id_prefix() -> str:
    """A job-id prefix unique across distributors of this machine and kernel restarts (8 characters)."""
    global _last_second
    with _lock:
        second = max(int(time.time()) - _EPOCH_SECONDS, _last_second + 1)
        _last_second = second
    return _base36(second, 6) + _base36(os.getpid(), 2)
