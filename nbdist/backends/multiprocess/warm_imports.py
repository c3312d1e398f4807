"""What keeps a consumer warm for the next call: the modules its last forked call had to import.

A forked call that imports ``pandas`` pays that import in every call, since the child's imports die
with it. So the child reports the modules it loaded (:func:`report_new_modules`, through a pipe),
and the consumer imports them itself (:class:`ModuleWarmer`) so the next fork starts with them.

Only what a task's interpreter would find by itself is imported (a module whose file lies under an
absolute entry of the tasks' own ``sys.path``: installed packages and the standard library, not a
notebook's folder, whose ``sys.path`` only the calls apply). An import that would start a
thread (BLAS pools, some C extensions) would make forking unsafe, so every new set is first
imported in a throwaway fork that checks the thread count; a set that fails is never tried again.
"""

from __future__ import annotations

import fcntl
import importlib
import json
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable

__all__ = ["ModuleWarmer", "report_pipe", "report_new_modules", "single_threaded"]

# The report pipe's buffer, asked for: a call that imports pandas loads ~700 modules, Jobmon's worker
# ~1,100 (a 144 KB report), more than a pipe's default 64 KB.
# A child writes at most what the pipe holds, so it never blocks on it before exiting.
REPORT_PIPE_BYTES = 1 << 20
# A probe import that takes longer is given up (the consumer waits for it between tasks).
PROBE_TIMEOUT_SECONDS = 30.0
# While a probe runs: a file descriptor to watch, and what to do when it is readable (True: stop).
Interrupt = tuple[int, Callable[[], bool]]


class _Interrupted(Exception):
    """The consumer has something more urgent to do: learning is given up for now."""


# Probes of one report at most: each one that meets a thread-starting module refuses it and tries again.
PROBE_ROUNDS = 12


def report_pipe() -> tuple[int, int, int]:
    """``(read fd, write fd, capacity)``: a pipe for a child's report, its buffer as large as Linux allows."""
    read_fd, write_fd = os.pipe()
    try:
        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, REPORT_PIPE_BYTES)
    except OSError:  # above the system's pipe-max-size: the default buffer then
        pass
    return read_fd, write_fd, fcntl.fcntl(write_fd, fcntl.F_GETPIPE_SZ)


def report_new_modules(fd: int, before: set[str], capacity: int) -> None:
    """Write the modules loaded since ``before`` (name and file) to ``fd``, if they fit its ``capacity``."""
    if len(sys.modules) <= len(before):  # the common case once warm: nothing new, nothing to write
        return
    new = [(name, getattr(module, "__file__", None)) for name, module in list(sys.modules.items())
           if name not in before and name != "__main__"]
    data = json.dumps([(name, path) for name, path in new if isinstance(path, str)]).encode()
    if len(data) <= capacity:
        try:
            os.set_blocking(fd, False)
            os.write(fd, data)
        except OSError:
            pass


