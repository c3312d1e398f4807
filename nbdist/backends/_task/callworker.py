"""A warm worker: a long-lived interpreter that makes Python calls one after another, each as a task.

A consumer starts it (:mod:`nbdist.backends.multiprocess.workers` owns its life: start, reuse,
retire) as a fresh ``python -c`` — never a fork — and sends it calls over a socket. The worker keeps
what its calls imported and initialised (numpy's thread pools, torch and a CUDA context, a model a
module caches) for the next call. This module is the per-call plumbing: each call gets what a fresh
``python -m nbdist.backends._task.pycall`` task would get, and leaves the worker as it found it::

    consumer ── [call request + the task's two log fds] ──► worker: make_call()
        fds 1 and 2 dup2'd onto the task's .o/.e logs (C extensions' writes land there too),
        the task's ids in os.environ, its cwd, sys.argv; SIGINT → KeyboardInterrupt
        run_call(): the outcome file, as a cold call writes it
        non-daemon threads joined (as an interpreter does at exit); Python and C stdio flushed
        processes the call left running killed (as a task's group is when it ends)
        fds, env, cwd, sys.argv, sys.path, sys.stdout/stderr, signal handlers restored
    consumer ◄── [exit code, usage of the call (CPU delta, peak RSS), the worker's state (RSS, CPU, a
                  reason not to reuse it)]

What a call leaves behind on purpose: imported modules, their globals (a call that sets a module
attribute is seen by the next call of the same worker, as in ``ProcessPoolExecutor``), daemon threads.
The consumer's ``max_calls_per_worker`` bounds that (1: a fresh interpreter per call). A kill or a
limit kills the worker with the call (its whole process group); a crash ends it too; only that call
is lost. The worker dies with its consumer (``PR_SET_PDEATHSIG``; and EOF on its socket when idle).
"""

from __future__ import annotations

import ctypes
import importlib
import os
import pickle
import resource
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Sequence
from typing import Any, NamedTuple

from . import pycall as call_module
from .pycall import run_call
from .system import SYSTEM

__all__ = ["MAX_MESSAGE_BYTES", "WorkerReply", "WorkerState", "make_call", "serve"]

# A call request (paths and a few variables) or a reply is far smaller; a SEQPACKET message is one read.
MAX_MESSAGE_BYTES = 1 << 16
# What a task's process ends with when its cwd cannot be entered (as the shell's ``cd ... || exit 125``).
CWD_EXIT_CODE = 125
# Exit code of a call ended by KeyboardInterrupt (as a shell reports a process killed by SIGINT).
INTERRUPTED_EXIT_CODE = 128 + signal.SIGINT
_RESTORED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)



class WorkerState(NamedTuple):
    """The worker after a call: what the consumer's pool decides its reuse on."""

    rss_mb: float  # its RSS now (the leak guard compares it with the RSS after its first call)
    cpu: tuple[float, float]  # user and system CPU seconds so far (a later killed call's usage starts there)
    retire: str | None  # why it must not make another call, or None


# (exit code of the call, usage of the call, the worker's state)
WorkerReply = tuple[int, dict[str, float], WorkerState]


def serve(fd: int, parent_pid: int, package_parent: str, pre_import: Sequence[str] = ()) -> None:
    """The worker's main: make calls from the socket ``fd`` until it closes; dies with ``parent_pid``."""
    SYSTEM.die_with_parent(signal.SIGKILL, parent_pid, fd)
    SYSTEM.prepare()
    if sys.path and sys.path[0] == package_parent:  # put there only so this worker imports this nbdist
        del sys.path[0]
    # A consumer ignores SIGINT (Ctrl-C is the distributor's); an ignored signal survives exec.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.set_inheritable(fd, False)
    channel = socket.socket(fileno=fd)
    import cloudpickle  # noqa: F401  (every call unpickles with it: loaded before the first one)

    for name in pre_import:
        try:
            importlib.import_module(name)
        except Exception:  # said on the worker's stderr (the kernel's); the calls then import it themselves
            traceback.print_exc()
    while True:
        try:
            data, fds, _flags, _address = socket.recv_fds(channel, MAX_MESSAGE_BYTES, 2)
        except OSError:
            return
        if not data or len(fds) != 2:  # the consumer closed its end: it retired us, or it is gone
            return
        reply = make_call(pickle.loads(data), fds[0], fds[1])
        channel.send(pickle.dumps(reply, pickle.HIGHEST_PROTOCOL))


