"""Run one task the way every nbdist backend does: ``sh -c`` with redirected logs, limits, usage.

Used by the multiprocess consumers and by ``nbdist-worker`` (the Slurm backend's job wrapper), so a
task behaves the same everywhere:

- the command runs as ``/bin/sh -c COMMAND`` (no extra interpreter in between), in a new session
  (its own process group), stdin from ``/dev/null``, stdout/stderr to its log files;
- ``runtime`` and ``memory`` are enforced here (memory by sampling the RSS of the task's tree);
- killing is SIGTERM to the group, then SIGKILL after a grace period; when the task ends, whatever
  it left behind (its group, and daemons that escaped with ``setsid``, which come back to us because
  the calling process is a child subreaper, see :mod:`.reaping`) is killed too;
- usage (wall, CPU, max RSS) comes from ``os.wait4``;
- a task killed over a limit ends ``Z`` with :attr:`Outcome.limit` ``"runtime"`` or ``"memory"``.

A task the caller started itself is tracked with :meth:`RunningTask.adopt`, and from then on is the
same. A Python call in a warm worker (:mod:`nbdist.backends.multiprocess.workers`) is adopted with the
worker's pid and a :class:`CallEnd`: the task is that process (its limits, its kill, its usage
samples), but it ends when the call ends, not when the process exits — unless the process dies first
(a kill, a limit, a crash), which ends the call as it would end any task.
"""

from __future__ import annotations

import os
import select
import signal
import time
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Protocol

from ...cluster_protocol import Limit
from ...cluster_protocol import TaskInstanceStatus as Status
from .reaping import reap_strays
from .system import SYSTEM

if TYPE_CHECKING:
    from ...cluster_protocol.pycall import PythonCall
    from .gpus import GpuMeter

__all__ = ["CallEnd", "Outcome", "RunningTask", "TaskSpec", "exit_message", "open_logs"]

# How often the RSS of a memory-limited task's tree is sampled: a shorter period catches fast
# allocations earlier but costs a /proc scan each time.
MEMORY_POLL_SECONDS = 0.1
# How often a watched task's CPU % and RSS are sampled for the dashboard (``wait(on_usage=...)``):
# live enough for a table refreshed a few times a second, one /proc scan per task per second.
USAGE_SAMPLE_SECONDS = 1.0


class TaskSpec(NamedTuple):
    """Everything needed to start one task: ``command`` (a shell command line), or ``call`` (a Python call
    as data, which a backend with warm workers runs without a shell; ``command`` is then its command form).

    A named tuple, not a dataclass: a consumer's first task waits for its imports, and ``dataclasses``
    (with ``inspect``) is a third of them. ``env`` is the task's own variables, never changed after."""

    distributor_id: str
    command: str
    stdout_path: str
    stderr_path: str
    env: dict[str, str]
    cwd: str | None = None
    runtime_s: float | None = None
    memory_mb: float | None = None
    # The devices this task holds (also in env's CUDA_VISIBLE_DEVICES); () when it asked for no GPU
    # or when the scheduler placed it (Slurm sets the variable itself).
    gpus: tuple[str, ...] = ()
    call: PythonCall | None = None


class CallEnd(Protocol):
    """The end of a task that runs inside a process which outlives it (a call in a warm worker)."""

    fd: int  # readable once the call has ended (the process lives on), or the process is dying
    cpu_before: tuple[float, float]  # user and system CPU seconds the process had used before the call

    def finish(self) -> tuple[int, dict[str, Any]] | None:
        """The call's exit code and usage (``cpu_s``, ``user_s``, ``system_s``, ``max_rss_mb``); None when
        the process is dying instead (it is killed: the task then ends as a dead process does)."""


class Outcome(NamedTuple):
    """How a task ended: a status letter, a message, what it used, and which limit (if any) ended it
    (a named tuple, as :class:`TaskSpec`)."""

    status: str
    message: str
    exit_code: int | None
    signal: int | None
    usage: dict[str, Any]
    limit: Limit | None = None

    def to_dict(self) -> dict[str, Any]:
        """The exit-info form: ``status``, ``message``, ``exit_code``, ``signal``, ``usage``, ``limit``."""
        return {
            "status": self.status,
            "message": self.message,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "usage": self.usage,
            "limit": self.limit,
        }


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_message(exit_code: int | None, signum: int | None) -> str:
    """``"exit code 3"`` or ``"killed by signal 9 (SIGKILL)"``."""
    if signum:
        return f"killed by signal {signum} ({_signal_name(signum)})"
    return f"exit code {exit_code}"