def single_threaded() -> bool:
    """True if this process has one thread (native ones included): a fork of it copies a consistent state."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return threading.active_count() == 1


class ModuleWarmer:
    """The consumer's side: which reported modules to import, and importing them safely."""

    def __init__(self, search_path: list[str]) -> None:
        # Only modules found under these (the tasks' own sys.path) are imported here.
        self.roots = tuple(os.path.join(entry, "") for entry in search_path if os.path.isabs(entry))
        self.refused: set[str] = set()  # names a probe or an import failed on: never again

    def read_report(self, fd: int) -> list[str]:
        """Names from a finished child's report on ``fd`` (closed here) worth importing here."""
        chunks = []
        try:
            os.set_blocking(fd, False)
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        except OSError:  # nothing (more) written
            pass
        finally:
            os.close(fd)
        try:
            reported = json.loads(b"".join(chunks) or b"[]")
        except ValueError:
            return []
        return [name for name, path in reported
                if name not in sys.modules and name not in self.refused and path.startswith(self.roots)]

    def load(self, names: Iterable[str], interrupt: Interrupt | None = None) -> bool:
        """Import ``names`` in this process, but those a throwaway fork shows would start a thread.

        A probe that meets a module starting a thread (numpy's BLAS pool, say) says which, with
        every module that was importing it then (pandas, …): those and their submodules are refused,
        and the rest is probed again (at most :data:`PROBE_ROUNDS` times), so one such module does
        not keep everything else cold (Jobmon's worker, say, imports numpy through pandas, beside
        ~700 modules that are safe: two probes).

        ``interrupt`` is ``(fd, handle)``: while a probe runs, ``handle()`` is called whenever ``fd``
        is readable (the consumer's inbox: a kill is not held up by a probe) and returns True to give
        learning up for now; then False is returned (True: learnt, or refused).
        """
        # sys.modules lists a module when its import ends (what it imports first): reversed, an importer
        # comes before what it imports, so a thread-starting import is met inside those that need it.
        wanted = [name for name in dict.fromkeys(reversed(list(names))) if name not in self.refused]
        for _ in range(PROBE_ROUNDS):
            if not wanted:
                return True
            try:
                bad = self._probe(wanted, interrupt)
            except _Interrupted:
                return False
            if bad is None:
                break
            if not bad:  # the probe died or hung: nothing of this set is tried again
                self.refused.update(wanted)
                return True
            prefixes = tuple(f"{name}." for name in bad)
            self.refused.update(name for name in wanted if name in bad or name.startswith(prefixes))
            wanted = [name for name in wanted if name not in self.refused]
        else:
            self.refused.update(wanted)
            return True
        for name in wanted:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - a module that fails here is simply not warm
                self.refused.add(name)
        return True

    def _probe(self, names: list[str], interrupt: Interrupt | None) -> set[str] | None:
        """None if importing ``names`` in a fork leaves it single-threaded; else the modules that were
        being imported when a thread started (empty: the probe failed otherwise)."""
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            os.close(read_fd)
            _probe_child(names, write_fd)
        os.close(write_fd)
        pidfd = os.pidfd_open(pid)
        try:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            if interrupt is not None:
                poller.register(interrupt[0], select.POLLIN)
            deadline = time.monotonic() + PROBE_TIMEOUT_SECONDS
            while True:
                ready = {fd for fd, _ in poller.poll(max(0.0, deadline - time.monotonic()) * 1000)}
                if pidfd in ready:
                    break
                stop = interrupt is not None and interrupt[0] in ready and interrupt[1]()
                if stop or time.monotonic() >= deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    if stop:
                        raise _Interrupted
                    break
            _, status = os.waitpid(pid, 0) if pidfd in ready else (pid, 1 << 8)
            os.set_blocking(read_fd, False)
            try:
                said = os.read(read_fd, 65536)
            except BlockingIOError:
                said = b""
        finally:
            os.close(pidfd)
            os.close(read_fd)
        if os.waitstatus_to_exitcode(status) == 0:
            return None
        try:
            return {name for name in json.loads(said) if isinstance(name, str)}
        except ValueError:
            return set()


def _probe_child(names: list[str], write_fd: int) -> None:  # pragma: no cover - runs in the probe's fork
    """Import ``names`` in order; at the first import seen after a thread started, tell which modules
    were still being imported (the import stack), then exit 1. Exit 0 if none started a thread."""
    importing: list[str] = []

    def on_import(event: str, _args: tuple) -> None:
        if event == "import" and not importing and not single_threaded():
            importing.extend(name for name, module in list(sys.modules.items())
                             if getattr(getattr(module, "__spec__", None), "_initializing", False))

    code = 1
    try:
        sys.addaudithook(on_import)
        for name in names:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the parent's import will skip it
                pass
            if not single_threaded():
                os.write(write_fd, json.dumps([*importing, name])[:65536].encode())
                break
        else:
            code = 0
    finally:
        os._exit(code)
