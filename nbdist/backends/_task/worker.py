"""``nbdist-worker``: run one task on a worker node the way a consumer does.

Usage::

    nbdist-worker [--name NAME] [--id DISTRIBUTOR_ID] [--stdout-dir DIR] [--stderr-dir DIR]
                  [--runtime T] [--memory M] -- COMMAND

The command runs as ``/bin/sh -c COMMAND`` with stdout/stderr in ``{stdout_dir}/{name}.o{id}`` and
``{stderr_dir}/{name}.e{id}``. When it ends, ``{stdout_dir}/{name}.x{id}`` receives a JSON object
``{"status", "message", "exit_code", "signal", "usage", "started", "ended", "host"}`` (written
atomically), and the worker exits with the task's exit code (128 + signal when it was killed).
The id defaults to what the scheduler's environment says (Slurm, or nbdist's multiprocess backend).
SIGTERM to the worker (e.g. ``scancel``) kills the task's whole tree and is reported ``K``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import sys
import time
from typing import Any, Sequence

from .cluster_protocol import TaskInstanceStatus as S
from .resources import log_file, parse_memory, parse_runtime
from .runner import RunningTask, TaskSpec, become_subreaper, exit_message

__all__ = ["main", "exit_info_path", "read_exit_info", "current_distributor_id", "MultiprocessWorkerNode",
           "worker_entry_point"]


def current_distributor_id() -> str | None:
    """The running task's distributor id, read from the scheduler's environment."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    if env.get("SLURM_JOB_ID"):
        return env["SLURM_JOB_ID"]
    if env.get("JOB_ID"):
        step = env.get("ARRAY_STEP_ID")
        return f"{env['JOB_ID']}_{step}" if step else env["JOB_ID"]
    return None


class MultiprocessWorkerNode:
    """What a task started by the multiprocess distributor knows about itself (from its environment)."""

    def __init__(self) -> None:
        self._start = time.time()

    @property
    def distributor_id(self) -> str | None:
        """``JOB_ID`` for a job, ``JOB_ID_ARRAY_STEP_ID`` for an array step, None outside a task."""
        job_id = os.environ.get("JOB_ID")
        if job_id is None:
            return None
        step = self.array_step_id
        return job_id if step is None else f"{job_id}_{step}"

    @property
    def array_step_id(self) -> int | None:
        """Return the array step id (None for a plain job)."""
        step = os.environ.get("ARRAY_STEP_ID")
        return int(step) if step not in (None, "") else None

    def initialize_logfile(self, log_type: str, log_dir: str, name: str) -> str:
        """``{log_dir}/{name}.o{id}`` for ``stdout``, ``.e{id}`` for ``stderr``."""
        kinds = {"stdout": "o", "stderr": "e"}
        if log_type not in kinds:
            raise ValueError(f"log_type must be 'stdout' or 'stderr', not {log_type!r}")
        return log_file(log_dir, name, kinds[log_type], str(self.distributor_id))

    def get_exit_info(self, exit_code: int, error_msg: str) -> tuple[str, str]:
        """``(D, …)`` for exit 0, ``(K, …)`` for SIGTERM/SIGKILL, ``(E, error_msg)`` otherwise."""
        if exit_code == 0:
            return S.DONE, "exit code 0"
        signum = -exit_code if exit_code < 0 else (exit_code - 128 if exit_code > 128 else None)
        if signum in (signal.SIGTERM, signal.SIGKILL):
            return S.KILL_SELF, error_msg or exit_message(None, signum)
        return S.ERROR, error_msg or exit_message(exit_code, None)

    def get_usage_stats(self) -> dict[str, Any]:
        """Wall seconds since this node object was made, CPU and max RSS of this process and its children."""
        import resource

        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {
            "wall_s": round(time.time() - self._start, 4),
            "cpu_s": round(own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime, 4),
            "max_rss_mb": round(max(own.ru_maxrss, children.ru_maxrss) / 1024, 2),
        }


def worker_entry_point() -> str:
    """Path of ``nbdist-worker`` in this Python environment (next to ``sys.executable``, so a venv works)."""
    candidate = os.path.join(os.path.dirname(sys.executable), "nbdist-worker")
    if os.access(candidate, os.X_OK):
        return candidate
    return shutil.which("nbdist-worker") or candidate


def exit_info_path(stdout_dir: str, name: str, distributor_id: str) -> str:
    """Where ``nbdist-worker`` writes a task's exit info."""
    return log_file(stdout_dir, name, "x", distributor_id)


def read_exit_info(path: str) -> dict | None:
    """The exit info written by ``nbdist-worker``, or None when it is not there (yet)."""
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


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
    # One word is a shell command line as it is; several are argv words, quoted back into one line.
    command = words[0] if len(words) == 1 else shlex.join(words)
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
        task.kill(S.KILL_SELF, "killed: the worker received SIGTERM", grace=1.0)

    outcome = task.wait(read_fd, on_signal)
    info = outcome.to_dict()
    info.update(started=started, ended=time.time(), host=socket.gethostname(), distributor_id=distributor_id)
    target = exit_info_path(args.stdout_dir, args.name, distributor_id)
    temporary = f"{target}.tmp{os.getpid()}"
    with open(temporary, "w") as handle:
        json.dump(info, handle)
    os.replace(temporary, target)
    if outcome.signal:
        return 128 + outcome.signal
    return outcome.exit_code or 0


if __name__ == "__main__":
    sys.exit(main())