class RunningTask:
    """One started task. ``wait()`` blocks until it ends (or is killed) and returns its Outcome."""

    def __init__(self, spec: TaskSpec, base_env: dict[str, str] | None = None) -> None:
        started = time.monotonic()
        self._track(spec, _spawn(spec, base_env), started)

    @classmethod
    def adopt(cls, spec: TaskSpec, pid: int, started: float, call_end: CallEnd | None = None) -> RunningTask:
        """Track a task this process already started as ``pid`` (a child of ours, leader of its own session).

        With ``call_end``, the task is a call that process makes (a warm worker): it ends when
        ``call_end.fd`` is readable, or when the process dies (then exactly as a spawned task ends).
        Either way it is limited, killed (its whole group: the worker too) and sampled like any task.
        """
        task = cls.__new__(cls)
        task._track(spec, pid, started, call_end)
        return task

    def _track(self, spec: TaskSpec, pid: int, started: float, call_end: CallEnd | None = None) -> None:
        self.spec = spec
        self.pid = pid
        self.started = started
        self._exit_watch = SYSTEM.watch_exit(pid)
        self.pidfd = self._exit_watch.fileno()
        # Descendants seen by a usage or memory sample, by pid and creation time: killed with the task
        # when it ends, should they have left its group (where no subreaper brings them back).
        self._seen_descendants: dict[int, float] = {}
        self.deadline = started + spec.runtime_s if spec.runtime_s else None
        self.peak_rss_mb = 0.0
        self._next_sample: float | None = None  # when live usage is due (None: nobody asked for it)
        self._next_tick: float | None = None  # when on_tick is due (None: nobody asked for it)
        self._cpu_mark = (self.started, 0.0)  # (monotonic time, CPU seconds of the tree) at the last sample
        self._verdict: tuple[str, str, Limit | None] | None = None  # set when we decide to kill
        self._call_end = call_end
        self._gpu_meter: GpuMeter | None = None
        if spec.gpus:  # only a task holding GPUs asks the driver (and imports its module)
            from .gpus import GpuMeter

            self._gpu_meter = GpuMeter(spec.gpus)

    def wait(self, control_fd: int | None = None, on_control: Callable[[], None] | None = None,
             on_usage: Callable[[dict[str, float]], None] | None = None,
             on_tick: Callable[[], None] | None = None, tick_seconds: float = 1.0) -> Outcome:
        """Wait for the end; ``on_control`` runs when ``control_fd`` is readable (it may call kill);
        ``on_usage`` gets ``{"cpu_percent", "rss_mb"}`` of the task's tree every :data:`USAGE_SAMPLE_SECONDS`;
        ``on_tick`` runs every ``tick_seconds`` until the task ends or is being killed (it may call kill)."""
        if on_usage is not None:
            self._next_sample = self.started + USAGE_SAMPLE_SECONDS
        if on_tick is not None:
            self._next_tick = time.monotonic() + tick_seconds
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        if control_fd is not None:
            poller.register(control_fd, select.POLLIN)
        call_fd = self._call_end.fd if self._call_end is not None else None
        if call_fd is not None:
            poller.register(call_fd, select.POLLIN)
        while True:
            timeout = self._next_timeout()
            events = poller.poll(None if timeout is None else max(timeout, 0.0) * 1000)
            fds = {fd for fd, _ in events}
            if self.pidfd in fds:
                break
            if call_fd is not None and call_fd in fds:
                # A call that ended while being killed ends with its process, as does a dying worker.
                ended = self._call_end.finish() if self._verdict is None and self._call_end else None
                if ended is not None:
                    return self._finish_call(*ended)
                poller.unregister(call_fd)
                call_fd = None
                continue
            if control_fd is not None and control_fd in fds and on_control is not None:
                on_control()
                continue
            self._check_limits()
            if on_usage is not None and self._verdict is None and time.monotonic() >= self._next_sample:  # type: ignore[operator]
                on_usage(self._sample_usage())
            now = time.monotonic()
            if on_tick is not None and self._verdict is None and now >= self._next_tick:  # type: ignore[operator]
                self._next_tick = now + tick_seconds
                on_tick()
        return self._finish()

    def exited_within(self, seconds: float) -> bool:
        """True if the task ends within ``seconds`` (it is not reaped yet: ``wait()`` still must be called)."""
        if self._call_end is not None:  # a call in a warm worker ends when the worker answers
            poller = select.poll()
            poller.register(self._call_end.fd, select.POLLIN)
            poller.register(self.pidfd, select.POLLIN)
            return bool(poller.poll(seconds * 1000))
        return self._wait_exit(seconds)

    def kill(self, status: str, message: str, grace: float, limit: Limit | None = None) -> None:
        """SIGTERM the task's group now and SIGKILL it after ``grace`` seconds; wait() then returns."""
        self._remember_descendants()  # what it started is remembered before it can leave: killed with it at the end
        if self._verdict is None:
            self._verdict = (status, message, limit)
        self._signal_group(signal.SIGTERM)
        if self._wait_exit(grace):
            return
        self._signal_group(signal.SIGKILL)

    def _next_timeout(self) -> float | None:
        now = time.monotonic()
        timeouts = []
        if self.deadline is not None:
            timeouts.append(self.deadline - now)
        if self.spec.memory_mb is not None:
            timeouts.append(MEMORY_POLL_SECONDS)
        if self._next_sample is not None:
            timeouts.append(self._next_sample - now)
        if self._next_tick is not None:
            timeouts.append(self._next_tick - now)
        return min(timeouts) if timeouts else None

    def _check_limits(self) -> None:
        # Imported when a limit is checked, not at the top: a consumer starts faster without (and
        # its first task waits for that start).
        from ...cluster_protocol.resources import format_memory, format_runtime

        spec = self.spec
        if self.deadline is not None and time.monotonic() >= self.deadline:
            assert spec.runtime_s is not None
            self.kill(Status.RESOURCE_ERROR, f"runtime limit of {format_runtime(spec.runtime_s)} exceeded",
                      grace=1.0, limit="runtime")
            return
        if spec.memory_mb is not None:
            rss = self._tree_rss_mb()
            self.peak_rss_mb = max(self.peak_rss_mb, rss)
            if rss > spec.memory_mb:
                self.kill(
                    Status.RESOURCE_ERROR,
                    f"memory limit of {format_memory(spec.memory_mb)} exceeded (rss {format_memory(rss)})",
                    grace=0.0,
                    limit="memory",
                )

    def _tree_rss_mb(self) -> float:
        import psutil

        total = 0
        for proc in self._tree():
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        return total / 2**20

    def _sample_usage(self) -> dict[str, float]:
        """CPU % since the last sample and RSS of the task's tree (its reaped children's CPU included)."""
        import psutil

        now = time.monotonic()
        self._next_sample = now + USAGE_SAMPLE_SECONDS
        cpu, rss = 0.0, 0
        procs = self._tree()
        for proc in procs:
            try:
                times = proc.cpu_times()
                cpu += times.user + times.system + times.children_user + times.children_system
                rss += proc.memory_info().rss
            except psutil.Error:
                pass
        mark_time, mark_cpu = self._cpu_mark
        self._cpu_mark = (now, cpu)
        rss_mb = rss / 2**20
        self.peak_rss_mb = max(self.peak_rss_mb, rss_mb)
        percent = 100.0 * max(cpu - mark_cpu, 0.0) / max(now - mark_time, 1e-3)
        sample = {"cpu_percent": round(percent, 1), "rss_mb": round(rss_mb, 1)}
        if self._gpu_meter is not None:
            sample.update(self._gpu_meter.sample(proc.pid for proc in procs))
        return sample

    def _tree(self) -> list[Any]:
        """The task's process and its descendants now (psutil, for their usage), remembering the descendants seen."""
        import psutil

        procs = []
        for pid in [self.pid, *self._remember_descendants()]:
            try:
                procs.append(psutil.Process(pid))
            except psutil.Error:  # ended meanwhile
                pass
        return procs

    def _remember_descendants(self) -> list[int]:
        """The task's descendants now, noted to be killed at its end if they still run (:mod:`.system`:
        ``/proc`` on Linux, no psutil import, which would add ~10 ms to a consumer's first kill)."""
        found = SYSTEM.descendants(self.pid)
        for pid, started in found.items():
            self._seen_descendants.setdefault(pid, started)
        return list(found)

    def _kill_seen_descendants(self) -> None:
        """SIGKILL the descendants a sample or the kill saw that still run (the same process: the same start)."""
        for pid, started in self._seen_descendants.items():
            if SYSTEM.started(pid) == started:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    def _wait_exit(self, timeout: float) -> bool:
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def _finish_call(self, code: int, call_usage: dict[str, Any]) -> Outcome:
        """The call ended and its process (a warm worker) lives on: the call's own exit code and usage."""
        self._exit_watch.close()
        self._kill_seen_descendants()
        reap_strays()
        usage = {"wall_s": round(time.monotonic() - self.started, 4), **call_usage,
                 "max_rss_mb": round(max(call_usage.get("max_rss_mb", 0.0), self.peak_rss_mb), 2)}
        if self._gpu_meter is not None:
            usage.update(self._gpu_meter.summary(self.pid))
        if code == 0:
            return Outcome(Status.DONE, "exit code 0", 0, None, usage)
        return Outcome(Status.ERROR, exit_message(code, None), code, None, usage)

    def _finish(self) -> Outcome:
        # The main process has exited but is not reaped yet, so its pid (= the group id) is still
        # ours: kill whatever it left in its group, then reap it, then the daemons that escaped.
        self._signal_group(signal.SIGKILL)
        _, status, rusage = os.wait4(self.pid, 0)
        self._exit_watch.close()
        wall = time.monotonic() - self.started
        self._kill_seen_descendants()
        reap_strays()
        exit_code = os.waitstatus_to_exitcode(status)
        signum = -exit_code if exit_code < 0 else None
        code = exit_code if exit_code >= 0 else None
        user, system = rusage.ru_utime, rusage.ru_stime
        if self._call_end is not None:  # a warm worker's earlier calls are not this call's
            user, system = max(user - self._call_end.cpu_before[0], 0.0), max(system - self._call_end.cpu_before[1], 0.0)
        usage = {
            "wall_s": round(wall, 4),
            "cpu_s": round(user + system, 4),
            "user_s": round(user, 4),
            "system_s": round(system, 4),
            "max_rss_mb": round(max(SYSTEM.max_rss_mb(rusage.ru_maxrss), self.peak_rss_mb), 2),
        }
        if self._gpu_meter is not None:
            usage.update(self._gpu_meter.summary(self.pid))
        limit = None
        if self._verdict is not None:
            status_letter, message, limit = self._verdict
            if signum:
                message = f"{message}; {exit_message(None, signum)}"
        elif code == 0:
            status_letter, message = Status.DONE, "exit code 0"
        else:
            status_letter, message = Status.ERROR, exit_message(code, signum)
        return Outcome(status_letter, message, code, signum, usage, limit)


