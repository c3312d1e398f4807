"""Array steps and parameter sweeps: ``steps=``, ``over=`` and ``{{param}}`` placeholders.

A sweep becomes one shell script per step (grouped in a few files, see :func:`write_scripts`): the
parameters as exported variables, then the command with every ``{{param}}`` replaced by the
``shlex.quote``-d value, so a value is always one word of
data (``x; rm -rf ~`` or ``$(touch pwned)`` are never run). Plain ``steps=`` arrays whose command
has no placeholder need no per-step file: ``NBDIST_STEP`` is computed in the shell from the
backend's array index (so a 100,000-step array writes no file; use ``$NBDIST_STEP`` there).
"""

from __future__ import annotations

import itertools
import json
import numbers
import os
import re
import shlex
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..cluster_protocol.naming import write_json_atomic
from ..cluster_protocol.resources import command_line  # the one "words → shell line" rule, for the views

__all__ = ["MAX_ARRAY_STEPS", "Sweep", "call_sweep", "scalar_row", "command_line", "expand", "parse_array_spec", "placeholders", "python_command", "render",
           "write_manifest", "write_scripts", "script_command", "chunk_size", "STEP_ENV", "INDEX_EXPR"]

STEP_ENV = "NBDIST_STEP"
# The largest array spec accepted (magic and CLI): far above any interactive use, low enough that a
# typo such as ``0-9999999999`` fails at once instead of building a billion-step list.
MAX_ARRAY_STEPS = 1_000_000
_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Parameters become environment variables: these would break the shell or nbdist itself.
_RESERVED = frozenset({"PATH", "HOME", "IFS", "PS4", "ENV", "BASH_ENV", "SHELL", "PWD", "OLDPWD", "USER",
                       "LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH", "JOB_ID", "ARRAY_STEP_ID", "step"})
_RESERVED_PREFIXES = ("NBDIST_", "SLURM_")
# The index of this step in the backend's array: the multiprocess backend's name, then Slurm's.
INDEX_EXPR = "${ARRAY_STEP_ID:-${SLURM_ARRAY_TASK_ID:-0}}"
# A step's script is read by its shell from a file shared by up to MAX_SCRIPT_CHUNK steps, about
# SCRIPT_CHUNK_BYTES in all: parsing that costs a task well under a millisecond.
SCRIPT_CHUNK_BYTES = 32 * 1024
MAX_SCRIPT_CHUNK = 256


def placeholders(command: str) -> list[str]:
    """Names of the ``{{name}}`` placeholders of ``command``, in order of first use."""
    names: list[str] = []
    for match in _PLACEHOLDER.finditer(command):
        name = match.group(1).strip()
        if name not in names:
            names.append(name)
    return names


def render(command: str, values: Mapping[str, Any]) -> str:
    """``command`` with each ``{{name}}`` replaced by ``shlex.quote(str(values[name]))``."""
    return _PLACEHOLDER.sub(lambda match: shlex.quote(_text(values[match.group(1).strip()])), command)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


@dataclass
class Sweep:
    """The steps of an array: their ids and, for ``over=``, their parameters.

    Attributes
    ----------
    steps
        The user's step ids (a ``range`` when they are evenly spaced).
    params
        One dict per step (``over=``), or None.
    of_call
        The steps of a Python function's map (:func:`call_sweep`): its parameters are the function's
        arguments, read by the task from the items file, so no step needs a script.
    """

    steps: Sequence[int]
    params: list[dict[str, Any]] | None
    has_placeholders: bool = False
    of_call: bool = False

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def needs_scripts(self) -> bool:
        """True when every step needs its own script: parameters, placeholders (substituted by
        ``shlex.quote`` here, never by the shell), or steps not evenly spaced."""
        return self.params is not None or self.has_placeholders or not isinstance(self.steps, range)

    def step_values(self, index: int) -> dict[str, Any]:
        """The placeholder values of one step (its parameters and ``step``)."""
        values: dict[str, Any] = dict(self.params[index]) if self.params is not None else {}
        values["step"] = self.steps[index]
        return values

    def script(self, command: str, index: int) -> str:
        """The standalone shell script of one step: exported parameters, then the rendered command."""
        values = self.step_values(index)
        lines = [f"{STEP_ENV}={self.steps[index]}; export {STEP_ENV}"]
        for key, value in values.items():
            if key != "step":
                lines.append(f"{key}={shlex.quote(_text(value))}; export {key}")
        lines.append(render(command, values))
        return "\n".join(lines) + "\n"

    def array_prologue(self) -> str:
        """For evenly spaced steps: shell code that sets ``NBDIST_STEP`` from the backend's index."""
        assert isinstance(self.steps, range)
        start, stride = self.steps.start, self.steps.step
        expr = INDEX_EXPR if stride == 1 else f"{INDEX_EXPR} * {stride}"
        if start:
            expr = f"{expr} + {start}"
        return f"{STEP_ENV}=$(( {expr} )); export {STEP_ENV}\n"

    def manifest(self) -> list[dict[str, Any]]:
        """``[{"index": i, "step": s, "params": {...}}, ...]`` (what is written next to the logs)."""
        return [
            {"index": index, "step": step, "params": self.params[index] if self.params is not None else {}}
            for index, step in enumerate(self.steps)
        ]


