"""Kill and retry as the magics and the CLI do them: the public API call, then one line saying what it did.

Both faces print the same line, so ``%nbdist kill runners`` and ``nbdist kill runners`` read alike:
what was killed or retried (how many, which steps), or that nothing matched and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..session import Array, Job
from ..session.state import RETRYABLE_STATES, State
from . import render

__all__ = ["kill", "known_names", "parse_where", "retry", "retry_states"]

# Step ids listed in a line; past this many, the count and the first ones.
MAX_LISTED_STEPS = 10


def parse_where(words: Sequence[str]) -> dict[str, str]:
    """``["lr=0.1", "depth=2"]`` → ``{"lr": "0.1", "depth": "2"}`` (the snapshot checks the names)."""
    where = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise ValueError(f"--where {word!r}: write NAME=VALUE, e.g. lr=0.1")
        where[key] = value
    return where


def known_names(handles: Sequence[Job | Array], limit: int = 20) -> str:
    """Distinct names, newest first, ``…`` when some are left out (the hint of an unknown name)."""
    newest = sorted(handles, key=lambda handle: -int(handle.id) if str(handle.id).isdigit() else 0)
    names = list(dict.fromkeys(str(handle.name or handle.id) for handle in newest))
    return ", ".join(names[:limit]) + (", …" if len(names) > limit else "")


def retry_states(killed: bool) -> frozenset[State]:
    """What a retry re-runs: steps that failed by themselves; with ``killed``, KILLED and SKIPPED ones too."""
    return RETRYABLE_STATES | ({State.KILLED, State.SKIPPED} if killed else set())


def _label(handle: Job | Array) -> str:
    return f"{handle.name} (id {handle.id})"


def kill(handle: Job | Array) -> str:
    """Kill a job, an array or one step; the line saying what was killed."""
    if isinstance(handle, Array):
        live = [job.step for job in handle if not job.done()]
        if not handle.cancel():
            return f"nothing to kill: every step of {_label(handle)} had ended ({_counts(handle)})"
        where = "" if handle.owned else " (asked the kernel that runs it)"
        return f"killed {len(live)} of {len(handle)} steps of {_label(handle)}{where}: {_steps(live)}"
    before = handle.state
    if not handle.cancel():
        return f"nothing to kill: {_label(handle)} had ended ({before.value})"
    where = "" if handle.owned else " (asked the kernel that runs it)"
    return f"killed {_label(handle)}{where}, which was {before.value}"


def retry(handle: Job | Array, scale: Any = None, killed: bool = False) -> str:
    """Re-run what failed (FAILED, TIMEOUT, OUT_OF_MEMORY, LOST; KILLED and SKIPPED with ``killed``);
    the line saying what is retried, or why nothing is."""
    states = retry_states(killed)
    options = {} if scale is None else {"scale": scale}
    if isinstance(handle, Array):
        failed = handle.failed()
        chosen = [job for job in failed if job.state in states]
        if not chosen:
            return f"nothing to retry in {_label(handle)}: no {_names(states)} step ({_counts(handle)}){_hint(failed, killed)}"
        hint = _hint(failed, killed)  # before retrying: the states change
        if len(chosen) == len(failed):
            handle.retry_failed(**options)  # one call for all
        else:
            for job in chosen:
                job.retry(**options)
        steps = [job.step for job in chosen]
        return f"retrying {len(chosen)} of {len(handle)} steps of {_label(handle)}: {_steps(steps)}{hint}"
    state = handle.state
    if state not in states:
        hint = _hint([handle], killed) if state.is_failure else ""
        return f"nothing to retry: {_label(handle)} is {state.value}{hint}"
    handle.retry(**options)
    return f"retrying {_label(handle)} (after {state.value}): attempt {len(handle.attempts)}"


def _steps(steps: list[Any]) -> str:
    return render.steps_label([step for step in steps if step is not None], MAX_LISTED_STEPS)


def _counts(handle: Array) -> str:
    return ", ".join(f"{name} {n}" for name, n in render.nonzero_counts(handle.counts()))


def _names(states: frozenset[State]) -> str:
    return "/".join(state.value for state in State if state in states)


def _hint(failed: list[Job], killed: bool) -> str:
    """``"; 2 KILLED left alone (--killed retries them too)"`` when a user's kill or a skip was left out."""
    left = [] if killed else [job for job in failed if job.state not in RETRYABLE_STATES]
    if not left:
        return ""
    states = sorted({job.state.value for job in left})
    return f"; {len(left)} {'/'.join(states)} left alone (--killed retries them too)"
