"""``nbdist``: the registry from a terminal — status, logs, kill, retry, and run.

Usage::

    nbdist [--root ROOT] status [NAME] [--all] [--where P=V ...]
    nbdist [--root ROOT] logs NAME[:STEP] [--err] [--tail N] [--follow]
    nbdist [--root ROOT] kill NAME[:STEP]
    nbdist [--root ROOT] retry NAME[:STEP] [--killed]
    nbdist [--root ROOT] forget NAME [NAME ...]
    nbdist [--root ROOT] clean --older-than AGE
    nbdist [--root ROOT] run [--array SPEC] [--name N] [--cores C] [--memory M] [--runtime T]
                             [--max-attempts K] [--after NAME ...] [--parallelism P] [--backend B] -- COMMAND

The CLI works on the same registry as the notebook (``--root``, default ``$NBDIST_ROOT`` or
``.nbdist``). ``kill``/``retry`` of a job owned by a running kernel are passed to that kernel through
the registry. ``run`` submits from the terminal, streams a single job's output (an array's first
failure), draws a live progress line, groups failures by their last stderr line as the dashboard
does, says which ``nbdist logs`` command reads more, and exits 1 if any step failed (130 when
interrupted; the tasks are killed then). ``forget`` and ``clean`` remove finished jobs' rows and
files, never a live job's.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from . import actions, render
from ..session import Array, Job, Session, Snapshot, State, UnknownJob, command_line, parse_array_spec

__all__ = ["main"]

# How often `run` and `logs --follow` redraw: fast enough to feel live, cheap on a shared machine.
REFRESH_SECONDS = 0.2
# `kill` waits this long to see the kill take effect (a kernel that owns the job reads requests every 0.5 s).
KILL_WAIT_SECONDS = 10.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nbdist", description="Jobs and arrays of an nbdist registry.")
    parser.add_argument("--root", default=os.environ.get("NBDIST_ROOT", ".nbdist"),
                        help="registry folder (default: $NBDIST_ROOT or .nbdist)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    status = commands.add_parser("status", help="list jobs, or the steps of one")
    status.add_argument("name", nargs="?", help="a job or array name or id")
    status.add_argument("--state", help="only steps in this state (with NAME)")
    status.add_argument("--page", type=int, default=0, help="page of steps (with NAME)")
    status.add_argument("--where", nargs="+", default=[], metavar="P=V", help="only steps with these parameters")
    status.add_argument("--all", action="store_true", help="every job, not only unfinished and recent ones")

    logs = commands.add_parser("logs", help="print a job's or step's log")
    logs.add_argument("name", metavar="NAME[:STEP]")
    logs.add_argument("--err", action="store_true", help="stderr instead of stdout")
    logs.add_argument("--tail", type=int, metavar="N", help="only the last N lines")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")

    kill = commands.add_parser("kill", help="kill a job, an array or one step")
    kill.add_argument("name", metavar="NAME[:STEP]")

    retry = commands.add_parser("retry", help="run the failed steps (or a finished job) again, as submitted")
    retry.add_argument("name", metavar="NAME[:STEP]")
    retry.add_argument("--killed", action="store_true", help="KILLED and SKIPPED steps too")

    forget = commands.add_parser("forget", help="remove finished jobs and their files")
    forget.add_argument("names", nargs="+", metavar="NAME")

    clean = commands.add_parser("clean", help="forget every job that ended more than AGE ago")
    clean.add_argument("--older-than", required=True, metavar="AGE", help="e.g. 7d, 12h, 30m")

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
    except OSError as exc:  # a registry that cannot be written (read-only, disk full): its one line says what
        print(f"nbdist: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# ---------------------------------------------------------------------------------------- status
def _status(session: Session, args: argparse.Namespace) -> int:
    if args.name is None:
        if args.where:
            raise ValueError("--where needs a NAME: nbdist status NAME --where lr=0.1")
        snapshots = [session.snapshot(handle, page_size=1, tail_lines=0) for handle in session.jobs()]
        shown, more = render.status_selection(snapshots, all_jobs=args.all)
        print(render.status_text(shown, empty=f"no jobs in {session.root}", more=more))
        return 0
    where = actions.parse_where(args.where)
    print(render.snapshot_text(session.snapshot(args.name, state=args.state, page=args.page, where=where)))
    return 0


# ---------------------------------------------------------------------------------------- forget, clean
# Units of an AGE (``7d``); a bare number is seconds.
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _age(text: str) -> float:
    number, unit = (text[:-1], text[-1]) if text and text[-1] in _AGE_UNITS else (text, "s")
    try:
        seconds = float(number) * _AGE_UNITS[unit]
    except ValueError:
        raise ValueError(f"--older-than {text!r}: write a number and a unit, e.g. 7d, 12h, 30m") from None
    if seconds < 0:
        raise ValueError(f"--older-than {text!r}: must not be negative")
    return seconds


def _forget(session: Session, args: argparse.Namespace) -> int:
    for name in args.names:
        handle = session.get(name)
        removed = session.forget(handle)
        print(f"forgot {handle.name} (id {handle.id}): {len(removed)} files removed")
    return 0


def _clean(session: Session, args: argparse.Namespace) -> int:
    cutoff = time.time() - _age(args.older_than)
    forgotten = files = skipped = 0
    for handle in session.jobs():
        snap = session.snapshot(handle, page_size=1, tail_lines=0)
        if not snap.all_terminal or snap.submitted + snap.elapsed_s > cutoff:
            continue
        try:
            files += len(session.forget(handle))
            forgotten += 1
        except ValueError as exc:  # another live kernel's job: left for it
            skipped += 1
            print(f"nbdist: kept {handle.name} (id {handle.id}): {exc}", file=sys.stderr)
    kept = f"; {skipped} kept" if skipped else ""
    print(f"forgot {forgotten} job{'s' * (forgotten != 1)} that ended over {args.older_than} ago: "
          f"{files} files removed{kept}")
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
    print(actions.kill(handle))
    state = handle.wait(KILL_WAIT_SECONDS)  # the kernel that runs it acts on its next registry check
    if not state.is_terminal:
        print(f"nbdist: {handle.name} is still {state.value} after {KILL_WAIT_SECONDS:g}s; the kill stays requested",
              file=sys.stderr)
    return 0


def _retry(session: Session, args: argparse.Namespace) -> int:
    handle = session.get(args.name)
    line = actions.retry(handle, killed=args.killed)
    print(line)
    if not line.startswith("retrying") or not handle.owned:
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


class _Tail:
    """The new bytes of a growing log file, read from where the last read stopped."""

    def __init__(self) -> None:
        self.offset = 0

    def read(self, path: str | None) -> str:
        if path is None:
            return ""
        try:
            with open(path, "rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except OSError:
            return ""
        self.offset += len(chunk)
        return chunk.decode(errors="replace")


def _follow(session: Session, handle: Job | Array, quiet: bool) -> int:
    """Until the job ends: a progress line (stderr), a single job's output as it comes (stdout), an
    array's first failure when it happens; then failures grouped by their last stderr line and the
    ``nbdist logs`` command that reads more. 0 if everything is DONE, else 1."""
    tty = sys.stderr.isatty()
    last = ""
    out = _Tail() if isinstance(handle, Job) else None
    first_failure_shown = False
    while True:
        finished = handle.done()
        if out is not None:
            _write(sys.stdout, out.read(handle.log_paths.stdout if handle.log_paths else None), tty and not quiet)
        snap = session.snapshot(handle, page_size=1, tail_lines=10)
        if snap.kind == "array" and snap.failure_groups and not first_failure_shown and not finished:
            first_failure_shown = True
            _first_failure(snap, tty and not quiet)
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
    root = "" if session.root == os.path.abspath(".nbdist") else f" --root {session.root}"
    if snap.state is State.DONE:
        if out is None:
            print(f"nbdist: output: nbdist{root} logs {handle.name}:STEP", file=sys.stderr)
        return 0
    for message, steps in snap.failure_groups:
        label = "" if snap.kind == "job" else f" ({render.steps_label(list(steps))})"
        print(f"nbdist: {len(steps)} × {message}{label}", file=sys.stderr)
    target = handle.name if snap.kind == "job" else f"{handle.name}:{snap.failure_groups[0][1][0]}" \
        if snap.failure_groups else handle.name
    print(f"nbdist: more: nbdist{root} logs {target} --err", file=sys.stderr)
    return 1


def _write(stream: Any, text: str, clear_line: bool) -> None:
    """Output of the job, on its own lines (the progress line, on a terminal, is cleared first)."""
    if not text:
        return
    if clear_line:
        sys.stderr.write("\r\x1b[2K")
        sys.stderr.flush()
    stream.write(text)
    stream.flush()


def _first_failure(snap: Snapshot, clear_line: bool) -> None:
    """The first failed step of an array, when it fails: its last stderr lines."""
    message, steps = snap.failure_groups[0]
    tail = render.tail_text(snap.stderr_tail).rstrip("\n")
    text = f"nbdist: step {steps[0]} failed: {message}\n"
    if tail and snap.log_step == steps[0]:
        text += "".join(f"  | {line}\n" for line in tail.splitlines()[-5:])
    _write(sys.stderr, text, clear_line)


_COMMANDS = {"status": _status, "logs": _logs, "kill": _kill, "retry": _retry, "forget": _forget, "clean": _clean}

if __name__ == "__main__":
    sys.exit(main())
