"""What one submission hands ``sbatch``: its argv, its environment and the batch script. Pure functions.

The batch script is the same for every task: it exports the identity variables the multiprocess
backend gives its tasks (``JOB_ID``, ``ARRAY_STEP_ID``, ``NBDIST_DISTRIBUTOR_ID``), then ``exec``s
``nbdist-worker``, which runs the command and writes its logs and exit info. Everything substituted
into the script is shell-quoted, and sbatch stops reading ``#SBATCH`` directives at the prologue's
first command, so none inside the user's command is obeyed.
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Mapping, Sequence

from ...cluster_protocol.naming import log_stem
from ...cluster_protocol.resources import Resources

__all__ = ["IDENTITY_VARIABLES", "SCRIPT_PROLOGUE", "batch_script", "log_folders", "sbatch_argv", "sbatch_env"]

# Identity variables of the submitting process (say a kernel that itself runs as a Slurm job) must
# not leak into the job: the worker reads its id from them.
IDENTITY_VARIABLES = ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_ID", "SLURM_JOBID", "JOB_ID",
                      "ARRAY_STEP_ID", "NBDIST_DISTRIBUTOR_ID")
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


def log_folders(resources: Resources, log_dir: str) -> tuple[str, str]:
    """Absolute stdout and stderr folders of a task: the ones it names, else ``log_dir``."""
    return os.path.abspath(resources.stdout_dir or log_dir), os.path.abspath(resources.stderr_dir or log_dir)


def sbatch_argv(name: str, resources: Resources, array_length: int | None, *, log_dir: str,
                partition: str | None = None, extra_args: Sequence[str] = ()) -> list[str]:
    """``sbatch --parsable …`` for one job (``array_length`` None) or one whole array."""
    stdout_dir = log_folders(resources, log_dir)[0]
    # sbatch expands %-patterns in --output; a literal % in the folder must be doubled.
    wrapper_log = os.path.join(stdout_dir.replace("%", "%%"), log_stem(name))
    argv = ["sbatch", "--parsable", f"--job-name={log_stem(name)}", "--export=ALL", "--kill-on-invalid-dep=yes",
            f"--cpus-per-task={resources.cores}"]
    if array_length is not None:
        concurrency = f"%{resources.max_concurrent}" if resources.max_concurrent else ""
        argv += [f"--array=0-{array_length - 1}{concurrency}", f"--output={wrapper_log}.s%A_%a"]
    else:
        argv.append(f"--output={wrapper_log}.s%j")
    if resources.memory_mb is not None:
        argv.append(f"--mem={math.ceil(resources.memory_mb)}M")
    if resources.runtime_s is not None:
        # Slurm limits are whole minutes; round up so the task gets at least what it asked for.
        argv.append(f"--time={math.ceil(resources.runtime_s / 60)}")
    partition = resources.queue or partition
    if partition:
        argv.append(f"--partition={partition}")
    if resources.after:
        argv.append("--dependency=afterok:" + ":".join(resources.after))
    if resources.cwd:
        argv.append(f"--chdir={resources.cwd}")
    return argv + list(extra_args)


def batch_script(command: str, name: str, resources: Resources, *, log_dir: str, worker: str) -> str:
    """The batch script: the prologue, then ``exec nbdist-worker … -- COMMAND``."""
    stdout_dir, stderr_dir = log_folders(resources, log_dir)
    words = [worker, f"--name={name}", f"--stdout-dir={stdout_dir}", f"--stderr-dir={stderr_dir}"]
    if resources.memory_mb is not None:
        # The worker samples the task's RSS every 0.1 s and reports "memory limit exceeded";
        # Slurm's own check (every second, without cgroups) stays as the backstop.
        words.append(f"--memory={math.ceil(resources.memory_mb)}M")
    return SCRIPT_PROLOGUE + "exec " + " ".join(shlex.quote(word) for word in [*words, "--", command]) + "\n"


def sbatch_env(environ: Mapping[str, str], resources: Resources) -> dict[str, str]:
    """sbatch's environment (``--export=ALL`` hands it to the job): ours without identity variables,
    plus the task's ``env`` (so its values never pass through a shell)."""
    env = {key: value for key, value in environ.items() if key not in IDENTITY_VARIABLES}
    env.update(resources.env)
    return env
