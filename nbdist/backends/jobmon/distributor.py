"""nbdist's multiprocess distributor as Jobmon's ``ClusterDistributor`` (cluster type ``nbdist``).

Imported only when Jobmon asks the ``jobmon.plugins.nbdist`` plugin for its distributor, so it may
import Jobmon: the class subclasses Jobmon's own ``ClusterDistributor``, as Jobmon's plugins do, to
inherit ``build_worker_node_command`` — the ``worker_node_job …`` / ``worker_node_array …`` command
line of *the Jobmon installed here* (its version flag included), never a copy that drifts.

What differs from nbdist's own distributor, and only here::

    Jobmon's distributor service                       nbdist's MultiprocessDistributor
    submit(build_worker_node_command(…), name, res) ─►  submit("<worker_node_entry_point> <cmd>",
                                                          name, res in nbdist's units)
    get_remote_exit_info(id)  (triage only)        ◄──  D/E/K/Z/U/W, mapped to R/U/Z/F

- the worker command runs through Jobmon's ``worker_node_entry_point`` (Jobmon's worker then runs
  the user's command and reports ``D``/``E`` itself), forked from a consumer that has Jobmon's
  worker imported when the entry point is a script of this interpreter (as it is when installed);
- ``requested_resources``: memory in GiB (0 = under 1 GiB), keys nbdist does not use ignored
  (:mod:`nbdist.backends.jobmon.resources`); a value nbdist cannot honour (more cores than the
  cluster's parallelism, an unparsable runtime) raises nbdist's ``ValueError``, which Jobmon records
  as the task instance's ``W`` with that message;
- triage answers only what Jobmon's server accepts from ``T`` (never nbdist's ``D``/``E``/``K``):
  ``R`` (still running), ``Z`` (over its memory or runtime limit: Jobmon retries with more) or
  ``U`` (lost, exited without reporting, killed, unknown id); every answer says how the process
  ended and what it used.

The Jobmon worker's own output (not the command's: Jobmon's worker writes that where the task's
``stdout``/``stderr`` say, or to ``/dev/null``) goes to a private folder, removed by :meth:`stop`
unless ``log_dir`` was given in the cluster's ``connection_parameters``.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
import tempfile
import uuid
import weakref
from typing import Any

from jobmon.core.cluster_protocol import ClusterDistributor

from ...cluster_protocol import TaskInstanceStatus as S
from ...cluster_protocol.scripts import script_command, shebang_interpreter
from ..multiprocess import MultiprocessDistributor
from .resources import make_log_folders, nbdist_resources
from .reports import triage_answer

__all__ = ["JobmonDistributor", "find_worker_node_entry_point"]

logger = logging.getLogger(__name__)

# How much of the Jobmon worker's stderr a triage message quotes: enough for a traceback's end.
STDERR_TAIL_CHARS = 1500


def find_worker_node_entry_point() -> str:
    """Jobmon's ``worker_node_entry_point`` of this environment (next to ``sys.executable``, else PATH)."""
    candidate = os.path.join(os.path.dirname(sys.executable), "worker_node_entry_point")
    found = candidate if os.access(candidate, os.X_OK) else shutil.which("worker_node_entry_point")
    if not found:
        raise ValueError(
            f"Jobmon's worker_node_entry_point is neither next to {sys.executable} nor on PATH: "
            "install jobmon_core in the environment that runs the distributor")
    return found


class JobmonDistributor(MultiprocessDistributor, ClusterDistributor):
    """nbdist's multiprocess distributor, driven by Jobmon.

    Parameters
    ----------
    cluster_name
        The Jobmon cluster's name (Jobmon passes it first).
    parallelism
        Cores used at a time (the cluster's ``connection_parameters``, e.g. ``{"parallelism": 4}``).
    log_dir
        Folder for the Jobmon worker's own stdout/stderr (default: a private temporary folder,
        removed by :meth:`stop`).
    **options
        Other options of :class:`nbdist.multiprocess.MultiprocessDistributor` (``kill_grace``).
    """

    def __init__(self, cluster_name: str = "nbdist", parallelism: int = 3, *args: Any, log_dir: str | None = None,
                 **options: Any) -> None:
        self._entry_point = find_worker_node_entry_point()
        self._entry_point_python = shebang_interpreter(self._entry_point)
        # Created by the first submission, not here: a distributor that runs nothing leaves nothing.
        own_log_dir = None if log_dir else os.path.join(tempfile.gettempdir(), f"nbdist-jobmon-{uuid.uuid4().hex[:12]}")
        super().__init__(cluster_name, parallelism, *args, log_dir=log_dir or own_log_dir, **options)
        # Jobmon's own tests drop distributors without stop(): the folder still goes when the process ends.
        self._remove_own_log_dir = (weakref.finalize(self, shutil.rmtree, own_log_dir, ignore_errors=True)
                                    if own_log_dir else None)

    @property
    def worker_node_entry_point(self) -> str:
        """Path of Jobmon's ``worker_node_entry_point``, which every submitted command runs through."""
        return self._entry_point

    def _through_entry_point(self, command: str) -> str:
        # The entry point is a Python script of this very interpreter (the usual install): run with it,
        # as its #! line would (a fresh interpreter per task: Jobmon's worker sets process-wide state).
        if self._entry_point_python == sys.executable:
            return script_command(sys.executable, self._entry_point, shlex.split(command))
        return f"{shlex.quote(self._entry_point)} {command}"

    def _resources(self, requested_resources: dict[str, Any]) -> dict[str, Any]:
        make_log_folders(requested_resources)
        return nbdist_resources(requested_resources)

    def submit_to_batch_distributor(self, command: str, name: str, requested_resources: dict[str, Any]) -> str:
        """Queue Jobmon's worker command for one task instance; return its distributor id."""
        return super().submit_to_batch_distributor(self._through_entry_point(command), name,
                                                   self._resources(requested_resources))

    def submit_array_to_batch_distributor(self, command: str, name: str, requested_resources: dict[str, Any],
                                          array_length: int) -> dict[int, str]:
        """Queue a batch of Jobmon's array worker command; return ``{array_step_id: distributor_id}``."""
        return super().submit_array_to_batch_distributor(self._through_entry_point(command), name,
                                                         self._resources(requested_resources), array_length)

    def get_remote_exit_info(self, distributor_id: str) -> tuple[str, str]:
        """Triage (the task stopped heartbeating): ``R``, ``Z`` or ``U``, with what nbdist saw."""
        reports = self.get_task_reports([distributor_id])
        if distributor_id not in reports:
            return S.UNKNOWN_ERROR, (f"nbdist: distributor id {distributor_id!r} is unknown to this distributor "
                                     "(it was started by another distributor process)")
        report = reports[distributor_id]
        tail = "" if report.get("status") in (S.QUEUED, S.RUNNING) else self._stderr_tail(distributor_id)
        return triage_answer(dict(report), tail)

    def _stderr_tail(self, distributor_id: str) -> str:
        try:
            with open(self.log_paths(distributor_id)[1], "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - STDERR_TAIL_CHARS))
                return handle.read().decode(errors="replace")
        except (OSError, KeyError):
            return ""

    def stop(self) -> None:
        """Stop as nbdist's distributor does, then remove the private folder of the workers' logs."""
        super().stop()
        if self._remove_own_log_dir is not None:
            self._remove_own_log_dir()
