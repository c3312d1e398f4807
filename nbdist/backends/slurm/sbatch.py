"""What one submission hands ``sbatch``: its argv, its environment and the batch script. Pure functions.

The batch script is the same for every task: the site's extra ``#SBATCH`` lines (checked: one option
a line, no newline), the identity variables the multiprocess backend gives its tasks (``JOB_ID``,
``ARRAY_STEP_ID``, ``NBDIST_DISTRIBUTOR_ID``), the session's prologue (``module load …``), then ``exec``
of ``nbdist-worker`` (behind an optional wrapper such as ``apptainer exec image.sif``), which runs the
command and writes its logs and exit info. Everything substituted into the script is shell-quoted,
and sbatch stops reading ``#SBATCH`` directives at the first command, so none inside the user's
command (or the prologue) is obeyed.

An array is one or more sbatch calls (:class:`ArrayCall`): call ``i`` runs tasks ``offset`` … of the
array, each task ``per_task`` consecutive steps, and every step is ``{base}_{step}`` whichever call runs it.
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from ...cluster_protocol.naming import log_stem
from ...cluster_protocol.resources import Resources, thread_variables

__all__ = ["DEVICE_VARIABLES", "IDENTITY_VARIABLES", "SCRIPT_PROLOGUE", "ArrayCall", "batch_script", "log_folders",
           "sbatch_argv", "sbatch_env"]

# Identity variables of the submitting process (say a kernel that itself runs as a Slurm job) must
# not leak into the job: the worker reads its id from them.
IDENTITY_VARIABLES = ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_ID", "SLURM_JOBID", "JOB_ID",
                      "ARRAY_STEP_ID", "NBDIST_DISTRIBUTOR_ID")
# The GPUs of the submitting process (a kernel on a GPU node, or itself in a Slurm job) are not the
# job's: Slurm sets these for the GPUs it gives the job, and a job given none must not see ours.
DEVICE_VARIABLES = ("CUDA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "ROCR_VISIBLE_DEVICES")
SCRIPT_PROLOGUE = """\
#!/bin/sh
if [ -n "${SLURM_ARRAY_JOB_ID:-}" ]; then
    JOB_ID=$SLURM_ARRAY_JOB_ID ARRAY_STEP_ID=$SLURM_ARRAY_TASK_ID
    NBDIST_DISTRIBUTOR_ID=${SLURM_ARRAY_JOB_ID}_$SLURM_ARRAY_TASK_ID
    export ARRAY_STEP_ID
else
    JOB_ID=$SLURM_JOB_ID NBDIST_DISTRIBUTOR_ID=$SLURM_JOB_ID
fi
export JOB_ID NBDIST_DISTRIBUTOR_ID
"""


class ArrayCall(NamedTuple):
    """One ``sbatch --array`` call of an array: its tasks, how they map to steps, its throttle."""

    tasks: int                  # array tasks of this call: --array=0-{tasks - 1}
    per_task: int = 1           # steps each task runs, one after another
    length: int | None = None   # steps of the whole array (None: tasks * per_task)
    offset: int = 0             # the array's task number of this call's task 0
    base: str | None = None     # job id in step ids (None: this call's own, i.e. the first call)
    throttle: int | None = None  # %K: at most this many of this call's tasks at once

    @property
    def simple(self) -> bool:
        """One step a task and ids that are Slurm's own: the worker needs no packing options."""
        return self.per_task == 1 and self.offset == 0 and self.base is None and self.length in (None, self.tasks)


def log_folders(resources: Resources, log_dir: str) -> tuple[str, str]:
    """Absolute stdout and stderr folders of a task: the ones it names, else ``log_dir``."""
    return os.path.abspath(resources.stdout_dir or log_dir), os.path.abspath(resources.stderr_dir or log_dir)


