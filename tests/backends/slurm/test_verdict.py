"""The Slurm verdicts as a table: squeue's row and the worker's exit info in, (status, message, limit) out."""

from __future__ import annotations

import pytest

from nbdist.backends.slurm.verdict import Progress, Verdict, ended, progress, vanished

LOG = "/l/t.s7"
INFO_DONE = {"status": "D", "message": "exit code 0", "exit_code": 0, "signal": None, "limit": None}
INFO_FAILED = {"status": "E", "message": "exit code 3", "exit_code": 3, "signal": None, "limit": None}
INFO_KILLED = {"status": "K", "message": "killed: the worker received SIGTERM", "exit_code": None, "signal": 15}
INFO_MEMORY = {"status": "Z", "message": "memory limit of 100M exceeded (rss 120M)", "exit_code": None,
               "signal": 9, "limit": "memory"}


def row(state: str, reason: str = "None", exit_code: str = "0", time_limit: str = "1:00") -> dict[str, str]:
    return {"JobArrayID": "7", "State": state, "Reason": reason, "StartTime": "", "EndTime": "",
            "exit_code": exit_code, "TimeLimit": time_limit}


@pytest.mark.parametrize("state, reason, expected", [
    ("PENDING", "None", Progress("Q", "pending")),
    ("PENDING", "Priority", Progress("Q", "pending (Priority)")),
    ("PENDING", "PartitionDown", Progress("Q", "pending (PartitionDown)", "Slurm will not start it: PartitionDown")),
    ("REQUEUED", "", Progress("Q", "pending")),
    ("RUNNING", "None", Progress("R", "running")),
    ("COMPLETING", "None", Progress("R", "completing")),
    ("COMPLETED", "None", None),
    ("TIMEOUT", "TimeLimit", None),
])
def test_progress(state, reason, expected):
    assert progress(state, reason) == expected


@pytest.mark.parametrize("squeue, info, memory, expected", [
    # The worker's exit info, when there is one, says how a normal end went.
    (row("COMPLETED"), INFO_DONE, None, Verdict("D", "exit code 0", None, 0, None)),
    (row("FAILED", exit_code="768"), INFO_FAILED, None, Verdict("E", "exit code 3", None, 3, None)),
    # Without it: the wrapper's own wait status (exit 127: nbdist-worker missing; a signal: lost).
    (row("FAILED", exit_code=str(127 << 8)), None, None,
     Verdict("E", f"exit code 127 and left no exit info (see {LOG})", None, 127, None)),
    (row("COMPLETED"), None, None, Verdict("D", f"exit code 0 and left no exit info (see {LOG})", None, 0, None)),
    (row("FAILED", exit_code="9"), None, None,
     Verdict("U", f"lost: nbdist-worker was killed by signal 9 (SIGKILL) and left no exit info (see {LOG})",
             None, None, 9)),
    # Slurm's limits are data: TIMEOUT is the runtime, OUT_OF_MEMORY the memory, DEADLINE neither.
    (row("TIMEOUT"), None, None, Verdict("Z", "runtime limit of 1:00 exceeded (Slurm TIMEOUT)", "runtime")),
    (row("TIMEOUT", time_limit="UNLIMITED"), INFO_KILLED, None,
     Verdict("Z", "runtime limit exceeded (Slurm TIMEOUT)", "runtime", None, 15)),
    (row("OUT_OF_MEMORY"), None, 100.0, Verdict("Z", "memory limit of 100M exceeded (Slurm OUT_OF_MEMORY)", "memory")),
    (row("OUT_OF_MEMORY"), None, None, Verdict("Z", "memory limit exceeded (Slurm OUT_OF_MEMORY)", "memory")),
    (row("DEADLINE"), None, None, Verdict("Z", "deadline reached before it could finish (Slurm DEADLINE)")),
    # The worker caught a limit first: its message (and limit) win over Slurm's.
    (row("OUT_OF_MEMORY"), INFO_MEMORY, 100.0,
     Verdict("Z", "memory limit of 100M exceeded (rss 120M)", "memory", None, 9)),
    (row("CANCELLED"), INFO_KILLED, None, Verdict("K", "cancelled (scancel)", None, None, 15)),
    (row("CANCELLED", reason="DependencyNeverSatisfied"), None, None,
     Verdict("K", "cancelled by Slurm: a job it depends on did not succeed (DependencyNeverSatisfied)")),
    (row("NODE_FAIL"), None, None, Verdict("U", "lost: its node failed (Slurm NODE_FAIL)")),
    (row("WEIRD_NEW_STATE"), None, None, Verdict("U", "ended in Slurm state WEIRD_NEW_STATE")),
])
def test_ended(squeue, info, memory, expected):
    assert ended(squeue, info, memory_mb=memory, wrapper_log=LOG, waiting_for_info=False) == expected