def expand(command: str, steps: int | Iterable[int] | None = None, over: Any = None) -> Sweep:
    """Check ``command`` against ``steps``/``over`` and return the Sweep; nothing is run.

    Raises
    ------
    ValueError
        For an unknown placeholder, a parameter the command never uses, steps that are not unique
        integers, or an ``over=`` of the wrong shape. The message names the culprit.
    """
    if steps is not None and over is not None:
        raise ValueError("give steps= or over=, not both")
    if steps is None and over is None:
        raise ValueError("an array needs steps= (a count or step ids) or over= (parameters)")
    params = _params(over) if over is not None else None
    step_ids = _steps(steps) if steps is not None else range(len(params or ()))
    if len(step_ids) == 0:
        raise ValueError("an array needs at least one step")
    names = list(params[0]) if params else []
    _check_names(command, names)
    return Sweep(step_ids, params, bool(placeholders(command)))


def call_sweep(steps: int | Iterable[int], rows: Sequence[dict[str, Any]] | None = None) -> Sweep:
    """The steps of a Python function's map, with ``rows`` (one per step, each from :func:`scalar_row`) as
    their parameters when every row names the same ones.

    Those become the dashboard's parameter columns, its ``--where`` filter and its timeline's labels,
    as a shell sweep's do; they are never exported to a shell, so any string names a parameter.
    """
    step_ids = _steps(steps)
    params = None
    if rows and len(rows) == len(step_ids) and all(row.keys() == rows[0].keys() for row in rows):
        params = list(rows)
    return Sweep(step_ids, params, of_call=True)


_SCALARS = (str, numbers.Number, type(None))


def scalar_row(item: Any) -> dict[str, Any] | None:
    """A map's item as its step's parameters: a mapping of names to scalars (a grid's keyword arguments,
    a dict of ``map`` over dicts), else None — a row holding an array would keep it alive in the record
    and write its text to the registry."""
    if not isinstance(item, Mapping) or not item:
        return None
    if all(isinstance(key, str) and isinstance(value, _SCALARS) for key, value in item.items()):
        return dict(item)
    return None


def _steps(steps: int | Iterable[int]) -> Sequence[int]:
    if isinstance(steps, bool):
        raise ValueError(f"steps must be a count or an iterable of step ids, not {steps!r}")
    if isinstance(steps, int):
        if steps < 1:
            raise ValueError(f"steps must be a positive count, not {steps}")
        return range(steps)
    if isinstance(steps, range):
        return steps
    try:
        items = list(steps)
    except TypeError:
        raise ValueError(f"steps must be a count or an iterable of step ids, not {steps!r}") from None
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise ValueError(f"step ids must be integers, not {item!r}")
    if len(set(items)) != len(items):
        duplicates = sorted(item for item, count in Counter(items).items() if count > 1)
        raise ValueError(f"step ids must be unique; repeated: {duplicates[:10]}")
    if len(items) > 1 and all(b - a == items[1] - items[0] for a, b in zip(items, items[1:])) and items[1] != items[0]:
        return range(items[0], items[-1] + (items[1] - items[0]), items[1] - items[0])
    if len(items) == 1:
        return range(items[0], items[0] + 1)
    return items


