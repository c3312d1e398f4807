"""Live CPU % and RSS of running Slurm tasks, for the dashboard: ONE ``sstat`` call for all of them.

The multiprocess backend samples a running task's tree itself; on Slurm the task runs on a compute
node, and Slurm's own gatherer (``JobAcctGatherType=jobacct_gather/linux``, no slurmdbd needed) is
what knows. So every ``interval`` seconds, while some task runs, the distributor's poller makes one
``sstat --allsteps --jobs=RAW1,RAW2,…`` call and hands each running task's record
``{"cpu_percent", "rss_mb"}`` as its usage, which its report carries until the task ends (then the
worker's measured usage replaces it): the same place the multiprocess backend's samples go.

Two Slurm facts shape it:

- ``sstat`` on Slurm 22.05 ignores an array index (``-j 12_3`` lists every task of array 12), so
  tasks are asked for by their *raw* job id (squeue's ``JobID``: each array task has its own);
- the gatherer reports CPU time in whole seconds and only every ``JobAcctGatherFrequency`` (30 s by
  default), so CPU % is taken over a window of :data:`CPU_WINDOW_SECONDS` (the oldest sample at least
  that old, or the task's start while it is younger): a shorter window would read 0 % then 600 %.

A site where ``sstat`` is missing or gathers nothing simply shows no live usage; polling goes on.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from ...cluster_protocol import TaskInstanceStatus as Status
from . import cli

__all__ = ["CPU_WINDOW_SECONDS", "USAGE_INTERVAL_SECONDS", "UsageSampler", "parse_duration", "parse_sstat"]

logger = logging.getLogger(__name__)

# One sstat call for every running task at most this often: sstat asks each node's slurmd, so a
# shorter interval costs the nodes more; the dashboard's CPU/RSS lag by up to this much.
USAGE_INTERVAL_SECONDS = 5.0
# CPU % is CPU time over at least this many seconds (Slurm's default gather frequency): see the module.
CPU_WINDOW_SECONDS = 30.0
# Sizes in sstat's TRES strings: a bare number is bytes.
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}
_SIZE_RE = re.compile(r"^([0-9.]+)([KMGTP]?)$")


def parse_duration(text: str) -> float | None:
    """Seconds from Slurm's ``[D-]HH:MM:SS``, ``MM:SS.mmm`` or ``SS.mmm``; None if unreadable."""
    days, _, clock = text.strip().rpartition("-")
    try:
        parts = [float(part) for part in clock.split(":")]
        seconds = sum(part * 60**power for power, part in enumerate(reversed(parts)))
        return seconds + (int(days) * 86400 if days else 0)
    except ValueError:
        return None


def _size_mb(text: str) -> float | None:
    match = _SIZE_RE.match(text.strip())
    return float(match.group(1)) * _UNITS[match.group(2)] / 2**20 if match else None


def parse_sstat(text: str) -> dict[str, tuple[float, float]]:
    """``{raw job id: (CPU seconds, RSS MB)}`` from ``sstat -n -P -a -o JobID,TRESUsageInTot`` lines,
    summed over each job's steps (its batch step and any ``srun`` steps it started).

    A step listed twice counts once: asked about an array's own id (its last task's raw id), Slurm
    22.05 lists every task of the array, so the others come again.
    """
    steps: dict[str, tuple[float, float]] = {}
    for line in text.splitlines():
        step, _, tres = line.partition("|")
        fields = dict(item.partition("=")[::2] for item in tres.split(",") if "=" in item)
        cpu, rss = parse_duration(fields.get("cpu", "")), _size_mb(fields.get("mem", ""))
        if step.strip().split(".")[0].isdigit() and (cpu is not None or rss is not None):
            steps[step.strip()] = (cpu or 0.0, rss or 0.0)
    totals: dict[str, tuple[float, float]] = {}
    for step, (cpu, rss) in steps.items():
        job = step.split(".")[0]
        cpu_total, rss_total = totals.get(job, (0.0, 0.0))
        totals[job] = (cpu_total + cpu, rss_total + rss)
    return totals


