"""The Slurm backend: runs tasks as Slurm batch jobs, driven through the Slurm CLI.

Data flow::

    submit ──► sbatch --parsable [--array=0-N%K]   (ONE call per job or per whole array)
                   │
                   ▼  batch script: exec nbdist-worker --name … -- COMMAND
    compute node:  nbdist-worker ──► /bin/sh -c COMMAND   {stdout}/{name}.o{id}, {stderr}/{name}.e{id}
                   │                                      {stdout}/{name}.x{id}  (exit code, signal, usage)
                   ▼
    poller thread: squeue -h -t all -r --jobs=J1,J2,… -O …   (ONE call per interval for every live job)
                   + read the .x file of each job that just ended; terminal states are cached

The task's own logs are written by ``nbdist-worker``, so they land exactly where :meth:`log_paths`
says; sbatch's ``--output`` only catches the wrapper's own messages, in ``{stdout}/{name}.s{id}``.

Exit codes need no slurmdbd: the worker's ``.x`` file is the primary source; Slurm's state is the
fallback and wins where only Slurm knows what happened (``TIMEOUT`` → ``Z``, ``OUT_OF_MEMORY`` → ``Z``,
``CANCELLED`` → ``K``, ``NODE_FAIL`` → ``U``).

``squeue --json`` is not used for polling: on Slurm 22.05 it ignores every filter (``--jobs``,
``--user``, ``-t``) and returns every job of every user, which on a shared cluster is megabytes per
poll. The formatted output honours ``--jobs`` and expands pending array steps with ``-r``.

Slurm jobs outlive the Python session by design: :meth:`SlurmDistributor.stop` only stops polling
(``stop(cancel=True)`` also cancels this distributor's live jobs), and a new distributor can keep
tracking jobs of an earlier one with :meth:`SlurmDistributor.adopt`.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import threading
import time
from typing import Any, Iterable

from ...cluster_protocol import RemoteExitInfoNotAvailable
from ...cluster_protocol import TaskInstanceStatus as S
from ...cluster_protocol.naming import log_file, log_stem
from ...cluster_protocol.resources import Resources, check_array_length, check_command, format_memory
from .._task.exit_info import exit_info_path, read_exit_info
from .._task.node import WorkerNode, current_distributor_id, worker_entry_point
from .._task.runner import exit_message
from . import cli

__all__ = ["SlurmDistributor", "SlurmWorkerNode", "SlurmUnavailable"]

SlurmUnavailable = cli.SlurmUnavailable

logger = logging.getLogger(__name__)

# Default first poll interval and the ceiling of its back-off: short enough that a task that ends
# shows up quickly, long enough that a session watching 1000 jobs costs the controller one cheap
# call every few seconds. The interval grows by BACKOFF_FACTOR after each poll that saw no change.
POLL_INTERVAL_S = 1.0
MAX_POLL_INTERVAL_S = 15.0
BACKOFF_FACTOR = 1.5
# A job that ended (COMPLETED/FAILED) wrote its exit info before it ended; on a network file system
# the file may show up a little later, so wait this long for it before trusting Slurm's state alone.
EXIT_INFO_GRACE_S = 5.0
# A job squeue no longer lists (and that left no exit info) is declared lost after this many polls:
# one miss may be a controller that just restarted.
MISSING_POLLS_BEFORE_LOST = 3
# stop() waits this long for a poll in flight; squeue answers in milliseconds unless the controller is
# down (then the client retries for ~10 s), and stop() must not hang a notebook for that.
STOP_JOIN_S = 2.0
# Identity variables of the submitting process (say a kernel that itself runs as a Slurm job) must
# not leak into the job: the worker reads its id from them.
_IDENTITY_VARS = ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_ID", "SLURM_JOBID", "JOB_ID",
                  "ARRAY_STEP_ID", "NBDIST_DISTRIBUTOR_ID")
# The batch script sets the same identity variables the multiprocess backend gives its tasks.
_SCRIPT_PROLOGUE = """\
#!/bin/sh
if [ -n "${SLURM_ARRAY_JOB_ID:-}" ]; then
    JOB_ID=$SLURM_ARRAY_JOB_ID ARRAY_STEP_ID=$SLURM_ARRAY_TASK_ID
    NBDIST_DISTRIBUTOR_ID=${SLURM_ARRAY_JOB_ID}_$SLURM_ARRAY_TASK_ID
    export ARRAY_STEP_ID
