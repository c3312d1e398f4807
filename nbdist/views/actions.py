"""Kill and retry as the magics and the CLI do them: the public API call, then one line saying what it did.

Both faces print the same line, so ``%nbdist kill runners`` and ``nbdist kill runners`` read alike:
what was killed or retried (how many, which steps), or that nothing matched and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..session import Array, Job, State, choose_retry, retry_states
from . import render

__all__ = ["kill", "known_names", "parse_where", "retry"]

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


def _label(handle: Job | Array) -> str:
    return f"{handle.name} (id {handle.id})"


def kill(handle: Job | Array) -> str:
    """Kill a job, an array or one step; the line saying what was killed."""
    if isinstance(handle, Array):
        live = [job.step for job in handle if not job.done()]
        if not live or not handle.cancel():  # cancel() of a cancelled Future is True, as in concurrent.futures
            return f"nothing to kill: every step of {_label(handle)} had ended ({_counts(handle)})"
        where = "" if handle.owned else " (asked the kernel that runs it)"
        return f"killed {len(live)} of {len(handle)} steps of {_label(handle)}{where}: {_steps(live)}"
    before = handle.state
    if before.is_terminal or not handle.cancel():
        return f"nothing to kill: {_label(handle)} had ended ({before.value})"
    where = "" if handle.owned else " (asked the kernel that runs it)"
    return f"killed {_label(handle)}{where}, which was {before.value}"


def retry(handle: Job | Array, scale: Any = None, killed: bool = False) -> str:
    """Re-run what the session's retry rule chooses (``nbdist.session.choose_retry``: KILLED and SKIPPED
    only with ``killed``); the line saying what is retried, or why nothing is."""
    if isinstance(handle, Array):
        choice = choose_retry(handle.failed(), killed)  # for the line; retry_failed applies the same rule
        if not choice.chosen:
            return (f"nothing to retry in {_label(handle)}: no {_names(retry_states(killed))} step "
                    f"({_counts(handle)}){_hint(choice.spared)}")
        steps = [job.step for job in handle.retry_failed(scale, killed=killed)]
        hint = _hint(choice.spared)
        return f"retrying {len(steps)} of {len(handle)} steps of {_label(handle)}: {_steps(steps)}{hint}"
    state = handle.state
    choice = choose_retry([handle], killed)
    if not choice.chosen:
        return f"nothing to retry: {_label(handle)} is {state.value}{_hint(choice.spared)}"
    handle.retry(scale)
    return f"retrying {_label(handle)} (after {state.value}): attempt {len(handle.attempts)}"


def _steps(steps: list[Any]) -> str:
    return render.steps_label([step for step in steps if step is not None], MAX_LISTED_STEPS)


def _counts(handle: Array) -> str:
    return ", ".join(f"{name} {n}" for name, n in render.nonzero_counts(handle.counts()))


def _names(states: frozenset[State]) -> str:
    return "/".join(state.value for state in State if state in states)


def _hint(spared: list[Job]) -> str:
    """``"; 2 KILLED left alone (--killed retries them too)"`` when a user's kill or a skip was left out."""
    if not spared:
        return ""
    states = sorted({job.state.value for job in spared})
    return f"; {len(spared)} {'/'.join(states)} left alone (--killed retries them too)"
