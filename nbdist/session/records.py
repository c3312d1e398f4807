"""The record behind a job or array: its state in columns, changed by the session only.

A :class:`JobRecord` holds the state of one submitted job or array in columns (one list per field,
one entry per step), so a 100,000-step array costs a few lists, not 100,000 objects; per-state index
sets keep the counts current without scanning. Records know no handles, no backend and no view.
"""

from __future__ import annotations

import os
import re
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from ..cluster_protocol.naming import log_stem
from ..cluster_protocol.pycall import PythonCall
from .registry import StepRecord
from .state import TERMINAL_STATES, State

if TYPE_CHECKING:
    from .sweep import Sweep

__all__ = ["DEFAULT_SCALES", "STATE_OF_CODE", "Attempt", "JobRecord", "LogPaths", "Request", "job_name"]

# Resources are scaled by these factors for a retry after TIMEOUT (runtime) or OUT_OF_MEMORY (memory).
DEFAULT_SCALES = {"runtime": 1.5, "memory": 1.5}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]{0,99}$")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_STATE_CODES = {state: code for code, state in enumerate(State)}
STATE_OF_CODE = tuple(State)  # ended_log entry % 16 → the State the attempt ended in


class LogPaths(NamedTuple):
    """The stdout and stderr files of one attempt."""

    stdout: str
    stderr: str


@dataclass(frozen=True)
class Attempt:
    """One attempt of a job or step (a retry is a new attempt with its own logs and exit info)."""

    number: int
    distributor_id: str | None
    state: State
    exit_code: int | None
    message: str | None
    usage: dict[str, Any]
    log_paths: LogPaths | None
    resources: dict[str, Any]