def _params(over: Any) -> list[dict[str, Any]]:
    if hasattr(over, "to_dict") and hasattr(over, "columns"):  # a pandas DataFrame, without importing pandas
        rows = over.to_dict("records")
        return _check_rows([{str(key): value for key, value in row.items()} for row in rows])
    if isinstance(over, Mapping):
        if not over:
            raise ValueError("over= is an empty dict: give {name: [values, ...]}")
        keys = [str(key) for key in over]
        columns = []
        for key, values in over.items():
            if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
                raise ValueError(f"over[{key!r}] must be a list of values, not {values!r}")
            column = list(values)
            if not column:
                raise ValueError(f"over[{key!r}] is empty: the grid would have no step")
            columns.append(column)
        return _check_rows([dict(zip(keys, combo)) for combo in itertools.product(*columns)])
    if isinstance(over, (str, bytes)) or not isinstance(over, Iterable):
        raise ValueError(f"over= must be a dict of lists, a list of dicts or a DataFrame, not {type(over).__name__}")
    rows = list(over)
    for number, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"over[{number}] must be a dict of parameters, not {row!r}")
    return _check_rows([{str(key): value for key, value in row.items()} for row in rows])


def _check_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not rows:
        raise ValueError("over= has no rows: the array would have no step")
    keys = list(rows[0])
    for number, row in enumerate(rows):
        if set(row) != set(keys):
            missing = sorted(set(keys) - set(row))
            extra = sorted(set(row) - set(keys))
            raise ValueError(f"over[{number}] has different parameters than over[0] (missing {missing}, extra {extra})")
    for key in keys:
        if not _IDENTIFIER.match(key):
            raise ValueError(f"parameter name {key!r} is not an identifier (letters, digits, _)")
        if key in _RESERVED or key.startswith(_RESERVED_PREFIXES):
            raise ValueError(f"parameter name {key!r} is reserved; rename it")
    for number, row in enumerate(rows):
        for key, value in row.items():
            if "\0" in _text(value):
                raise ValueError(f"over[{number}][{key!r}] contains a NUL byte")
    return rows


def _check_names(command: str, names: list[str]) -> None:
    used = placeholders(command)
    known = set(names) | {"step"}
    unknown = [name for name in used if name not in known]
    if unknown:
        raise ValueError(
            f"unknown placeholder(s) {', '.join('{{' + n + '}}' for n in unknown)}; "
            f"known: {', '.join('{{' + n + '}}' for n in sorted(known))}"
        )
    for name in names:
        if name in used:
            continue
        if re.search(r"\$\{?" + re.escape(name) + r"\b", command) is None:
            raise ValueError(f"parameter {name!r} is not used by the command: write {{{{{name}}}}} or ${name}")


def parse_array_spec(spec: str) -> tuple[list[int] | range, int | None]:
    """``"10"`` → ``range(10)``; ``"0-9"``, ``"1,3,5-7"``, ``"0-99%4"`` (at most 4 at once), Slurm-style.

    Returns ``(steps, max_concurrent)``. Raises ValueError for a malformed spec or one of more than
    :data:`MAX_ARRAY_STEPS` steps (counted per range before any list is built).
    """
    text = spec.strip()
    limit: int | None = None
    if "%" in text:
        text, _, tail = text.partition("%")
        if not tail.isdigit() or int(tail) < 1:
            raise ValueError(f"array spec {spec!r}: the part after % must be a positive count")
        limit = int(tail)
    too_many = f"array spec {spec!r}: more than {MAX_ARRAY_STEPS} steps"
    if text.isdigit():
        if int(text) < 1:
            raise ValueError(f"array spec {spec!r}: a count must be positive")
        if int(text) > MAX_ARRAY_STEPS:
            raise ValueError(too_many)
        return range(int(text)), limit
    ranges = []
    total = 0
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*(?::\s*(\d+))?)?\s*", part)
        if not match:
            raise ValueError(f"array spec {spec!r}: expected like 10, 0-9, 1,3,5-7 or 0-99%4")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) else first
        stride = int(match.group(3)) if match.group(3) else 1
        if last < first or stride < 1:
            raise ValueError(f"array spec {spec!r}: range {part.strip()!r} is empty")
        total += (last - first) // stride + 1  # not len(range): a typo's range may not fit a C size
        ranges.append(range(first, last + 1, stride))
        if total > MAX_ARRAY_STEPS:
            raise ValueError(too_many)
    return [step for steps in ranges for step in steps], limit


