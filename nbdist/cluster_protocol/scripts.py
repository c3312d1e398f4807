"""Python scripts as tasks: the command that runs a script with a given interpreter.

A command made by :func:`script_command` runs ``SCRIPT ARGS…`` with ``PYTHON``, exactly as the
script's own ``#!PYTHON`` line would, through ``/bin/sh`` like any command (Jobmon's
``worker_node_entry_point``, when Jobmon drives nbdist). No backend parses it back: a script runs cold,
in a fresh interpreter of its own. (Jobmon's worker starts threads and sets up logging and signal
handlers for its whole process, so it is not run in a warm worker, which would have to be retired
after every script anyway.)
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

__all__ = ["script_command", "shebang_interpreter"]


def script_command(python: str, script: str, args: Sequence[str]) -> str:
    """The shell command that runs ``script`` with ``args`` by ``python`` (``exec``: no shell left in between)."""
    return "exec " + " ".join(shlex.quote(word) for word in [python, script, *args])


def shebang_interpreter(script: str) -> str | None:
    """The interpreter a script's ``#!`` line names, when that line is exactly ``#!/path`` (no arguments)."""
    try:
        with open(script, "rb") as handle:
            first = handle.readline(4096)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    return words[0] if len(words) == 1 else None
