"""Distributor ids of the multiprocess backend: ``"{prefix}.{n}"`` for a job, ``"{prefix}.{n}_{step}"`` for a step.

Jobmon stores a distributor id in a ``VARCHAR(20)``, so the prefix is 8 characters (job 9999 step
99999 is 20). They are random (41 bits from :mod:`secrets`): ids built from the clock and the pid
repeated for two kernels in separate PID namespaces (containers on one shared home folder, both pid
7, started in the same second), whose log files then overwrote each other. Two distributors share a
prefix with a chance of one in 2.8e12; within a process a prefix is never handed out twice.
"""

from __future__ import annotations

import secrets
import threading

__all__ = ["new_job_id_prefix"]

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
_WIDTH = 8
_lock = threading.Lock()
_issued: set[str] = set()


def _base36(number: int, width: int) -> str:
    text = ""
    for _ in range(width):
        number, rest = divmod(number, 36)
        text = _DIGITS[rest] + text
    return text


def new_job_id_prefix() -> str:
    """A job-id prefix unique across distributors, machines, containers and kernel restarts (8 characters)."""
    with _lock:
        while True:
            prefix = _base36(secrets.randbelow(36**_WIDTH), _WIDTH)
            if prefix not in _issued:
                _issued.add(prefix)
                return prefix
