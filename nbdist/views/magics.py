"""IPython magics: ``%%submit`` and ``%nbdist``. They parse, check, then call the public Python API.

Nothing here schedules. Every line is checked completely before the first API call, so a bad line
raises one :class:`~IPython.core.error.UsageError` (one line, no traceback) and submits nothing; a
``ValueError``/``KeyError`` that the core raises for input we could not check here is translated
to a ``UsageError`` at this boundary.
"""

from __future__ import annotations

import inspect
import keyword
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import MagicArgumentParser, argument, magic_arguments
from IPython.display import display

from ..session import LIVE_AFTER_SECONDS, Array, Job, NotebookSessions, Options, Session, cell_inputs, expand, \
    placeholders, quiet_waits, submit_cell
from . import actions
from .display import register as register_display
from .magic_lines import array_spec, one_line, split_step, split_words

__all__ = ["NbdistMagics", "load_ipython_extension"]

log = logging.getLogger(__name__)


@magics_class
class NbdistMagics(Magics):
    """``%%submit`` and ``%nbdist``: the notebook face of :mod:`nbdist`."""

    def __init__(self, shell: Any = None) -> None:
        super().__init__(shell)
        # The sessions the magics use: the default one until ``%nbdist attach`` or ``%nbdist backend``.
        self.sessions = NotebookSessions()
        self._nbdist_parser = _build_nbdist_parser()

    # -- sessions ---------------------------------------------------------------------------
    def session(self, backend: str | None = None) -> Session:
        """The session for ``backend`` (the current one when None); a UsageError if it cannot start."""
        try:
            return self.sessions.for_backend(backend)
        except (ValueError, KeyError, ImportError, RuntimeError) as exc:
            raise UsageError(f"--backend {backend}: {one_line(exc)}") from None

    def _lookup(self, name: str, what: str = "job or array", session: Session | None = None) -> Job | Array:
        """The newest job or array called ``name`` in ``session`` (default: in every session shown)."""
        found = self.sessions.lookup(name, session)
        if found is not None:
            return found
        sessions = [session] if session is not None else self.sessions.all()
        known = actions.known_names([h for s in sessions for h in s.jobs()])
        raise UsageError(f"no {what} named {name!r}" + (f" (known: {known})" if known else "")) from None

    def _user_ns(self) -> dict[str, Any]:
        """The notebook's namespace (magics always run inside a shell)."""
        assert self.shell is not None
        return self.shell.user_ns  # type: ignore[no-any-return]

    # -- %%submit ---------------------------------------------------------------------------
    @magic_arguments()
    @argument("--name", "-n", help="Name of the job or array (letters, digits, . _ + = -); default: the command's first word.")
    @argument("--array", "-a", metavar="SPEC", help="Run the body as an array: 10, 0-99, 0-99:2, 1,5,7 or 0-99%%4.")
    @argument("--over", metavar="EXPR", help="Sweep: a dict of lists (grid), a list of dicts or a DataFrame, "
              "evaluated in the notebook; values reach the body as {{param}} (shell-quoted) and as $param.")
    @argument("--cores", "-c", type=int, default=1, help="Cores per step (default 1).")
    @argument("--memory", "-m", help="Memory per step: 512M, 2G, or MB.")
    @argument("--runtime", "-t", help="Runtime limit per step: 90s, 10m, 2h or H:MM:SS.")
    @argument("--after", nargs="+", action="extend", default=[], metavar="NAME",
              help="Start only after these jobs/arrays are DONE (skipped if one fails).")
    @argument("--max-attempts", type=int, default=1, metavar="K",
              help="Re-run a failed step up to K attempts in all (TIMEOUT/OUT_OF_MEMORY scale resources).")
    @argument("--max-concurrent", type=int, metavar="N", help="Run at most N steps of the array at once.")
    @argument("--steps-per-task", type=int, metavar="K", help="Slurm: run K consecutive steps in one array task.")
    @argument("--gpus", "-g", type=int, help="GPUs per step: each its own on this machine (CUDA_VISIBLE_DEVICES); "
              "Slurm: GRES gpu:N.")
    @argument("--account", help="Slurm: account to charge.")
    @argument("--qos", help="Slurm: quality of service.")
    @argument("--constraint", help="Slurm: node features, e.g. 'a100|h100'.")
    @argument("--reservation", help="Slurm: reservation to run in.")
    @argument("--exclusive", action="store_true", help="Slurm: whole nodes only.")
    @argument("--requeue", action="store_true", help="Slurm: let Slurm requeue a preempted step.")
    @argument("--signal", metavar="SIG", help="Slurm: warning signal before the time limit, e.g. B:USR1@60.")
    @argument("--sbatch", action="append", metavar="OPTION", help="Slurm: an extra #SBATCH line (repeatable).")
    @argument("--python", action="store_true", help="The body is Python, run by this kernel's interpreter; "
              "the value of its last expression is the job's result().")
    @argument("--in", dest="inputs", metavar="NAMES", help="With --python: notebook variables sent with the cell, "
              "e.g. --in df,model (pickled once for every step).")
    @argument("--backend", "-b", metavar="B", help="Backend for this submission (default: the session's).")
    @argument("--wait", "-w", action="store_true", help="Block until every step is finished, then show it.")
    @argument("--out", "-o", metavar="VAR", help="Store the Job/Array handle in this notebook variable.")
    @argument("--quiet", "-q", action="store_true", help="Show no dashboard.")
    @cell_magic
    def submit(self, line: str, cell: str) -> None:
        """Run the cell body as a batch job or array; show a live dashboard.

        The body is a shell script (``/bin/sh``), or Python with ``--python``. What it prints goes to
        its log files (see the dashboard's log viewer or ``%nbdist logs NAME``), never to the notebook.
        Array steps see their step id as ``$NBDIST_STEP`` and ``{{step}}``; with ``--over`` each
        parameter is ``{{name}}`` (shell-quoted; with ``--python`` the Python value itself) and ``$name``.
        With ``--python`` the value of the body's last expression is the job's ``result()``, and
        ``--in df,model`` sends those notebook variables with it.

        Examples::

            %%submit --name hello
            echo "hello from $(hostname)"

            %%submit --name squares --array 0-9 --cores 1 --memory 512M --runtime 5m
            echo $(( NBDIST_STEP * NBDIST_STEP ))

            %%submit --name sweep --over "{'lr': [0.1, 0.01], 'depth': [2, 4]}" --out sweep
            python train.py --lr {{lr}} --depth {{depth}}

            %%submit --name report --after sweep --python --wait
            import platform; print(platform.python_version())

            %%submit --name flaky --array 0-99%4 --runtime 10m --max-attempts 3 --quiet
            ./simulate.sh --seed {{step}}

            %%submit --name tiny --array 0-9999 --steps-per-task 50 --backend slurm
            echo $(( NBDIST_STEP * 2 ))

            %%submit --name train --gpus 1 --account proj --signal B:USR1@60 --runtime 2h --backend slurm
            python train.py --checkpoint-on-usr1
        """
        args = self._parse(self.submit, line)
        request = self._check_submit(args, cell)
        inputs = self._inputs(args)
        session = self.session(args.backend)
        after = [self._lookup(name, "job or array for --after", session) for name in args.after]
        try:
            handle: Job | Array
            if args.python:
                options = {key: value for key, value in request["options"].items() if key != "python"}
                handle = submit_cell(session, Options(**options, after=after, max_concurrent=request["max_concurrent"]),
                                     cell, inputs, steps=request["steps"], over=request["over"])
            elif request["steps"] is None and request["over"] is None:
                handle = session.submit(request["command"], after=after, **request["options"])
            else:
                handle = session.array(
                    request["command"], steps=request["steps"], over=request["over"],
                    max_concurrent=request["max_concurrent"], after=after, **request["options"],
                )
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(one_line(exc)) from None
        if args.out:
            self._user_ns()[args.out] = handle
        if args.wait:
            self._wait([handle], None, dashboards=not args.quiet, show_end=True)
        elif not args.quiet:
            from .widget import show

            display(show(handle, session=session))

    def _inputs(self, args: Any) -> dict[str, Any]:
        """The notebook variables named by ``--in`` (each must exist)."""
        try:
            return cell_inputs(args.inputs, self._user_ns(), python=args.python)
        except ValueError as exc:
            raise UsageError(one_line(exc)) from None

    def _parse(self, magic: Any, line: str) -> Any:
        return magic.parser.parse_args(split_words(line))

    def _check_submit(self, args: Any, cell: str) -> dict[str, Any]:
        """Every check on a ``%%submit`` line and body; returns the API arguments."""
        if not cell or not cell.strip():
            raise UsageError("%%submit needs a body: the shell script (or Python with --python) to run")
        if args.array is not None and args.over is not None:
            raise UsageError("use --array or --over, not both (--over already makes one step per parameter set)")
        if args.name is not None and not args.name.strip():
            raise UsageError("--name needs a name (the core checks its characters)")
        if args.cores < 1:
            raise UsageError(f"--cores {args.cores}: must be at least 1")
        if args.max_attempts < 1:
            raise UsageError(f"--max-attempts {args.max_attempts}: must be at least 1")
        if args.max_concurrent is not None and args.max_concurrent < 1:
            raise UsageError(f"--max-concurrent {args.max_concurrent}: must be at least 1")
        if args.max_concurrent is not None and args.array is None and args.over is None:
            raise UsageError("--max-concurrent applies to arrays: add --array or --over")
        if args.steps_per_task is not None and (args.steps_per_task < 1 or (args.array is None and args.over is None)):
            raise UsageError(f"--steps-per-task {args.steps_per_task}: a positive number of steps, for an array")
        if args.gpus is not None and args.gpus < 0:
            raise UsageError(f"--gpus {args.gpus}: must be 0 or more")
        if args.out is not None and (not args.out.isidentifier() or keyword.iskeyword(args.out)):
            raise UsageError(f"--out {args.out!r}: not a Python variable name")
        steps, max_concurrent = (None, args.max_concurrent)
        if args.array is not None:
            steps, limit = array_spec(args.array)
            if limit is not None and max_concurrent is not None and limit != max_concurrent:
                raise UsageError("--array %N and --max-concurrent disagree; give one of them")
            max_concurrent = limit or max_concurrent
        over = None
        if steps is None and args.over is None and placeholders(cell):
            found = "{{" + placeholders(cell)[0] + "}}"
            raise UsageError(f"the body uses {found} but there is no --array or --over to fill it")
        if args.over is not None:
            value = self._eval_over(args.over)
            try:  # the core's own check of placeholders against parameters; nothing is run
                # Its parameters, as a list of dicts: a generator in the expression is read once, here.
                over = expand(cell, over=value).params
            except (ValueError, TypeError) as exc:
                raise UsageError(one_line(exc)) from None
        elif steps is not None:
            try:
                expand(cell, steps=steps)
            except (ValueError, TypeError) as exc:
                raise UsageError(one_line(exc)) from None
        # Memory, runtime, cores and the name are checked by the core before anything is submitted.
        options: dict[str, Any] = {"name": args.name, "cores": args.cores, "max_attempts": args.max_attempts,
                                   "python": args.python}
        if args.memory is not None:
            options["memory"] = args.memory
        if args.runtime is not None:
            options["runtime"] = args.runtime
        # Site options are checked by the core (and refused by a backend that cannot honour them).
        for key in ("steps_per_task", "gpus", "account", "qos", "constraint", "reservation", "signal", "sbatch"):
            if getattr(args, key) is not None:
                options[key] = getattr(args, key)
        options.update({key: True for key in ("exclusive", "requeue") if getattr(args, key)})
        return {"command": cell, "steps": steps, "over": over, "max_concurrent": max_concurrent,
                "options": options}

    def _eval_over(self, expr: str) -> Any:
        expr = expr.strip()
        if not expr:
            raise UsageError("--over needs an expression, e.g. --over grid or --over \"{'x': [1, 2]}\"")
        try:
            return eval(expr, self._user_ns())
        except Exception as exc:  # noqa: BLE001 - anything the expression raises is the user's error, shown in one line
            raise UsageError(f"--over {expr}: {type(exc).__name__}: {one_line(exc)}") from None

    # -- %nbdist ----------------------------------------------------------------------------
    @line_magic
    def nbdist(self, line: str) -> None:
        """Inspect and control jobs and arrays.

        Sub-commands::

            %nbdist status [NAME] [--all] [--where P=V ...]
                                              the registry's unfinished and newest jobs, newest first (all
                                              with --all); or one, as a table (--where: steps with these values)
            %nbdist show [NAME]               the live dashboard of a job or array (none: every job)
            %nbdist show --side [NAME]        every job in a JupyterLab side panel (and NAME's dashboard there)
            %nbdist logs NAME[:STEP] [--err] [--tail N]
                                              a step's stdout (stderr with --err)
            %nbdist kill NAME[:STEP]          kill a job, an array, or one step of it
            %nbdist retry NAME [--scale F] [--killed]
                                              re-run FAILED/TIMEOUT/OUT_OF_MEMORY/LOST steps as submitted
                                              (resources × F for TIMEOUT/OUT_OF_MEMORY); KILLED/SKIPPED too
                                              with --killed. New code: f.map(ARRAY.failed_items())
            %nbdist wait [NAME ...] [--timeout S] [--quiet]
                                              block until finished (every job when no NAME), live dashboards
                                              shown meanwhile (not with --quiet); after S seconds, say which
                                              still run; an interrupt stops the wait, not the work
            %nbdist forget NAME [NAME ...]    remove finished jobs from the registry and delete their
                                              logs and scripts (never a job that still runs)
            %nbdist attach [ROOT]             reconnect to the jobs of an earlier kernel (default .nbdist)
            %nbdist backend [NAME] [--parallelism N]
                                              show or switch the backend of the magics' session

        Examples::

            %nbdist status
            %nbdist logs squares:3 --tail 20
            %nbdist retry sweep --scale 2
        """
        words = split_words(line)
        if not words or words[0] == "help" or {"-h", "--help"} & set(words):  # the sub-commands, as %nbdist? lists them
            sys.stdout.write(inspect.cleandoc(self.nbdist.__doc__ or "") + "\n")
            return
        args = self._nbdist_parser.parse_args(words)
        getattr(self, f"_cmd_{args.command}")(args)

    def _cmd_status(self, args: Any) -> None:
        self._show_status(args.name, all_jobs=args.all, where=args.where)

    def _show_status(self, name: str | None, all_jobs: bool = False, where: Sequence[str] = ()) -> None:
        """One job's table; or, as ``nbdist status`` does, the registry's jobs: unfinished and newest
        finished ones (every one with ``--all``), newest first."""
        from . import render

        if name:
            handle = self._lookup(name)
            try:
                snapshot = handle.session.snapshot(handle, where=actions.parse_where(where))
            except ValueError as exc:
                raise UsageError(f"status {name}: {one_line(exc)}") from None
            display({"text/plain": render.snapshot_text(snapshot), "text/html": render.snapshot_html(snapshot)},
                    raw=True)
            return
        if where:
            raise UsageError("--where needs a NAME: %nbdist status NAME --where lr=0.1")
        for session in self.sessions.all():  # the registry's jobs, other kernels' too (read-only)
            if not session.closed:
                session.attach(take_over=False)
        snapshots = [handle.session.snapshot(handle, page_size=1, tail_lines=0) for handle in self.sessions.handles()]
        shown, more = render.status_selection(snapshots, all_jobs=all_jobs)
        empty = "no jobs yet: submit one with %%submit"
        display({"text/plain": render.status_text(shown, empty=empty, more=more),
                 "text/html": render.status_html(shown, empty=empty, more=more)}, raw=True)

    def _cmd_show(self, args: Any) -> None:
        from .widget import show

        if args.side:  # every job, in a side panel that stays while the notebook scrolls
            from .sidepanel import show_side

            if args.name is not None:
                self._lookup(args.name)  # an unknown name is one line, before any panel opens
            panel = show_side(self.sessions.all())
            if args.name is not None:
                getattr(panel, "overview", panel).open(str(self._lookup(args.name).id))
            display(panel)
            return
        if args.name is None:  # every job of the magics' sessions' registries
            from .overview import show_all

            display(show_all(self.sessions.all()))
            return
        handle = self._lookup(args.name)
        display(show(handle, session=handle.session))

    def _cmd_logs(self, args: Any) -> None:
        if args.tail is not None and args.tail < 1:
            raise UsageError(f"--tail {args.tail}: must be at least 1")
        job = self._target(args.target, need_step=True)
        text = (job.stderr if args.err else job.stdout)(tail=args.tail)
        sys.stdout.write(text if not text or text.endswith("\n") else text + "\n")

    def _cmd_kill(self, args: Any) -> None:
        sys.stdout.write(actions.kill(self._target(args.target)) + "\n")

    def _cmd_retry(self, args: Any) -> None:
        if args.scale is not None and not args.scale > 0:
            raise UsageError(f"--scale {args.scale}: must be positive")
        handle = self._target(args.target)
        try:
            line = actions.retry(handle, args.scale, killed=args.killed)
        except (ValueError, RuntimeError) as exc:
            raise UsageError(f"retry {args.target}: {one_line(exc)}") from None
        sys.stdout.write(line + "\n")

    def _cmd_forget(self, args: Any) -> None:
        for name in args.names:
            handle = self._lookup(name)
            try:
                removed = handle.session.forget(handle)
            except ValueError as exc:
                raise UsageError(f"forget {name}: {one_line(exc)}") from None
            sys.stdout.write(f"forgot {handle.name} (id {handle.id}): {len(removed)} files removed\n")

    def _cmd_wait(self, args: Any) -> None:
        if args.timeout is not None and not args.timeout > 0:
            raise UsageError(f"--timeout {args.timeout}: must be positive")
        handles = [self._lookup(name) for name in args.names] if args.names else self.sessions.handles()
        self._wait(handles, args.timeout, dashboards=not args.quiet)

    def _wait(self, handles: Sequence[Job | Array], timeout: float | None, dashboards: bool,
              show_end: bool = False) -> None:
        """Block until every handle ends, past :data:`LIVE_AFTER_SECONDS` with the live dashboards of those
        still running (as ``tqdm.notebook``); ``show_end``: every handle's dashboard, the final one if it ended
        in a blink. An interrupt stops the wait, not the work, and says so in one line."""
        from .widget import show

        deadline = None if timeout is None else time.monotonic() + timeout
        blink = time.monotonic() + min(LIVE_AFTER_SECONDS, timeout or LIVE_AFTER_SECONDS)
        views: dict[int, Any] = {}
        try:
            for phase_end in (blink, deadline):
                for handle in handles:
                    with quiet_waits():  # this wait draws its own dashboards, below
                        handle.wait(timeout=None if phase_end is None else max(0.0, phase_end - time.monotonic()))
                if dashboards and phase_end == blink:  # the blink is over: show what still runs, live
                    views = {i: show(h, session=h.session) for i, h in enumerate(handles) if not h.done()}
                    for view in views.values():
                        display(view)
            for view in views.values():  # the end drawn now (and in the saved output), not at a later refresh
                getattr(view, "tick", lambda: None)()
        except KeyboardInterrupt:
            running = [handle for handle in handles if not handle.done()]
            names = ", ".join(handle.name for handle in running) or "nothing"
            kill = f"; %nbdist kill {running[0].name} stops it" if running else ""
            raise UsageError(f"stopped waiting; {names} goes on running{kill}") from None
        for index, handle in enumerate(handles):
            if dashboards and show_end and index not in views:
                display(show(handle, session=handle.session))
        running = [handle.name for handle in handles if not handle.done()]
        if running:
            sys.stdout.write(f"still running after {timeout:g}s: {', '.join(running)}\n")

    def _cmd_attach(self, args: Any) -> None:
        try:
            self.sessions.attach(args.root)
        except (ValueError, OSError, KeyError) as exc:
            raise UsageError(f"attach {args.root}: {one_line(exc)}") from None
        self._show_status(None)

    def _cmd_backend(self, args: Any) -> None:
        if args.parallelism is not None and args.parallelism < 1:
            raise UsageError(f"--parallelism {args.parallelism}: must be at least 1")
        if args.name is None:
            if args.parallelism is not None:
                raise UsageError("--parallelism needs a backend name, e.g. %nbdist backend multiprocess --parallelism 4")
            sys.stdout.write(f"{self.sessions.current().backend_name}\n")
            return
        try:
            self.sessions.switch_backend(args.name, args.parallelism)
        except (ValueError, KeyError, ImportError, RuntimeError) as exc:
            raise UsageError(f"backend {args.name}: {one_line(exc)}") from None

    def _target(self, target: str, need_step: bool = False) -> Job | Array:
        """The job, array or array step named by ``NAME[:STEP]``."""
        name, step = split_step(target)
        handle = self._lookup(name)
        if step is None:
            if need_step and isinstance(handle, Array):
                raise UsageError(f"{name!r} is an array: name a step, e.g. {name}:0")
            return handle
        if not isinstance(handle, Array):  # a single Job: its only step is itself
            return handle
        try:
            return handle.step(step)
        except KeyError:
            raise UsageError(f"{name!r} has no step {step}") from None


