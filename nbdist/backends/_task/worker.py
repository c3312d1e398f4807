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

Signals: SIGUSR1 and SIGUSR2 (e.g. Slurm's ``--signal=B:USR1@60`` warning before the time limit) are
forwarded to the task's process group, so a task can checkpoint. Under Slurm, the worker dies with its
``slurmstepd`` (a node failure): the task's tree is killed and no exit info is written, so Slurm's
``NODE_FAIL`` decides and the step is never left running beside its retry.

Packed steps (``--steps-per-task K --array-length N [--task-offset F] [--array-base J]``): one Slurm
array task runs steps ``(F + SLURM_ARRAY_TASK_ID) * K`` … ``+ K - 1`` (below N) one after another, each as
``{J}_{step}`` (J: ``SLURM_ARRAY_JOB_ID`` by default) with its own logs and exit info, written as the step
ends; a failed step does not stop the next. SIGTERM ends the running step and runs no more.

Cancelling one packed step (the rest of the task goes on): its cancel marker ``{stdout_dir}/{name}.k{id}``
(:func:`~nbdist.cluster_protocol.naming.cancel_marker_path`, written by the Slurm distributor). A step
whose marker is there when its turn comes is not run (exit info ``K``, "cancelled before it started");
a running step whose marker appears is killed like a terminated task (its group SIGTERMed, SIGKILLed
after a grace period; ``K``), looked for every :data:`CANCEL_POLL_SECONDS`; then the next step runs.
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
from ...cluster_protocol.naming import cancel_marker_path, log_file
from ...cluster_protocol.resources import command_line, parse_memory, parse_runtime
from .exit_info import write_exit_info
from .node import current_distributor_id
from .reaping import become_subreaper
from .runner import RunningTask, TaskSpec
from .system import SYSTEM

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nbdist-worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default="task", help="task name (log file stem)")
    parser.add_argument("--id", dest="distributor_id", help="distributor id (default: from the environment)")
    parser.add_argument("--stdout-dir", default=".", help="folder of {name}.o{id} and {name}.x{id}")
    parser.add_argument("--stderr-dir", default=None, help="folder of {name}.e{id} (default: --stdout-dir)")
    parser.add_argument("--runtime", type=parse_runtime, help="kill the task after this long (e.g. 10m)")
    parser.add_argument("--memory", type=parse_memory, help="kill the task over this RSS (e.g. 2G)")
    parser.add_argument("--steps-per-task", type=int, help="packed: run this many array steps, one by one")
    parser.add_argument("--array-length", type=int, help="packed: the array's number of steps")
    parser.add_argument("--task-offset", type=int, default=0, help="packed: this sbatch call's first task")
    parser.add_argument("--array-base", help="packed: the job id in step ids (default SLURM_ARRAY_JOB_ID)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND (a shell command line)")
    return parser


# Control bytes the signal handlers write to the worker's pipe, and what each asks for.
_TERMINATE, _PARENT_DIED = b"t", b"h"
_FORWARDED = {signal.SIGUSR1: b"1", signal.SIGUSR2: b"2"}
# A task that died by a signal waits this long for the worker's own SIGTERM (sent with it) to be seen.
TERMINATION_GRACE_SECONDS = 0.05
# The signal the kernel sends the worker when its parent (slurmstepd) dies: a node failure.
PARENT_DEATH_SIGNAL = signal.SIGHUP
# How often a packed worker looks for its running step's cancel marker: a cancelled step ends within
# about this long (plus the kill's grace), and each look is one stat() per running packed worker on
# the log folder's (often shared, network) file system: 1,000 running packed tasks cost it 1,000
# lookups a second. Single-step workers never look (the distributor scancels them).
CANCEL_POLL_SECONDS = 1.0
# How a cancelled packed step ends, when it was running and when its turn had not come yet.
CANCELLED_RUNNING = "killed: cancelled while it ran (the rest of its packed task goes on)"
CANCELLED_WAITING = "cancelled before it started (skipped by its packed task)"


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
    stderr_dir = args.stderr_dir or args.stdout_dir
    for folder in {args.stdout_dir, stderr_dir}:
        os.makedirs(folder, exist_ok=True)
    become_subreaper()
    # Handlers are in place before a task starts, so no SIGTERM can end the worker and orphan it.
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    for signum, byte in [(signal.SIGTERM, _TERMINATE), (signal.SIGINT, _TERMINATE),
                         (PARENT_DEATH_SIGNAL, _PARENT_DIED), *_FORWARDED.items()]:
        signal.signal(signum, lambda *_, byte=byte: os.write(write_fd, byte))
    _die_with_slurmstepd()
    if args.steps_per_task is None:
        ids = [(args.distributor_id or current_distributor_id() or f"local{os.getpid()}", {})]
    else:
        ids = _packed_steps(args)
    code = 0
    for distributor_id, env in ids:
        marker = None if args.steps_per_task is None else cancel_marker_path(args.stdout_dir, args.name,
                                                                              distributor_id)
        if marker is not None and os.path.exists(marker):
            _write_skipped(args.stdout_dir, args.name, distributor_id)
            continue
        spec = TaskSpec(distributor_id, command, log_file(args.stdout_dir, args.name, "o", distributor_id),
                        log_file(stderr_dir, args.name, "e", distributor_id), env=env, runtime_s=args.runtime,
                        memory_mb=args.memory)
        step_code, received = _run_one(spec, read_fd, args.stdout_dir, args.name, marker)
        code = code or step_code  # a packed task fails (for sacct) if one of its steps did
        if received:  # terminated or orphaned: the remaining steps are not run
            break
    return code


