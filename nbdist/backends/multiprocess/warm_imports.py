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

import importlib
import json
import os
import select
import signal
import sys
import threading
from collections.abc import Iterable

__all__ = ["ModuleWarmer", "report_new_modules", "single_threaded"]

# The most a child writes (a pipe's buffer: the child must never block on it before exiting).
REPORT_MAX_BYTES = 60_000
# A probe import that takes longer is given up (the consumer waits for it between tasks).
PROBE_TIMEOUT_SECONDS = 30.0


def report_new_modules(fd: int, before: set[str]) -> None:
    """Write the modules loaded since ``before`` (name and file) to ``fd`` without ever blocking."""
    if len(sys.modules) <= len(before):  # the common case once warm: nothing new, nothing to write
        return
    new = [(name, getattr(module, "__file__", None)) for name, module in list(sys.modules.items())
           if name not in before and name != "__main__"]
    data = json.dumps([(name, path) for name, path in new if isinstance(path, str)]).encode()
    if len(data) <= REPORT_MAX_BYTES:
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

    def load(self, names: Iterable[str]) -> None:
        """Import ``names`` in this process if a throwaway fork shows they leave it single-threaded."""
        wanted = sorted(names, key=lambda name: name.count("."))  # packages before their modules
        if not wanted:
            return
        if not self._probe(wanted):
            self.refused.update(wanted)
            return
        for name in wanted:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - a module that fails here is simply not warm
                self.refused.add(name)

    def _probe(self, names: list[str]) -> bool:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            code = 1
            try:
                for name in names:
                    try:
                        importlib.import_module(name)
                    except Exception:  # noqa: BLE001 - the parent's import will skip it
                        pass
                code = 0 if single_threaded() else 1
            finally:
                os._exit(code)
        pidfd = os.pidfd_open(pid)
        try:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            if not poller.poll(PROBE_TIMEOUT_SECONDS * 1000):
                os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
        finally:
            os.close(pidfd)
        return os.waitstatus_to_exitcode(status) == 0
