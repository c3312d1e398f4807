"""The Session: the one core behind ``nbdist.submit``/``array``, the magics, the widget and the CLI.

This module holds the public API (submit, array, jobs, get, snapshot, close, attach); the machinery
under it (launching, state changes, retries, the poller) is in :mod:`nbdist.session_core`, and
rebuilding records from the registry in :mod:`nbdist.session_load`.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from ..backends import check_backend_options, load_backend
from .handles import Array, Attempt, Job, JobRecord, LogPaths, _Handle
from .registry import Registry
from ..cluster_protocol.resources import Resources
from .lifecycle import DEFAULT_SCALES, SessionCore, _unjson
from .ownership import claim_orphans, load_record
from .snapshot import Snapshot, build_snapshot
from .state import State
from .sweep import Sweep, expand, placeholders, write_manifest, write_scripts

__all__ = ["Session", "UnknownJob"]

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]{0,99}$")


class UnknownJob(KeyError):
    """No job or array has this name or id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown job"


class Session(SessionCore):
    """Submit jobs and arrays to one backend, track them, and remember them in a registry.

    Parameters
    ----------
    backend
        ``"multiprocess"`` (this machine), ``"slurm"``, or a plugin of the ``nbdist.backends``
        entry-point group.
    parallelism
        Cores used at once by the multiprocess backend (default: all of this machine's).
    root
        Folder of the registry (``registry.db``), the logs (``logs/{name}/``) and per-step scripts.
    **backend_options
        Passed to the backend's constructor; an option it does not name is a ValueError listing
        those it does (e.g. ``partition``, ``sbatch_args`` for Slurm).

    Examples
    --------
    >>> with Session(parallelism=2) as session:                      # doctest: +SKIP
    ...     job = session.submit("echo hello", name="hello")
    ...     sweep = session.array("train --lr {{lr}}", over={"lr": [0.1, 0.01]}, after=[job])
    ...     sweep.wait()
    """

    def __init__(self, backend: str = "multiprocess", parallelism: int | None = None, root: str = ".nbdist",
                 **backend_options: Any) -> None:
        if parallelism is not None and (isinstance(parallelism, bool) or not isinstance(parallelism, int)
                                        or parallelism < 1):
            raise ValueError(f"parallelism must be a positive integer, not {parallelism!r}")
        self.backend_name = backend
        self._backend_classes: dict[str, type] = {backend: load_backend(backend)}
        check_backend_options(backend, self._backend_classes[backend], backend_options)
        self.parallelism = parallelism
        self.root = os.path.abspath(root)
        self._backend_options = backend_options
        self._backends: dict[str, Any] = {}
        self.registry = Registry(self.root)
        self.id = uuid.uuid4().hex[:16]
        self.registry.add_session(self.id, backend)
        self._lock = threading.RLock()
        self._flush_lock = threading.Lock()
        self._records: dict[int, JobRecord] = {}
        self._live: dict[str, dict[str, tuple[JobRecord, int]]] = {}
        self._dirty: set[tuple[JobRecord, int]] = set()
        self._attempt_rows: list[tuple] = []
        self._job_updates: dict[int, dict[str, Any]] = {}
        self._to_resolve: list[_Handle] = []
        self._deps_to_check: list[JobRecord] = []
        self._wake_event = threading.Event()
        self._stop_event = threading.Event()
        self._poller: threading.Thread | None = None
        self._last_registry_check = 0.0
        self._full_polls: dict[str, float] = {}
        self._last_beat = time.time()
        self._closed = False
        atexit.register(_close_at_exit, weakref.ref(self))

    # ================================================================== public API
    def submit(self, command: str, *, name: str | None = None, cores: int = 1, memory: str | int | None = None,
               runtime: str | int | None = None, after: Any = (), max_attempts: int = 1,
               env: Mapping[str, str] | None = None, cwd: str | None = None,
               resource_scales: Mapping[str, float] | None = None) -> Job:
        """Run one shell command as a job.

        Parameters
        ----------
        command
            A shell command line or script (run with ``/bin/sh -c``).
        name
            Letters, digits and ``._+=-`` (default: the command's first word). Names may repeat;
            ``get(name)`` finds the newest.
        cores, memory, runtime
            Resources: ``memory`` like ``"512M"``/``"2G"``, ``runtime`` like ``"90s"``/``"10m"``.
        after
            Jobs, arrays, step jobs, names or ids that must end DONE first; until then the job is
            PENDING, and it becomes SKIPPED (with the reason) if one of them fails.
        max_attempts
            Run a failed attempt again up to this many attempts in all; after TIMEOUT the runtime,
            after OUT_OF_MEMORY the memory is scaled by ``resource_scales`` (default ×1.5 each).
        env, cwd
            Extra environment variables and the working directory.

        Returns
        -------
        Job
            A handle (a ``concurrent.futures.Future``; awaitable).
        """
        rec = self._create("job", command, name, None, dict(cores=cores, memory=memory, runtime=runtime),
                           after, max_attempts, env, cwd, resource_scales)
        return self._job_handle(rec)

    def array(self, command: str, *, steps: int | Iterable[int] | None = None, over: Any = None,
              name: str | None = None, max_concurrent: int | None = None, cores: int = 1,
              memory: str | int | None = None, runtime: str | int | None = None, after: Any = (),
              max_attempts: int = 1, env: Mapping[str, str] | None = None, cwd: str | None = None,
              resource_scales: Mapping[str, float] | None = None) -> Array:
        """Run a command once per step: ``steps=`` (a count or step ids) or ``over=`` (parameters).

        Parameters
        ----------
        command
            The shell command; ``{{name}}`` is replaced by the step's (shell-quoted) parameter value
            and ``{{step}}`` by the step id. Parameters and ``NBDIST_STEP`` are also exported as
            environment variables.
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
        if not isinstance(command, str) or not command.strip():
            raise ValueError("command must be a non-empty string")
        sweep = expand(command, steps, over)
        options = dict(cores=cores, memory=memory, runtime=runtime, max_concurrent=max_concurrent)
        rec = self._create("array", command, name, sweep, options, after, max_attempts, env, cwd, resource_scales)
        return self._array_handle(rec)

    def jobs(self) -> list[Job | Array]:
        """Every job and array this session knows (after ``attach``, earlier kernels' too), oldest first."""
        with self._lock:
            records = sorted(self._records.values(), key=lambda rec: rec.id)
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
            names = sorted({rec.name for rec in self._records.values()})
        hint = f"known: {', '.join(names[-20:])}" if names else "no jobs yet (nbdist.attach() finds earlier ones)"
        raise UnknownJob(f"no job or array named {key!r}; {hint}")

    def snapshot(self, handle: Any, *, state: State | str | None = None, page: int = 0, page_size: int = 50,
                 log_step: int | None = None, tail_lines: int = 20) -> Snapshot:
        """Everything a view draws about a job or array (see :class:`nbdist.Snapshot`).

        Parameters
        ----------
        handle
            A Job, Array, name or id. A step Job gives its array's snapshot with its logs.
        state
            Only rows of steps in this state.
        page, page_size
            Which rows.
        log_step
            The step whose log tails to include (default: the first failed, else the first running).
        tail_lines
            Lines of each log tail.
        """
        item = self.get(handle)
        if isinstance(item, Job) and item.step is not None and log_step is None:
            log_step = item.step
        with self._lock:
            return build_snapshot(item._rec, state=state, page=page, page_size=page_size, log_step=log_step,
                                  tail_lines=tail_lines)

    def close(self) -> None:
        """Stop polling and stop the backends: local tasks are killed (KILLED), none is left running."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop_event.set()
        self._wake_event.set()
        if self._poller is not None and self._poller is not threading.current_thread():
            self._poller.join(5)
        with self._lock:
            for rec in self._records.values():
                if rec.owned and (rec.by_state[State.PENDING] or rec.held):
                    waiting = sorted(rec.by_state[State.PENDING] | set(rec.held))
                    rec.held.clear()
                    for index in waiting:
                        self._set(rec, index, State.KILLED, "cancelled: its session closed before it started")
            backends = list(self._backends.items())
        for name, backend in backends:
            try:
                backend.stop()
            except Exception:
                logger.exception("stopping backend %s failed", name)
        # Local tasks were just killed: record how they ended. A persistent backend's tasks (Slurm)
        # keep running and stay QUEUED/RUNNING in the registry for the next attach to adopt.
        for name, backend in backends:
            if not self._persistent(name):
                self._poll_backend(name, backend, full=True)
        self._finish_poll()
        try:
            self.registry.close_session(self.id)
        finally:
            self.registry.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Session {self.backend_name} root={self.root!r} jobs={len(self._records)}>"

    # ================================================================== creation
    def _create(self, kind: str, command: str, name: str | None, sweep: Sweep | None, options: dict[str, Any],
                after: Any, max_attempts: int, env: Mapping[str, str] | None, cwd: str | None,
                scales: Mapping[str, float] | None) -> JobRecord:
        if self._closed:
            raise RuntimeError("this session is closed")
        if not isinstance(command, str) or not command.strip():
            raise ValueError("command must be a non-empty string")
        name = self._check_name(name, command)
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts must be a positive integer, not {max_attempts!r}")
        factors = dict(DEFAULT_SCALES)
        for key, value in (scales or {}).items():
            if key not in DEFAULT_SCALES or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"resource_scales: {key!r}: {value!r}; expected runtime/memory → positive factor")
            factors[key] = float(value)
        if kind == "job" and placeholders(command):
            raise ValueError(f"{{{{...}}}} placeholders need an array: use array(..., over=...) ({command[:60]!r})")
        resources = {key: value for key, value in options.items() if value is not None}
        check = dict(resources, env=env or {}, cwd=cwd)
        max_cores = (self.parallelism or os.cpu_count() or 1) if self.backend_name == "multiprocess" else None
        parsed = Resources.parse(check, max_cores=max_cores)  # bad values raise before anything exists
        with self._lock:
            deps = self._resolve_after(after, name)
        created = time.time()
        log_dir = os.path.join(self.root, "logs", name)
        steps_field = None
        if sweep is not None:
            steps = sweep.steps
            steps_field = {"range": [steps.start, steps.stop, steps.step]} if isinstance(steps, range) else list(steps)
        n = 1 if sweep is None else len(sweep)
        spec = dict(resources=resources, env=parsed.env, cwd=cwd, max_attempts=max_attempts, scales=factors)
        job_id = self.registry.add_job(dict(
            name=name, kind=kind, command=command, backend=self.backend_name, session_id=self.id, created=created,
            n_steps=n, steps=steps_field, initial_state=State.PENDING.value, log_dir=log_dir,
            spec=spec,
            params=None if sweep is None else sweep.params, after=[[d.id, i] for d, i in deps],
        ))
        rec = JobRecord(job_id, name, kind, command, self.backend_name, n, None if sweep is None else sweep.steps,
                        State.PENDING, created)
        rec.sweep, rec.resources, rec.env, rec.cwd = sweep, resources, parsed.env, cwd
        rec.max_attempts, rec.scales, rec.log_dir, rec.session_id = max_attempts, factors, log_dir, self.id
        rec.after = deps
        try:
            os.makedirs(log_dir, exist_ok=True)
            if sweep is not None and sweep.needs_scripts:
                rec.script_dir = os.path.join(self.root, "scripts", str(job_id))
                rec.script_chunk = write_scripts(rec.script_dir, command, sweep)
                with self._lock:
                    self._job_updates[job_id] = {"script_dir": rec.script_dir,
                                                 "spec": {**spec, "script_chunk": rec.script_chunk}}
            if sweep is not None and sweep.params is not None:
                write_manifest(os.path.join(log_dir, f"manifest-{job_id}.json"), sweep)
            with self._lock:
                self._records[job_id] = rec
                for dep, _ in deps:
                    dep.dependents.append(rec)
                try:
                    self._check_deps(rec)
                except BaseException:
                    del self._records[job_id]
                    for dep, _ in deps:
                        dep.dependents.remove(rec)
                    raise
                resolve = self._take_resolve()
        except BaseException:
            self.registry.delete_job(job_id)
            raise
        # Write the launch now, not at the next poll: a kernel killed a moment later must not leave a
        # submitted job looking PENDING (attach would submit it a second time).
        self._finish_poll()
        self._ensure_poller()
        self._wake()
        for handle in resolve:
            handle._resolve()
        return rec

    def _check_name(self, name: str | None, command: str) -> str:
        if name is None:
            for line in command.splitlines():
                words = line.strip().split()
                if words and not words[0].startswith("#"):
                    word = os.path.basename(words[0])
                    name = re.sub(r"[^A-Za-z0-9._+=-]", "_", word).lstrip("._+=-")[:40] or "job"
                    break
            return name or "job"
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"name {name!r}: use letters, digits and ._+=- (starting with a letter or digit)")
        return name

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
            if handle._session is not self:
                raise ValueError(f"after: {handle!r} belongs to another session; attach() to use it here")
            index = handle._index if isinstance(handle, Job) and handle._rec.steps is not None else None
            deps.append((handle._rec, index))
        return deps

    # ================================================================== handles
    def _find(self, key: str) -> JobRecord | None:
        if key.isdigit() and int(key) in self._records:
            return self._records[int(key)]
        named = [rec for rec in self._records.values() if rec.name == key]
        return max(named, key=lambda rec: rec.id) if named else None

    def _handle(self, rec: JobRecord) -> Job | Array:
        return self._job_handle(rec) if rec.kind == "job" else self._array_handle(rec)

    def _job_handle(self, rec: JobRecord) -> Job:
        return self._step_handle(rec, 0)

    def _step_handle(self, rec: JobRecord, index: int) -> Job:
        with self._lock:
            handle = rec.handles.get(index)
            if handle is None:
                handle = rec.handles[index] = Job(self, rec, index)
                if rec.states[index].is_terminal:
                    handle._resolve()
            return handle

    def _array_handle(self, rec: JobRecord) -> Array:
        with self._lock:
            if rec.array_handle is None:
                rec.array_handle = Array(self, rec)
                if rec.all_terminal:
                    rec.array_handle._resolve()
            return rec.array_handle

    def _usage(self, rec: JobRecord, index: int) -> dict[str, Any]:
        # Usage is kept in the registry, not in memory: 100,000 finished steps need no 100,000 dicts.
        pending = rec.usage.get(index)
        if pending is not None:
            return pending
        if self._closed:
            registry = Registry(self.root)
            try:
                return registry.step_usage(rec.id, index)
            finally:
                registry.close()
        self._finish_poll()
        return rec.usage.get(index) or self.registry.step_usage(rec.id, index)

    def _attempts(self, rec: JobRecord, index: int) -> list[Attempt]:
        if self._closed:  # the session's connection is closed: read with a short-lived one
            registry = Registry(self.root)
            try:
                rows = registry.attempt_rows(rec.id, index)
            finally:
                registry.close()
        else:
            self._finish_poll()
            rows = self.registry.attempt_rows(rec.id, index)
        attempts = []
        for row in rows:
            _, _, number, did, state, exit_code, message, usage, out, err, resources, _, _ = row
            attempts.append(Attempt(number, did, State(state), exit_code, message, _unjson(usage) or {},
                                    LogPaths(out, err) if out else None, _unjson(resources) or {}))
        with self._lock:
            if not attempts or attempts[-1].number < rec.attempts[index]:
                attempts.append(Attempt(rec.attempts[index], rec.dids[index], rec.states[index],
                                        rec.exit_codes[index], rec.messages[index], {},
                                        rec.log_paths(index), self._limits(rec, index)))
        return attempts

    # ================================================================== attach
    def _attach(self, take_over: bool = True) -> None:
        """Load every job of the registry; take over those whose session died (see session_load).

        With ``take_over=False`` (the CLI's read-only commands) only the verdict on dead local tasks
        is recorded: nothing is adopted or launched.
        """
        with self._lock:
            for row in self.registry.jobs():
                if row["id"] not in self._records:
                    self._records[row["id"]] = load_record(self, row)
            for rec in self._records.values():
                rec.after = [(self._records[job_id], index) for job_id, index in rec.after_ids
                             if job_id in self._records] or rec.after
                for dep, _ in rec.after:
                    if rec not in dep.dependents:
                        dep.dependents.append(rec)
            claim_orphans(self, self.registry.sessions(), take_over)
            self._run_dep_checks()
        self._finish_poll()
        if any(self._live.values()) or any(not rec.owned for rec in self._records.values()):
            self._ensure_poller()


def _close_at_exit(ref: weakref.ref[Session]) -> None:
    session = ref()
    if session is not None:
        try:
            session.close()
        except Exception:  # interpreter shutdown: best effort
            pass

