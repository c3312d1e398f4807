"""Warm Python calls: a consumer forks itself to run a Python call instead of starting a new interpreter.

A Python call is an ordinary task whose command is ``call_command(CALL, ITEMS)``
(:mod:`nbdist.cluster_protocol.pycall`): ``/bin/sh`` then a fresh interpreter that imports
cloudpickle and nbdist before it can unpickle the function — tens of milliseconds per call. When
that command names the consumer's own interpreter, the consumer (which has those modules imported
already) forks, and the child makes the call::

    consumer ── fork ──► child: setsid, stdin /dev/null, stdout/stderr → the task's logs (dup2),
       │                        the task's env and cwd, default SIGINT/SIGTERM, every other fd closed,
       │                        run_call(CALL, ITEMS, id), non-daemon threads joined, the modules it
       │                        imported written to a pipe (.warm_imports), os._exit(code)
       ├── RunningTask.adopt(pid): the same wait, limits, kill of the group, usage and reaping as any task
       └── after it ended: imports those modules itself, so the next call starts with them

Fork is safe here because a consumer is single-threaded (checked before each fork, from
``/proc/self/task``: if anything made it multi-threaded, the call is spawned as before). The child
is a copy, so a call that changes globals, the cwd or the environment leaves the consumer — and the
next call — untouched. Any other command, a call for another interpreter, or a task whose
environment changes how Python starts (``PYTHON*`` variables) runs through ``/bin/sh`` as always.

A Python script in the one form of :mod:`nbdist.cluster_protocol.scripts` (Jobmon's worker, when
Jobmon drives nbdist) is forked the same way and run with ``runpy`` as ``__main__``, with the
``sys.argv`` and ``sys.path[0]`` its interpreter would give it; it learns its imports the same way.
"""

from __future__ import annotations

import functools
import io
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable

from ...cluster_protocol.pycall import CALL_MODULE, parse_call_command
from ...cluster_protocol.scripts import ScriptCommand, parse_script_command
from .._task.runner import RunningTask, TaskSpec, open_logs
from .warm_imports import Interrupt, ModuleWarmer, report_new_modules, report_pipe, single_threaded

__all__ = ["CallFiles", "WarmInterpreter", "python_call", "python_script", "sys_path_without"]

CallFiles = tuple[str, "str | None"]
# What a forked child exits with when the task's cwd cannot be entered (as ``cd ... || exit 125``).
CWD_EXIT_CODE = 125
# The task's own variable, set anyway: a fresh interpreter would read it; ours is configured.
_ALLOWED_PYTHON_VARIABLES = {"PYTHONUNBUFFERED"}
_inherited_streams: list[Any] = []
# Every step of a map has the same command: parse it once, not once per step (shlex: ~0.1 ms).
_parse = functools.lru_cache(maxsize=64)(parse_call_command)


def python_call(spec: TaskSpec) -> CallFiles | None:
    """``(call file, items file or None)`` when the task is exactly a Python call for this interpreter."""
    parsed = _parse(spec.command)  # a shell task pays one string comparison
    if parsed is None or parsed.python != sys.executable or _changes_python(spec):
        return None
    return parsed.call, parsed.items


def python_script(spec: TaskSpec) -> ScriptCommand | None:
    """The script, when the task is exactly a script command for this interpreter."""
    parsed = parse_script_command(spec.command)  # a shell task pays one string comparison
    if parsed is None or parsed.python != sys.executable or _changes_python(spec):
        return None
    return parsed


def _changes_python(spec: TaskSpec) -> bool:
    return any(name.startswith("PYTHON") and name not in _ALLOWED_PYTHON_VARIABLES for name in spec.env)


def sys_path_without(entry: str) -> list[str]:
    """This process's ``sys.path`` without the first ``entry``: what a fresh interpreter for a task would have
    when ``entry`` was put on the consumer's own ``PYTHONPATH`` only (nbdist's folder, for the consumer)."""
    path = list(sys.path)
    if entry in path:
        path.remove(entry)
    return path


class WarmInterpreter:
    """A consumer's warm state: what it has imported, and the report of the call it forked last.

    ``start`` forks a Python call (None for any other task: the caller spawns it as always);
    after the call has ended, ``learn`` imports here the modules it needed (:mod:`.warm_imports`).
    ``task_sys_path`` is the ``sys.path`` a call starts with (a fresh interpreter's, for the task's env).
    """

    def __init__(self, task_sys_path: list[str]) -> None:
        self.ready = False  # cloudpickle and the call runner imported (on the first call, not at start)
        self.task_sys_path = task_sys_path
        self.imports = ModuleWarmer(task_sys_path)
        self._report_fd: int | None = None

    def start(self, spec: TaskSpec, base_env: dict[str, str]) -> RunningTask | None:
        """Fork a child that makes the call (or runs the script) as task ``spec``; track it as any task.

        Raises ``OSError`` (nothing started) when a log cannot be opened or the fork fails.
        """
        work: CallFiles | ScriptCommand | None = python_call(spec)
        if work is None:
            work = python_script(spec)
            if work is None:
                return None
            # Not forced unbuffered: the commands a script starts (Jobmon's worker runs the user's)
            # see the task's environment as it is, as they would under the script's own interpreter.
            env = {**base_env, **spec.env}
            sys_path = [os.path.dirname(os.path.realpath(work.script)), *[p for p in self.task_sys_path if p]]
        else:
            env = {**base_env, **spec.env, "PYTHONUNBUFFERED": "1"}
            sys_path = self.task_sys_path
        if not single_threaded():
            return None
        if not self.ready and not isinstance(work, ScriptCommand):
            import cloudpickle  # noqa: F401  (unpickling a notebook function needs it)

            from .._task import pycall  # noqa: F401

            self.ready = True
        self.to_learn()  # a report left unread (the previous call's wait was cut short) is dropped
        out_fd, err_fd = open_logs(spec)
        opened = [out_fd, err_fd]
        try:
            report_read, report_write, capacity = report_pipe()
            opened.append(report_write)
            try:
                started = time.monotonic()
                pid = os.fork()
                if pid == 0:  # pragma: no cover - the child never returns (coverage cannot follow it)
                    sys.path[:] = sys_path
                    _child(spec, env, work, (out_fd, err_fd, report_write), capacity)
            except BaseException:
                os.close(report_read)
                raise
        finally:
            for fd in opened:
                os.close(fd)
        self._report_fd = report_read
        return RunningTask.adopt(spec, pid, started)

    def to_learn(self) -> list[str]:
        """Modules the call forked last imported that this process could import too (its report is read once)."""
        fd, self._report_fd = self._report_fd, None
        return [] if fd is None else self.imports.read_report(fd)

    def learn(self, names: list[str], interrupt: Interrupt | None = None) -> bool:
        """Import ``names`` here, so the next forks start with them (unless that would start a thread);
        ``interrupt``: see :meth:`.warm_imports.ModuleWarmer.load`."""
        return self.imports.load(names, interrupt)