# What slurmstepd wrote into a job's log here (Slurm 22.05, no cgroups, OverMemoryKill) when it killed a 400 MiB
# step over --mem=100M before the worker's own sampling caught it: the job then ends FAILED with signal 9.
SLURM_MEMORY_KILL_LOG = ("slurmstepd-n1: error: StepId=1.batch exceeded memory limit (436441088 > 104857600), being "
                         "killed\nslurmstepd-n1: error: Exceeded job memory limit\n"
                         "slurmstepd-n1: error: *** JOB 1 ON n1 CANCELLED AT 2026-12-05T06:03:22 ***\n")


def test_a_job_slurm_killed_over_its_memory_is_a_memory_limit_not_a_lost_task():
    killed = ended(row("FAILED", exit_code="9"), None, memory_mb=100.0, wrapper_log=LOG, waiting_for_info=False,
                   wrapper_log_tail=SLURM_MEMORY_KILL_LOG)
    assert killed == Verdict("Z", f"memory limit of 100M exceeded (Slurm killed the job: see {LOG})", "memory",
                             None, 9)
    cgroup = "slurmstepd: error: Detected 1 oom_kill event in StepId=7.batch. Some of the step tasks have been OOM Killed."
    assert ended(row("FAILED", exit_code="9"), None, memory_mb=None, wrapper_log=LOG, waiting_for_info=False,
                 wrapper_log_tail=cgroup).limit == "memory"
    # Another kill (no such message) stays lost; a clean exit is not turned into a limit by old text in its log.
    assert ended(row("FAILED", exit_code="9"), None, memory_mb=100.0, wrapper_log=LOG, waiting_for_info=False,
                 wrapper_log_tail="slurmstepd-n1: error: *** JOB 1 ON n1 CANCELLED ***").status == "U"
    assert ended(row("FAILED", exit_code=str(3 << 8)), None, memory_mb=100.0, wrapper_log=LOG,
                 waiting_for_info=False, wrapper_log_tail=SLURM_MEMORY_KILL_LOG).status == "E"
    # Killed and forgotten between two polls: the log still says why.
    gone = vanished(None, cancel_requested=False, started=True, missing_polls=1, last_state="RUNNING", wrapper_log=LOG,
                    polls_before_lost=3, wrapper_log_tail=SLURM_MEMORY_KILL_LOG, memory_mb=100.0)
    assert gone is not None and gone.status == "Z" and gone.limit == "memory"


def test_an_exited_job_waits_for_its_exit_info_but_a_slurm_verdict_does_not():
    assert ended(row("COMPLETED"), None, memory_mb=None, wrapper_log=LOG, waiting_for_info=True) is None
    assert ended(row("COMPLETED"), INFO_DONE, memory_mb=None, wrapper_log=LOG, waiting_for_info=True).status == "D"
    assert ended(row("TIMEOUT"), None, memory_mb=None, wrapper_log=LOG, waiting_for_info=True).limit == "runtime"


@pytest.mark.parametrize("info, cancelled, started, misses, last_state, expected", [
    (INFO_FAILED, False, True, 1, "RUNNING", Verdict("E", "exit code 3", None, 3, None)),
    (None, True, False, 1, "PENDING", Verdict("K", "cancelled before it started")),
    (None, False, True, 1, "RUNNING", None),
    (None, False, True, 2, "RUNNING", None),
    (None, False, False, 3, "PENDING", Verdict("K", "cancelled before it started (outside this session)")),
    (None, True, True, 3, "RUNNING",
     Verdict("U", f"lost: Slurm no longer knows the job and it left no exit info (wrapper log: {LOG})")),
])
def test_vanished(info, cancelled, started, misses, last_state, expected):
    assert vanished(info, cancel_requested=cancelled, started=started, missing_polls=misses, last_state=last_state,
                    wrapper_log=LOG, polls_before_lost=3) == expected
