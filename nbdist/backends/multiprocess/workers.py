"""A consumer's warm workers: long-lived interpreters that make its Python calls, and their whole life.

A task whose spec carries a :class:`~nbdist.cluster_protocol.pycall.PythonCall` for this interpreter
runs in a worker instead of a fresh ``/bin/sh`` + ``python``; the worker keeps what earlier calls
imported and initialised. This module decides which worker runs a call, and when one is started,
reused or retired; :mod:`nbdist.backends._task.callworker` is what happens inside the worker::

    consumer ── WorkerPool.start(spec) ──► a worker with the call's key, idle and under its call
       │                                   budget; else a new one (posix_spawn of python -c: a fresh
       │                                   interpreter in its own session, never a fork)
       ├── RunningTask.adopt(worker pid, call end): limits, kill, usage samples as any task
       └── WorkerPool.ended(): reuse it, or retire it (max calls, leak guard, a call it cannot
                               survive); a worker that died with its call (kill, limit, crash) is gone

Workers are keyed by what makes calls compatible, so a worker never serves a call it was not started
for: the interpreter, the call's ``sys.path`` (the kernel's), and the task's environment but its
ids — thread counts (``OMP_NUM_THREADS``… from ``cores``), ``CUDA_VISIBLE_DEVICES`` (a worker stays
on the devices it started with: CUDA reads the variable once), ``PYTHON*`` variables. The trade-off
is the one of ``ProcessPoolExecutor(max_tasks_per_child=)`` and loky: module state a call changes is
seen by the next call of the same worker; ``max_calls_per_worker`` bounds it (1: a fresh interpreter
per call); GPU memory a call keeps referenced (torch's cache) stays with its worker until it retires.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from .._task.reaping import keep_child, release_child
from .._task.runner import RunningTask, TaskSpec, open_logs
from .._task.system import SYSTEM

if TYPE_CHECKING:
    from .._task.callworker import WorkerState

__all__ = ["IDLE_TIMEOUT_SECONDS", "MAX_IDLE_WORKERS", "MAX_RSS_GROWTH_MB", "PER_CALL_VARIABLES", "WorkerOptions",
           "WorkerPool"]

# A worker idle this long exits (loky's default): it gives its memory back when a notebook is done
# with Python work, and a later call pays one interpreter start again.
IDLE_TIMEOUT_SECONDS = 300.0
# Leak guard (loky's threshold): a worker whose RSS grew past this since its first call is retired
# after its call. Lower catches leaks sooner but restarts workers that merely cache more.
MAX_RSS_GROWTH_MB = 300.0
# Idle workers a consumer keeps (each holds what its calls imported: numpy ~40 MB, torch and a CUDA
# context much more); the least recently used beyond this is retired.
MAX_IDLE_WORKERS = 2
# Task variables that differ from call to call: set for the call only, never part of a worker's key.
PER_CALL_VARIABLES = ("JOB_ID", "ARRAY_STEP_ID", "NBDIST_DISTRIBUTOR_ID", "NBDIST_STEP")
# The worker side (and the call machinery the kernel side needs) is imported when a consumer starts its
# first worker, not with this module: a consumer imports it, and its first task waits for its imports.
_CALLWORKER = "nbdist.backends._task.callworker"
_SYS_PATH_CACHE = 64  # call files whose sys.path is remembered (every step of a map shares one)

WorkerKey = tuple[str, tuple[str, ...], frozenset[tuple[str, str]]]


class WorkerOptions(NamedTuple):
    """How a consumer's workers are reused: the multiprocess backend's options of the same names.

    ``max_calls_per_worker``: calls a worker makes before it is retired (None: no limit; a call's own
    :attr:`~nbdist.cluster_protocol.pycall.PythonCall.max_calls_per_worker` wins). ``pre_import``:
    modules every new worker imports before its first call (a failed import is printed on the
    kernel's stderr). ``idle_timeout``: seconds an idle worker is kept. (A named tuple: see
    :class:`~nbdist.backends._task.runner.TaskSpec`.)
    """

    max_calls_per_worker: int | None = None
    pre_import: tuple[str, ...] = ()
    idle_timeout: float = IDLE_TIMEOUT_SECONDS
    max_rss_growth_mb: float = MAX_RSS_GROWTH_MB

    @classmethod
    def checked(cls, max_calls_per_worker: int | None, pre_import: Sequence[str] | str) -> WorkerOptions:
        """The backend's options, checked (``ValueError`` says what is wrong)."""
        from ...cluster_protocol.resources import positive_int

        if max_calls_per_worker is not None:
            positive_int(max_calls_per_worker, "max_calls_per_worker")
        names = (pre_import,) if isinstance(pre_import, str) else tuple(pre_import)
        if not all(isinstance(name, str) and name.strip() for name in names):
            raise ValueError(f"pre_import must be a list of module names, not {pre_import!r}")
        return cls(max_calls_per_worker, names)


