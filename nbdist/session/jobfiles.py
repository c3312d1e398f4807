"""A job's files, written before its registry row so that a submit is all or nothing.

An array's per-step scripts are what fills its ``{{placeholders}}``; a row without them would run
every step with the placeholders unfilled. So a submit writes them first, under a temporary name,
then in *one* registry transaction inserts the row and moves them to their names (which hold the
row's id)::

    write scripts/.partial-{token}/, logs/{name}/.manifest-{token}.partial   (no row yet)
    BEGIN; INSERT the row; rename to scripts/{id}/ and manifest-{id}.json; UPDATE its script_dir; COMMIT

A process killed before the COMMIT leaves no row (its partial files are garbage, never run); one
killed after it leaves a whole job. An id whose row was never committed is given again by SQLite,
so a ``scripts/{id}`` folder found while holding the write lock is such garbage, and is replaced.
"""

from __future__ import annotations

import glob
import os
import shutil
import time
import uuid
from typing import Any

from .storage import unwritable, unwritable_reason
from .sweep import Sweep, write_manifest, write_scripts

__all__ = ["STALE_PARTIAL_SECONDS", "JobFiles"]

# Partial files older than this are a killed submit's (writing them takes well under a second):
# the next submit that writes beside them removes them. Younger ones may be another kernel's, in flight.
STALE_PARTIAL_SECONDS = 3600.0


class JobFiles:
    """The files of one submission: its log folder, and an array's per-step scripts and manifest.

    Parameters
    ----------
    root
        The session's root (scripts go to ``{root}/scripts/{id}``).
    name, log_dir
        The job's name and log folder (the manifest goes to ``{log_dir}/manifest-{id}.json``).
    """

    def __init__(self, root: str, name: str, log_dir: str) -> None:
        self.root = root
        self.name = name
        self.log_dir = log_dir
        self.token = uuid.uuid4().hex[:12]
        self.script_dir: str | None = None  # where the scripts are now (partial, then placed)
        self.script_chunk = 1
        self.manifest: str | None = None

    def write(self, command: str, sweep: Sweep | None) -> None:
        """Write everything under temporary names (a full disk raises :class:`~nbdist.session.storage.DiskFull`)."""
        try:
            os.makedirs(self.log_dir, exist_ok=True)
            if sweep is not None and sweep.needs_scripts:
                _remove_stale(os.path.join(self.root, "scripts"), ".partial-")
                self.script_dir = os.path.join(self.root, "scripts", f".partial-{self.token}")
                self.script_chunk = write_scripts(self.script_dir, command, sweep)
            if sweep is not None and sweep.params is not None:
                _remove_stale(self.log_dir, ".manifest-")
                self.manifest = os.path.join(self.log_dir, f".manifest-{self.token}.partial")
                write_manifest(self.manifest, sweep)
        except OSError as exc:
            self.discard()
            reason = unwritable_reason(self.log_dir, exc)
            if reason is None:
                raise
            raise unwritable(reason, f"{self.name} was not submitted: cannot write its files under {self.root} "
                                     f"({exc.strerror or exc})") from exc

    def place(self, job_id: int) -> dict[str, Any]:
        """Move the files to their names (inside the row's transaction); the row's columns that point to them."""
        columns: dict[str, Any] = {}
        if self.script_dir is not None:
            final = os.path.join(self.root, "scripts", str(job_id))
            if os.path.lexists(final):  # left by a submit killed before its commit: no row has this id
                shutil.rmtree(final, ignore_errors=True)
            os.rename(self.script_dir, final)
            self.script_dir = final
            columns["script_dir"] = final
        if self.manifest is not None:
            final = os.path.join(self.log_dir, f"manifest-{job_id}.json")
            os.replace(self.manifest, final)
            self.manifest = final
        return columns

    def discard(self) -> None:
        """Remove what was written (the submission failed): nothing of it stays to be run or read."""
        if self.script_dir is not None:
            shutil.rmtree(self.script_dir, ignore_errors=True)
        leftovers = [self.manifest] if self.manifest is not None else []
        leftovers += glob.glob(os.path.join(glob.escape(self.log_dir), f".manifest-{self.token}.partial*"))
        for path in leftovers:
            try:
                os.unlink(path)
            except OSError:
                pass


def _remove_stale(folder: str, prefix: str) -> None:
    """Remove what killed submits left in ``folder`` (names starting with ``prefix``, older than an hour)."""
    try:
        entries = [entry for entry in os.scandir(folder) if entry.name.startswith(prefix)]
    except OSError:
        return
    limit = time.time() - STALE_PARTIAL_SECONDS
    for entry in entries:
        try:
            if entry.stat(follow_symlinks=False).st_mtime >= limit:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
        except OSError:
            pass