def sstat(raw_ids: Iterable[str]) -> dict[str, tuple[float, float]]:
    """ONE ``sstat`` call for every job of ``raw_ids``; a job that just ended is simply left out."""
    argv = ["sstat", "--noheader", "--parsable2", "--allsteps", f"--jobs={','.join(sorted(raw_ids, key=int))}",
            "--format=JobID,TRESUsageInTot"]
    result = cli.run_cli(argv)
    if result.returncode != 0 and not result.stdout.strip():
        logger.debug("sstat gave no usage: %s", cli.error_text(result.stderr))
    return parse_sstat(result.stdout)


class UsageSampler:
    """When to call ``sstat``, and CPU % from its cumulative CPU times (see the module).

    Parameters
    ----------
    interval
        Seconds between two ``sstat`` calls while tasks run (None or 0: never call it).
    """

    def __init__(self, interval: float | None = USAGE_INTERVAL_SECONDS) -> None:
        if interval is not None and interval < 0:
            raise ValueError(f"usage_interval must be positive (or 0 for none), not {interval!r}")
        self.interval = interval or None
        self.next_at = 0.0  # time.monotonic() of the next call
        self.available = True  # False once sstat turned out missing: no more calls
        self._history: dict[str, deque[tuple[float, float]]] = {}  # raw id → (time, CPU s), oldest first
        self._found_running = False

    def wake_in(self, now: float) -> float:
        """Seconds until the poller must wake for the next call; inf while none runs (polls look for some)."""
        return self.next_at - now if self._found_running and self.interval and self.available else math.inf

    def update(self, tasks: Any) -> None:
        """If a call is due: ONE ``sstat`` for every running task of the table ``tasks``, whose
        records then carry ``{"cpu_percent", "rss_mb"}`` as their usage. Called without its lock held."""
        if self.interval is None or not self.available or time.monotonic() < self.next_at:
            return
        with tasks.lock:
            by_job: dict[str, list[Any]] = {}
            for record in tasks.live.values():
                if record.state == Status.RUNNING and record.raw_job_id:
                    by_job.setdefault(record.raw_job_id, []).append(record)
            started = {job: records[0].started for job, records in by_job.items()}
        self._found_running = bool(by_job)
        if not by_job:
            self._history.clear()
            return
        samples = self.sample(started)
        with tasks.lock:
            for job, sample in samples.items():
                for record in by_job[job]:
                    if record.state == Status.RUNNING:  # not ended meanwhile: its final usage stays
                        record.usage = dict(sample)

    def sample(self, started: dict[str, float | None]) -> dict[str, dict[str, float]]:
        """One ``sstat`` for the jobs of ``started`` (raw id → start, epoch seconds); their live usage.

        Call it without holding the distributor's lock (it runs a command).
        """
        assert self.interval is not None
        self.next_at = time.monotonic() + self.interval
        try:
            totals = sstat(started)
        except (cli.SlurmUnavailable, OSError) as exc:
            if "not found" in str(exc):
                self.available = False
                logger.info("no live CPU/RSS for Slurm tasks: %s", exc)
            return {}
        except Exception:  # a bug must not end the distributor's poller: log it, try again next time
            logger.exception("unexpected error while sampling live usage (will retry)")
            return {}
        now = time.time()
        for gone in set(self._history) - set(started):
            del self._history[gone]
        samples = {}
        for job, (cpu, rss) in totals.items():
            if job not in started:
                continue
            samples[job] = {"cpu_percent": round(self._percent(job, now, cpu, started[job]), 1),
                            "rss_mb": round(rss, 1)}
        return samples

    def _percent(self, job: str, now: float, cpu: float, started: float | None) -> float:
        """CPU % over the window; records this sample."""
        history = self._history.setdefault(job, deque())
        while len(history) > 1 and now - history[1][0] >= CPU_WINDOW_SECONDS:
            history.popleft()  # the next one is old enough to be the window's start
        if history and now - history[0][0] >= CPU_WINDOW_SECONDS:
            mark_time, mark_cpu = history[0]
        elif started is not None and started < now:
            mark_time, mark_cpu = started, 0.0  # younger than the window: since it started
        elif history:
            mark_time, mark_cpu = history[0]
        else:
            mark_time, mark_cpu = now, cpu
        history.append((now, cpu))
        return 100.0 * max(cpu - mark_cpu, 0.0) / max(now - mark_time, 1.0)
