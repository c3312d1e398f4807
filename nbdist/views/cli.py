"""``nbdist``: the registry from a terminal — status, logs, kill, retry, and run.

Usage::

    nbdist [--root ROOT] status [NAME]
    nbdist [--root ROOT] logs NAME[:STEP] [--err] [--tail N] [--follow]
    nbdist [--root ROOT] kill NAME[:STEP]
    nbdist [--root ROOT] retry NAME[:STEP]
    nbdist [--root ROOT] run [--array SPEC] [--name N] [--cores C] [--memory M] [--runtime T]
                             [--max-attempts K] [--after NAME ...] [--parallelism P] [--backend B] -- COMMAND

The CLI works on the same registry as the notebook (``--root``, default ``$NBDIST_ROOT`` or
``.nbdist``). ``kill``/``retry`` of a job owned by a running kernel are passed to that kernel through
the registry. ``run`` submits from the terminal, draws a live progress line and exits 1 if any step
failed (130 when interrupted; the tasks are killed then).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from . import render
from ..session import Array, Job, Session, Snapshot, State, UnknownJob
from ..session.sweep import command_line, parse_array_spec

__all__ = ["main"]

# How often `run` and `logs --follow` redraw: fast enough to feel live, cheap on a shared machine.
REFRESH_SECONDS = 0.2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nbdist", description="Jobs and arrays of an nbdist registry.")
    parser.add_argument("--root", default=os.environ.get("NBDIST_ROOT", ".nbdist"),
                        help="registry folder (default: $NBDIST_ROOT or .nbdist)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    status = commands.add_parser("status", help="list jobs, or the steps of one")
    status.add_argument("name", nargs="?", help="a job or array name or id")
    status.add_argument("--state", help="only steps in this state (with NAME)")
    status.add_argument("--page", type=int, default=0, help="page of steps (with NAME)")

    logs = commands.add_parser("logs", help="print a job's or step's log")
    logs.add_argument("name", metavar="NAME[:STEP]")
    logs.add_argument("--err", action="store_true", help="stderr instead of stdout")
    logs.add_argument("--tail", type=int, metavar="N", help="only the last N lines")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")

    kill = commands.add_parser("kill", help="kill a job, an array or one step")
    kill.add_argument("name", metavar="NAME[:STEP]")

    retry = commands.add_parser("retry", help="run the failed steps (or a finished job) again")
    retry.add_argument("name", metavar="NAME[:STEP]")

    run = commands.add_parser("run", help="submit a command (or an array) and follow it")
    run.add_argument("--array", metavar="SPEC", help="steps: 10, 0-9, 1,3,5-7 or 0-99%%4 (at most 4 at once)")
    run.add_argument("--name")
    run.add_argument("--cores", type=int, default=1)
    run.add_argument("--memory", help="e.g. 512M, 2G")
    run.add_argument("--runtime", help="e.g. 90s, 10m, 2h")
    run.add_argument("--max-attempts", type=int, default=1)
    run.add_argument("--after", nargs="+", default=[], metavar="NAME")
    run.add_argument("--parallelism", type=int)
    run.add_argument("--backend", default="multiprocess")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    run.add_argument("words", nargs="*", metavar="-- COMMAND",
                     help="one word: a shell command line; several: a command and its arguments")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nbdist`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="nbdist: %(message)s")
    try:
        if args.command == "run":
            return _run(args)
        if not os.path.exists(os.path.join(args.root, "registry.db")):  # do not create one just to look
            if args.command == "status" and args.name is None:
                print(f"no jobs in {os.path.abspath(args.root)}")
                return 0
            raise ValueError(f"no registry in {os.path.abspath(args.root)} (nothing was submitted there; --root?)")
        session = Session(root=args.root)
        try:
            session.attach(take_over=args.command in ("kill", "retry"))
            return _COMMANDS[args.command](session, args)
        finally:
            session.close()
    except (ValueError, UnknownJob) as exc:
        print(f"nbdist: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


# ---------------------------------------------------------------------------------------- status
def _status(session: Session, args: argparse.Namespace) -> int:
    if args.name is None:
        snapshots = [session.snapshot(handle, page_size=1, tail_lines=0) for handle in session.jobs()]
        print(render.status_text(snapshots, empty=f"no jobs in {session.root}"))
        return 0
    print(render.snapshot_text(session.snapshot(args.name, state=args.state, page=args.page)))
    return 0


# ---------------------------------------------------------------------------------------- logs
def _one_job(session: Session, name: str) -> Job:
    handle = session.get(name)
    if isinstance(handle, Array):
        snap = session.snapshot(handle, page_size=1, tail_lines=0)
        step = snap.log_step if snap.log_step is not None else handle.steps[0]
        print(f"nbdist: {handle.name} is an array; showing step {step} (use {handle.name}:STEP)", file=sys.stderr)
        return handle.step(step)
    return handle


def _logs(session: Session, args: argparse.Namespace) -> int:
    job = _one_job(session, args.name)
    while args.follow and job.log_paths is None and not job.done():  # PENDING: wait for it to be submitted
        time.sleep(REFRESH_SECONDS)
        session.poll()
    paths = job.log_paths
    if paths is None:
        print(f"nbdist: {job.name} has not started ({job.state.value}): no log yet", file=sys.stderr)
        return 1
    text = job.stderr(args.tail) if args.err else job.stdout(args.tail)
    sys.stdout.write(text)
    sys.stdout.flush()
    if not args.follow:
        return 0
    path = paths.stderr if args.err else paths.stdout
    offset = os.path.getsize(path) if os.path.exists(path) else 0
    while True:
        finished = job.done()
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
        except OSError:
            chunk = b""
        if chunk:
            offset += len(chunk)
            sys.stdout.write(chunk.decode(errors="replace"))
            sys.stdout.flush()
        if finished:
            return 0
        time.sleep(REFRESH_SECONDS)
        session.poll()


# ---------------------------------------------------------------------------------------- kill, retry
def _kill(session: Session, args: argparse.Namespace) -> int:
    handle = session.get(args.name)
    if not handle.cancel():
        print(f"{handle.name} had already finished ({handle.state.value})")
        return 0
    state = handle.wait(10)
    print(f"{handle.name}: {state.value}" + ("" if state.is_terminal else " (kill requested)"))
    return 0


def _retry(session: Session, args: argparse.Namespace) -> int:
    handle = session.get(args.name)
    if isinstance(handle, Array):
        if not handle.failed():
            print(f"{handle.name}: no failed step to retry")
            return 0
        handle.retry_failed()
    else:
        handle.retry()
    if not handle.owned:
        print(f"{handle.name}: retry requested from the session that owns it")
        return 0
    # This process now runs the retried steps: follow them here (local tasks die with us).
    return _follow(session, handle, quiet=False)


# ---------------------------------------------------------------------------------------- run
def _run(args: argparse.Namespace) -> int:
    words = args.words  # argparse has taken the "--" away
    if not words:
        raise ValueError("run needs a command: nbdist run [options] -- COMMAND")
    command = command_line(words)
    options: dict[str, Any] = {"name": args.name, "cores": args.cores, "memory": args.memory,
                               "runtime": args.runtime, "max_attempts": args.max_attempts, "after": args.after}
    with Session(backend=args.backend, parallelism=args.parallelism, root=args.root) as session:
        if args.after:
            session.attach(take_over=False)
        if args.array:
            steps, limit = parse_array_spec(args.array)
            handle: Job | Array = session.array(command, steps=steps, max_concurrent=limit, **options)
        else:
            handle = session.submit(command, **options)
        try:
            return _follow(session, handle, quiet=args.quiet)
        except KeyboardInterrupt:
            handle.cancel()
            print(f"\nnbdist: interrupted; {handle.name} killed", file=sys.stderr)
            return 130


def _progress(snap: Snapshot) -> str:
    parts = [f"{state.lower()} {count}" for state, count in snap.counts.items() if count]
    terminal = round(snap.done_fraction * snap.total)
    return f"{snap.name}: {terminal}/{snap.total} finished · {' · '.join(parts)} · {snap.elapsed_s:.1f}s"


def _follow(session: Session, handle: Job | Array, quiet: bool) -> int:
    """Draw a progress line until the job ends; 0 if everything is DONE, else 1."""
    tty = sys.stderr.isatty()
    last = ""
    while True:
        finished = handle.done()
        snap = session.snapshot(handle, page_size=1, tail_lines=0)
        line = _progress(snap)
        if not quiet and line != last:
            if tty:
                sys.stderr.write("\r\x1b[2K" + line)
            elif finished or line.split(" · ")[:-1] != last.split(" · ")[:-1]:
                sys.stderr.write(line + "\n")
            sys.stderr.flush()
            last = line
        if finished:
            break
        handle.wait(REFRESH_SECONDS)
    if tty and not quiet:
        sys.stderr.write("\n")
    snap = session.snapshot(handle, page_size=1, tail_lines=5)
    if snap.state is State.DONE:
        return 0
    for message, steps in snap.failure_groups:
        label = "" if snap.kind == "job" else f" (steps {', '.join(map(str, steps[:10]))})"
        print(f"nbdist: {len(steps)} × {message}{label}", file=sys.stderr)
    failures = [handle] if isinstance(handle, Job) else handle.failed()
    failed = failures[0] if failures else None
    if failed is not None and failed.log_paths is not None:
        print(f"nbdist: see {failed.log_paths.stderr}", file=sys.stderr)
    return 1


_COMMANDS = {"status": _status, "logs": _logs, "kill": _kill, "retry": _retry}

if __name__ == "__main__":
    sys.exit(main())
