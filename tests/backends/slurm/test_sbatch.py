"""The sbatch argv and batch script, against a recorded file (as submitit's ``_sbatch_test_record.txt``).

A change to what nbdist hands sbatch shows up as a diff of ``sbatch_record.txt``; after checking it,
record the new text with ``NBDIST_RECORD_SBATCH=1 pytest tests/backends/slurm/test_sbatch.py``.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from nbdist.backends.slurm.sbatch import IDENTITY_VARIABLES, ArrayCall, batch_script, sbatch_argv, sbatch_env
from nbdist.cluster_protocol.resources import THREAD_VARIABLES, Resources

RECORD = Path(__file__).with_name("sbatch_record.txt")
WORKER = "/venv/bin/nbdist-worker"

CASES = {
    "a plain job with defaults": ("echo hi", "job", {}, None),
    "a job with every resource": (
        "python train.py --lr 0.1 > out.txt; echo 'done' #SBATCH --mem=1T", "my job/../x",
        {"cores": 4, "memory": "1.5G", "runtime": "90m", "queue": "gpu", "stdout": "/data/out %x", "stderr": "/data/err",
         "cwd": "/work dir", "after": ["12", "13_4"], "env": {"A": "1"}}, None),
    "an array of 1000 throttled to 10": ("echo $ARRAY_STEP_ID", "sweep", {"max_concurrent": 10, "runtime": 30},
                                         ArrayCall(1000, throttle=10)),
    "the third call of a packed array on a GPU with site options": (
        "python step.py", "big", {"runtime": "30s", "gpus": 1, "steps_per_task": 10, "account": "proj",
                                  "qos": "low", "constraint": "a100|h100", "reservation": "maint",
                                  "exclusive": True, "requeue": True, "signal": "B:USR1@60",
                                  "sbatch": ["#SBATCH --mail-type=END", "--comment=nbdist"]},
        ArrayCall(1001, per_task=10, length=25000, offset=2002, base="4242", throttle=50)),
}
SESSION_PROLOGUE = "module load cuda/12\nsource env/bin/activate"


def render() -> str:
    parts = []
    for title, (command, name, requested, array) in CASES.items():
        resources = Resources.parse(requested, site_options=True)
        site = {"account": "abc"} if resources.site else {}
        argv = sbatch_argv(name, resources, array, log_dir="/home/u/.nbdist/slurm-logs/slurm",
                           partition="debug", extra_args=["--account=abc"], site=site)
        packed = array is not None and not array.simple
        script = batch_script(command, name, resources, log_dir="/home/u/.nbdist/slurm-logs/slurm", worker=WORKER,
                              array=array, prologue=SESSION_PROLOGUE if packed else None,
                              wrapper=["apptainer", "exec", "img.sif"] if packed else ())
        parts.append(f"### {title}\n$ {shlex.join(argv)}\n{script}")
    return "\n".join(parts)


def test_sbatch_argv_and_script_match_the_record():
    text = render()
    if os.environ.get("NBDIST_RECORD_SBATCH") == "1":
        RECORD.write_text(text)
    assert text == RECORD.read_text()


def test_the_script_is_valid_shell_and_quotes_the_command_as_one_word():
    script = batch_script("echo 'a b' $HOME; exit 3", "n", Resources.parse({}), log_dir="/l", worker=WORKER)
    subprocess.run(["sh", "-n"], input=script, text=True, check=True)
    assert script.splitlines()[-1].endswith(" -- 'echo '\"'\"'a b'\"'\"' $HOME; exit 3'")


def test_identity_variables_never_reach_the_job_and_task_env_does():
    environ = {"PATH": "/bin", "SLURM_JOB_ID": "99", "JOB_ID": "x", "NBDIST_DISTRIBUTOR_ID": "y"}
    env = sbatch_env(environ, Resources.parse({"env": {"GREETING": "hi there"}}))
    assert env == {"PATH": "/bin", "GREETING": "hi there", **dict.fromkeys(THREAD_VARIABLES, "1")}
    assert set(IDENTITY_VARIABLES) >= {"SLURM_JOB_ID", "JOB_ID", "NBDIST_DISTRIBUTOR_ID"}
