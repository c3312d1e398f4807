"""The Session: the one core behind ``nbdist.submit``/``array``, the magics, the widget and the CLI.

This module is the public API (submit, array, jobs, get, snapshot, attach, close). The Session is
composed of small parts with explicit collaborators, none of which knows the Session::

    Session ──► Poller ──► Ownership ──► Lifecycle ──► Launcher ──► nbdist.backends (the loader)
       │                                    │   └──► HandleCache (Job/Array handles, finished by hooks)
       └──► snapshot (+ LogCache)           └──► PendingWrites ──► Registry (SQLite)
"""

from __future__ import annotations

import atexit
import logging
import os
import time
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..backends import check_backend_options, load_backend
from ..cluster_protocol.pycall import PythonCall
from ..cluster_protocol.resources import Resources, check_command, positive_int
from .handles import Array, Attempt, HandleCache, Job
from .jobfiles import JobFiles
from .launcher import Launcher
from .lifecycle import Lifecycle
from .logs import LogCache
from .ownership import Ownership
from .poller import Poller
from .cleanup import forget_record
from .listing import UnknownJob, known_hint
from .reasons import waiting_reason
from .records import DEFAULT_SCALES, JobRecord, LogPaths, Request, job_name
from .registry import Registry
from .snapshot import Snapshot, build_snapshot
from .state import State
from .sweep import Sweep, call_sweep, expand, placeholders, python_command

__all__ = ["Session", "UnknownJob"]
logger = logging.getLogger(__name__)