def _build_nbdist_parser() -> MagicArgumentParser:
    """The ``%nbdist`` sub-command parser (argparse errors become UsageError)."""
    parser = MagicArgumentParser(prog="%nbdist")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    status = commands.add_parser("status", help="jobs and arrays and their counts")
    status.add_argument("name", nargs="?")
    status.add_argument("--all", action="store_true")
    status.add_argument("--where", nargs="+", default=[], metavar="NAME=VALUE")
    show = commands.add_parser("show", help="the dashboard of a job or array (none: every job)")
    show.add_argument("name", nargs="?")
    show.add_argument("--side", action="store_true", help="every job in a JupyterLab side panel")
    logs = commands.add_parser("logs", help="a step's log")
    logs.add_argument("target", metavar="NAME[:STEP]")
    logs.add_argument("--err", action="store_true")
    logs.add_argument("--tail", type=int)
    commands.add_parser("kill", help="kill a job, array or step").add_argument("target", metavar="NAME[:STEP]")
    retry = commands.add_parser("retry", help="re-run failed steps as submitted")
    retry.add_argument("target", metavar="NAME[:STEP]")
    retry.add_argument("--scale", type=float)
    retry.add_argument("--killed", action="store_true", help="KILLED and SKIPPED steps too")
    commands.add_parser("forget", help="remove finished jobs and their files").add_argument("names", nargs="+",
                                                                                              metavar="NAME")
    wait = commands.add_parser("wait", help="block until finished")
    wait.add_argument("names", nargs="*", metavar="NAME")
    wait.add_argument("--timeout", type=float)
    wait.add_argument("--quiet", "-q", action="store_true")
    commands.add_parser("attach", help="reconnect to a registry").add_argument("root", nargs="?", default=".nbdist")
    backend = commands.add_parser("backend", help="show or switch the backend")
    backend.add_argument("name", nargs="?")
    backend.add_argument("--parallelism", type=int)
    return parser


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbdist``: register ``%%submit`` and ``%nbdist``; a handle shown as a cell's value and a slow
    ``job.wait()`` show its dashboard."""
    ipython.register_magics(NbdistMagics)
    register_display(ipython)
