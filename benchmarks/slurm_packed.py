"""Packed steps on Slurm: one-line steps end to end, one Slurm task per step against K steps per task.

Run on the test cluster (``scripts/slurm-local.sh start``; ``eval "$(scripts/slurm-local.sh env)"``)::

    .venv/bin/python benchmarks/slurm_packed.py [--steps 1000] [--per-task 50] [--big 10000]

1. ``--steps`` one-line steps (``echo $NBDIST_STEP``) as one array through ``nbdist.Session(backend="slurm")``,
   first with ``steps_per_task=1``, then with ``--per-task``, in the same run: seconds from ``array()`` to
   every exit code known, and the speed-up.
2. A ``--big``-step array with nbdist's default packing for the site (``MaxArraySize``, ``MaxJobCount`` read
   from ``scontrol show config``): every exit code known, the number of ``sbatch`` calls, and ``squeue``
   calls per poll (counted by wrappers in front of the real tools).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbdist
from nbdist import State
from nbdist.backends.slurm import cli
from nbdist.backends.slurm.arrays import default_steps_per_task

TOOLS = ("sbatch", "squeue", "scancel", "scontrol")


def counting_wrappers(folder: Path, log: Path) -> None:
    """``sbatch``/``squeue``/… in ``folder`` that log one line per call, then exec the real tool."""
    folder.mkdir(parents=True, exist_ok=True)
    for tool in TOOLS:
        real = shutil.which(tool)
        assert real is not None, f"{tool} not on PATH: start the test cluster first"
        (folder / tool).write_text(f'#!/bin/sh\necho {tool} >> "{log}"\nexec "{real}" "$@"\n')
        (folder / tool).chmod(0o755)


def calls(log: Path) -> dict[str, int]:
    counted: dict[str, int] = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        counted[line] = counted.get(line, 0) + 1
    return counted


def run_array(root: Path, name: str, steps: int, per_task: int | None) -> tuple[float, int, int]:
    """Seconds from submission to every exit code known; (seconds, exit codes known, polls)."""
    session = nbdist.Session(backend="slurm", root=str(root / name), log_dir=str(root / name / "slurm-logs"),
                             poll_interval=0.2, max_poll_interval=1.0)
    polls = {"n": 0}
    squeue_rows = cli.squeue_rows

    def counted(job_ids):  # one squeue call per poll: count the polls to show it
        polls["n"] += 1
        return squeue_rows(job_ids)

    cli.squeue_rows = counted
    try:
        options = {} if per_task is None else {"steps_per_task": per_task}
        started = time.perf_counter()
        arr = session.array('echo "$NBDIST_STEP"', steps=steps, name=name, **options)
        state = arr.wait(3600)
        seconds = time.perf_counter() - started
        known = sum(job.exit_code is not None for job in arr)
        assert state is State.DONE, arr.counts()
        return seconds, known, polls["n"]
    finally:
        cli.squeue_rows = squeue_rows
        session.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--per-task", type=int, default=50)
    parser.add_argument("--big", type=int, default=10_000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="nbdist-slurm-packed-"))  # a fresh folder: see environment-traps
    log, wrappers = root / "calls.log", root / "bin"
    counting_wrappers(wrappers, log)
    os.environ["PATH"] = f"{wrappers}{os.pathsep}{os.environ['PATH']}"
    max_array_size, max_job_count = cli.site_limits()
    print(f"site: MaxArraySize={max_array_size} MaxJobCount={max_job_count}; load {os.getloadavg()[0]:.2f}")

    one, known_one, _ = run_array(root, "one-per-task", args.steps, 1)
    packed, known_packed, _ = run_array(root, "packed", args.steps, args.per_task)
    print(f"{args.steps} one-line steps: 1 step/task {one:.1f} s ({known_one} exit codes), "
          f"{args.per_task} steps/task {packed:.1f} s ({known_packed} exit codes): {one / packed:.1f}x faster")

    log.unlink(missing_ok=True)
    per_task = default_steps_per_task(args.big, max_job_count)
    big, known_big, polls = run_array(root, "big", args.big, None)
    counted = calls(log)
    tasks = -(-args.big // per_task)
    print(f"{args.big} steps, default {per_task} steps/task = {tasks} Slurm tasks: {big:.1f} s, "
          f"{known_big} of {args.big} exit codes known; sbatch calls {counted.get('sbatch', 0)} "
          f"(MaxArraySize {max_array_size}), squeue calls {counted.get('squeue', 0)} in {polls} polls "
          f"({counted.get('squeue', 0) / max(polls, 1):.2f} per poll); load {os.getloadavg()[0]:.2f}")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
