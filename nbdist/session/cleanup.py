"""Forgetting finished jobs: their registry rows and their files, never a live job's.

``Session.forget`` (``%nbdist forget NAME``) and ``nbdist clean --older-than 7d`` remove what a job left:
its rows (jobs, steps, attempts, requests), every attempt's stdout/stderr, an array's manifest and
per-step scripts. A job is only forgotten when every step is terminal and no other live kernel
owns it (that kernel may still retry it): a live job's files are never deleted.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .ownership import session_alive

if TYPE_CHECKING:
    from .records import JobRecord
    from .registry import Registry

__all__ = ["forget_record", "older_than"]


def older_than(rec: JobRecord, seconds: float, now: float | None = None) -> bool:
    """True when ``rec`` ended (every step terminal) more than ``seconds`` ago."""
    ended = rec.ended or (rec.created if rec.all_terminal else None)
    return rec.all_terminal and ended is not None and (now or time.time()) - ended > seconds


def forget_record(rec: JobRecord, registry: Registry, records: dict[int, Any], session_id: str,
                  lock: Any) -> list[str]:
    """Delete a finished job's rows and files (under the session's ``lock``); return the files removed.

    Only files inside the registry's folder are deleted, whatever a row says.

    Raises
    ------
    ValueError
        When a step is not terminal, or another live kernel owns the job.
    """
    with lock:
        return _forget(rec, registry, records, session_id)


def _forget(rec: JobRecord, registry: Registry, records: dict[int, Any], session_id: str) -> list[str]:
    if not rec.all_terminal:
        raise ValueError(f"{rec.name} (id {rec.id}) has unfinished steps ({rec.overall_state().value}): "
                         "kill it first; a live job's files are never deleted")
    if rec.session_id not in (None, session_id):
        owner = registry.sessions().get(rec.session_id)
        if session_alive(owner):
            raise ValueError(f"{rec.name} (id {rec.id}) belongs to a live kernel (pid {owner['pid']}), "
                             "which may still retry it: forget it there")
    inside = os.path.realpath(registry.root) + os.sep
    paths = {path for path in _log_files(rec, registry) if os.path.realpath(path).startswith(inside)}
    removed = [path for path in sorted(paths) if _remove(path)]
    if rec.sweep is not None and rec.sweep.params is not None and rec.log_dir:
        manifest = os.path.join(rec.log_dir, f"manifest-{rec.id}.json")
        if _remove(manifest):
            removed.append(manifest)
    if rec.script_dir and os.path.isdir(rec.script_dir) and os.path.realpath(rec.script_dir).startswith(inside):
        shutil.rmtree(rec.script_dir, ignore_errors=True)
        removed.append(rec.script_dir)
    registry.delete_job(rec.id)
    records.pop(rec.id, None)
    for dependent in rec.dependents:
        dependent.after = [(dep, index) for dep, index in dependent.after if dep is not rec]
    if rec.log_dir and os.path.isdir(rec.log_dir) and not os.listdir(rec.log_dir):
        os.rmdir(rec.log_dir)  # the last job of that name: no empty folder left behind
    return removed


def _log_files(rec: JobRecord, registry: Registry) -> Iterable[str]:
    for index in range(rec.n):
        paths = rec.log_paths(index)
        if paths is not None:
            yield from (paths.stdout, paths.stderr)
    for stdout, stderr in registry.query("SELECT stdout, stderr FROM attempts WHERE job_id = ?", (rec.id,)):
        yield from (path for path in (stdout, stderr) if path)


def _remove(path: str) -> bool:
    try:
        os.remove(path)
        return True
    except FileNotFoundError:
        return False