def make_call(request: dict[str, Any], out_fd: int, err_fd: int) -> WorkerReply:
    """Make one call as its task: logs on fds 1/2, its env, cwd and ids; everything restored after."""
    saved_fds = os.dup(1), os.dup(2)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    os.close(out_fd)
    os.close(err_fd)
    saved = _Saved()
    threads_before = set(threading.enumerate())
    cpu_before = _cpu_seconds()
    peak_reset = SYSTEM.reset_peak_rss()
    owner = os.getpid()
    retire = None
    try:
        os.environ.update(request["env"])
        sys.argv = [call_module.__file__ or "pycall", request["call"], *([request["items"]] if request["items"] else [])]
        code, retire = _run(request)
        if os.getpid() != owner:  # a child the call forked (os.fork) returned from it: as a task's would, it ends
            _flush_stdio()
            os._exit(code)
        retire = _join_new_threads(threads_before) or retire
    finally:
        _flush_stdio()
        _kill_descendants()
        saved.restore()
        os.dup2(saved_fds[0], 1)
        os.dup2(saved_fds[1], 2)
        os.close(saved_fds[0])
        os.close(saved_fds[1])
    cpu_after = _cpu_seconds()
    user, system = cpu_after[0] - cpu_before[0], cpu_after[1] - cpu_before[1]
    usage = {"cpu_s": round(user + system, 4), "user_s": round(user, 4), "system_s": round(system, 4),
             "max_rss_mb": round(SYSTEM.peak_rss_mb(peak_reset), 2)}
    return code, usage, WorkerState(SYSTEM.rss_mb(), cpu_after, retire)


def _run(request: dict[str, Any]) -> tuple[int, str | None]:
    """The call's exit code (as an interpreter's for a script), and a reason to retire the worker."""
    cwd = request.get("cwd")
    if cwd:
        try:
            os.chdir(cwd)
        except OSError as exc:
            print(f"nbdist: cannot enter {cwd}: {exc.strerror}", file=sys.stderr)
            return CWD_EXIT_CODE, None
    try:
        return run_call(request["call"], request["items"], request["id"]), None
    except SystemExit as exc:
        return _exit_code(exc.code), None
    except KeyboardInterrupt:  # an interpreter dies of it: this one is not trusted with another call
        traceback.print_exc()
        return INTERRUPTED_EXIT_CODE, "interrupted"
    except BaseException:  # raised by the call's set-up, not the function (run_call catches Exception)
        traceback.print_exc()
        return 1, "the call ended with an exception a worker cannot recover from"


def _exit_code(value: Any) -> int:
    """The exit status ``sys.exit(value)`` gives a script: None → 0, an int → itself, else printed → 1."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)
    return 1


class _Saved:
    """What a call may change and the next call must not see: restored by :meth:`restore`."""

    def __init__(self) -> None:
        self.streams = sys.stdout, sys.stderr, sys.stdin
        self.argv = sys.argv
        self.path = list(sys.path)
        self.cwd = os.getcwd()
        self.environ = dict(_raw_environ())
        self.handlers = {signum: signal.getsignal(signum) for signum in _RESTORED_SIGNALS}

    def restore(self) -> None:
        sys.stdout, sys.stderr, sys.stdin = self.streams
        sys.argv = self.argv
        sys.path[:] = self.path
        try:
            os.chdir(self.cwd)
        except OSError:
            pass
        raw = _raw_environ()
        if raw != self.environ:  # only what differs: the call's ids, what the function set
            for key in [key for key in raw if key not in self.environ]:
                del os.environ[os.fsdecode(key)]
            for key, value in self.environ.items():
                if raw.get(key) != value:
                    os.environ[os.fsdecode(key)] = os.fsdecode(value)
        for signum, handler in self.handlers.items():
            if handler is not None and signal.getsignal(signum) is not handler:
                signal.signal(signum, handler)


def _raw_environ() -> Any:
    """``os.environ``'s own mapping of encoded names to values, copied and compared in C: the public
    mapping decodes every variable (a hundred or so) on each pass, twice per call."""
    return getattr(os.environ, "_data", None) or {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items()}


def _join_new_threads(before: set[threading.Thread]) -> str | None:
    """Join the non-daemon threads the call started, as an interpreter does before it exits; a reason to
    retire the worker when some are a thread pool's idle workers (an interpreter would shut the pool down
    at exit, which in a worker would stop every later call's pools: the worker ends instead)."""
    pool_threads = _thread_pool_workers()
    left = None
    for thread in threading.enumerate():
        if thread in before or thread.daemon or thread is threading.current_thread():
            continue
        if thread in pool_threads:
            left = "the call left a thread pool running"
        else:
            thread.join()
    return left


def _thread_pool_workers() -> set[threading.Thread]:
    """The threads of ``concurrent.futures.ThreadPoolExecutor`` pools (the stdlib's own registry of them)."""
    module = sys.modules.get("concurrent.futures.thread")
    return set(getattr(module, "_threads_queues", {}).keys()) if module is not None else set()


_libc: Any = None


def _flush_stdio() -> None:
    """Flush Python's streams and C's stdio buffers (a C extension's printf), while fds 1/2 are the logs."""
    global _libc
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a stream the call closed or replaced with something odd
            pass
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None)
        _libc.fflush(None)
    except (OSError, AttributeError):
        pass


def _kill_descendants() -> None:
    """SIGKILL every process the call left running (all at once: none can slip away when its parent
    dies), and reap this worker's own children; the consumer reaps those that re-parented to it."""
    found, queue = [], SYSTEM.children()
    direct = set(queue)
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue.extend(SYSTEM.children(pid))
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in direct:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:  # the call waited for it itself
            pass


def _cpu_seconds() -> tuple[float, float]:
    """User and system CPU seconds of this process and its reaped children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + children.ru_utime, own.ru_stime + children.ru_stime


