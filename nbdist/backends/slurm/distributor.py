"""The Slurm backend: runs tasks as Slurm batch jobs, driven through the Slurm CLI.

Data flow::

    submit ──► sbatch --parsable [--array=0-N%K]   (ONE call per job; per array one per MaxArraySize
                   │                                tasks, each task ``steps_per_task`` steps: .arrays)
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
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ...cluster_protocol import Limit
from ...cluster_protocol import TaskInstanceStatus as Status
from ...cluster_protocol.naming import array_id
from ...cluster_protocol.resources import Resources, check_array_length, parse_site_options
from .._table import TableDistributor
from . import cancel, cli, verdict
from .arrays import ArrayPlan, default_steps_per_task
from .held import HeldCalls
from .submitter import Submitter, log_dir_of, slurm_ids_of
from .task import SlurmTask
from .usage import USAGE_INTERVAL_SECONDS, UsageSampler

__all__ = ["SlurmDistributor", "SlurmTask"]

logger = logging.getLogger(__name__)

# Default first poll interval and the ceiling of its back-off: short enough that a task that ends
# shows up quickly, long enough that a session watching 1000 jobs costs the controller one cheap
# call every few seconds. The interval grows by BACKOFF_FACTOR after each poll that saw no change.
POLL_INTERVAL_SECONDS = 1.0
MAX_POLL_INTERVAL_SECONDS = 15.0
BACKOFF_FACTOR = 1.5
# A job that ended (COMPLETED/FAILED) wrote its exit info before it ended; on a network file system
# the file may show up a little later, so wait this long for it before trusting Slurm's state alone.
EXIT_INFO_GRACE_SECONDS = 5.0
# A job squeue no longer lists (and that left no exit info) is declared lost after this many polls:
# one miss may be a controller that just restarted.
MISSING_POLLS_BEFORE_LOST = 3
# stop() waits this long for a poll in flight; squeue answers in milliseconds unless the controller is
# down (then the client retries for ~10 s), and stop() must not hang a notebook for that.
STOP_JOIN_SECONDS = 2.0
class SlurmDistributor(TableDistributor[SlurmTask]):
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
    prologue
        Shell lines every batch script runs before the task (``module load cuda``, ``source env/bin/activate``).
    wrapper
        Words put before ``nbdist-worker`` (a container: ``["apptainer", "exec", "image.sif"]``).
    gpus, account, qos, constraint, reservation, exclusive, sbatch, requeue, signal
        Site options for every job of the session (a task's own win): see
        :func:`~nbdist.cluster_protocol.resources.parse_site_options`.
    max_array_size
        Tasks per ``sbatch --array`` call at most (default and ceiling: the site's ``MaxArraySize``).
    usage_interval
        Seconds between two ``sstat`` calls (one for all running tasks) for their live CPU % and RSS
        (:mod:`.usage`); 0: none.
    """

    # The session may pass site options (gpus, account…) in requested_resources.
    SITE_OPTIONS = True

    def __init__(self, cluster_name: str = "slurm", partition: str | None = None, log_dir: str | None = None,
                 poll_interval: float = POLL_INTERVAL_SECONDS, max_poll_interval: float = MAX_POLL_INTERVAL_SECONDS,
                 sbatch_args: Iterable[str] = (), prologue: str | None = None, wrapper: Iterable[str] = (),
                 gpus: int | str | None = None, account: str | None = None, qos: str | None = None,
                 constraint: str | None = None, reservation: str | None = None, exclusive: bool = False,
                 sbatch: Iterable[str] = (), requeue: bool = False, signal: str | None = None,
                 max_array_size: int | None = None, usage_interval: float | None = USAGE_INTERVAL_SECONDS,
                 *args: Any, **kwargs: Any) -> None:
        if poll_interval <= 0 or max_poll_interval < poll_interval:
            raise ValueError("poll_interval must be positive and at most max_poll_interval")
        self.site = parse_site_options(dict(gpus=gpus, account=account, qos=qos, constraint=constraint,
                                            reservation=reservation, exclusive=exclusive, sbatch=list(sbatch) or None,
                                            requeue=requeue, signal=signal))
        self.submitter = Submitter(partition, log_dir_of(cluster_name, log_dir), sbatch_args, self.site, prologue,
                                   wrapper, self.worker_node_entry_point, max_array_size)
        self.usage = UsageSampler(usage_interval)
        super().__init__(cluster_name)
        self.held = HeldCalls(self.submitter, self.tasks, self._finish)  # arrays with calls still to make
        self.partition = partition
        self.log_dir = log_dir_of(cluster_name, log_dir)
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.sbatch_args = [str(arg) for arg in sbatch_args]
        self.started = False
        self._lock = self.tasks.lock  # one lock guards the table and the poll schedule
        self._interval = poll_interval
        self._next_poll = 0.0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._poll_lock = threading.Lock()

    # ----------------------------------------------------------------- capabilities
    @classmethod
    def session_defaults(cls, root: str, parallelism: int | None) -> dict[str, Any]:
        """Nothing: Slurm decides parallelism, and logs go where compute nodes see them (``log_dir``)."""
        return {}

    @classmethod
    def max_cores(cls, options: Mapping[str, Any]) -> int | None:
        """None: the cluster decides how many cores one task may have (sbatch says no if too many)."""
        return None

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
                live = list(self.tasks.live)
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
            thread.join(STOP_JOIN_SECONDS)

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
        resources = self.submitter.prepare(command, requested_resources)
        job_id, message = self.submitter.sbatch(command, name, resources, None)
        if job_id is None:
            raise ValueError(f"sbatch rejected {name!r}: {message}")
        self._register([SlurmTask(job_id, name, resources, self.log_dir, job_id)])
        return job_id

    def submit_array_to_batch_distributor(self, command: str, name: str, requested_resources: dict[str, Any],
                                          array_length: int) -> dict[int, str]:
        """Submit ``array_length`` steps; return ``{step: "JOBID_step"}`` (JOBID: the first sbatch call's).

        One ``sbatch --array`` per ``MaxArraySize`` tasks (the site's, read once with ``scontrol show
        config``), each task running ``requested_resources["steps_per_task"]`` consecutive steps (default:
        :func:`~.arrays.default_steps_per_task`). ``max_concurrent`` holds across the calls, and a call the
        site refuses for a submit limit is made as jobs finish (:mod:`.arrays`). Steps see ``JOB_ID`` and
        ``ARRAY_STEP_ID`` (as well as Slurm's own variables).

        Raises
        ------
        ValueError
            Malformed resources, or sbatch rejected the first call (nothing is then submitted).
        """
        check_array_length(array_length)
        resources = self.submitter.prepare(command, requested_resources)
        max_array_size, max_job_count = self.submitter.site_limits()
        per_task = resources.site.get("steps_per_task") or default_steps_per_task(array_length, max_job_count)
        plan = ArrayPlan(array_length, per_task, max_array_size, resources.max_concurrent)
        made = self.submitter.make_calls(plan, command, name, resources, 0)
        if plan.base is None:
            raise ValueError(f"sbatch rejected {name!r}: {plan.held} (nothing was submitted)")
        slurm_ids = slurm_ids_of(plan, made)
        held = plan.held or f"held back: max_concurrent={plan.max_concurrent} across Slurm's MaxArraySize pieces"
        records = []
        for step in range(array_length):
            record = SlurmTask(array_id(plan.base, step), name, resources, self.log_dir, slurm_ids.get(step), plan)
            if record.slurm_id is None:
                record.message = held
            records.append(record)
        if not plan.complete:
            self.held.add(plan, command, name, resources)
        self._register(records)
        return {step: record.distributor_id for step, record in enumerate(records)}

    def adopt(self, distributor_id: str, name: str, requested_resources: dict[str, Any]) -> None:
        """Track a job submitted by an earlier session (e.g. before a kernel restart).

        No CLI call is made here: the next poll finds the job in ``squeue`` or, once Slurm has
        forgotten it, its exit info next to its logs. An array step finds its Slurm task in the
        array's plan file (``{name}.a{JOBID}`` beside its logs), and the calls the earlier session still
        held back (``max_concurrent``, a submit limit) are made here as they would have been there.

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
        resources = Resources.parse(requested_resources, site_options=True)
        with self._lock:
            if distributor_id in self.tasks.records:
                return
            record = SlurmTask(distributor_id, name, resources, self.log_dir, distributor_id)
            plan = self.submitter.adopted_plan(record.stdout_dir, record.name, record.job_id) \
                if record.array_step_id is not None else None
            if plan is not None:
                record.plan, record.slurm_id = plan, plan.slurm_id(record.array_step_id or 0)
            record.message = "adopted: waiting for the next poll"
        self._register([record])
        if record.slurm_id is None:  # the earlier session held it back: never submitted
            with self._lock:
                self.held.resume(record, name, resources)

    def _register(self, records: list[SlurmTask]) -> None:
        with self._lock:
            self.tasks.add(records)
            self._interval = self.poll_interval
            # Poll one interval after the first of a burst of submissions: later ones share that poll.
            now = time.monotonic()
            self._next_poll = min(self._next_poll if self._next_poll > now else math.inf, now + self.poll_interval)
        self._wake.set()

    # ----------------------------------------------------------------- queries
    def get_queueing_errors(self, distributor_ids: list[str]) -> dict[str, str]:
        """Queued jobs that Slurm will not start without help (held, bad partition, failed dependency…)."""
        self._refresh()
        with self._lock:
            live = self.tasks.live
            return {i: live[i].queue_error for i in distributor_ids  # type: ignore[misc]
                    if i in live and live[i].queue_error}

    # ----------------------------------------------------------------- termination
    def terminate_task_instances(self, distributor_ids: list[str]) -> None:
        """End the live tasks among ``distributor_ids``; queued ones never start.

        One ``scancel`` for the jobs and Slurm tasks that end whole; a step of a packed task whose other
        steps run on gets a cancel marker instead, and its worker skips or kills it (:mod:`.cancel`).
        """
        with self._lock:
            targets = [self.tasks.live[i] for i in distributor_ids if i in self.tasks.live]
            for record in targets:
                record.cancel_requested = True
            self.held.cancel([record for record in targets if record.slurm_id is None])
            slurm_ids, marked = cancel.split(targets, self.tasks)
        slurm_ids |= cancel.write_markers(marked)
        if not slurm_ids and not marked:
            return
        argv = ["scancel", *cli.compress_ids(sorted(slurm_ids))]
        result = cli.run_cli(argv) if slurm_ids else None
        if result is not None and result.returncode != 0:
            logger.warning("%s: %s", " ".join(argv), cli.error_text(result.stderr))
        with self._lock:
            self._interval = self.poll_interval
            self._next_poll = time.monotonic()
        self._wake.set()

    # ----------------------------------------------------------------- polling
    def poll(self) -> bool:
        """Ask Slurm about every live job now (ONE ``squeue`` call); True if anything changed.

        Then the arrays with calls still to make get them (as far as ``max_concurrent`` and the
        site's submit limits allow), and their ``%`` throttles rise as earlier calls drain.
        """
        with self._poll_lock:
            with self._lock:
                live = [record for record in self.tasks.live.values() if record.slurm_id is not None]
            changes = []
            if live:
                rows = cli.squeue_rows({record.slurm_id.partition("_")[0] for record in live})  # type: ignore[union-attr]
                with self._lock:
                    # A list, not a generator: any() must not stop updating at the first change.
                    changes = [self._update(record, rows.get(record.slurm_id)) for record in live]  # type: ignore[arg-type]
            changed = any(changes) | self.held.advance()
            self.usage.update(self.tasks)
            return changed

    def _poll_loop(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                now = time.monotonic()
                delay, idle = self._next_poll - now, not self.tasks.live
                usage_in = self.usage.wake_in(now)  # running tasks' live usage keeps a schedule of its own
            if not idle and delay <= 0:
                self._poll_and_schedule()
            elif not idle and usage_in <= 0:
                with self._poll_lock:
                    self.usage.update(self.tasks)
            else:
                self._wake.wait(None if idle else min(delay, usage_in))
                self._wake.clear()

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

    def _refresh(self) -> None:
        """Without the poller thread (not started, or stopped), queries poll on the same schedule."""
        if self.started:
            return
        with self._lock:
            due = self.tasks.live and time.monotonic() >= self._next_poll
        if due:
            self._poll_and_schedule()

    def _update(self, record: SlurmTask, row: dict[str, str] | None) -> bool:
        """Apply one squeue row (None: not listed) to a live record; True if its state changed."""
        before = (record.state, record.message, record.queue_error)
        if row is None:
            record.missing_polls += 1
            info = record.exit_info()
            self._apply(record, info, verdict.vanished(
                info, cancel_requested=record.cancel_requested, started=record.started is not None,
                missing_polls=record.missing_polls, last_state=record.slurm_state, wrapper_log=record.log_path("s"),
                polls_before_lost=MISSING_POLLS_BEFORE_LOST, memory_mb=record.resources.memory_mb,
                wrapper_log_tail=record.wrapper_log_tail() if info is None and record.started else ""))
            return (record.state, record.message, record.queue_error) != before
        record.missing_polls = 0
        record.slurm_state, record.raw_job_id = row["State"], row["JobID"] or None
        progress = verdict.progress(row["State"], row["Reason"])
        if progress is None:
            self._ended(record, row)
        elif progress.status == Status.RUNNING and record.packed:
            self._packed_running(record)
        else:
            if progress.status == Status.QUEUED and record.started is not None:
                # Back in the queue after it ran: Slurm requeued it (preemption, scontrol requeue). One
                # step still, whose attempts Slurm counts; its earlier exit info is no longer the truth.
                record.requeues += 1
                record.started = None
            record.state, record.message, record.queue_error = progress
            if record.requeues:
                record.message += f" (requeued {record.requeues}x by Slurm)"
            if progress.status == Status.RUNNING:
                record.started = record.started or cli.epoch(row["StartTime"])
        return (record.state, record.message, record.queue_error) != before

    def _packed_running(self, record: SlurmTask) -> None:
        """A step of a running packed task: ended (its exit info is there), running, or waiting its turn."""
        info = record.exit_info()
        if info is not None and not info.get("terminated"):  # a terminated step waits for Slurm's verdict
            self._apply(record, info, verdict.from_exit_info(info))
            return
        step = record.array_step_id or 0
        plan = record.plan
        assert plan is not None
        previous = array_id(record.job_id, step - 1)
        if step % plan.per_task and previous in self.tasks.live:
            record.state, record.message = Status.QUEUED, f"waiting in its packed task ({plan.per_task} steps a task)"
            if record.cancel_requested:
                record.message += "; cancelled: it is skipped when its turn comes"
            return
        record.state, record.message = Status.RUNNING, "running"
        record.started = record.started or time.time()

    def _ended(self, record: SlurmTask, row: dict[str, str]) -> None:
        """squeue lists the task in an ended state: apply the verdict, or wait a little for its exit info."""
        record.started = record.started or cli.epoch(row["StartTime"])
        info = record.exit_info()
        now = time.monotonic()
        if row["State"] in cli.EXIT_STATES and info is None:
            record.ended_seen_at = record.ended_seen_at or now
        waiting = bool(record.started) and record.ended_seen_at is not None and \
            now - record.ended_seen_at < EXIT_INFO_GRACE_SECONDS
        # Slurm's own words matter only for a job that exited without exit info (a cancelled or timed-out
        # one has Slurm's state): its log is read then, not for every ended step.
        unexplained = row["State"] in cli.EXIT_STATES and info is None and not waiting
        decided = verdict.ended(row, info, memory_mb=record.resources.memory_mb, wrapper_log=record.log_path("s"),
                                waiting_for_info=waiting,
                                wrapper_log_tail=record.wrapper_log_tail() if unexplained else "")
        if decided is None:
            record.state, record.message = Status.RUNNING, "ending (waiting for its exit info)"
            return
        if record.packed and info is None and decided.status != Status.DONE:
            decided = decided._replace(message=f"not finished when its packed task ended: {decided.message}")
        self._apply(record, info, decided)
        if info is None:
            record.ended = cli.epoch(row["EndTime"]) or record.ended

    def _apply(self, record: SlurmTask, info: dict[str, Any] | None, decided: verdict.Verdict | None) -> None:
        """End the record with the verdict (None: nothing to do yet); exit info gives usage and times."""
        if decided is None:
            return
        if record.requeues:
            decided = decided._replace(message=f"{decided.message} (requeued {record.requeues}x by Slurm)")
        self._finish(record, decided.status, decided.message, decided.exit_code, decided.signal,
                     info.get("usage") if info is not None else None, decided.limit)
        if info is not None:
            record.started = info.get("started") or record.started
            record.ended = info.get("ended") or record.ended

    def _finish(self, record: SlurmTask, status: str, message: str, exit_code: int | None = None,
                signum: int | None = None, usage: dict[str, Any] | None = None, limit: Limit | None = None) -> None:
        record.queue_error = None
        self.tasks.end(record, status, message, exit_code, signum, usage, limit)
        if status == Status.DONE:
            record.drop_empty_wrapper_log()
