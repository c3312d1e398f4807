"""What the local backend needs from the operating system, in one place: a Linux and a portable POSIX version.

Every other module asks :data:`SYSTEM`; none asks which platform it runs on.

=====================================  ==================================  =====================================
need                                   Linux (:class:`LinuxSystem`)        portable POSIX (:class:`PortableSystem`:
                                                                           macOS, BSD; on Linux with
                                                                           ``NBDIST_PORTABLE=1``)
=====================================  ==================================  =====================================
wait for a process to end, no polling  ``pidfd_open``: a pollable fd       a thread blocked in ``waitid(WNOWAIT)``
                                                                           (one per process; ``kqueue``
                                                                           ``NOTE_EXIT`` on macOS before Python
                                                                           3.13) writes to a pipe; the child is
                                                                           not reaped
start a task in its own group          ``posix_spawn(setsid=True)``        ``posix_spawn(setpgroup=0)``
orphans of a task come back to us      child subreaper (``prctl``)         no: a task that calls ``setsid`` and
                                                                           double-forks escapes unless a usage
                                                                           sample or the kill's own walk of its
                                                                           tree saw it (see the runner)
this process's (or a pid's) children   ``/proc/PID/task/*/children``       psutil
a process's start (pid reuse)          ``/proc/PID/stat``'s start time     psutil's creation time
a helper dies with its parent          ``PR_SET_PDEATHSIG``                a thread sees its parent's socket hang up
peak RSS of one call in a long process ``clear_refs`` + ``VmHWM``          the process's whole-life peak
``ru_maxrss`` unit                     KiB                                 bytes on macOS, KiB elsewhere
=====================================  ==================================  =====================================

Tasks lost with their consumer are found by their ``NBDIST_DISTRIBUTOR_ID`` variable through psutil
on both (macOS refuses to show other processes' environments: there only the task's process group,
known by its pid, is killed). docs/RELIABILITY.md says what each platform keeps of nbdist's promises.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["PORTABLE_VARIABLE", "SYSTEM", "ExitWatch", "LinuxSystem", "PortableSystem", "System", "choose_system"]

# Set to 1 to use the portable implementation on Linux too (the suite runs a second time so).
PORTABLE_VARIABLE = "NBDIST_PORTABLE"
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
# ru_maxrss is bytes on macOS, KiB on Linux and the BSDs (getrusage(2) of each).
_MAX_RSS_UNIT = 1 if sys.platform == "darwin" else 1024


class ExitWatch:
    """A file descriptor that turns readable when process ``pid`` has exited (not reaped); ``close()`` after."""

    def __init__(self, fd: int, on_close: Callable[[], None] | None = None) -> None:
        self.fd = fd
        self._on_close = on_close

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._on_close is not None:
            self._on_close()
            self._on_close = None


class _ExitNotifier:
    """One waiting thread per watched process, however many watches it has: a warm worker is watched
    once per call, and a thread per call would stay blocked until the worker ends (thousands of them)."""

    _lock = threading.Lock()
    _by_pid: dict[int, _ExitNotifier] = {}

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.write_fds: set[int] = set()

    @classmethod
    def watch(cls, pid: int) -> ExitWatch:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        with cls._lock:
            notifier = cls._by_pid.get(pid)
            new = notifier is None
            if notifier is None:
                notifier = cls._by_pid[pid] = cls(pid)
            notifier.write_fds.add(write_fd)
        if new:
            threading.Thread(target=notifier._wait, name=f"nbdist-exit-{pid}", daemon=True).start()
        return ExitWatch(read_fd, lambda: notifier._drop(write_fd))

    def _drop(self, write_fd: int) -> None:
        """A watch closed before the exit: its pipe's write end goes now, not when the process ends."""
        with self._lock:
            if write_fd not in self.write_fds:
                return  # the exit was signalled (and the fd closed) meanwhile
            self.write_fds.discard(write_fd)
        os.close(write_fd)

    def _wait(self) -> None:
        try:
            _wait_without_reaping(self.pid)
        except OSError:
            pass  # reaped by someone else meanwhile, or not our child: it has ended either way
        with self._lock:
            if self._by_pid.get(self.pid) is self:
                del self._by_pid[self.pid]
            write_fds, self.write_fds = self.write_fds, set()
        for write_fd in write_fds:
            try:
                os.write(write_fd, b"x")
            except OSError:  # its read end is closed: nobody is waiting
                pass
            finally:
                os.close(write_fd)


