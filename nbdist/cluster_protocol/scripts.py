"""Python scripts as tasks: the one command form a backend may run in a warm interpreter.

A command made by :func:`script_command` runs ``SCRIPT ARGS…`` with ``PYTHON``, exactly as the
script's own ``#!PYTHON`` line would: through ``/bin/sh`` it is just that. A backend whose worker
process is that same interpreter, and already has the script's imports loaded, may instead fork
itself and run the script there (``runpy``), which saves the interpreter's start and the imports —
for Jobmon's ``worker_node_entry_point`` about a second of CPU per task. The form is explicit (a
marker variable first), so no user's command is ever taken for one.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["ScriptCommand", "parse_script_command", "script_command", "shebang_interpreter"]

# Set in the task's environment too (harmless): what makes the form unmistakable.
_MARKER = "NBDIST_PYTHON_SCRIPT=1"


class ScriptCommand(NamedTuple):
    python: str
    script: str
    args: tuple[str, ...]


def script_command(python: str, script: str, args: Sequence[str]) -> str:
    """The shell command that runs ``script`` with ``args`` by ``python`` (the one form parsed below)."""
    return f"{_MARKER} exec " + " ".join(shlex.quote(word) for word in [python, script, *args])


def parse_script_command(command: str) -> ScriptCommand | None:
    """Interpreter, script and arguments of a command that is exactly a :func:`script_command`; else None."""
    if not command.startswith(f"{_MARKER} exec "):
        return None
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    if len(words) < 4 or words[:2] != [_MARKER, "exec"]:
        return None
    parsed = ScriptCommand(words[2], words[3], tuple(words[4:]))
    if script_command(parsed.python, parsed.script, parsed.args) != command:
        return None  # same words, other spelling: not the one form
    return parsed


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
