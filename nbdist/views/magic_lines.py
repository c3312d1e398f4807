"""Reading a magic's line: words, step targets and array specs, with every error a one-line UsageError."""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from IPython.core.error import UsageError

from ..session import parse_array_spec

__all__ = ["array_spec", "one_line", "split_step", "split_words"]


def array_spec(spec: str) -> tuple[Sequence[int], int | None]:
    """Step ids and the optional ``%N`` concurrency limit of a Slurm-style array spec.

    ``10`` → steps 0..9; ``0-99``; ``0-99:2`` (every second step); ``1,5,7``; mixes like ``0-9,20``;
    ``0-99%4`` runs at most 4 steps at once; at most ``sweep.MAX_ARRAY_STEPS`` steps. The grammar and
    the cap are the core's (:func:`nbdist.session.sweep.parse_array_spec`); this turns its errors into a
    UsageError.
    """
    if not spec.strip():
        raise UsageError("--array needs a spec, e.g. 10, 0-99, 0-99:2 or 1,5,7")
    try:
        steps, limit = parse_array_spec(spec)
    except ValueError as exc:
        raise UsageError(f"--array: {one_line(exc)}") from None
    if len(set(steps)) != len(steps):
        raise UsageError(f"--array {spec!r}: a step is listed twice")
    return steps, limit


def one_line(exc: BaseException) -> str:
    """An exception as one line for a UsageError."""
    text = str(exc).strip().splitlines()
    detail = text[0] if text else ""
    if isinstance(exc, KeyError) and detail.startswith(("'", '"')):
        detail = detail.strip("'\"")
    return detail or type(exc).__name__


def split_words(line: str) -> list[str]:
    """Shell-like words of a magic line, quotes removed (``--over "{'x': [1, 2]}"`` is one word)."""
    try:
        return shlex.split(line)
    except ValueError as exc:  # "No closing quotation" and the like
        raise UsageError(f"cannot read the line: {exc}") from None


def split_step(target: str) -> tuple[str, int | None]:
    """``"sweep:3"`` → ``("sweep", 3)``; ``"sweep"`` → ``("sweep", None)``."""
    name, sep, step = target.rpartition(":")
    if not sep:
        return target, None
    if not step.isdigit():
        raise UsageError(f"{target!r}: the step after ':' must be a number")
    return name, int(step)