class System:
    """The portable POSIX implementation; :class:`LinuxSystem` replaces what Linux does better."""

    name = "portable"

    def prepare(self) -> None:
        """Import now what this implementation needs later (a warm worker's calls then see no import of ours)."""
        import psutil  # noqa: F401

    def watch_exit(self, pid: int) -> ExitWatch:
        """An fd readable once child ``pid`` exited: a thread waits (``WNOWAIT``) and writes to a pipe
        (one thread per process, shared by its watches)."""
        return _ExitNotifier.watch(pid)

    def new_group_options(self) -> dict[str, Any]:
        """``os.posix_spawn`` keywords that start the process as the leader of a new process group."""
        return {"setpgroup": 0}

    def become_subreaper(self) -> bool:
        """Make orphaned descendants re-parent to this process; False where the system cannot."""
        return False

    def children(self, pid: int | None = None) -> list[int]:
        """Pids of the children of ``pid`` (default: this process)."""
        import psutil

        try:
            return [child.pid for child in psutil.Process(pid).children()]
        except psutil.Error:
            return []

    def descendants(self, pid: int) -> dict[int, float]:
        """Every descendant of ``pid`` now, each with :meth:`started` (empty when ``pid`` is gone)."""
        found: dict[int, float] = {}
        parents = [pid]
        while parents:
            for child in self.children(parents.pop()):
                started = self.started(child)
                if started is not None and child not in found:
                    found[child] = started
                    parents.append(child)
        return found

    def started(self, pid: int) -> float | None:
        """When process ``pid`` started, in this system's own unit: a pid the system reused for another
        process has another value (None: it is gone)."""
        import psutil

        try:
            return psutil.Process(pid).create_time()
        except psutil.Error:
            return None

    def die_with_parent(self, signum: int, parent_pid: int, channel_fd: int) -> None:
        """End this process's group with ``signum`` when the parent dies: here, when ``channel_fd`` (a socket
        or pipe to the parent) hangs up — a thread polls it for nothing but the hang-up, even while a call runs."""
        import select

        def watch() -> None:
            poller = select.poll()
            poller.register(channel_fd, 0)  # POLLHUP and POLLERR are always reported; no data is read
            while True:
                if any(event & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, event in poller.poll()):
                    break
            try:
                os.killpg(os.getpid(), signum)  # the worker leads its group: the call's children go too
            finally:
                os.kill(os.getpid(), signum)

        threading.Thread(target=watch, name="nbdist-parent-watch", daemon=True).start()

    def parent_death_signal(self, signum: int, parent_pid: int) -> bool:
        """Have the kernel send ``signum`` when the parent (``parent_pid``) dies; False where it cannot."""
        return False

    def process_name(self, pid: int) -> str | None:
        """The short name of process ``pid`` (``comm``), None if it is gone."""
        import psutil

        try:
            return psutil.Process(pid).name()
        except psutil.Error:
            return None

    def has_exited(self, pid: int) -> bool:
        """True once process ``pid`` has exited or is exiting: its main thread is a zombie, even while
        its other threads still die (it cannot be reaped yet: ``waitpid(WNOHANG)`` still says 0)."""
        import psutil

        try:
            return psutil.Process(pid).status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
        except psutil.Error:
            return True

    def reset_peak_rss(self) -> bool:
        """Reset this process's RSS high-water mark to its RSS now; False where the system cannot."""
        return False

    def peak_rss_mb(self, since_reset: bool) -> float:
        """This process's peak RSS (since :meth:`reset_peak_rss` when it returned True), in MB."""
        import resource

        return self.max_rss_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)

    def rss_mb(self) -> float:
        """This process's resident set size now, in MB."""
        import psutil

        return psutil.Process().memory_info().rss / 2**20

    def max_rss_mb(self, ru_maxrss: float) -> float:
        """``ru_maxrss`` of a ``getrusage``/``wait4`` result in MB."""
        return ru_maxrss * _MAX_RSS_UNIT / 2**20