def sbatch_argv(name: str, resources: Resources, array: ArrayCall | None, *, log_dir: str,
                partition: str | None = None, extra_args: Sequence[str] = (),
                site: Mapping[str, Any] | None = None) -> list[str]:
    """``sbatch --parsable …`` for one job (``array`` None) or one call of an array.

    ``site``: the session's site options, under the task's own (``resources.site``).
    """
    site = {**(site or {}), **resources.site}
    stdout_dir = log_folders(resources, log_dir)[0]
    # sbatch expands %-patterns in --output; a literal % in the folder must be doubled.
    wrapper_log = os.path.join(stdout_dir.replace("%", "%%"), log_stem(name))
    argv = ["sbatch", "--parsable", f"--job-name={log_stem(name)}", "--export=ALL", "--kill-on-invalid-dep=yes",
            f"--cpus-per-task={resources.cores}"]
    per_task = 1
    if array is not None:
        concurrency = f"%{array.throttle}" if array.throttle else ""
        argv += [f"--array=0-{array.tasks - 1}{concurrency}", f"--output={wrapper_log}.s%A_%a"]
        per_task = array.per_task
    else:
        argv.append(f"--output={wrapper_log}.s%j")
    if resources.memory_mb is not None:
        argv.append(f"--mem={math.ceil(resources.memory_mb)}M")
    if resources.runtime_s is not None:
        # Slurm limits are whole minutes; round up so the task gets at least what it asked for
        # (a packed task: each of its steps; the worker holds each step to its own limit).
        argv.append(f"--time={math.ceil(per_task * resources.runtime_s / 60)}")
    partition = resources.queue or partition
    if partition:
        argv.append(f"--partition={partition}")
    if resources.after:
        argv.append("--dependency=afterok:" + ":".join(resources.after))
    if resources.cwd:
        argv.append(f"--chdir={resources.cwd}")
    return argv + _site_args(site) + list(extra_args)


def _site_args(site: Mapping[str, Any]) -> list[str]:
    """sbatch options of the checked site options (:func:`~nbdist.cluster_protocol.resources.parse_site_options`)."""
    argv = [f"--gres=gpu:{site['gpus']}"] if site.get("gpus") else []
    argv += [f"--{key}={site[key]}" for key in ("account", "qos", "constraint", "reservation", "signal")
             if site.get(key)]
    if site.get("exclusive"):
        argv.append("--exclusive")
    # nbdist retries a lost step itself (max_attempts); Slurm requeues (e.g. after preemption) only if asked.
    argv.append("--requeue" if site.get("requeue") else "--no-requeue")
    return argv


def batch_script(command: str, name: str, resources: Resources, *, log_dir: str, worker: str,
                 array: ArrayCall | None = None, prologue: str | None = None, wrapper: Sequence[str] = (),
                 sbatch_lines: Sequence[str] = ()) -> str:
    """The batch script: extra ``#SBATCH`` lines, the identity prologue, the session's prologue, then
    ``exec [WRAPPER] nbdist-worker … -- COMMAND``."""
    stdout_dir, stderr_dir = log_folders(resources, log_dir)
    words = [worker, f"--name={name}", f"--stdout-dir={stdout_dir}", f"--stderr-dir={stderr_dir}"]
    if resources.memory_mb is not None:
        # The worker samples the task's RSS every 0.1 s and reports "memory limit exceeded";
        # Slurm's own check (every second, without cgroups) stays as the backstop.
        words.append(f"--memory={math.ceil(resources.memory_mb)}M")
    if array is not None and not array.simple:
        words += [f"--steps-per-task={array.per_task}", f"--array-length={array.length or array.tasks}",
                  f"--task-offset={array.offset}"] + ([f"--array-base={array.base}"] if array.base else [])
        if resources.runtime_s is not None:
            words.append(f"--runtime={math.ceil(resources.runtime_s)}")
    lines = [*sbatch_lines, *resources.site.get("sbatch", ())]
    directives = "".join(f"#SBATCH {line}\n" for line in lines)
    user_prologue = f"{prologue.rstrip()}\n" if prologue and prologue.strip() else ""
    body = "exec " + " ".join(shlex.quote(word) for word in [*wrapper, *words, "--", command]) + "\n"
    return SCRIPT_PROLOGUE.replace("#!/bin/sh\n", "#!/bin/sh\n" + directives, 1) + user_prologue + body


def sbatch_env(environ: Mapping[str, str], resources: Resources) -> dict[str, str]:
    """sbatch's environment (``--export=ALL`` hands it to the job): ours without identity and device
    variables, the numeric libraries' thread counts set to the task's ``cores`` (where ours sets none),
    plus the task's ``env`` (so its values never pass through a shell, and they win)."""
    env = {key: value for key, value in environ.items()
           if key not in IDENTITY_VARIABLES and key not in DEVICE_VARIABLES}
    env.update(thread_variables(resources.cores, environ))
    env.update(resources.env)
    return env
