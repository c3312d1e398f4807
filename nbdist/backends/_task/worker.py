"""``nbdist-worker``: run one task on a worker node the way a consumer does.

Usage::

    nbdist-worker [--name NAME] [--id DISTRIBUTOR_ID] [--stdout-dir DIR] [--stderr-dir DIR]
                  [--runtime T] [--memory M] -- COMMAND

The command runs as ``/bin/sh -c COMMAND`` with stdout/stderr in ``{stdout_dir}/{name}.o{id}`` and
``{stderr_dir}/{name}.e{id}``. When it ends, ``{stdout_dir}/{name}.x{id}`` receives a JSON object
``{"status", "message", "exit_code", "signal", "limit", "usage", "started", "ended", "host",
"distributor_id"}`` (written atomically; ``limit`` is ``"runtime"`` or ``"memory"`` for a task killed over
one, else null), and the worker exits with the task's exit code (128 + signal when it was killed).
The id defaults to what the scheduler's environment says (Slurm, or nbdist's multiprocess backend).
SIGTERM to the worker (e.g. ``scancel``) kills the task's whole tree and is reported ``K``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from typing import Sequence

from ...cluster_protocol import TaskInstanceStatus as Status
from ...cluster_protocol.naming import log_file
from ...cluster_protocol.resources import command_line, parse_memory, parse_runtime
from .exit_info import write_exit_info
from .node import current_distributor_id
from .reaping import become_subreaper
from .runner import RunningTask, TaskSpec

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nbdist-worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default="task", help="task name (log file stem)")
    parser.add_argument("--id", dest="distributor_id", help="distributor id (default: from the environment)")
    parser.add_argument("--stdout-dir", default=".", help="folder of {name}.o{id} and {name}.x{id}")
    parser.add_argument("--stderr-dir", default=None, help="folder of {name}.e{id} (default: --stdout-dir)")
    parser.add_argument("--runtime", type=parse_runtime, help="kill the task after this long (e.g. 10m)")
    parser.add_argument("--memory", type=parse_memory, help="kill the task over this RSS (e.g. 2G)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND (a shell command line)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``nbdist-worker``."""
    args = _parser().parse_args(argv)
    words = list(args.command)
    if words and words[0] == "--":
        words = words[1:]
    if not words:
        print("nbdist-worker: no command given (use: nbdist-worker [options] -- COMMAND)", file=sys.stderr)
        return 2
    command = command_line(words)
    distributor_id = args.distributor_id or current_distributor_id() or f"local{os.getpid()}"
    stderr_dir = args.stderr_dir or args.stdout_dir
    for folder in {args.stdout_dir, stderr_dir}:
        os.makedirs(folder, exist_ok=True)
    spec = TaskSpec(
        distributor_id,
        command,
        log_file(args.stdout_dir, args.name, "o", distributor_id),
        log_file(stderr_dir, args.name, "e", distributor_id),
        runtime_s=args.runtime,
        memory_mb=args.memory,
    )
    become_subreaper()
    # scancel / stop send SIGTERM to the worker: pass it on as a kill of the whole task tree. The
    # handler is in place before the task starts, so no SIGTERM can end the worker and orphan it.
    read_fd, write_fd = os.pipe()
    signal.signal(signal.SIGTERM, lambda *_: os.write(write_fd, b"t"))
    signal.signal(signal.SIGINT, lambda *_: os.write(write_fd, b"t"))
    started = time.time()
    task = RunningTask(spec)

    def on_signal() -> None:
        os.read(read_fd, 64)
        task.kill(Status.KILL_SELF, "killed: the worker received SIGTERM", grace=1.0)

    outcome = task.wait(read_fd, on_signal)
    info = outcome.to_dict()
    info.update(started=started, ended=time.time(), host=socket.gethostname(), distributor_id=distributor_id)
    write_exit_info(args.stdout_dir, args.name, distributor_id, info)
    if outcome.signal:
        return 128 + outcome.signal
    return outcome.exit_code or 0


if __name__ == "__main__":
    sys.exit(main())
