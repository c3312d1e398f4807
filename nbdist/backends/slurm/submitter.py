"""Making sbatch calls: one job, or the calls of an :class:`~.arrays.ArrayPlan` as far as the site allows.

The distributor keeps the records and decides when to call; this module builds each call (:mod:`.sbatch`),
runs it, and tells a submit-limit refusal (hold the rest back) from any other (an error).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

from ...cluster_protocol.naming import log_file, log_stem, write_json_atomic
from ...cluster_protocol.resources import Resources, check_command
from .._task.exit_info import read_exit_info
from . import cli
from .arrays import ArrayPlan, Call, submit_limited
from .sbatch import ArrayCall, batch_script, log_folders, sbatch_argv, sbatch_env

__all__ = ["Submitter", "log_dir_of", "slurm_ids_of"]

logger = logging.getLogger(__name__)


def log_dir_of(cluster_name: str, log_dir: str | None) -> str:
    """The default log folder: visible from compute nodes and stable across kernel restarts."""
    return os.path.abspath(
        log_dir or os.path.join(os.path.expanduser("~"), ".nbdist", "slurm-logs", log_stem(cluster_name)))


def slurm_ids_of(plan: ArrayPlan, calls: Iterable[Call]) -> dict[int, str]:
    """``{step: "JOBID_TASK"}`` of the steps the ``calls`` run."""
    ids: dict[int, str] = {}
    for call in calls:
        for task in range(call.tasks):
            slurm_id = f"{call.job_id}_{task}"
            for step in plan.steps(call.offset + task):
                ids[step] = slurm_id
    return ids


class Submitter:
    """sbatch calls with the session's settings (partition, extra argv, site options, prologue, wrapper)."""

    def __init__(self, partition: str | None, log_dir: str, sbatch_args: Iterable[str], site: Mapping[str, Any],
                 prologue: str | None, wrapper: Iterable[str], worker: str, max_array_size: int | None = None) -> None:
        self.partition = partition
        self.log_dir = log_dir
        self.sbatch_args = [str(arg) for arg in sbatch_args]
        self.site = dict(site)
        self.prologue = prologue
        self.wrapper = [str(word) for word in wrapper]
        self.worker = worker
        self._limits: tuple[int, int] | None = None
        self._max_array_size = max_array_size
        self._adopted_plans: dict[tuple[str, str, str], ArrayPlan | None] = {}

    def site_limits(self) -> tuple[int, int]:
        """The site's ``(MaxArraySize, MaxJobCount)``, read once."""
        if self._limits is None:
            max_array_size, max_job_count = cli.site_limits()
            self._limits = (min(max_array_size, self._max_array_size or max_array_size), max_job_count)
        return self._limits

    def adopted_plan(self, stdout_dir: str, name: str, base: str) -> ArrayPlan | None:
        """The plan of an earlier session's array ``base``, from its plan file (None: a plain array)."""
        key = (stdout_dir, name, base)
        if key not in self._adopted_plans:
            data = read_exit_info(log_file(stdout_dir, name, "a", base))
            self._adopted_plans[key] = ArrayPlan.from_json(data) if data else None
        return self._adopted_plans[key]

    def prepare(self, command: str, requested_resources: dict[str, Any] | None) -> Resources:
        """Validate a submission and create its log folders (``ValueError`` if one cannot be made)."""
        check_command(command)
        resources = Resources.parse(requested_resources, site_options=True)
        for dependency in resources.after:
            if not cli.JOB_ID_RE.match(dependency):
                raise ValueError(f"after: {dependency!r} is not a Slurm distributor id (JOBID or JOBID_STEP)")
        for folder in {resources.stdout_dir or self.log_dir, resources.stderr_dir or self.log_dir}:
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as exc:
                raise ValueError(f"cannot create the log folder {folder!r}: {exc}") from exc
        return resources


    def sbatch(self, command: str, name: str, resources: Resources, array: ArrayCall | None) -> tuple[str | None, str]:
        """One sbatch call: ``(job id, "")``, or ``(None, sbatch's message)`` when it refused."""
        argv = sbatch_argv(name, resources, array, log_dir=self.log_dir, partition=self.partition,
                           extra_args=self.sbatch_args, site=self.site)
        script = batch_script(command, name, resources, log_dir=self.log_dir, worker=self.worker,
                              array=array, prologue=self.prologue, wrapper=self.wrapper,
                              sbatch_lines=self.site.get("sbatch", ()))
        result = cli.run_cli(argv, input_text=script, env=sbatch_env(os.environ, resources))
        if result.returncode != 0:
            message = cli.error_text(result.stderr)
            if cli.controller_down(message):
                raise cli.SlurmUnavailable(f"sbatch could not reach the Slurm controller: {message}")
            return None, message
        job_id = result.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise cli.SlurmUnavailable(f"sbatch returned no job id (stdout {result.stdout!r}, "
                                       f"stderr {result.stderr!r})")
        logger.debug("submitted %s as Slurm job %s", name, job_id)
        return job_id, ""

    def make_calls(self, plan: ArrayPlan, command: str, name: str, resources: Resources,
                    unfinished: int) -> list[Any]:
        """Make the array's next sbatch calls while the plan allows; the calls made.

        A submit-limit refusal halves the next call and, at one task, holds the rest back (the poller
        tries again as jobs finish); any other refusal of the first call raises, of a later one ends the
        steps it held as lost with sbatch's message.
        """
        made = []
        while (call := plan.next_call(unfinished)) is not None:
            job_id, message = self.sbatch(command, name, resources, call)
            if job_id is None:
                if submit_limited(message, call.tasks, plan.max_array_size):
                    if plan.refused(call, message):
                        logger.info("%s: a submit limit holds %d tasks back: %s", name,
                                    plan.tasks - plan.next_task, message)
                        break
                    continue
                if plan.base is None:
                    raise ValueError(f"sbatch rejected {name!r}: {message}")
                plan.held, plan.cancelled = f"lost: sbatch rejected this part of the array: {message}", True
                break
            made.append(plan.submitted(call, job_id))
            unfinished += call.tasks
            # After every call: a session that dies between two calls leaves a plan whose adopter makes
            # the rest, neither submitting a task twice nor losing one.
            stdout_dir = log_folders(resources, self.log_dir)[0]
            write_json_atomic(log_file(stdout_dir, name, "a", str(plan.base)), plan.to_json(command))
        return made


    def raise_throttles(self, plan: ArrayPlan, unfinished: dict[str, int]) -> None:
        """Raise each call's ``%`` to its share of ``max_concurrent`` (``scontrol update``, one per change)."""
        for call, throttle in plan.throttles(unfinished):
            result = cli.run_cli(["scontrol", "update", f"JobId={call.job_id}", f"ArrayTaskThrottle={throttle}"])
            # Slurm answers per range of tasks: the finished ones "already finished", the rest "No error".
            if result.returncode == 0 or "No error" in result.stderr:
                call.throttle = throttle
            else:
                logger.warning("cannot raise the throttle of %s: %s", call.job_id, cli.error_text(result.stderr))
