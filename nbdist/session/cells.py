"""``%%submit --python``: a cell's body as a function call, its last expression the job's result.

The body becomes a :class:`~nbdist.cluster_protocol.pycall.Cell`; the kernel variables named by
``--in`` travel with it (cloudpickle, once for every step), and a step's ``{{name}}`` is its
parameter as a Python value, read from the step's keyword arguments: data, never code (a value is
never pasted into the source).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..cluster_protocol.pycall import CELL_PARAMS, Cell
from .functions import Options, map_call, submit_call
from .handles import Array, Job
from .session import Session

__all__ = ["cell_inputs", "cell_source", "submit_cell"]

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def cell_inputs(spec: str | None, namespace: Mapping[str, Any], *, python: bool = True) -> dict[str, Any]:
    """The variables of ``namespace`` named by ``spec`` (``"df,model"``); ValueError for a missing one."""
    if spec is None:
        return {}
    if not python:
        raise ValueError("--in sends notebook variables to a Python cell: add --python")
    names = [name.strip() for name in spec.split(",") if name.strip()]
    missing = [name for name in names if name not in namespace]
    if missing or not names:
        raise ValueError(f"--in: no notebook variable named {', '.join(missing)}" if missing else
                         "--in needs variable names, e.g. --in df,model")
    return {name: namespace[name] for name in names}


def cell_source(body: str) -> str:
    """The body with each ``{{name}}`` replaced by a lookup of the step's parameter ``name``."""
    return _PLACEHOLDER.sub(lambda match: f"{CELL_PARAMS}[{match.group(1)!r}]", body)


def submit_cell(session: Session, options: Options, body: str, inputs: Mapping[str, Any], *,
                steps: Sequence[int] | None = None, over: Sequence[Mapping[str, Any]] | None = None) -> Job | Array:
    """Run a cell's body as a job (or one step per ``steps`` id / ``over`` row); ``result()`` is the value
    of its last expression.

    Raises
    ------
    TypeError
        When an input cannot be pickled: nothing is submitted.
    """
    cell = Cell(cell_source(body), f"<cell {options.name or 'python'}>")
    options = dataclasses.replace(options, name=options.name or "python")
    if steps is None and over is None:
        return submit_call(session, options, cell, (dict(inputs),), {})
    rows = [dict(row, step=index) for index, row in enumerate(over)] if over is not None else \
        [{"step": step} for step in steps or ()]
    return map_call(session, options, cell, rows, args=(dict(inputs),), spread="kwargs")