def chunk_size(command: str, sweep: Sweep) -> int:
    """Steps per script file: about ``SCRIPT_CHUNK_BYTES`` of script, at most ``MAX_SCRIPT_CHUNK``."""
    sample = len(sweep.script(command, 0).encode()) + 16
    return max(1, min(MAX_SCRIPT_CHUNK, SCRIPT_CHUNK_BYTES // sample))


def write_scripts(folder: str, command: str, sweep: Sweep) -> int:
    """Write the steps' scripts into ``folder`` (created); return the steps per file.

    Steps are grouped ``chunk`` to a file, ``{index // chunk}.sh``: a ``case`` on ``NBDIST_INDEX``
    picks the step's own script. Creating a file costs far more than a task parsing a few KiB of
    shell, so a 10,000-step sweep writes tens of files, not 10,000.
    """
    os.makedirs(folder, exist_ok=True)
    chunk = chunk_size(command, sweep)
    for first in range(0, len(sweep), chunk):
        parts = ["case $NBDIST_INDEX in\n"]
        for index in range(first, min(first + chunk, len(sweep))):
            parts.append(f"{index})\n{sweep.script(command, index)};;\n")
        parts.append("*) echo \"nbdist: no step $NBDIST_INDEX in $0\" >&2; exit 125;;\nesac\n")
        with open(os.path.join(folder, f"{first // chunk}.sh"), "w") as handle:
            handle.write("".join(parts))
    return chunk


def script_command(folder: str, chunk: int, index: int | None = None) -> str:
    """The command that runs one step from its script file: the backend's array index, or ``index``."""
    if index is not None:
        return f"NBDIST_INDEX={index}; . {shlex.quote(os.path.join(folder, f'{index // chunk}.sh'))}"
    return f'NBDIST_INDEX={INDEX_EXPR}; . {shlex.quote(folder + "/")}"$(( NBDIST_INDEX / {chunk} ))".sh'


def write_manifest(path: str, sweep: Sweep) -> None:
    """The manifest of step → parameters, as JSON (atomically); a value JSON cannot hold is its ``str``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json_atomic(path, json.loads(json.dumps(sweep.manifest(), default=str)))


# The here-document delimiter of a Python body (a body may not contain a line of just this).
PYTHON_EOF = "NBDIST_PYTHON_EOF"
_STEP_PLACEHOLDER = re.compile(r"\{\{\s*step\s*\}\}")


def python_command(body: str, params: Sequence[Mapping[str, Any]] | None = None) -> str:
    """A shell command running the Python ``body`` with this interpreter (so the job sees its packages).

    The body goes through a quoted here-document, which the shell leaves untouched. A ``{{param}}``
    in it becomes an expression reading the value from the interpreter's arguments, where the core
    puts it as one shell-quoted word: a value is data, never code (``abc``, ``1/0`` or ``os.sep``
    arrive as strings). A parameter whose values (``params``, one dict per step) are all ``int`` is
    an ``int``, all numbers a ``float``, all ``bool`` a ``bool``; anything else is its ``str``.
    ``{{step}}`` is the step id as an ``int``.

    Raises
    ------
    ValueError
        For a body with a line ``NBDIST_PYTHON_EOF`` (it would end the here-document).
    """
    if any(line.strip() == PYTHON_EOF for line in body.splitlines()):
        raise ValueError(f"a --python body may not contain a line {PYTHON_EOF}")
    # The core fills {{step}} with a shell variable, which a quoted here-document would leave as text.
    body = _STEP_PLACEHOLDER.sub(f"int(__import__('os').environ['{STEP_ENV}'])", body)
    names = placeholders(body)

    def value(match: re.Match[str]) -> str:
        name = match.group(1).strip()
        column = [row[name] for row in params or () if name in row]
        return _python_type(column).format(f"__import__('sys').argv[{names.index(name) + 1}]")

    body = _PLACEHOLDER.sub(value, body)
    words = "".join(f" {{{{{name}}}}}" for name in names)
    # Unbuffered: a print reaches the log (and the dashboard's tail) as it happens, not at the end.
    return f"PYTHONUNBUFFERED=1 {shlex.quote(sys.executable)} -{words} <<'{PYTHON_EOF}'\n{body.rstrip()}\n{PYTHON_EOF}\n"


def _python_type(values: Sequence[Any]) -> str:
    """The expression (a format of the argument's text) that gives a Python body's parameter its type."""
    if values and all(isinstance(value, bool) for value in values):
        return "({} == 'True')"
    numbers_only = values and not any(isinstance(value, bool) or not isinstance(value, numbers.Real)
                                      for value in values)
    if numbers_only and all(isinstance(value, numbers.Integral) for value in values):
        return "int({})"
    if numbers_only and all(_is_float_text(str(value)) for value in values):
        return "float({})"
    return "{}"


def _is_float_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