def _spawn(spec: TaskSpec, base_env: dict[str, str] | None) -> int:
    """``/bin/sh -c COMMAND`` in a new session, stdin from ``/dev/null``, stdout/stderr to the logs; its pid."""
    env = dict(base_env if base_env is not None else os.environ)
    env.update(spec.env)
    out_fd, err_fd = open_logs(spec)
    try:
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, out_fd, 1),
            (os.POSIX_SPAWN_DUP2, err_fd, 2),
        ]
        command = spec.command
        if spec.cwd:
            # posix_spawn has no chdir: the shell changes directory before running the command.
            command = f"cd -- {_quote(spec.cwd)} || exit 125\n{command}"
        return os.posix_spawn(
            "/bin/sh",
            ["/bin/sh", "-c", command],
            env,
            file_actions=actions,
            **SYSTEM.new_group_options(),
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM),
            setsigmask=(),
        )
    finally:
        os.close(out_fd)
        os.close(err_fd)


def open_logs(spec: TaskSpec) -> tuple[int, int]:
    """The task's stdout and stderr logs, opened (truncated, close-on-exec) for writing: two fds."""
    out_fd = _open_log(spec.stdout_path)
    try:
        return out_fd, _open_log(spec.stderr_path)
    except OSError:
        os.close(out_fd)
        raise


def _open_log(path: str) -> int:
    """Open a log file for the task; a log folder removed mid-run is made again."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o644)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        return os.open(path, flags, 0o644)


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)