class JobRecord:
    """The columns of one job (one step, index 0) or array (``n`` steps); changed by the session only."""

    def __init__(self, job_id: int, name: str, kind: str, command: str, backend: str, n: int,
                 steps: Sequence[int] | None, initial: State, created: float) -> None:
        self.id = job_id
        self.name = name
        self.kind = kind
        self.command = command
        self.call: PythonCall | None = None  # a Python call (command is then its command form), as data
        self.backend = backend
        self.n = n
        self.steps = steps  # user step ids; None for a plain job
        self.created = created
        self.ended: float | None = None
        self.sweep: Sweep | None = None
        self.resources: dict[str, Any] = {}  # cores, memory, runtime, max_concurrent (as given)
        self._base_limits: dict[str, Any] | None = None
        self._log_prefix: str | None = None  # {log_dir}/{log_stem(name)}
        self.env: dict[str, str] = {}
        self.cwd: str | None = None
        self.max_attempts = 1
        self.scales: dict[str, float] = {}
        self.log_dir = ""
        self.script_dir: str | None = None
        self.script_chunk = 1  # steps per script file (see sweep.write_scripts)
        self.after: list[tuple[JobRecord, int | None]] = []
        self.dependents: list[JobRecord] = []
        self.after_ids: list[tuple[int, int | None]] = []  # as stored, until attach links the records
        self.queue_cursor = 0  # no step below this index is QUEUED (see Poller.window)
        self.has_rows = False  # some step has (or is about to have) a row in the registry's steps table
        self.refreshed: float | None = None  # last read from the registry (another session's job)
        self.version = 0  # grows with every change of a step: a view's cheap "anything new?"
        self.owned = True
        self.session_id: str | None = None
        self.states: list[State] = [initial] * n
        self.dids: list[str | None] = [None] * n
        self.attempts: list[int] = [1] * n
        self.exit_codes: list[int | None] = [None] * n
        self.messages: list[str | None] = [None] * n
        self.runtimes: list[float | None] = [None] * n
        self.rss: list[float | None] = [None] * n
        self.started: list[float | None] = [None] * n
        self.cpu: list[float | None] = [None] * n  # CPU seconds of the last finished attempt
        self.gpu: dict[int, dict[str, float]] = {}  # GPU figures of last finished attempts that held a GPU
        self.live_usage: dict[int, dict[str, Any]] = {}  # of running steps, as the backend last sampled it
        # Every attempt that ended, in order, as ``index * 16 + state code`` (see ended_state): the
        # snapshot's progress tracker (:mod:`.progress`) reads only what was added since it last looked.
        self.ended_log = array("q")
        self.tracker: Any = None  # that tracker, made by the first snapshot
        self.usage: dict[int, dict[str, Any]] = {}  # of finished attempts not yet written to the registry
        self.step_resources: dict[int, dict[str, Any]] = {}  # scaled by retries
        self.by_state: dict[State, set[int]] = {state: set() for state in State}
        self.by_state[initial] = set(range(n))
        self.n_terminal = n if initial in TERMINAL_STATES else 0
        # Failed steps grouped by "STATE: message", kept current by move(): snapshots never scan.
        self.failure_groups: dict[str, set[int]] = {}
        self._failure_key: dict[int, str] = {}
        # Retried steps of an array with max_concurrent that wait (QUEUED) until fewer than that many
        # of its steps are at the backend: index → message of the attempt, in arrival order.
        self.held: dict[int, str] = {}
        # Where the backend that ran a task says its logs are (None: the naming rule); set by the launcher.
        self.locate: Callable[[str], tuple[str, str]] | None = None

    # ----------------------------------------------------------------- changing (the session's lock held)
    def move(self, index: int, state: State) -> State:
        """Put a step in ``state`` keeping counts and failure groups current; return its old state."""
        self.version += 1
        old = self.states[index]
        if old is not state:
            self.by_state[old].discard(index)
            self.by_state[state].add(index)
            self.states[index] = state
            if state in TERMINAL_STATES or old is State.RUNNING:  # an attempt ended (a retry leaves RUNNING)
                self.ended_log.append(index * 16 + _STATE_CODES[state])
            if old is State.RUNNING:
                self.live_usage.pop(index, None)
            if state in TERMINAL_STATES and old not in TERMINAL_STATES:
                self.n_terminal += 1
            elif old in TERMINAL_STATES and state not in TERMINAL_STATES:
                self.n_terminal -= 1
        key = self._failure_key.pop(index, None)
        if key is not None:
            members = self.failure_groups[key]
            members.discard(index)
            if not members:
                del self.failure_groups[key]
        if state in TERMINAL_STATES and state is not State.DONE:
            key = f"{state.value}: {self.messages[index] or 'no message'}"
            self._failure_key[index] = key
            self.failure_groups.setdefault(key, set()).add(index)
        return old

    # ----------------------------------------------------------------- reading
    def step_id(self, index: int) -> int | None:
        """The user's step id of a position (None for a plain job)."""
        return None if self.steps is None else self.steps[index]

    def index_of(self, step: int) -> int:
        """The position of a user step id."""
        if self.steps is None:
            raise KeyError(f"{self.name} is a job, not an array")
        if isinstance(self.steps, range):
            if step in self.steps:
                return self.steps.index(step)
        else:
            try:
                return list(self.steps).index(step)
            except ValueError:
                pass
        raise KeyError(f"{self.name} has no step {step}")

    def counts(self) -> dict[str, int]:
        """Steps per state (every State present)."""
        return {state.value: len(self.by_state[state]) for state in State}

    @property
    def base_limits(self) -> dict[str, Any]:
        """cores, memory and runtime as requested (one shared dict: do not change it)."""
        limits = self._base_limits
        if limits is None:
            limits = self._base_limits = {key: self.resources[key] for key in ("cores", "memory", "runtime")
                                          if self.resources.get(key) is not None}
        return limits

    @property
    def max_concurrent(self) -> int | None:
        """At most this many steps of the array run at once (None: no limit)."""
        return self.resources.get("max_concurrent") if self.kind == "array" else None

    @property
    def at_backend(self) -> int:
        """Steps QUEUED or RUNNING at the backend (retries held back by max_concurrent are not)."""
        return len(self.by_state[State.QUEUED]) + len(self.by_state[State.RUNNING]) - len(self.held)

    @property
    def all_terminal(self) -> bool:
        """True when every step is in a terminal state."""
        return self.n_terminal == self.n

    @property
    def all_done(self) -> bool:
        """True when every step is DONE."""
        return len(self.by_state[State.DONE]) == self.n

    def overall_state(self) -> State:
        """One State for the whole record (for an array: a summary of its steps)."""
        if self.n == 1:
            return self.states[0]
        if not self.all_terminal:
            if self.by_state[State.RUNNING] or self.n_terminal:
                return State.RUNNING
            if self.by_state[State.QUEUED]:
                return State.QUEUED
            return State.PENDING
        for state in (State.DONE, State.SKIPPED, State.KILLED):
            if len(self.by_state[state]) == self.n:
                return state
        for state in (State.FAILED, State.TIMEOUT, State.OUT_OF_MEMORY, State.LOST, State.KILLED, State.SKIPPED):
            if self.by_state[state]:
                return state
        return State.FAILED

    def log_paths(self, index: int) -> LogPaths | None:
        """The log files of the current attempt of a step (None before it was submitted).

        The backend that ran it says where they are when it is live (a plugin may name them its own
        way); otherwise the naming rule of :mod:`nbdist.cluster_protocol.naming`.
        """
        did = self.dids[index]
        if did is None:
            return None
        if self.locate is not None:
            try:
                return LogPaths(*self.locate(did))
            except Exception:  # the backend forgot the task (or never ran it): the naming rule
                pass
        prefix = self._log_prefix
        if prefix is None:
            prefix = self._log_prefix = os.path.join(self.log_dir, log_stem(self.name))
        return LogPaths(f"{prefix}.o{did}", f"{prefix}.e{did}")

    def limits(self, index: int) -> dict[str, Any]:
        """The resources an attempt ran with (cores, memory, runtime; scaled for a retry)."""
        limits = self.step_resources.get(index)
        if limits is None:
            # One dict shared by every step without a retry: the registry encodes it once per write.
            return self.base_limits
        return {**self.base_limits, **limits}

    def step_record(self, index: int) -> StepRecord:
        """The step's registry row; its pending usage moves into the row (it is read back from there)."""
        usage = self.usage.pop(index, None)
        return StepRecord(
            job_id=self.id, idx=index, step=self.step_id(index), state=self.states[index].value,
            distributor_id=self.dids[index], attempt=self.attempts[index], exit_code=self.exit_codes[index],
            message=self.messages[index], runtime_s=self.runtimes[index], max_rss_mb=self.rss[index],
            usage=usage or None, started=self.started[index], ended=None, limits=self.step_resources.get(index),
        )

    def runtime_of(self, index: int, now: float | None = None) -> float | None:
        """Wall seconds of a finished step, or so far for a running one."""
        runtime = self.runtimes[index]
        if runtime is None and self.states[index] is State.RUNNING and self.started[index]:
            return (now or time.time()) - self.started[index]  # type: ignore[operator]
        return runtime

    def failure_text(self, index: int) -> str:
        """What went wrong with a step, and where to look."""
        label = self.name if self.steps is None else f"{self.name}:{self.step_id(index)}"
        state = self.states[index]
        text = f"{label} ended {state.value}: {self.messages[index] or 'no message'}"
        paths = self.log_paths(index)
        if paths is not None and state is not State.SKIPPED:
            text += f" (stderr: {paths.stderr})"
        return text


@dataclass
class Request:
    """A checked submission (``Session.submit``/``array``): everything a record is made of, nothing submitted yet."""

    kind: str
    command: str
    name: str
    sweep: Sweep | None
    resources: dict[str, Any]
    env: dict[str, str]
    cwd: str | None
    max_attempts: int
    scales: dict[str, float]
    after: list[tuple[JobRecord, int | None]]
    call: PythonCall | None = None  # a Python call: ``command`` is its command form


def job_name(name: str | None, command: str) -> str:
    """``name`` checked, or (None) one made from the command's first word."""
    if name is None:
        for line in command.splitlines():
            words = line.strip().split()
            while words[1:] and _ASSIGNMENT.match(words[0]):  # VAR=value python …: named after python
                words.pop(0)
            if words and not words[0].startswith("#"):
                word = os.path.basename(words[0])
                name = re.sub(r"[^A-Za-z0-9._+=-]", "_", word).lstrip("._+=-")[:40] or "job"
                break
        return name or "job"
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"name {name!r}: use letters, digits and ._+=- (starting with a letter or digit)")
    return name
