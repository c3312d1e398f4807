"""joblib's ``nbdist`` backend: ``joblib.Parallel`` work — and so scikit-learn's ``n_jobs`` — as nbdist jobs.

::

    with joblib.parallel_config(backend="nbdist", n_jobs=8, memory="4G", runtime="1h"):
        GridSearchCV(model, grid, cv=5).fit(X, y)      # or Parallel()(delayed(f)(x) for x in xs)

    Parallel ──► batches of calls (joblib's AutoBatchingMixin: bigger while batches end fast)
       │
       ├─ submit(batch) ──► an nbdist job, named after the function (``@nbdist.function``'s path: logs,
       │                    limits, retries, the registry, local or Slurm); the call's jobs are one
       │                    JobGroup, drawn as one dashboard (as a slow wait's: ``%load_ext nbdist``).
       │                    Batches bound by a job's fixed cost, dispatched while the call's jobs fill
       │                    its n_jobs slots, are held and go joined when a slot frees (JoinedBatches)
       │                          │ ends: the session's poller thread (or at once, when cancelled)
       │                          ▼
       │               this backend's callback thread ──► joblib's callback per batch of the job: its
       │                                                   values read back, the next batch dispatched;
       │                                                   then the held batches submitted
       └─ abort_everything (an exception, a timeout, an interrupt) ──► every live job killed, waited for

nbdist's options are the backend's keyword arguments (``parallel_config(backend="nbdist", cores=2,
memory="4G")``, or ``Parallel(backend="nbdist", ...)``): those of :class:`nbdist.Executor` but
``max_concurrent`` (that is ``n_jobs``) and ``chunksize`` (joblib batches). ``session=`` runs on a
given :class:`nbdist.Session`, ``nbdist_backend="slurm"`` on a session of that backend (on the
default session's root, closed when the ``Parallel`` call ends); by default the default session.

joblib itself is imported by whoever makes this backend (joblib, via
:func:`nbdist.integrations.register_joblib`); this module is not imported by ``import nbdist``.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from joblib.parallel import AutoBatchingMixin, ParallelBackendBase, SequentialBackend

from .joblib_batches import BatchHandle, JoinedBatches, call_name, share_job

__all__ = ["ABORT_WAIT_SECONDS", "FAST_BATCH_GROWTH", "JOIN_SHARE", "NbdistBackend", "OPTION_NAMES", "RUN_SHARE"]

logger = logging.getLogger(__name__)

# nbdist's options a backend takes: the Executor's, less the two joblib decides itself (n_jobs is
# how many batches run at once, and joblib's batches are the chunks).
OPTION_NAMES = ("name", "cores", "memory", "runtime", "after", "max_attempts", "env", "cwd", "resource_scales", "gpus")

# abort_everything waits this long for killed jobs to end, so that Parallel raises with no task of
# the call left running (a local kill ends in well under a second; Slurm's scancel may take longer).
ABORT_WAIT_SECONDS = 30.0

# Auto-batching on a batch scheduler: a Slurm job costs seconds (sbatch, the poll interval), so a
# batch must run longer than joblib's 0.2–2 s before it is worth a job of its own; locally a job
# costs ~10 ms and joblib's own figures hold.
REMOTE_MIN_BATCH_SECONDS = 10.0
REMOTE_MAX_BATCH_SECONDS = 60.0
# A job costs milliseconds (registry rows, a call file, round trips to a warm worker), where a loky
# task costs a tenth of one. joblib measures a batch from its dispatch to its callback: for trivial
# calls that is mostly this fixed cost (a batch that ran 0.2 ms takes 3 ms), so batches grow far more
# slowly than their calls warrant. A batch that ran under RUN_SHARE of that duration is measured by its
# run time instead (its calls timed around them in the task: none of the job's files, whose cost is
# the disk's), and while batches end far below the ideal duration it grows up to FAST_BATCH_GROWTH
# times per measured batch (joblib's own rule: twice), never past half the size that fills the ideal
# duration at that rate; the factor bounds what one unrepresentative fast batch can do (calls that
# turn slow later). Batches whose calls take longer than a job's fixed cost (a grid search's fits)
# grow as joblib grows them (see compute_batch_size).
FAST_BATCH_GROWTH = 256
RUN_SHARE = 0.25
# Such batches still cost a job each, and joblib ends a call with 10 x n_jobs small ones (its tail rule,
# for balance): so while they are bound by the fixed cost and run under JOIN_SHARE of joblib's ideal
# duration (2 ms locally, 0.1 s on Slurm), a batch dispatched when the call's jobs fill its n_jobs
# slots (or while a job's callbacks run) is held, and the held ones go joined when a slot frees.
# Usually only joblib's pre-dispatched batches wait (2 x n_jobs); 10,000 trivial calls take ~20 jobs
# (29-31 with a job per batch). A joined job takes at most its share of the held batches among the
# free slots and at most joblib's ideal batch duration of calls at their measured speed, so that
# pre_dispatch="all", which holds nearly every batch, still runs them n_jobs at a time. Slower
# batches (a grid search's fits, whose balance a joined job would upset) go at once, one job each.
JOIN_SHARE = 0.01

_STOP = object()


def _checked_options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise ValueError(f"the nbdist joblib backend has no option {', '.join(map(repr, unknown))}; "
                         f"its options: {', '.join(OPTION_NAMES)}, session, nbdist_backend")
    from nbdist.session import Options

    Options(**options)  # the types nbdist checks before anything is submitted
    return options


class NbdistBackend(AutoBatchingMixin, ParallelBackendBase):
    """A joblib backend whose batches are nbdist jobs (see the module docstring).

    Parameters
    ----------
    session
        The :class:`nbdist.Session` to run on (default: the default session).
    nbdist_backend
        ``"multiprocess"``, ``"slurm"``, …: a session of this backend on the default session's root.
    **options
        nbdist's options of every batch's job: ``cores``, ``memory``, ``runtime``, ``max_attempts``,
        ``env``, ``cwd``, ``gpus``, ``after``, ``resource_scales``; ``name`` replaces the function's name.
    """

    # submit + retrieve_result_callback (joblib >= 1.3): return_as="generator"/"generator_unordered"
    # and Parallel(timeout=) work; values come back through the callback thread.
    supports_retrieve_callback = True
    supports_return_generator = True
    supports_timeout = True
    uses_threads = False
    supports_sharedmem = False  # require="sharedmem" makes joblib use its threads instead
    default_n_jobs = -1

    def __init__(self, nesting_level: int | None = None, inner_max_num_threads: int | None = None, *,
                 session: Any = None, nbdist_backend: str | None = None, **options: Any) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self.given_session = session
        self.nbdist_backend = nbdist_backend
        self.options = _checked_options(options)
        self.session: Any = None
        self._owns_session = False
        self._lock = threading.Lock()
        self._live: set[Any] = set()
        self._waits: dict[Any, Any] = {}  # each live job's session.waiting() block, left when it ends
        self._completions: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._n_jobs = 1  # the call's slots: how many of its jobs may be live before batches are held
        self._held: list[BatchHandle] = []  # batches waiting for a slot, to go as one job
        self._join_batches = False  # the last batch was bound by a job's fixed cost: hold, then join
        self._seconds_per_call = 0.0  # the last read batch's run time per call: how many a joined job may take
        self._aborting = False  # abort_everything began: nothing held is submitted any more
        self._call_name: str | None = None
        self._fast_batch_seconds = 0.0  # run time of the current size's last batch bound by a job's fixed cost
        self._retrieved_run_seconds: float | None = None  # the run time of the batch whose values were just read
        self.jobs: list[Any] = []  # the jobs of the current (or last) Parallel call, in submit order
        self.group: Any = None  # the same as a JobGroup: what the call's one dashboard lists
        self._group_end: Callable[[], None] | None = None  # when the call ends: cancels or ends its dashboard

    # ------------------------------------------------------------------ joblib's configuration
    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """``n_jobs``, a negative one counted from the session's task slots (its parallelism, or this
        machine's cores, over the jobs' ``cores``) as joblib counts from the CPUs."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        if n_jobs < 0:
            session = self.session or self.given_session
            slots = max(1, (getattr(session, "parallelism", None) or os.cpu_count() or 1)
                        // max(1, int(self.options.get("cores", 1))))
            n_jobs = max(slots + 1 + n_jobs, 1)
        return n_jobs

    def configure(self, n_jobs: int | None = 1, parallel: Any = None, prefer: str | None = None,
                  require: str | None = None, **backend_kwargs: Any) -> int:
        """Find the session, take nbdist's options of ``Parallel(backend="nbdist", **options)``."""
        ours = {key: value for key, value in backend_kwargs.items() if key in OPTION_NAMES}
        if ours:
            self.options = _checked_options({**self.options, **ours})
        self.parallel = parallel
        if self.session is None or self.session.closed:
            from nbdist.session.functions import resolve_session

            self.session, self._owns_session = resolve_session(self.given_session, self.nbdist_backend)
        if self.session.backend_name != "multiprocess":
            self.MIN_IDEAL_BATCH_DURATION = REMOTE_MIN_BATCH_SECONDS
            self.MAX_IDEAL_BATCH_DURATION = REMOTE_MAX_BATCH_SECONDS
        self._n_jobs = self.effective_n_jobs(n_jobs)
        return self._n_jobs

    def start_call(self) -> None:
        """A new Parallel call: a new name, list of jobs and dashboard."""
        self._call_name = None
        self.jobs = []
        self.group, self._group_end = None, None
        self._join_batches, self._seconds_per_call = False, 0.0
        with self._lock:
            self._held, self._aborting = [], False

    def stop_call(self) -> None:
        """The Parallel call ended (its values all read, or aborted): its dashboard, if shown, draws the end."""
        over, self._group_end = self._group_end, None
        if over is not None:
            try:
                over()
            except Exception:  # a drawing error must not turn a finished Parallel call into a failure
                logger.warning("nbdist: could not draw the end of the Parallel call's dashboard", exc_info=True)

    def batch_completed(self, batch_size: int, duration: float) -> None:
        """joblib's bookkeeping, given the batch's run time (its values were just read, on this same
        callback thread) in place of joblib's ``duration`` from dispatch to callback when that was
        mostly the job's fixed cost (see :data:`FAST_BATCH_GROWTH`); such a batch of the current size
        is kept for :meth:`compute_batch_size`."""
        run, self._retrieved_run_seconds = self._retrieved_run_seconds, None
        fast = 0.0
        if run and run < RUN_SHARE * duration:  # the job's fixed cost took most of it
            duration = fast = run
        self._join_batches = 0.0 < fast < JOIN_SHARE * self.MIN_IDEAL_BATCH_DURATION
        if run:  # the newest speed, fast or not: held batches are joined by it even once holding stops
            self._seconds_per_call = run / max(batch_size, 1)
        if batch_size == self._effective_batch_size:
            self._fast_batch_seconds = fast
        super().batch_completed(batch_size, duration)

    def compute_batch_size(self) -> int:
        """joblib's auto-batching, but a batch bound by the job's fixed cost grows by up to
        :data:`FAST_BATCH_GROWTH`, not 2, towards half the size that would fill joblib's ideal duration
        at its measured run time.

        Only such batches: joblib splits the last slice of a call into ``10 * n_jobs`` batches (at
        least one call each), so a size that outgrows a short iterable (a grid search's 20 fits) puts
        it wholly in that tail, one job per call; calls that take longer than a job's fixed cost grow
        as joblib grows them (20 fits: about 12 jobs). Half the filling size, not joblib's twice, for
        the same reason.
        """
        old, seconds = self._effective_batch_size, self._fast_batch_seconds
        size = super().compute_batch_size()
        if size != old:
            self._fast_batch_seconds = 0.0  # a new size: its own batches are measured anew
        if 0 < seconds < self.MIN_IDEAL_BATCH_DURATION and size == 2 * old:  # capped by joblib's doubling
            filling = int(old * self.MIN_IDEAL_BATCH_DURATION / seconds)
            size = self._effective_batch_size = max(size, min(FAST_BATCH_GROWTH * old, filling // 2))
        return size

    def get_nested_backend(self) -> tuple[Any, int | None]:
        """Parallel calls inside a batch run one after another in its task (which holds ``cores``, not
        ``n_jobs`` of them); an inner ``Parallel(backend=...)``/``parallel_config`` chooses otherwise."""
        return SequentialBackend(nesting_level=(self.nesting_level or 0) + 1), None

    # ------------------------------------------------------------------ running batches
    def submit(self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None) -> BatchHandle:
        """Run one batch as an nbdist job, or hold it for a slot (see :class:`JoinedBatches`);
        ``callback(handle)`` runs on this backend's thread when its job ends."""
        if self.session is None:
            raise RuntimeError("the nbdist joblib backend is not configured (joblib calls configure first)")
        if self._call_name is None:
            self._call_name = self.options.get("name") or call_name(func)
        handle = BatchHandle(func, callback)
        if callback is not None:
            self._start_thread()
        on_callback_thread = threading.current_thread() is self._thread
        with self._lock:
            # On the callback thread a job's end is being handled: its slot is filled once all its
            # batches' callbacks have dispatched theirs (_release_held), a job for each free slot.
            # Only a batch with a callback is held: nothing else would ever ask for it.
            hold = (callback is not None and self._join_batches and not self._aborting
                    and (self._held or len(self._live) >= self._n_jobs or on_callback_thread))
            if hold:
                self._held.append(handle)
                return handle
        try:
            self._submit_job([handle])
        except Exception as exc:
            if not on_callback_thread or callback is None:
                raise  # Parallel's own thread: joblib aborts the call and raises it
            # joblib dispatches the next batch from a batch's callback, where an exception is only
            # logged and Parallel would wait for this batch for ever: it ends with the error instead.
            handle.error = exc
            self._completions.put([handle])
        return handle

    def _release_held(self) -> None:
        """Submit held batches: a job for each free slot, each its share of them in order (see
        :data:`JOIN_SHARE`); the rest wait for the next slot."""
        with self._lock:
            free = self._n_jobs - len(self._live)
            if free <= 0 or not self._held or self._aborting:
                return
            parts: list[list[BatchHandle]] = []
            while self._held and len(parts) < free:
                parts.append(self._take_held(-(-len(self._held) // (free - len(parts)))))
        for number, handles in enumerate(parts):
            try:
                self._submit_job(handles)
            except Exception as exc:  # a closed session, a full disk: joblib is told through the batches' callbacks
                failed = [handle for part in parts[number:] for handle in part]
                for handle in failed:
                    handle.error = exc
                self._run_batch_callbacks(failed)  # joblib aborts the call, which drops what is still held
                return

    def _take_held(self, most: int) -> list[BatchHandle]:
        """Up to ``most`` held batches from the front, no more calls than fill joblib's ideal batch
        duration at their measured speed (at least one batch). The caller holds the lock."""
        budget = self.MIN_IDEAL_BATCH_DURATION / self._seconds_per_call if self._seconds_per_call else float("inf")
        count = calls = 0
        for handle in self._held[:most]:
            size = len(handle.batch) if hasattr(handle.batch, "__len__") else 1
            if count and calls + size > budget:
                break
            count, calls = count + 1, calls + size
        taken, self._held = self._held[:count], self._held[count:]
        return taken

    def _submit_job(self, handles: list[BatchHandle]) -> None:
        from nbdist.session import JobGroup, Options
        from nbdist.session.functions import submit_call

        # On this backend's session itself: a closed one raises (a decorated function's would fall back
        # to the default session, and the call would run where nobody asked).
        options = Options(**{**self.options, "name": self._call_name})
        job = submit_call(self.session, options, JoinedBatches([handle.batch for handle in handles]), (), {})
        share_job(job, handles)
        with self._lock:  # from here on abort_everything kills it; one that began meanwhile missed it
            aborted = self._aborting
            self.jobs.append(job)
            self._live.add(job)
        try:
            if aborted:
                raise RuntimeError("the Parallel call was aborted while this batch was submitted")
            # joblib waits for the batch through its callback, not through the job's result(): the session
            # is told someone waits, so that the end is noticed in milliseconds, not at the next idle poll.
            waiting = self.session.waiting()
            waiting.__enter__()
            with self._lock:
                self._waits[job] = waiting
                first = self.group is None
                if first:
                    self.group = JobGroup(self.session, self._call_name, "joblib Parallel")
                self.group.add(job)
        except BaseException:
            try:
                job.cancel()  # submitted but not watched (or after the abort): it must not run on unseen
            finally:
                job.add_done_callback(lambda done: self._ended(done, []))
            raise
        if first:
            self._show_group()
        job.add_done_callback(lambda done: self._ended(done, handles))

    def _show_group(self) -> None:
        """The call's one dashboard (its batches as they come), shown as a slow wait's is (after ``%load_ext
        nbdist``, once the call has lasted a second): joblib, not nbdist, waits for the batches."""
        from nbdist.session import show_live_after

        try:
            self._group_end = show_live_after(self.group)
        except Exception:  # a drawing error must not fail the Parallel call, whose jobs run on
            logger.warning("nbdist: could not show the Parallel call's dashboard", exc_info=True)

    def apply_async(self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None) -> Any:
        """joblib 1.3–1.4's name of :meth:`submit`."""
        return self.submit(func, callback)

    def retrieve_result_callback(self, out: BatchHandle) -> Any:
        """The batch's values, or the exception a call raised (with its remote traceback as
        ``__cause__``, as loky gives it), or :class:`nbdist.JobFailed` (killed, out of memory, …)."""
        values = out.result()
        self._retrieved_run_seconds = out.seconds  # for batch_completed, called next
        return values

    def _ended(self, job: Any, handles: list[BatchHandle]) -> None:
        # Mostly the session's poller thread: joblib's callback reads the values and submits the next
        # batch, which must not happen on (and hold up) the thread that tracks every job.
        with self._lock:
            self._live.discard(job)
            waiting = self._waits.pop(job, None)
        if waiting is not None:
            waiting.__exit__(None, None, None)
        self._completions.put(handles)  # its batches' callbacks, if any; then held batches take the slot

    def _start_thread(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._completions = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._run_callbacks, args=(self._completions,),
                                            name="nbdist-joblib-callbacks", daemon=True)
            self._thread.start()

    def _run_callbacks(self, completions: queue.SimpleQueue[Any]) -> None:
        while (handles := completions.get()) is not _STOP:
            self._run_batch_callbacks(handles)
            self._release_held()

    @staticmethod
    def _run_batch_callbacks(handles: list[BatchHandle]) -> None:
        for handle in handles:
            try:
                if handle.callback is not None:
                    handle.callback(handle)
            except Exception:  # joblib's callback records a batch's own errors; this is a bug of ours or its
                logger.exception("joblib's callback failed for %r", handle)

    # ------------------------------------------------------------------ ending
    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Kill every job of the call still queued or running, and wait (:data:`ABORT_WAIT_SECONDS`)
        until they have ended, so that nothing of the call runs on after Parallel raises."""
        from nbdist.session import quiet_waits

        with self._lock:
            live = list(self._live)
            self._held, self._aborting = [], True  # never submitted: joblib drops their callbacks with the call
        for job in live:
            job.cancel()
        # Also those cancelled as they were submitted (a watch that failed, this abort): a cancelled
        # Job's Future is settled at once, and ``wait()`` returns when its process is gone.
        with self._lock:
            ending = [job for job in self.jobs if job in live or not job.state.is_terminal]
        deadline = time.monotonic() + ABORT_WAIT_SECONDS
        with quiet_waits():  # no live dashboard pops up for this wait
            for job in ending:
                job.wait(max(0.0, deadline - time.monotonic()))
        running = [job for job in ending if not job.state.is_terminal]
        if running:
            logger.warning("%d job(s) of the aborted Parallel call had not ended after %.0f s: %s", len(running),
                           ABORT_WAIT_SECONDS, ", ".join(str(job.id) for job in running))
        if not ensure_ready:
            self.terminate()

    def terminate(self) -> None:
        """Stop the callback thread; close a session this backend made (``nbdist_backend=``)."""
        self.stop_call()  # a joblib that never calls stop_call: the call's dashboard ends here
        self.group = None
        with self._lock:
            thread, self._thread = self._thread, None
            completions = self._completions
        if thread is not None:
            completions.put(_STOP)
            if thread is not threading.current_thread():
                thread.join(timeout=5)
        if self._owns_session and self.session is not None:
            self.session.close()
            self.session, self._owns_session = None, False
        self.reset_batch_stats()

    def __repr__(self) -> str:
        shown = " ".join(f"{key}={value!r}" for key, value in self.options.items())
        return f"<nbdist joblib backend {shown}>".replace(" >", ">")