class LinuxSystem(System):
    """Linux: pidfds, the child subreaper, ``/proc``, the parent-death signal, a resettable peak RSS."""

    name = "linux"

    def prepare(self) -> None:
        pass  # /proc needs no module

    def watch_exit(self, pid: int) -> ExitWatch:
        return ExitWatch(os.pidfd_open(pid))

    def new_group_options(self) -> dict[str, Any]:
        return {"setsid": True}

    def become_subreaper(self) -> bool:
        return _prctl(_PR_SET_CHILD_SUBREAPER, 1)

    def children(self, pid: int | None = None) -> list[int]:
        where = "self" if pid is None else str(pid)
        try:
            threads = os.listdir(f"/proc/{where}/task")
        except OSError:
            return []
        found: list[int] = []
        for tid in threads:
            try:
                with open(f"/proc/{where}/task/{tid}/children") as handle:
                    found.extend(int(child) for child in handle.read().split())
            except OSError:  # the thread ended meanwhile
                pass
        return found

    def started(self, pid: int) -> float | None:
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                fields = handle.read().rpartition(b")")[2].split()  # after the name, which may hold anything
        except OSError:
            return None
        return float(fields[19])  # starttime (stat's field 22), in clock ticks since boot

    def die_with_parent(self, signum: int, parent_pid: int, channel_fd: int) -> None:
        if not self.parent_death_signal(signum, parent_pid):
            super().die_with_parent(signum, parent_pid, channel_fd)

    def parent_death_signal(self, signum: int, parent_pid: int) -> bool:
        if not _prctl(_PR_SET_PDEATHSIG, int(signum)):
            return False
        if os.getppid() != parent_pid:  # the parent died before the request took effect
            os.kill(os.getpid(), signum)
        return True

    def process_name(self, pid: int) -> str | None:
        try:
            with open(f"/proc/{pid}/comm") as handle:
                return handle.read().strip()
        except OSError:
            return None

    def has_exited(self, pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                state = handle.read().rpartition(")")[2].split()[0]  # the name may hold spaces and parentheses
        except (OSError, IndexError):
            return True
        return state in ("Z", "X")

    def reset_peak_rss(self) -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            return True
        except OSError:
            return False

    def peak_rss_mb(self, since_reset: bool) -> float:
        peak = _status_mb("VmHWM:") if since_reset else None
        return peak if peak is not None else super().peak_rss_mb(since_reset)

    def rss_mb(self) -> float:
        rss = _status_mb("VmRSS:")  # a line of /proc: cheaper than importing psutil in a warm worker
        return rss if rss is not None else super().rss_mb()


def _status_mb(field: str) -> float | None:
    """A ``kB`` field of ``/proc/self/status`` in MB."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class PortableSystem(System):
    """The portable POSIX implementation, by its own name (what macOS and the BSDs get)."""


def _wait_without_reaping(pid: int) -> None:
    """Block until ``pid`` exits, leaving it to be reaped (``waitid``; ``kqueue`` where Python has no
    ``waitid``: macOS before Python 3.13)."""
    if hasattr(os, "waitid"):
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        return
    import select

    queue = select.kqueue()
    try:
        event = select.kevent(pid, select.KQ_FILTER_PROC, select.KQ_EV_ADD | select.KQ_EV_ONESHOT,
                              select.KQ_NOTE_EXIT)
        queue.control([event], 1, None)
    finally:
        queue.close()


def _prctl(option: int, value: int) -> bool:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def choose_system(environ: Any = os.environ, platform: str = sys.platform) -> System:
    """Linux's implementation on Linux unless ``NBDIST_PORTABLE=1``; the portable one everywhere else."""
    if platform.startswith("linux") and environ.get(PORTABLE_VARIABLE, "") != "1" and hasattr(os, "pidfd_open"):
        return LinuxSystem()
    return PortableSystem()


# Chosen once per process; consumers, workers and tasks inherit the variable, so all choose alike.
SYSTEM: System = choose_system()
