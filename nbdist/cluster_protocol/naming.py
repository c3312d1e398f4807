"""The one naming rule of a task's files and ids, shared by every backend and the session.

- Logs: ``{folder}/{stem}.o{id}`` (stdout), ``.e{id}`` (stderr), ``.x{id}`` (exit info, JSON), where the
  stem is a file-name-safe form of the task name, so no name can write outside its log folder;
  ``.k{id}`` beside stdout is a request to cancel one step of a packed Slurm task (see :func:`cancel_marker_path`).
- Ids: a plain job is ``"{job}"``, an array step ``"{job}_{step}"`` (Jobmon's and Slurm's form).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

__all__ = ["array_id", "cancel_marker_path", "exit_info_path", "log_file", "log_stem", "split_id", "write_json_atomic"]

_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._+=-]")


def log_stem(name: str) -> str:
    """A file-name-safe form of a task name: it can never leave the log folder."""
    stem = _UNSAFE_NAME_CHARS.sub("_", name).lstrip(".") or "task"
    return stem[:100]


def log_file(folder: str, name: str, kind: str, distributor_id: str, stem: str | None = None) -> str:
    """``{folder}/{name}.{kind}{id}``: ``o`` stdout, ``e`` stderr, ``x`` exit info (every backend's naming).

    ``stem`` is ``log_stem(name)`` when the caller already has it (an array computes it once, not per step).
    """
    return os.path.join(folder, f"{stem or log_stem(name)}.{kind}{distributor_id}")


def exit_info_path(stdout_dir: str, name: str, distributor_id: str) -> str:
    """Where a task's exit info (``nbdist-worker``'s JSON) is written: beside its stdout."""
    return log_file(stdout_dir, name, "x", distributor_id)


def cancel_marker_path(stdout_dir: str, name: str, distributor_id: str, stem: str | None = None) -> str:
    """Where a distributor asks ``nbdist-worker`` to cancel one step of a packed task: ``.k{id}`` beside stdout.

    ``k`` (kill), not ``c``: ``c`` is already a Python call's file (:mod:`.pycall`).
    """
    return log_file(stdout_dir, name, "k", distributor_id, stem)


def array_id(job_id: str, step: int | None) -> str:
    """``"{job}_{step}"`` for an array step, ``"{job}"`` for a plain job."""
    return str(job_id) if step is None else f"{job_id}_{step}"


def split_id(distributor_id: str) -> tuple[str, int | None]:
    """The inverse of :func:`array_id`: ``"12_3"`` → ``("12", 3)``, ``"12"`` → ``("12", None)``."""
    job, sep, step = str(distributor_id).rpartition("_")
    if sep and step.isdigit():
        return job, int(step)
    return str(distributor_id), None


def write_json_atomic(path: str, value: Any) -> None:
    """Write ``value`` as JSON so that a reader sees the old file or the whole new one, never a part."""
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w") as handle:
        json.dump(value, handle)
    os.replace(temporary, path)
