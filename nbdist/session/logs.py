"""Reading log files for snapshots: tails, and the last stderr line failures are grouped by.

Both caches hold only what cannot change any more (a finished attempt's log), so a redraw of a
finished array reads no file: each read gives up the GIL, and getting it back can take milliseconds
while the poller works.
"""

from __future__ import annotations

import os

__all__ = ["LogCache", "MAX_GROUPED_FAILURES", "TAIL_BLOCK_BYTES", "read_tail"]

# How much of a log file is read to find its last lines: tails are for a glance, not for paging.
TAIL_BLOCK_BYTES = 64 * 1024
# Failed steps are grouped by their last stderr line when there are at most this many; above it, by
# the core's failure message, so a snapshot stays within ~10 ms.
MAX_GROUPED_FAILURES = 500
# New stderr files read per snapshot for that grouping; the rest are read by the next snapshots.
STDERR_READS_PER_SNAPSHOT = 100


def read_tail(path: str, lines: int | None = None) -> str:
    """The whole file, or its last ``lines`` lines (reading at most 64 KiB from its end); ``""`` if absent."""
    try:
        with open(path, "rb") as handle:
            if lines is None:
                return handle.read().decode(errors="replace")
            if lines <= 0:
                return ""
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - TAIL_BLOCK_BYTES))
            data = handle.read()
    except OSError:
        return ""
    text = data.decode(errors="replace")
    parts = text.splitlines(keepends=True)
    return "".join(parts[-lines:])


class LogCache:
    """The tails and last stderr lines of finished attempts, for one session's snapshots."""

    def __init__(self) -> None:
        self._tails: dict[int, tuple[tuple[int, str | None, int], tuple[str, str]]] = {}  # job id → (key, tails)
        self._last_lines: dict[str, str] = {}  # stderr path of a finished attempt → its last line

    def tails(self, job_id: int, key: tuple[int, str | None, int], paths: tuple[str, str], lines: int,
              finished: bool) -> tuple[str, str]:
        """``(stdout, stderr)`` tails of one step's logs; kept when its attempt has ``finished``."""
        cached = self._tails.get(job_id)
        if cached is not None and cached[0] == key:
            return cached[1]
        tails = (read_tail(paths[0], lines), read_tail(paths[1], lines))
        if finished:
            self._tails[job_id] = (key, tails)
        return tails

    def group_by_last_line(self, failed: list[tuple[str, int, str | None]]) -> list[tuple[str, list[int]]]:
        """Failed steps ``[(message, step, stderr path), ...]`` grouped by their last stderr line.

        A step whose stderr is empty (or not read yet: at most :data:`STDERR_READS_PER_SNAPSHOT` new
        files per call) is grouped by its message. Largest groups first. Callers pass at most
        :data:`MAX_GROUPED_FAILURES` steps.
        """
        budget = STDERR_READS_PER_SNAPSHOT
        groups: dict[str, list[int]] = {}
        for message, step, stderr in failed:
            key = None
            if stderr is not None:
                key = self._last_lines.get(stderr)
                if key is None and budget > 0:
                    budget -= 1
                    lines = read_tail(stderr, 1).strip().splitlines()
                    key = lines[-1] if lines else None
                    if key:  # an empty log may still be flushed to by a dying process: read it again
                        self._last_lines[stderr] = key
            groups.setdefault(key or message, []).append(step)
        return sorted(groups.items(), key=lambda item: -len(item[1]))