def _packed_steps(args: argparse.Namespace) -> list[tuple[str, dict[str, str]]]:
    """``(distributor id, identity env)`` of each step of this packed array task."""
    task = args.task_offset + int(os.environ.get("SLURM_ARRAY_TASK_ID", "0"))
    base = args.array_base or os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("JOB_ID", "local")
    first = task * args.steps_per_task
    steps = range(first, min(first + args.steps_per_task, args.array_length))
    return [(f"{base}_{step}", {"JOB_ID": base, "ARRAY_STEP_ID": str(step), "NBDIST_DISTRIBUTOR_ID": f"{base}_{step}"})
            for step in steps]


def _write_skipped(stdout_dir: str, name: str, distributor_id: str) -> None:
    """The exit info of a packed step cancelled before its turn came: it never ran."""
    now = time.time()
    write_exit_info(stdout_dir, name, distributor_id, {
        "status": Status.KILL_SELF, "message": CANCELLED_WAITING, "exit_code": None, "signal": None, "limit": None,
        "usage": {}, "started": None, "ended": now, "host": socket.gethostname(), "distributor_id": distributor_id,
        "terminated": False})


def _run_one(spec: TaskSpec, read_fd: int, stdout_dir: str, name: str,
             cancel_marker: str | None = None) -> tuple[int, bool]:
    """Run one task to its end and write its exit info; ``(exit code, whether the worker must stop)``.

    ``cancel_marker``: a packed step's marker file, looked for while it runs (its appearance kills the step).
    """
    started = time.time()
    task = RunningTask(spec)
    stop: list[str] = []  # why the worker was told to end (SIGTERM, or its slurmstepd died)

    def on_signal(alive: bool = True) -> None:
        try:
            received = os.read(read_fd, 64)
        except BlockingIOError:
            return
        for control in (bytes([byte]) for byte in received):
            forwarded = [signum for signum, known in _FORWARDED.items() if known == control]
            if forwarded and alive:
                try:
                    os.killpg(task.pid, forwarded[0])
                except ProcessLookupError:
                    pass
            elif not forwarded:
                why = "its node's slurmstepd died" if control == _PARENT_DIED else "the worker received SIGTERM"
                stop.append(why)
                if alive:
                    task.kill(Status.KILL_SELF, f"killed: {why}", grace=1.0)

    def on_tick() -> None:
        if cancel_marker is not None and os.path.exists(cancel_marker):
            task.kill(Status.KILL_SELF, CANCELLED_RUNNING, grace=1.0)

    outcome = task.wait(read_fd, on_signal, on_tick=on_tick if cancel_marker is not None else None,
                        tick_seconds=CANCEL_POLL_SECONDS)
    if not stop and (outcome.signal or (outcome.exit_code or 0) > 128):
        # scancel signals every process of the job, the task too: it may die before our handler ran.
        time.sleep(TERMINATION_GRACE_SECONDS)
        on_signal(alive=False)
    if "its node's slurmstepd died" not in stop:  # orphaned: Slurm's verdict (NODE_FAIL) is the truth
        info = outcome.to_dict()
        if stop and info["status"] != Status.KILL_SELF:
            info.update(status=Status.KILL_SELF, message=f"killed: {stop[0]}; {info['message']}")
        info.update(started=started, ended=time.time(), host=socket.gethostname(), distributor_id=spec.distributor_id,
                    terminated=bool(stop))
        write_exit_info(stdout_dir, name, spec.distributor_id, info)
    code = 128 + outcome.signal if outcome.signal else outcome.exit_code or 0
    return code, bool(stop)


def _die_with_slurmstepd() -> None:
    """Under Slurm, ask for :data:`PARENT_DEATH_SIGNAL` when slurmstepd (our parent) dies."""
    parent = os.getppid()
    if SYSTEM.process_name(parent) == "slurmstepd":
        SYSTEM.parent_death_signal(PARENT_DEATH_SIGNAL, parent)


if __name__ == "__main__":
    sys.exit(main())