class Session:
    """Submit jobs and arrays to one backend, track them, and remember them in a registry.

    Parameters
    ----------
    backend
        ``"multiprocess"`` (this machine), ``"slurm"``, or a plugin of the ``nbdist.backends`` entry-point group.
    parallelism
        Cores used at once by the multiprocess backend (default: all of this machine's).
    root
        Folder of the registry (``registry.db``), the logs (``logs/{name}/``) and per-step scripts.
    poller_options
        Tunables of :class:`nbdist.session.poller.Poller` (``full_report_limit``, ``window_per_record``, ...).
    **backend_options
        Passed to the backend's constructor; an option it does not name is a ValueError listing those it does
        (e.g. ``partition``, ``sbatch_args`` for Slurm).

    Examples
    --------
    >>> with Session(parallelism=2) as session:                      # doctest: +SKIP
    ...     job = session.submit("echo hello", name="hello")
    ...     sweep = session.array("train --lr {{lr}}", over={"lr": [0.1, 0.01]}, after=[job])
    ...     sweep.wait()
    """

    def __init__(self, backend: str = "multiprocess", parallelism: int | None = None, root: str = ".nbdist", *,
                 poller_options: Mapping[str, Any] | None = None, **backend_options: Any) -> None:
        if parallelism is not None:
            positive_int(parallelism, "parallelism")
        backend_class = load_backend(backend)
        check_backend_options(backend, backend_class, backend_options)
        self.backend_name = backend
        self.parallelism = parallelism
        self.root = os.path.abspath(root)
        self.registry = Registry(self.root)
        self.id = uuid.uuid4().hex[:16]
        self.registry.add_session(self.id, backend)
        self._owner = _Owner(self)
        self._handles = HandleCache(self._owner)
        self._launcher = Launcher(backend, backend_class, self.root, parallelism, backend_options)
        self._lifecycle = Lifecycle(self._launcher, self._handles, self.registry)
        self._lock = self._lifecycle.lock
        self._ownership = Ownership(self.id, self.registry, self._launcher, self._lifecycle)
        self._poller = Poller(self.id, self.registry, self._lifecycle, self._ownership, **(poller_options or {}))
        self._logs = LogCache()
        atexit.register(_close_at_exit, weakref.ref(self))

    # ================================================================== submitting
    def submit(self, command: str | PythonCall, *, name: str | None = None, cores: int = 1, memory: str | int | None = None,
               runtime: str | int | None = None, after: Any = (), max_attempts: int = 1,
               env: Mapping[str, str] | None = None, cwd: str | None = None,
               resource_scales: Mapping[str, float] | None = None, python: bool = False, **site: Any) -> Job:
        """Run one shell command as a job.

        Parameters
        ----------
        command
            A shell command line or script (run with ``/bin/sh -c``); with ``python=True``, Python
            code run by this kernel's interpreter; or a ``PythonCall`` (a function's call as data: ``Executor``).
        name
            Letters, digits and ``._+=-`` (default: the command's first word). Names may repeat;
            ``get(name)`` finds the newest.
        cores, memory, runtime, **site
            Resources: ``memory`` like ``"512M"``/``"2G"``, ``runtime`` like ``"90s"``/``"10m"``; site options
            (``gpus``, ``account``, ``qos``, ``constraint``, ``reservation``, ``exclusive``, ``sbatch`` lines, ``requeue``,
            ``signal``; arrays ``steps_per_task``) only Slurm honours: see :mod:`nbdist.backends.slurm`.
        after
            Jobs, arrays, step jobs, names or ids that must end DONE first; until then the job is
            PENDING, and it becomes SKIPPED (with the reason) if one of them fails.
        max_attempts
            Run a failed attempt again up to this many attempts in all; after TIMEOUT the runtime,
            after OUT_OF_MEMORY the memory is scaled by ``resource_scales`` (default ×1.5 each).
        env, cwd
            Extra environment variables and the working directory.
        python
            ``command`` is Python (see :func:`nbdist.session.sweep.python_command`), as ``%%submit --python``.

        Returns
        -------
        Job
            A handle (a ``concurrent.futures.Future``; awaitable).
        """
        call, command = (command, command.command()) if isinstance(command, PythonCall) else (None, command)
        check_command(command)
        if placeholders(command):
            raise ValueError(f"{{{{...}}}} placeholders need an array: use array(..., over=...) ({command[:60]!r})")
        if python:
            command = python_command(command)
        name = job_name(name, command)
        request = self._validate("job", command, name, None, dict(cores=cores, memory=memory, runtime=runtime,
                                 **site), after, max_attempts, env, cwd, resource_scales, call)
        return self._owner.step_handle(self._create(request), 0)

    def array(self, command: str | PythonCall, *, steps: int | Iterable[int] | None = None, over: Any = None,
              name: str | None = None, max_concurrent: int | None = None, cores: int = 1,
              memory: str | int | None = None, runtime: str | int | None = None, after: Any = (),
              max_attempts: int = 1, env: Mapping[str, str] | None = None, cwd: str | None = None,
              resource_scales: Mapping[str, float] | None = None, python: bool = False, **site: Any) -> Array:
        """Run a command once per step: ``steps=`` (a count or step ids) or ``over=`` (parameters).

        Parameters
        ----------
        command
            The shell command; ``{{name}}`` is replaced by the step's (shell-quoted) parameter value
            and ``{{step}}`` by the step id. Parameters and ``NBDIST_STEP`` are also exported as
            environment variables. With ``python=True``, Python code whose ``{{name}}`` are values.
        steps
            ``10``, ``range(...)`` or any iterable of unique ints.
        over
            A dict of lists (every combination: a grid), a list of dicts (one step each) or a
            pandas DataFrame (one step per row). A manifest of step → parameters is written to
            ``{root}/logs/{name}/manifest-{id}.json``.
        max_concurrent
            At most this many steps run at once.

        Other parameters are those of :meth:`submit`.

        Raises
        ------
        ValueError
            For an unknown placeholder, an unused parameter or a malformed ``steps``/``over``,
            before anything is submitted.
        """
        call, command = (command, command.command()) if isinstance(command, PythonCall) else (None, command)
        check_command(command)
        # A function's map: ``over`` is its steps' parameters, shown as a sweep's (see functions.map_call).
        sweep = expand(command, steps, over) if call is None else call_sweep(steps, over)
        if python:
            command = python_command(command, sweep.params)
            sweep = Sweep(sweep.steps, sweep.params, bool(placeholders(command)))
        name = job_name(name, command)
        options = dict(cores=cores, memory=memory, runtime=runtime, max_concurrent=max_concurrent, **site)
        request = self._validate("array", command, name, sweep, options, after, max_attempts, env, cwd, resource_scales,
                                 call)
        return self._owner.array_handle(self._create(request))

    # ================================================================== finding and drawing
    def jobs(self) -> list[Job | Array]:
        """Every job and array this session knows (after ``attach``, earlier kernels' too), oldest first."""
        with self._lock:
            records = sorted(self._lifecycle.records.values(), key=lambda rec: rec.id)
        return [self._handle(rec) for rec in records]

    def get(self, name_or_id: Any) -> Job | Array:
        """A job or array by name (the newest of that name), id, or ``"name:step"`` for one step."""
        if isinstance(name_or_id, (Job, Array)):
            return name_or_id
        key = str(name_or_id).strip()
        with self._lock:
            rec = self._find(key)
            if rec is not None:
                return self._handle(rec)
        if ":" in key:
            base, _, step = key.rpartition(":")
            parent = self.get(base)
            if not isinstance(parent, Array):
                raise UnknownJob(f"{base!r} is a job, not an array: it has no step {step}")
            try:
                return parent.step(int(step))
            except (ValueError, KeyError):
                raise UnknownJob(f"array {base!r} has no step {step!r}") from None
        with self._lock:
            hint = known_hint(self._lifecycle.records.values())
        raise UnknownJob(f"no job or array named {key!r}; {hint}")

    def snapshot(self, handle: Any, *, state: State | str | None = None, page: int = 0, page_size: int = 50,
                 log_step: int | None = None, tail_lines: int = 20, where: Mapping[str, Any] | None = None) -> Snapshot:
        """Everything a view draws about a job or array (see :class:`nbdist.Snapshot`).

        Parameters
        ----------
        handle
            A Job, Array, name or id. A step Job gives its array's snapshot with its logs.
        state, where, page, page_size
            Which rows: of steps in this state whose parameters have these values (``{"lr": "0.1"}``), one page.
        log_step
            The step whose log tails to include (default: the first failed, else the first running).
        tail_lines
            Lines of each log tail.
        """
        item = self.get(handle)
        if isinstance(item, Job) and item.step is not None and log_step is None:
            log_step = item.step
        with self._lock:
            reason = waiting_reason(item.record, self._lifecycle.records.values(), self.parallelism, self._launcher.gpu_count)
            return build_snapshot(item.record, self._logs, state=state, page=page, page_size=page_size,
                                  log_step=log_step, tail_lines=tail_lines, where=where, reason=reason)

    def version(self, handle: Any) -> int:
        """A number that grows with every change of the job's steps: a view's cheap "anything new?"."""
        return self.get(handle).record.version

    def forget(self, handle: Any) -> list[str]:
        """Remove a finished job from the registry and delete its files (:mod:`~nbdist.session.cleanup`)."""
        return forget_record(self.get(handle).record, self.registry, self._lifecycle.records, self.id, self._lock)

    def poll(self) -> bool:
        """Ask the backends about every live task now (the poller does it on its own); True if anything changed."""
        return self._poller.poll()

    def waiting(self) -> Any:
        """Someone waits in this block other than by ``wait()``/``result()`` (joblib's callbacks): poll as often."""
        return self._poller.waiting()

    def backends(self) -> dict[str, Any]:
        """The backends this session started so far, by name."""
        return self._launcher.started()

    def backend_kwargs(self, name: str | None = None) -> dict[str, Any]:
        """The keyword arguments a backend (default: the session's) is, or would be, constructed with."""
        return self._launcher.backend_kwargs(name or self.backend_name)

    # ================================================================== attach and close
    def attach(self, take_over: bool = True) -> Session:
        """Load every job of the registry, and take over those whose session died; return the session.

        Jobs whose kernel died are taken over: local steps that were queued or running are recorded KILLED,
        Slurm jobs adopted, PENDING jobs start when their dependencies are DONE. With ``take_over=False``
        (the CLI's read-only commands) only the verdict on dead local tasks is recorded: nothing is adopted.
        """
        with self._lock:
            self._ownership.load_all(take_over)
            self._lifecycle.run_dep_checks()
        self._lifecycle.flush()
        records = self._lifecycle.records.values()
        if any(self._lifecycle.live.values()) or any(not rec.owned for rec in records):
            self._poller.ensure_started()
        return self

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (the session stays readable: jobs, get, snapshot)."""
        return self._lifecycle.closed

    def close(self) -> None:
        """Stop polling and stop the backends: local tasks are killed (KILLED), none is left running."""
        with self._lock:
            if self._lifecycle.closed:
                return
            self._lifecycle.closed = True
        self._poller.stop()
        with self._lock:
            self._lifecycle.kill_waiting()
        backends = self._launcher.started()
        for name, backend in backends.items():
            try:
                backend.stop()
            except Exception:  # one backend failing to stop must not keep the others running
                logger.exception("stopping backend %s failed", name)
        # Local tasks were just killed: record how they ended (Slurm's keep running, for the next attach to adopt).
        for name, backend in backends.items():
            if not self._launcher.persistent(name):
                self._poller.poll_backend(name, backend, full=True)
        self._lifecycle.close_registry(self.id)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Session {self.backend_name} root={self.root!r} jobs={len(self._lifecycle.records)}>"

    # ================================================================== creation
    def _validate(self, kind: str, command: str, name: str, sweep: Sweep | None, options: dict[str, Any],
                  after: Any, max_attempts: int, env: Mapping[str, str] | None, cwd: str | None,
                  scales: Mapping[str, float] | None, call: PythonCall | None = None) -> Request:
        """Every check of a submission, before anything exists; a bad value raises ValueError."""
        if self.closed:
            raise RuntimeError("this session is closed")
        positive_int(max_attempts, "max_attempts")
        factors = dict(DEFAULT_SCALES)
        for key, value in (scales or {}).items():
            if key not in DEFAULT_SCALES or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"resource_scales: {key!r}: {value!r}; expected runtime/memory → positive factor")
            factors[key] = float(value)
        resources = {key: value for key, value in options.items() if value is not None}
        parsed = Resources.parse(dict(resources, env=env or {}, cwd=cwd), **self._launcher.parse_options())
        with self._lock:
            deps = self._resolve_after(after, name)
        return Request(kind, command, name, sweep, resources, parsed.env, cwd, max_attempts, factors, deps, call)

    def _create(self, request: Request) -> JobRecord:
        """Write a checked submission's files, register it with them (all or nothing), and launch it."""
        self.registry.check_writable()
        files = JobFiles(self.root, request.name, os.path.join(self.root, "logs", request.name))
        files.write(request.command, request.sweep)
        try:
            rec = self._persist(request, files)
        except BaseException:
            files.discard()
            raise
        try:
            with self._lock:
                self._lifecycle.records[rec.id] = rec
                for dep, _ in rec.after:
                    dep.dependents.append(rec)
                try:
                    self._lifecycle.check_deps(rec)
                except BaseException:
                    del self._lifecycle.records[rec.id]
                    for dep, _ in rec.after:
                        dep.dependents.remove(rec)
                    raise
        except BaseException:
            self._lifecycle.remove_job(rec)
            files.discard()
            raise
        # Write the launch now: a kernel killed a moment later must not leave it PENDING (attach would resubmit).
        self._lifecycle.flush()
        self._poller.ensure_started()
        self._poller.wake()
        return rec

    def _persist(self, request: Request, files: JobFiles) -> JobRecord:
        """Insert the job row, its files moved into place in the same transaction; build its record (PENDING)."""
        sweep, created = request.sweep, time.time()
        steps_field: Any = None
        if sweep is not None:
            steps = sweep.steps
            steps_field = {"range": [steps.start, steps.stop, steps.step]} if isinstance(steps, range) else list(steps)
        n = 1 if sweep is None else len(sweep)
        spec = dict(resources=request.resources, env=request.env, cwd=request.cwd,
                    max_attempts=request.max_attempts, scales=request.scales, script_chunk=files.script_chunk,
                    call=request.call and request.call.to_json())
        job_id = self.registry.add_job(dict(
            name=request.name, kind=request.kind, command=request.command, backend=self.backend_name,
            session_id=self.id, created=created, n_steps=n, steps=steps_field, initial_state=State.PENDING.value,
            log_dir=files.log_dir, spec=spec, params=None if sweep is None else sweep.params,
            after=[[dep.id, index] for dep, index in request.after],
        ), place=files.place)
        rec = JobRecord(job_id, request.name, request.kind, request.command, self.backend_name, n,
                        None if sweep is None else sweep.steps, State.PENDING, created)
        rec.sweep, rec.resources, rec.env, rec.cwd = sweep, request.resources, request.env, request.cwd
        rec.max_attempts, rec.scales, rec.session_id = request.max_attempts, request.scales, self.id
        rec.log_dir, rec.after, rec.script_dir, rec.script_chunk = files.log_dir, request.after, files.script_dir, \
            files.script_chunk
        rec.call = request.call
        return rec

    def _resolve_after(self, after: Any, own_name: str) -> list[tuple[JobRecord, int | None]]:
        if after is None:
            return []
        if isinstance(after, (str, int, Job, Array)):
            after = [after]
        deps: list[tuple[JobRecord, int | None]] = []
        for item in after:
            if isinstance(item, str) and item == own_name and self._find(item) is None:
                raise ValueError(f"{own_name!r} cannot run after itself (a dependency cycle)")
            handle = item if isinstance(item, (Job, Array)) else None
            if handle is None:
                try:
                    handle = self.get(item)
                except UnknownJob as exc:
                    raise ValueError(f"after: {exc}") from None
            if handle.session is not self:
                raise ValueError(f"after: {handle!r} belongs to another session; attach() to use it here")
            index = handle.index if isinstance(handle, Job) and handle.step is not None else None
            deps.append((handle.record, index))
        return deps

    # ================================================================== handles
    def _find(self, key: str) -> JobRecord | None:
        records = self._lifecycle.records
        if key.isdigit() and int(key) in records:
            return records[int(key)]
        named = [rec for rec in records.values() if rec.name == key]
        return max(named, key=lambda rec: rec.id) if named else None

    def _handle(self, rec: JobRecord) -> Job | Array:
        return self._owner.step_handle(rec, 0) if rec.kind == "job" else self._owner.array_handle(rec)


