"""How a Slurm task is doing, decided from what squeue says and what the worker wrote: pure functions.

The distributor gathers the facts (a squeue row, the ``.x`` exit-info file, what it remembers of the
task) and applies the answer; nothing here reads a file, calls Slurm or looks at the clock. Which
source wins:

- the worker's exit info, when there is one: it saw the task end (exit code, signal, usage, and the
  limit the worker itself enforced);
- Slurm, where only Slurm knows: ``TIMEOUT`` (runtime limit), ``OUT_OF_MEMORY`` (memory), ``DEADLINE``,
  ``CANCELLED``, node failures. Its status and message then win, the exit info still gives the rest;
- neither (a job that ended without exit info): the wrapper's own exit status, after a grace period
  for the file to appear on a network file system; a wrapper killed by a signal is judged by what
  slurmstepd wrote into the job's log (a site without cgroups kills a job over ``--mem`` that way).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from ...cluster_protocol import Limit
from ...cluster_protocol import TaskInstanceStatus as Status
from ...cluster_protocol.resources import format_memory
from .._task.runner import exit_message
from .cli import EXIT_STATES, HOPELESS_REASONS, PENDING_STATES, RUNNING_STATES, SLURM_LIMITS, SLURM_VERDICTS

__all__ = ["Progress", "Verdict", "ended", "from_exit_info", "progress", "slurm_killed_it_for_memory", "vanished"]


class Progress(NamedTuple):
    """A task still queued or running: its status letter, message, and why it cannot start (if so)."""

    status: str
    message: str
    queue_error: str | None = None


class Verdict(NamedTuple):
    """How a task ended. When there was exit info, its usage and times apply too (the caller's part)."""

    status: str
    message: str
    limit: Limit | None = None
    exit_code: int | None = None
    signal: int | None = None


def progress(state: str, reason: str) -> Progress | None:
    """A queued or running task's progress from squeue's state and reason; None when it has ended."""
    if state in PENDING_STATES:
        message = "pending" if reason in ("None", "") else f"pending ({reason})"
        hopeless = f"Slurm will not start it: {reason}" if reason in HOPELESS_REASONS else None
        return Progress(Status.QUEUED, message, hopeless)
    if state in RUNNING_STATES:
        return Progress(Status.RUNNING, "running" if state == "RUNNING" else state.lower())
    return None


def from_exit_info(info: Mapping[str, Any]) -> Verdict:
    """What the worker wrote, as it wrote it."""
    return Verdict(info.get("status") or Status.UNKNOWN_ERROR, info.get("message") or "", info.get("limit"),
                   info.get("exit_code"), info.get("signal"))


# What slurmstepd writes into the job's log when it kills a step over its memory: without cgroups
# (jobacct_gather's OverMemoryKill) "StepId=7.batch exceeded memory limit (436441088 > 104857600), being
# killed" and "Exceeded job memory limit", the job then ends FAILED with signal 9, not OUT_OF_MEMORY;
# with cgroups "Detected 1 oom_kill event in StepId=7.batch".
SLURM_MEMORY_KILL_MARKS = ("exceeded job memory limit", "exceeded memory limit", "oom_kill event", "oom-kill event")


def ended(row: Mapping[str, str], info: Mapping[str, Any] | None, *, memory_mb: float | None, wrapper_log: str,
          waiting_for_info: bool, wrapper_log_tail: str = "") -> Verdict | None:
    """The verdict on a task squeue lists in an ended state.

    ``waiting_for_info``: the job exited normally and its exit info may still be on its way (the
    caller's grace period). The answer is then None: not over yet, as far as the session can tell.
    ``wrapper_log_tail``: the end of the job's own log (Slurm's messages), for a job killed without exit info.
    """
    state = row["State"]
    if state in EXIT_STATES:
        if info is not None:
            return from_exit_info(info)
        if waiting_for_info:
            return None
        return _without_exit_info(state, row["exit_code"], wrapper_log, wrapper_log_tail, memory_mb)
    if info is not None and info.get("status") == Status.RESOURCE_ERROR:
        return from_exit_info(info)  # the worker caught the limit first and says which
    status, template = SLURM_VERDICTS.get(state, (Status.UNKNOWN_ERROR, f"ended in Slurm state {state}"))
    time_limit = row.get("TimeLimit")
    message = template.format(limit=f" of {time_limit}" if time_limit not in (None, "", "UNLIMITED") else "",
                              memory=f" of {format_memory(memory_mb)}" if memory_mb else "")
    if state == "CANCELLED" and row.get("Reason") == "DependencyNeverSatisfied":
        message = "cancelled by Slurm: a job it depends on did not succeed (DependencyNeverSatisfied)"
    limit = SLURM_LIMITS.get(state)
    if info is not None:  # Slurm's verdict, the worker's exit code and signal
        return Verdict(status, message, limit, info.get("exit_code"), info.get("signal"))
    return Verdict(status, message, limit)


def _without_exit_info(state: str, wait_status_text: str, wrapper_log: str, wrapper_log_tail: str,
                       memory_mb: float | None) -> Verdict:
    """A job that ended (COMPLETED/FAILED) and never wrote exit info: judge by the wrapper's wait status
    (and, for a killed one, by what Slurm wrote into its log)."""
    wait_status = int(wait_status_text) if wait_status_text.isdigit() else 0
    code, signum = (wait_status >> 8) & 0xFF, wait_status & 0x7F
    if signum and slurm_killed_it_for_memory(wrapper_log_tail):
        return _slurm_memory_kill(wrapper_log, memory_mb, signum)
    if signum:  # the wrapper itself was killed: how the task ended is unknown
        return Verdict(Status.UNKNOWN_ERROR, f"lost: nbdist-worker was {exit_message(None, signum)} and left no "
                       f"exit info (see {wrapper_log})", signal=signum)
    # e.g. 127: nbdist-worker not found on the compute node
    status = Status.DONE if state == "COMPLETED" else Status.ERROR
    return Verdict(status, f"{exit_message(code, None)} and left no exit info (see {wrapper_log})", exit_code=code)


def _slurm_memory_kill(wrapper_log: str, memory_mb: float | None, signum: int) -> Verdict:
    """Slurm checked the step over its --mem before the worker's own sampling did, and killed the worker too."""
    memory = f" of {format_memory(memory_mb)}" if memory_mb else ""
    return Verdict(Status.RESOURCE_ERROR, f"memory limit{memory} exceeded (Slurm killed the job: see {wrapper_log})",
                   "memory", signal=signum)


def slurm_killed_it_for_memory(wrapper_log_tail: str) -> bool:
    """Whether the job's log says slurmstepd killed it over its memory limit."""
    text = wrapper_log_tail.lower()
    return any(mark in text for mark in SLURM_MEMORY_KILL_MARKS)


def vanished(info: Mapping[str, Any] | None, *, cancel_requested: bool, started: bool, missing_polls: int,
             last_state: str | None, wrapper_log: str, polls_before_lost: int, wrapper_log_tail: str = "",
             memory_mb: float | None = None) -> Verdict | None:
    """The verdict on a task squeue no longer lists (``missing_polls`` polls in a row); None: wait and see."""
    if info is not None:
        return from_exit_info(info)
    if slurm_killed_it_for_memory(wrapper_log_tail):  # ended and forgotten between two polls
        return _slurm_memory_kill(wrapper_log, memory_mb, 9)  # slurmstepd kills with SIGKILL
    if cancel_requested and not started:
        # Slurm 22.05 forgets a pending array step at once when it is cancelled.
        return Verdict(Status.KILL_SELF, "cancelled before it started")
    if missing_polls < polls_before_lost:
        return None  # one miss may be a controller that just restarted
    if last_state in PENDING_STATES:
        return Verdict(Status.KILL_SELF, "cancelled before it started (outside this session)")
    return Verdict(Status.UNKNOWN_ERROR, "lost: Slurm no longer knows the job and it left no exit info "
                   f"(wrapper log: {wrapper_log})")