def _child(spec: TaskSpec, env: dict[str, str], work: CallFiles | ScriptCommand,
           fds: tuple[int, int, int], report_capacity: int) -> None:
    """The forked child: become the task, do its work, report its imports, exit with its code. Never returns."""
    code = 1
    out_fd, err_fd, report_fd = fds
    try:
        _become_task(spec, env, out_fd, err_fd, report_fd)
        before = set(sys.modules)
        code = _as_main(_script_runner(work) if isinstance(work, ScriptCommand) else _call_runner(spec, work))
        report_new_modules(report_fd, before, report_capacity)
    except BaseException:  # anything the set-up raised: say it in the task's stderr
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def _become_task(spec: TaskSpec, env: dict[str, str], out_fd: int, err_fd: int, report_fd: int) -> None:
    """What ``RunningTask`` gives a spawned task: session, stdio, signals, env, cwd, no inherited fds."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    # The consumer's pipes above all: a task must not read or write the distributor's messages.
    _close_inherited_fds(keep=report_fd)
    # The consumer's streams own fds 0-2 (closefd): kept alive, or collecting them would close the logs.
    _inherited_streams.extend((sys.stdin, sys.stdout, sys.stderr, sys.__stdin__, sys.__stdout__, sys.__stderr__))
    sys.stdin = sys.__stdin__ = open(0, closefd=False)
    sys.stdout = sys.__stdout__ = _unbuffered(1, "strict")
    sys.stderr = sys.__stderr__ = _unbuffered(2, "backslashreplace")
    # The consumer ignores SIGINT (Ctrl-C is the distributor's); a task gets Python's defaults.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Only what differs (the task's ids, its env): clearing and refilling every variable costs more.
    for name in [name for name in os.environ if name not in env]:
        del os.environ[name]
    for name, value in env.items():
        if os.environ.get(name) != value:
            os.environ[name] = value
    if spec.cwd:
        try:
            os.chdir(spec.cwd)
        except OSError as exc:
            print(f"nbdist: cannot enter {spec.cwd}: {exc.strerror}", file=sys.stderr)
            os._exit(CWD_EXIT_CODE)


def _close_inherited_fds(keep: int) -> None:
    """Close every fd above 2 but ``keep``, found in ``/proc/self/fd`` (``closerange`` to the limit costs ~10 ms)."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        os.closerange(3, keep)
        os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
        return
    for fd in fds:
        if fd > 2 and fd != keep:
            try:
                os.close(fd)
            except OSError:  # the listing's own fd, already closed
                pass


def _unbuffered(fd: int, errors: str) -> io.TextIOWrapper:
    """A text stream that writes straight to ``fd`` (as ``python -u`` makes them): prints are live in the log."""
    return io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding="utf-8", errors=errors, write_through=True)


def _call_runner(spec: TaskSpec, files: CallFiles) -> Callable[[], int]:
    from .._task.pycall import run_call

    call_file, items_file = files
    sys.argv = [CALL_MODULE, call_file, *([items_file] if items_file else [])]
    return lambda: run_call(call_file, items_file, spec.distributor_id)


def _script_runner(script: ScriptCommand) -> Callable[[], int]:
    import runpy

    sys.argv = [script.script, *script.args]

    def run() -> int:
        try:
            runpy.run_path(script.script, run_name="__main__")
        except (SystemExit, KeyboardInterrupt):
            raise
        except Exception:  # uncaught: reported as the interpreter reports it
            traceback.print_exc()
            return 1
        return 0

    return run


def _as_main(run: Callable[[], int]) -> int:
    """``run()``, then what an interpreter does at exit: its exit code (``sys.exit`` as Python maps it)."""
    try:
        code = run()
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except KeyboardInterrupt:  # an interpreter ends killed by SIGINT then, and so does this child
        traceback.print_exc()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        code = 128 + signal.SIGINT
    # As an interpreter does before it exits (and multiprocessing's fork children: they skip atexit
    # handlers too, which here would be the consumer's).
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    return code


def _exit_code(value: Any) -> int:
    """The exit status ``sys.exit(value)`` gives a script: None → 0, an int → itself, else printed → 1."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)
    return 1
