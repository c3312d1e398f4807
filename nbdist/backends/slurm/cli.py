"""The boundary with the Slurm command-line tools: running them, reading squeue, Slurm's states.

Everything here is argv-based (never a shell) and knows nothing of nbdist's records; the distributor
(:mod:`.distributor`, with the verdicts of :mod:`.verdict`) decides what to do with what Slurm says.
"""

from __future__ import annotations

import os
import re
import subprocess
from datetime import datetime
from typing import Iterable

from ...cluster_protocol import Limit
from ...cluster_protocol import TaskInstanceStatus as Status

__all__ = [
    "SlurmUnavailable", "run_cli", "parse_squeue", "squeue_env", "compress_ids", "error_text", "epoch",
    "controller_down", "SQUEUE_FORMAT", "PENDING_STATES", "RUNNING_STATES", "EXIT_STATES", "SLURM_VERDICTS",
    "SLURM_LIMITS", "HOPELESS_REASONS", "JOB_ID_RE", "CLI_TIMEOUT_SECONDS", "site_limits", "squeue_rows",
]

# A Slurm command that has not answered in this long is given up on (the controller is down).
CLI_TIMEOUT_SECONDS = 60.0

# JobID is the raw id (each array task has its own): what sstat is asked about (see .usage).
SQUEUE_FIELDS = ("JobArrayID", "State", "Reason", "StartTime", "EndTime", "exit_code", "TimeLimit", "JobID")
SQUEUE_FORMAT = ",".join(f"{field}:|" for field in SQUEUE_FIELDS)

PENDING_STATES = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD"}
RUNNING_STATES = {"RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING",
                  "STAGE_OUT", "RESIZING"}
# Slurm states after which the task is over and only Slurm knows why: (status, message).
SLURM_VERDICTS = {
    "CANCELLED": (Status.KILL_SELF, "cancelled (scancel)"),
    "TIMEOUT": (Status.RESOURCE_ERROR, "runtime limit{limit} exceeded (Slurm TIMEOUT)"),
    "DEADLINE": (Status.RESOURCE_ERROR, "deadline reached before it could finish (Slurm DEADLINE)"),
    "OUT_OF_MEMORY": (Status.RESOURCE_ERROR, "memory limit{memory} exceeded (Slurm OUT_OF_MEMORY)"),
    "NODE_FAIL": (Status.UNKNOWN_ERROR, "lost: its node failed (Slurm NODE_FAIL)"),
    "BOOT_FAIL": (Status.UNKNOWN_ERROR, "lost: its node failed to boot (Slurm BOOT_FAIL)"),
    "PREEMPTED": (Status.UNKNOWN_ERROR, "lost: preempted by a higher-priority job (Slurm PREEMPTED)"),
    "REVOKED": (Status.UNKNOWN_ERROR, "lost: revoked by another cluster (Slurm REVOKED)"),
}
# The enforced limit each of those states means (a report's "limit").
SLURM_LIMITS: dict[str, Limit] = {"TIMEOUT": "runtime", "OUT_OF_MEMORY": "memory"}
EXIT_STATES = {"COMPLETED", "FAILED", "SPECIAL_EXIT"}
# Pending reasons after which the job will not start without someone acting on it.
HOPELESS_REASONS = {
    "BadConstraints", "PartitionNodeLimit", "PartitionTimeLimit", "PartitionConfig", "PartitionDown",
    "PartitionInactive", "DependencyNeverSatisfied", "InvalidAccount", "InvalidQOS", "AccountNotAllowed",
    "QOSNotAllowed", "JobHeldAdmin", "JobHeldUser", "ReqNodeNotAvail", "NodeDown", "InactiveLimit",
    "launch_failed_requeued_held", "BurstBufferOperation", "FrontEndDown",
}
JOB_ID_RE = re.compile(r"^\d+(?:_\d+)?$")


class SlurmUnavailable(RuntimeError):
    """The Slurm CLI is missing or the controller does not answer."""