class _Owner:
    """The session as its handles see it: their :class:`~nbdist.session.handles.HandleOwner`."""

    def __init__(self, session: Session) -> None:
        self._session = session

    @property
    def session(self) -> Session:
        return self._session

    @property
    def lock(self) -> Any:
        return self._session._lock

    def waiting(self) -> Any:
        return self._session._poller.waiting()

    def step_handle(self, rec: JobRecord, index: int) -> Job:
        with self._session._lock:
            return self._session._handles.step(rec, index)

    def array_handle(self, rec: JobRecord) -> Array:
        with self._session._lock:
            return self._session._handles.array(rec)

    def usage(self, rec: JobRecord, index: int) -> dict[str, Any]:
        # Usage is kept in the registry, not in memory: 100,000 finished steps need no 100,000 dicts.
        pending = rec.usage.get(index)
        if pending is not None:
            return pending
        session = self._session
        if session.closed:
            with Registry.reading(session.root) as registry:
                return registry.step_usage(rec.id, index)
        session._lifecycle.flush()
        return rec.usage.get(index) or session.registry.step_usage(rec.id, index)

    def attempts(self, rec: JobRecord, index: int) -> list[Attempt]:
        session = self._session
        if session.closed:  # the session's connection is closed: read with a short-lived one
            with Registry.reading(session.root) as registry:
                rows = registry.attempt_rows(rec.id, index)
        else:
            session._lifecycle.flush()
            rows = session.registry.attempt_rows(rec.id, index)
        attempts = [Attempt(row.attempt, row.distributor_id, State(row.state), row.exit_code, row.message, row.usage,
                            LogPaths(row.stdout, row.stderr) if row.stdout else None, row.resources) for row in rows]
        with session._lock:
            if not attempts or attempts[-1].number < rec.attempts[index]:
                attempts.append(Attempt(rec.attempts[index], rec.dids[index], rec.states[index],
                                        rec.exit_codes[index], rec.messages[index], {},
                                        rec.log_paths(index), rec.limits(index)))
        return attempts

    def cancel(self, rec: JobRecord, indices: Iterable[int]) -> bool:
        session = self._session
        with session._lock:
            if not session._ownership.owns_or_claims(rec):
                return session._ownership.ask_owner(rec, "kill", list(indices))
            any_live = session._lifecycle.cancel(rec, indices)
        session._lifecycle.settle()
        session._poller.wake()
        return any_live

    def retry(self, rec: JobRecord, indices: Sequence[int], scale: float | Mapping[str, float] | None) -> None:
        session = self._session
        with session._lock:
            if not session._ownership.owns_or_claims(rec):
                session._ownership.ask_owner(rec, "retry", list(indices))
                return
            session._lifecycle.retry(rec, indices, scale)
        session._lifecycle.settle()
        session._poller.ensure_started()
        session._poller.wake()


def _close_at_exit(ref: weakref.ref[Session]) -> None:
    session = ref()
    if session is not None:
        try:
            session.close()
        except Exception:  # interpreter shutdown: best effort
            pass