class _Worker:
    """One worker process: its socket, its key, what it has done."""

    def __init__(self, key: WorkerKey, env: dict[str, str], package_parent: str, pre_import: tuple[str, ...]) -> None:
        import socket

        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fd = theirs.fileno()
        code = (f"import sys; sys.path.insert(0, {package_parent!r}); from {_CALLWORKER} import serve; "
                f"serve({fd}, {os.getpid()}, {package_parent!r}, {list(pre_import)!r})")
        try:
            os.set_inheritable(fd, True)  # this consumer is single-threaded: no other spawn can inherit it
            self.pid = os.posix_spawn(
                key[0], [key[0], "-c", code], env,
                file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                              (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)],
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM), setsigmask=(),
                **SYSTEM.new_group_options(),
            )
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        keep_child(self.pid)
        self.channel = mine
        self.key = key
        self.calls = 0
        self.first_rss: float | None = None
        self.cpu = (0.0, 0.0)
        self.idle_since = time.monotonic()
        self.reaped = False  # set by alive()

    def send(self, spec: TaskSpec, call_env: dict[str, str]) -> None:
        """Hand it the call of ``spec`` with the task's two logs (``OSError``: nothing was sent)."""
        assert spec.call is not None
        request = {"id": spec.distributor_id, "call": spec.call.call, "items": spec.call.items, "env": call_env,
                   "cwd": spec.cwd}
        out_fd, err_fd = open_logs(spec)
        try:
            import socket

            socket.send_fds(self.channel, [pickle.dumps(request, pickle.HIGHEST_PROTOCOL)], [out_fd, err_fd])
        finally:
            os.close(out_fd)
            os.close(err_fd)

    def alive(self) -> bool:
        """False once it has exited (it is then reaped, or will be by :meth:`stop`) or is exiting."""
        try:
            self.reaped = os.waitpid(self.pid, os.WNOHANG)[0] != 0
        except ChildProcessError:
            self.reaped = True
        if self.reaped:
            return False
        # Killed while its other threads (a library's pool, the portable parent watch) still die: not
        # reapable yet, but a call sent now would be reported as killed with it.
        return not SYSTEM.has_exited(self.pid)

    def stop(self, reaped: bool = False) -> None:
        """End it now (it keeps nothing a task needs: its calls have ended) and reap it."""
        self.channel.close()
        if not reaped:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
        release_child(self.pid)