else
    JOB_ID=$SLURM_JOB_ID NBDIST_DISTRIBUTOR_ID=$SLURM_JOB_ID
fi
export JOB_ID NBDIST_DISTRIBUTOR_ID
"""


def _log_dirs(resources: Resources, log_dir: str) -> tuple[str, str]:
    """Absolute stdout and stderr folders of a task (the multiprocess backend's rule)."""
    return (os.path.abspath(resources.stdout_dir or log_dir), os.path.abspath(resources.stderr_dir or log_dir))


class _Record:
    """The distributor's view of one Slurm job or array step."""

    __slots__ = ("distributor_id", "name", "resources", "job_id", "array_step_id", "state", "message",
                 "exit_code", "signal", "usage", "submitted", "started", "ended", "slurm_state", "queue_error",
                 "missing_polls", "ended_seen_at", "stdout_dir", "stderr_dir", "cancel_requested")

    def __init__(self, distributor_id: str, name: str, resources: Resources, log_dir: str) -> None:
        self.distributor_id = distributor_id
        self.name = name
        self.resources = resources
        self.job_id, _, step = distributor_id.partition("_")
        self.array_step_id = int(step) if step else None
        self.state = S.QUEUED
        self.message = "queued"
        self.exit_code: int | None = None
        self.signal: int | None = None
        self.usage: dict[str, Any] = {}
        self.submitted = time.time()
        self.started: float | None = None
        self.ended: float | None = None
        self.slurm_state: str | None = None
        self.queue_error: str | None = None
        self.missing_polls = 0
        self.ended_seen_at: float | None = None
        self.cancel_requested = False
        self.stdout_dir, self.stderr_dir = _log_dirs(resources, log_dir)

    def log_path(self, kind: str) -> str:
        folder = self.stdout_dir if kind in "osx" else self.stderr_dir
        return log_file(folder, self.name, kind, self.distributor_id)

    def exit_info(self) -> dict[str, Any] | None:
        return read_exit_info(exit_info_path(self.stdout_dir, self.name, self.distributor_id))

    def report(self) -> dict[str, Any]:
        return {"status": self.state, "message": self.message, "exit_code": self.exit_code, "signal": self.signal,
                "usage": dict(self.usage), "pid": None, "submitted": self.submitted, "started": self.started,
                "ended": self.ended}


class SlurmDistributor:
    """Runs tasks as Slurm batch jobs; one ``sbatch`` per job or array, one ``squeue`` per poll.

    Parameters
    ----------
    cluster_name
        The name of the cluster.
    partition
        Default partition (``requested_resources["queue"]`` overrides it; None: Slurm's default).
    log_dir
        Default folder for ``{name}.o{id}`` / ``.e{id}`` / ``.x{id}`` when a task names none. It must be
        visible from the compute nodes and stable across kernel restarts (for :meth:`adopt`), so the
        default is ``~/.nbdist/slurm-logs/{cluster_name}``.
    poll_interval
        Seconds between two ``squeue`` calls right after something changed.
    max_poll_interval
        Ceiling of the back-off while nothing changes.
    sbatch_args
        Extra ``sbatch`` options for every job (e.g. ``["--account=abc"]``), passed as argv.
    """

    def __init__(self, cluster_name: str = "slurm", partition: str | None = None, log_dir: str | None = None,
                 poll_interval: float = POLL_INTERVAL_S, max_poll_interval: float = MAX_POLL_INTERVAL_S,
                 sbatch_args: Iterable[str] = (), *args: Any, **kwargs: Any) -> None:
        if poll_interval <= 0 or max_poll_interval < poll_interval:
            raise ValueError("poll_interval must be positive and at most max_poll_interval")
        self._cluster_name = cluster_name
        self.partition = partition
        self.log_dir = os.path.abspath(
            log_dir or os.path.join(os.path.expanduser("~"), ".nbdist", "slurm-logs", log_stem(cluster_name)))
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.sbatch_args = [str(arg) for arg in sbatch_args]
        self.started = False
        self._lock = threading.RLock()
        self._records: dict[str, _Record] = {}
        self._live: dict[str, _Record] = {}
        self._interval = poll_interval
        self._next_poll = 0.0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._poll_lock = threading.Lock()

    # ----------------------------------------------------------------- protocol properties
    @property
    def worker_node_entry_point(self) -> str:
        """``nbdist-worker`` of this Python environment (next to ``sys.executable``, so a venv works)."""
        return worker_entry_point()

    @property
    def cluster_name(self) -> str:
        """Return the name of the cluster."""
        return self._cluster_name

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the poller thread (one ``squeue`` per interval while jobs are live)."""
        with self._lock:
            if self.started:
                return
            self._stopping.clear()
            self.started = True
            self._thread = threading.Thread(target=self._poll_loop, name="nbdist-slurm-poller", daemon=True)
            self._thread.start()

    def stop(self, cancel: bool = False) -> None:
        """Stop polling. Jobs keep running on Slurm unless ``cancel=True`` (then they are scancel'ed).

        Parameters
        ----------
        cancel
            Also cancel every job of this distributor that is still queued or running.
        """
        if cancel:
            with self._lock:
                live = list(self._live)
            self.terminate_task_instances(live)
        with self._lock:
            if not self.started:
                return
            self.started = False
            self._stopping.set()
            self._wake.set()
            thread, self._thread = self._thread, None
        if thread is not None:
            # A poll in flight ends on its own (the thread is a daemon and sees the stop flag after it).
            thread.join(STOP_JOIN_S)

    def __enter__(self) -> "SlurmDistributor":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ----------------------------------------------------------------- submission
    def submit_to_batch_distributor(self, command: str, name: str, requested_resources: dict[str, Any]) -> str:
        """Submit one batch job with ``sbatch``; return its Slurm job id.

        Raises
        ------
        ValueError
            Malformed resources, or sbatch rejected the job (its message is included).
        SlurmUnavailable
            sbatch is missing or the controller does not answer.
        """
        resources = self._check(command, requested_resources)
        job_id = self._sbatch(command, name, resources, array_length=None)
        self._register([_Record(job_id, name, resources, self.log_dir)])
        return job_id

    def submit_array_to_batch_distributor(self, command: str, name: str, requested_resources: dict[str, Any],
                                          array_length: int) -> dict[int, str]:
        """Submit ``array_length`` steps with ONE ``sbatch --array=0-N[%K]``; return ``{step: "JOBID_step"}``.

        ``requested_resources["max_concurrent"]`` becomes ``%K``. Steps see ``JOB_ID`` and
        ``ARRAY_STEP_ID`` (as well as Slurm's own variables).
        """
        check_array_length(array_length)
        resources = self._check(command, requested_resources)
        job_id = self._sbatch(command, name, resources, array_length=array_length)
        records = [_Record(f"{job_id}_{step}", name, resources, self.log_dir) for step in range(array_length)]
        self._register(records)
        return {step: record.distributor_id for step, record in enumerate(records)}

    def adopt(self, distributor_id: str, name: str, requested_resources: dict[str, Any]) -> None:
        """Track a job submitted by an earlier session (e.g. before a kernel restart).

        No CLI call is made here: the next poll finds the job in ``squeue`` or, once Slurm has
        forgotten it, its exit info next to its logs.

        Parameters
        ----------
        distributor_id
            ``"JOBID"`` or ``"JOBID_STEP"`` as returned by the submit methods.
        name, requested_resources
            As given at submission (they locate the log and exit-info files).
        """
        distributor_id = str(distributor_id)
        if not cli.JOB_ID_RE.match(distributor_id):
            raise ValueError(f"not a Slurm job id: {distributor_id!r} (expected JOBID or JOBID_STEP)")
        resources = Resources.parse(requested_resources)
        with self._lock:
            if distributor_id in self._records:
                return
            record = _Record(distributor_id, name, resources, self.log_dir)
            record.message = "adopted: waiting for the next poll"
        self._register([record])

    def _check(self, command: str, requested_resources: dict[str, Any] | None) -> Resources:
        check_command(command)
        resources = Resources.parse(requested_resources)
        for dependency in resources.after:
            if not cli.JOB_ID_RE.match(dependency):
                raise ValueError(f"after: {dependency!r} is not a Slurm distributor id (JOBID or JOBID_STEP)")
        for folder in {resources.stdout_dir or self.log_dir, resources.stderr_dir or self.log_dir}:
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as exc:
                raise ValueError(f"cannot create the log folder {folder!r}: {exc}") from exc
        return resources

    def _sbatch_argv(self, name: str, resources: Resources, array_length: int | None) -> list[str]:
        stdout_dir = _log_dirs(resources, self.log_dir)[0]
        # sbatch expands %-patterns in --output; a literal % in the folder must be doubled.
        wrapper_log = os.path.join(stdout_dir.replace("%", "%%"), log_stem(name))
        argv = ["sbatch", "--parsable", f"--job-name={log_stem(name)}", "--export=ALL", "--kill-on-invalid-dep=yes",
                f"--cpus-per-task={resources.cores}"]
        if array_length is not None:
            concurrency = f"%{resources.max_concurrent}" if resources.max_concurrent else ""
            argv += [f"--array=0-{array_length - 1}{concurrency}", f"--output={wrapper_log}.s%A_%a"]
        else:
            argv.append(f"--output={wrapper_log}.s%j")
        if resources.memory_mb is not None:
            argv.append(f"--mem={math.ceil(resources.memory_mb)}M")
        if resources.runtime_s is not None:
            # Slurm limits are whole minutes; round up so the task gets at least what it asked for.
            argv.append(f"--time={math.ceil(resources.runtime_s / 60)}")
        partition = resources.queue or self.partition
        if partition:
            argv.append(f"--partition={partition}")
        if resources.after:
            argv.append("--dependency=afterok:" + ":".join(resources.after))
        if resources.cwd:
            argv.append(f"--chdir={resources.cwd}")
        return argv + self.sbatch_args

    def _script(self, command: str, name: str, resources: Resources) -> str:
        stdout_dir, stderr_dir = _log_dirs(resources, self.log_dir)
        worker = [self.worker_node_entry_point, f"--name={name}", f"--stdout-dir={stdout_dir}",
                  f"--stderr-dir={stderr_dir}"]
        if resources.memory_mb is not None:
            # The worker samples the task's RSS every 0.1 s and reports "memory limit exceeded";
            # Slurm's own check (every second, without cgroups) stays as the backstop.
            worker.append(f"--memory={math.ceil(resources.memory_mb)}M")
        # Everything substituted is shell-quoted. sbatch stops reading #SBATCH directives at the
        # prologue's first command, so none inside the user's command is obeyed.
        return _SCRIPT_PROLOGUE + "exec " + " ".join(shlex.quote(word) for word in [*worker, "--", command]) + "\n"

    def _sbatch(self, command: str, name: str, resources: Resources, array_length: int | None) -> str:
        argv = self._sbatch_argv(name, resources, array_length)
        env = {key: value for key, value in os.environ.items() if key not in _IDENTITY_VARS}
        # The task's variables travel in sbatch's own environment (--export=ALL): never through a shell.
        env.update(resources.env)
        result = cli.run_cli(argv, input_text=self._script(command, name, resources), env=env)
        if result.returncode != 0:
            message = cli.error_text(result.stderr)
            if cli.controller_down(message):
                raise cli.SlurmUnavailable(f"sbatch could not reach the Slurm controller: {message}")
            if array_length is not None and "array" in message.lower():
                message += (f" ({array_length} steps: Slurm's MaxArraySize caps array indices, see "
                            "`scontrol show config | grep MaxArraySize`; split the array)")
            raise ValueError(f"sbatch rejected {name!r}: {message}")
        job_id = result.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise cli.SlurmUnavailable(f"sbatch returned no job id (stdout {result.stdout!r}, "
                                       f"stderr {result.stderr!r})")
        logger.debug("submitted %s as Slurm job %s", name, job_id)
        return job_id

    def _register(self, records: list[_Record]) -> None:
        with self._lock:
            for record in records:
                self._records[record.distributor_id] = record
                self._live[record.distributor_id] = record
            self._interval = self.poll_interval
            # Poll one interval after the first of a burst of submissions: later ones share that poll.
            now = time.monotonic()
            self._next_poll = min(self._next_poll if self._next_poll > now else math.inf, now + self.poll_interval)
        self._wake.set()

    # ----------------------------------------------------------------- queries
    def get_submitted_or_running(self, distributor_ids: list[str] | None = None) -> set[str]:
        """Ids (among ``distributor_ids``, or all) that are queued or running."""
        self._refresh_if_unattended()
        with self._lock:
            if distributor_ids is None:
                return set(self._live)
            return {i for i in distributor_ids if i in self._live}

    def get_queueing_errors(self, distributor_ids: list[str]) -> dict[str, str]:
        """Queued jobs that Slurm will not start without help (held, bad partition, failed dependency…)."""
        self._refresh_if_unattended()
        with self._lock:
            return {i: self._records[i].queue_error for i in distributor_ids  # type: ignore[misc]
                    if i in self._live and self._records[i].queue_error}

    def get_remote_exit_info(self, distributor_id: str) -> tuple[str, str]:
        """``(status, message)``: ``D`` exit 0, ``E`` exit code, ``K`` cancelled, ``Z`` over a limit, ``U`` lost."""
        self._refresh_if_unattended()
        record = self._get(distributor_id)
        return record.state, record.message

    def get_usage_stats(self, distributor_id: str) -> dict[str, Any]:
        """Wall seconds, CPU seconds and max RSS (MB) of a finished task, as its worker measured them."""
        self._refresh_if_unattended()
        return dict(self._get(distributor_id).usage)

    def get_task_reports(self, distributor_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Status, message, exit code, signal, usage and times of many tasks, without a CLI call per task."""
        self._refresh_if_unattended()
        with self._lock:
            return {i: self._records[i].report() for i in distributor_ids if i in self._records}

    def log_paths(self, distributor_id: str) -> tuple[str, str]:
        """``(stdout, stderr)`` file paths of a task, as ``nbdist-worker`` writes them."""
        record = self._get(distributor_id)
        return record.log_path("o"), record.log_path("e")

    def _get(self, distributor_id: str) -> _Record:
        with self._lock:
            record = self._records.get(distributor_id)
        if record is None:
            raise RemoteExitInfoNotAvailable(f"unknown distributor id {distributor_id!r} (submit or adopt it first)")
        return record

    # ----------------------------------------------------------------- termination
    def terminate_task_instances(self, distributor_ids: list[str]) -> None:
        """``scancel`` the live tasks among ``distributor_ids`` (one call); queued ones never start."""
        with self._lock:
            targets = [self._live[i] for i in distributor_ids if i in self._live]
            for record in targets:
                record.cancel_requested = True
        if not targets:
            return
        argv = ["scancel", *cli.compress_ids(record.distributor_id for record in targets)]
        result = cli.run_cli(argv)
        if result.returncode != 0:
            logger.warning("%s: %s", " ".join(argv), cli.error_text(result.stderr))
        with self._lock:
            self._interval = self.poll_interval
            self._next_poll = time.monotonic()
        self._wake.set()

    # ----------------------------------------------------------------- polling
    def poll(self) -> bool:
        """Ask Slurm about every live job now (ONE ``squeue`` call); True if anything changed."""
        with self._poll_lock:
            with self._lock:
                live = list(self._live.values())
            if not live:
                return False
            job_ids = sorted({record.job_id for record in live}, key=int)
            argv = ["squeue", "--noheader", "--states=all", "--array", f"--jobs={','.join(job_ids)}",
                    f"--Format={cli.SQUEUE_FORMAT}"]
            result = cli.run_cli(argv, env=cli.squeue_env())
            if result.returncode != 0 and "Invalid job id" not in result.stderr:
                raise cli.SlurmUnavailable(f"squeue failed: {cli.error_text(result.stderr)}")
            rows = cli.parse_squeue(result.stdout if result.returncode == 0 else "")
            with self._lock:
                # A list, not a generator: any() must not stop updating at the first change.
                changes = [self._update(record, rows.get(record.distributor_id)) for record in live]
            return any(changes)

    def _poll_loop(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                delay = self._next_poll - time.monotonic()
                idle = not self._live
            if idle or delay > 0:
                self._wake.wait(None if idle else delay)
                self._wake.clear()
                continue
            self._poll_and_schedule()

    def _poll_and_schedule(self) -> None:
        try:
            changed = self.poll()
        except (cli.SlurmUnavailable, OSError) as exc:
            # A controller restart or a network blip: keep the states we have and try again later.
            logger.warning("polling Slurm failed (will retry): %s", exc)
            changed = False
        except Exception:  # a bug must not silently end the poller: log it and keep polling
            logger.exception("unexpected error while polling Slurm (will retry)")
            changed = False
        with self._lock:
            self._interval = self.poll_interval if changed else min(self._interval * BACKOFF_FACTOR,
                                                                    self.max_poll_interval)
            self._next_poll = time.monotonic() + self._interval

    def _refresh_if_unattended(self) -> None:
        """Without the poller thread (not started, or stopped), queries poll on the same schedule."""
        if self.started:
            return
        with self._lock:
            due = self._live and time.monotonic() >= self._next_poll
        if due:
            self._poll_and_schedule()

    def _update(self, record: _Record, row: dict[str, str] | None) -> bool:
        """Apply one squeue row (None: not listed) to a live record; True if its state changed."""
        before = (record.state, record.message, record.queue_error)
        if row is None:
            info = record.exit_info()
            if info is not None:
                self._finish_from_info(record, info)
            elif record.cancel_requested and record.started is None:
                # Slurm 22.05 forgets a pending array step at once when it is cancelled.
                self._finish(record, S.KILL_SELF, "cancelled before it started")
            else:
                record.missing_polls += 1
                if record.missing_polls < MISSING_POLLS_BEFORE_LOST:
                    pass
                elif record.slurm_state in cli.PENDING_STATES:
                    self._finish(record, S.KILL_SELF, "cancelled before it started (outside this session)")
                else:
                    self._finish(record, S.UNKNOWN_ERROR, "lost: Slurm no longer knows the job and it left no exit "
                                 f"info (wrapper log: {record.log_path('s')})")
            return (record.state, record.message, record.queue_error) != before
        record.missing_polls = 0
        state, reason = row["State"], row["Reason"]
        record.slurm_state = state
        if state in cli.PENDING_STATES:
            record.state = S.QUEUED
            record.message = "pending" if reason in ("None", "") else f"pending ({reason})"
            record.queue_error = f"Slurm will not start it: {reason}" if reason in cli.HOPELESS_REASONS else None
        elif state in cli.RUNNING_STATES:
            record.state = S.RUNNING
            record.message = "running" if state == "RUNNING" else state.lower()
            record.queue_error = None
            record.started = record.started or cli.epoch(row["StartTime"])
        else:
            self._ended(record, state, reason, row)
        return (record.state, record.message, record.queue_error) != before

    def _ended(self, record: _Record, state: str, reason: str, row: dict[str, str]) -> None:
        record.started = record.started or cli.epoch(row["StartTime"])
        info = record.exit_info()
        if state in cli.EXIT_STATES:
            if info is not None:
                self._finish_from_info(record, info)
                return
            now = time.monotonic()
            record.ended_seen_at = record.ended_seen_at or now
            if record.started and now - record.ended_seen_at < EXIT_INFO_GRACE_S:
                record.state, record.message = S.RUNNING, "ending (waiting for its exit info)"
                return
            wait_status = int(row["exit_code"]) if row["exit_code"].isdigit() else 0
            code, signum = (wait_status >> 8) & 0xFF, wait_status & 0x7F
            if signum:  # the wrapper itself was killed: how the task ended is unknown
                status, what = S.UNKNOWN_ERROR, f"lost: nbdist-worker was {exit_message(None, signum)}"
            else:  # e.g. 127: nbdist-worker not found on the compute node
                status, what = (S.DONE if state == "COMPLETED" else S.ERROR), exit_message(code, None)
            self._finish(record, status, f"{what} and left no exit info (see {record.log_path('s')})",
                         None if signum else code, signum or None)
            record.ended = cli.epoch(row["EndTime"]) or record.ended
            return
        status, template = cli.SLURM_VERDICTS.get(state, (S.UNKNOWN_ERROR, f"ended in Slurm state {state}"))
        if info is not None and info.get("status") == S.RESOURCE_ERROR:
            self._finish_from_info(record, info)  # the worker caught the limit first and says which
            return
        memory = record.resources.memory_mb
        message = template.format(
            limit=f" of {row['TimeLimit']}" if row.get("TimeLimit") not in (None, "", "UNLIMITED") else "",
            memory=f" of {format_memory(memory)}" if memory else "")
        if state == "CANCELLED" and reason == "DependencyNeverSatisfied":
            message = "cancelled by Slurm: a job it depends on did not succeed (DependencyNeverSatisfied)"
        if info is not None:
            self._finish_from_info(record, info)
            record.state, record.message = status, message
        else:
            self._finish(record, status, message)
            record.ended = cli.epoch(row["EndTime"]) or record.ended

    def _finish_from_info(self, record: _Record, info: dict[str, Any]) -> None:
        self._finish(record, info.get("status") or S.UNKNOWN_ERROR, info.get("message") or "",
                     info.get("exit_code"), info.get("signal"), info.get("usage"))
        record.started = info.get("started") or record.started
        record.ended = info.get("ended") or record.ended

    def _finish(self, record: _Record, status: str, message: str, exit_code: int | None = None,
                signum: int | None = None, usage: dict[str, Any] | None = None) -> None:
        record.state, record.message = status, message
        record.exit_code, record.signal = exit_code, signum
        record.usage = dict(usage or {})
        record.queue_error = None
        record.ended = time.time()
        self._live.pop(record.distributor_id, None)
        if status == S.DONE:
            _remove_if_empty(record.log_path("s"))


def _remove_if_empty(path: str) -> None:
    """Drop the empty wrapper log of a task that succeeded (one fewer file per step); keep any message."""
    try:
        if os.path.getsize(path) == 0:
            os.unlink(path)
    except OSError:
        pass


class SlurmWorkerNode(WorkerNode):
    """What a task running as a Slurm job knows about itself (from Slurm's environment)."""

    @property
    def distributor_id(self) -> str | None:
        """``JOBID`` for a job, ``ARRAYJOBID_TASKID`` for an array step, None outside a job."""
        return current_distributor_id()

    @property
    def array_step_id(self) -> int | None:
        """``SLURM_ARRAY_TASK_ID`` as an int, None for a plain job."""
        step = os.environ.get("SLURM_ARRAY_TASK_ID") or os.environ.get("ARRAY_STEP_ID")
        return int(step) if step not in (None, "") else None