def epoch(text: str) -> float | None:
    """Seconds since the epoch from squeue's ``2026-11-25T13:16:23`` (local time), None if unset."""
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def error_text(stderr: str) -> str:
    """sbatch's message without its ``sbatch: error:`` prefixes, on one line."""
    lines = [re.sub(r"^\w+: (error|fatal): ", "", line).strip() for line in stderr.splitlines()]
    return "; ".join(line for line in lines if line) or "no message"


def parse_squeue(text: str) -> dict[str, dict[str, str]]:
    """``{distributor_id: {field: value}}`` from ``squeue --Format=…:|`` lines."""
    rows: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        values = line.split("|")
        if len(values) < len(SQUEUE_FIELDS):
            continue
        row = {field: value.strip() for field, value in zip(SQUEUE_FIELDS, values[:len(SQUEUE_FIELDS)], strict=True)}
        rows[row["JobArrayID"]] = row
    return rows


def compress_ids(distributor_ids: Iterable[str]) -> list[str]:
    """scancel arguments: plain job ids, and each array's steps as ``JOBID_[0-9,12]`` (short for 1000 steps)."""
    plain: list[str] = []
    steps: dict[str, list[int]] = {}
    for distributor_id in distributor_ids:
        job_id, _, step = distributor_id.partition("_")
        if not step:
            plain.append(job_id)
        else:
            steps.setdefault(job_id, []).append(int(step))
    for job_id, found in steps.items():
        numbers = sorted(set(found))
        ranges: list[str] = []
        start = previous = numbers[0]
        for number in [*numbers[1:], None]:
            if number is not None and number == previous + 1:
                previous = number
                continue
            ranges.append(str(start) if start == previous else f"{start}-{previous}")
            if number is not None:
                start = previous = number
        plain.append(f"{job_id}_[{','.join(ranges)}]")
    return plain


def squeue_env() -> dict[str, str]:
    """The environment for squeue: user settings that would change its output format are dropped."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("SQUEUE_")}
    env["SLURM_TIME_FORMAT"] = "standard"
    return env


def controller_down(message: str) -> bool:
    """True when a CLI error says the controller could not be reached (as opposed to a rejection)."""
    return any(text in message for text in ("Unable to contact slurm controller", "Socket timed out",
                                            "Connection refused", "Zero Bytes were transmitted"))


def run_cli(argv: list[str], input_text: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run one Slurm command (argv, never a shell); missing tools become :class:`SlurmUnavailable`."""
    try:
        return subprocess.run(argv, input=input_text, env=env, capture_output=True, text=True, check=False,
                              timeout=CLI_TIMEOUT_SECONDS, stdin=None if input_text is not None else subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise SlurmUnavailable(f"{argv[0]} not found on PATH: is the Slurm client installed?") from exc
    except subprocess.TimeoutExpired as exc:
        raise SlurmUnavailable(f"{argv[0]} did not answer within {CLI_TIMEOUT_SECONDS:.0f} s") from exc


def site_limits() -> tuple[int, int]:
    """``(MaxArraySize, MaxJobCount)`` from ``scontrol show config`` (Slurm's defaults where unreadable)."""
    values = {"MaxArraySize": 1001, "MaxJobCount": 10000}
    result = run_cli(["scontrol", "show", "config"])
    for line in result.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.strip() in values and value.strip().isdigit():
            values[key.strip()] = int(value.strip())
    return values["MaxArraySize"], values["MaxJobCount"]


def squeue_rows(job_ids: Iterable[str]) -> dict[str, dict[str, str]]:
    """ONE squeue call for every job (and array task) of ``job_ids``: ``{JobArrayID: row}``."""
    argv = ["squeue", "--noheader", "--states=all", "--array", f"--jobs={','.join(sorted(job_ids, key=int))}",
            f"--Format={SQUEUE_FORMAT}"]
    result = run_cli(argv, env=squeue_env())
    if result.returncode != 0 and "Invalid job id" not in result.stderr:
        raise SlurmUnavailable(f"squeue failed: {error_text(result.stderr)}")
    return parse_squeue(result.stdout if result.returncode == 0 else "")