class _CallEnd:
    """The end of one call in a worker, as :class:`~nbdist.backends._task.runner.RunningTask` waits for it."""

    def __init__(self, worker: _Worker) -> None:
        self.worker = worker
        self.fd = worker.channel.fileno()
        self.cpu_before = worker.cpu
        self.state: WorkerState | None = None  # set when the worker answered

    def finish(self) -> tuple[int, dict[str, Any]] | None:
        from .._task.callworker import MAX_MESSAGE_BYTES

        try:
            data = self.worker.channel.recv(MAX_MESSAGE_BYTES)
        except OSError:
            data = b""
        if not data:  # the worker is dying (its socket closed without an answer): it ends as a process
            try:
                os.killpg(self.worker.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            return None
        code, usage, self.state = pickle.loads(data)
        return code, usage


class WorkerPool:
    """A consumer's workers: at most one busy (a consumer runs one task at a time), a few idle."""

    def __init__(self, base_env: dict[str, str], options: WorkerOptions, package_parent: str) -> None:
        self.base_env = base_env
        self.options = options
        self.package_parent = package_parent
        self.idle: list[_Worker] = []  # least recently used first
        self._busy: tuple[_Worker, _CallEnd, int | None] | None = None
        self._sys_paths: dict[str, tuple[str, ...]] = {}

    def start(self, spec: TaskSpec) -> RunningTask | None:
        """Start the call of ``spec`` in a worker; None when it is no call for a worker (run it cold).

        Raises ``OSError`` (nothing started) when the task's logs cannot be opened or no worker starts.
        """
        call = spec.call
        if call is None or call.python != sys.executable:
            return None
        try:
            key = self._key(spec)
        except (OSError, EOFError, pickle.UnpicklingError, KeyError):
            return None  # an unreadable call file: the cold command reports it in the task's own log
        max_calls = call.max_calls_per_worker or self.options.max_calls_per_worker
        worker = self._take(key, max_calls)
        call_env = {name: spec.env[name] for name in PER_CALL_VARIABLES if name in spec.env}
        started = time.monotonic()
        try:
            worker.send(spec, call_env)
        except ConnectionError:  # it died since its last call (killed from outside): a new one takes this call
            worker.stop()
            worker = self._start_worker(key)
            try:
                worker.send(spec, call_env)
            except OSError:
                worker.stop()
                raise
        except OSError:  # the task's logs cannot be opened: nothing was sent, the worker is as it was
            self._keep(worker)
            raise
        end = _CallEnd(worker)
        self._busy = worker, end, max_calls
        return RunningTask.adopt(spec, worker.pid, started, end)

    def ended(self) -> None:
        """After the running call's ``wait()``: keep its worker for the next call, or retire it."""
        if self._busy is None:
            return
        worker, end, max_calls = self._busy
        self._busy = None
        state = end.state
        if state is None:  # it died with its call (killed, over a limit, crashed): reaped by the wait
            worker.stop(reaped=True)
            return
        worker.calls += 1
        worker.cpu = state.cpu
        if worker.first_rss is None:
            worker.first_rss = state.rss_mb
        leaked = state.rss_mb - worker.first_rss > self.options.max_rss_growth_mb
        if state.retire or leaked or (max_calls is not None and worker.calls >= max_calls):
            worker.stop()
            if not state.retire:  # its replacement starts now, while the consumer does other work
                self._keep(self._start_worker(worker.key))
            return
        self._keep(worker)

    def idle_timeout(self) -> float | None:
        """Seconds until the next idle worker is due to retire (None: none is idle)."""
        if not self.idle:
            return None
        return max(0.0, self.idle[0].idle_since + self.options.idle_timeout - time.monotonic())

    def retire_idle(self) -> None:
        """Retire the workers idle for longer than the idle timeout."""
        now = time.monotonic()
        while self.idle and now - self.idle[0].idle_since >= self.options.idle_timeout:
            self.idle.pop(0).stop()

    def close(self) -> None:
        """End every worker (the consumer is exiting)."""
        if self._busy is not None:
            self._busy[0].stop()
            self._busy = None
        while self.idle:
            self.idle.pop().stop()

    def _key(self, spec: TaskSpec) -> WorkerKey:
        assert spec.call is not None
        path = spec.call.call
        sys_path = self._sys_paths.get(path)
        if sys_path is None:
            from ...cluster_protocol.pycall import read_sys_path

            if len(self._sys_paths) >= _SYS_PATH_CACHE:
                self._sys_paths.clear()
            sys_path = self._sys_paths[path] = tuple(read_sys_path(path))
        env = frozenset((name, value) for name, value in spec.env.items() if name not in PER_CALL_VARIABLES)
        return spec.call.python, sys_path, env

    def _take(self, key: WorkerKey, max_calls: int | None) -> _Worker:
        """The most recently used idle worker for ``key`` with calls left, else a new one."""
        for index in range(len(self.idle) - 1, -1, -1):
            worker = self.idle[index]
            if worker.key == key and (max_calls is None or worker.calls < max_calls):
                del self.idle[index]
                if worker.alive():
                    return worker
                worker.stop(reaped=worker.reaped)  # killed from outside while idle (reaped now if not yet)
                break
        return self._start_worker(key)

    def _start_worker(self, key: WorkerKey) -> _Worker:
        env = {**self.base_env, **dict(key[2]), "PYTHONUNBUFFERED": "1"}
        return _Worker(key, env, self.package_parent, self.options.pre_import)

    def _keep(self, worker: _Worker) -> None:
        worker.idle_since = time.monotonic()
        self.idle.append(worker)
        while len(self.idle) > MAX_IDLE_WORKERS:
            self.idle.pop(0).stop()
